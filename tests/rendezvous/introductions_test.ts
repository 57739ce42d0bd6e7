/**
 * Introductions of a pair that never goes direct back off exponentially
 * (3 s, 6 s, 12 s, … at most 5 min); a direct path reported by both sides
 * ends the backoff, one side alone cannot.
 */
import assert from "node:assert/strict";
import { MAX_INTRODUCTION_BACKOFF_MS } from "../../lib/rendezvous/peers.ts";
import { FakeClock } from "../_fake_clock.ts";
import { startRendezvous, TestClient } from "../_helpers.ts";

/** Whether `from`'s connect to `to` is introduced now (a punch before the echo's answer). */
async function introduced(from: TestClient, to: string): Promise<boolean> {
  from.send({ type: "connect", peer_id: to });
  from.send({ type: "echo_request", payload: "after the connect" });
  const first = await from.next();
  if (first.type === "punch") {
    assert.equal((await from.next()).type, "echo_response");
    return true;
  }
  assert.equal(first.type, "echo_response");
  return false;
}

Deno.test("introductions of a pair that never goes direct back off, and only both sides' direct paths end it", async () => {
  const clock = new FakeClock(Date.now());
  const rv = await startRendezvous({ clock });
  const a = await TestClient.connect(`${rv.ws}/ws/register/a`);
  const b = await TestClient.connect(`${rv.ws}/ws/register/b`);
  const drainB = async () => {
    // b hears each punch of the pair; keep its queue empty.
    b.send({ type: "echo_request", payload: "sync" });
    for (let m = await b.next(); m.type !== "echo_response"; m = await b.next()) {
      assert.equal(m.type, "punch");
    }
  };
  try {
    assert.equal(await introduced(a, "b"), true, "the first");
    await drainB();
    // Each introduction without a direct path doubles the wait: 3, 6, 12, 24 s.
    for (const wait of [3000, 6000, 12_000, 24_000]) {
      await clock.tick(wait - 1);
      assert.equal(await introduced(a, "b"), false, `before ${wait} ms`);
      assert.equal(await introduced(b, "a"), false, `the other side, before ${wait} ms`);
      await clock.tick(1);
      assert.equal(await introduced(a, "b"), true, `at ${wait} ms`);
      await drainB();
    }
    // At most MAX_INTRODUCTION_BACKOFF_MS apart, however many failed.
    for (let i = 0; i < 10; i++) {
      await clock.tick(MAX_INTRODUCTION_BACKOFF_MS);
      assert.equal(await introduced(a, "b"), true, `capped, ${i}`);
      await drainB();
    }
    // One side saying "direct" (a registrant that lies) does not end the backoff…
    a.send({ type: "path_update", peer_id: "b", path: "direct", rtt_ms: 1 });
    await clock.tick(3000);
    assert.equal(await introduced(a, "b"), false, "one side's report is not enough");
    // …both sides do: the next introduction may come 3 s after the last.
    await clock.tick(MAX_INTRODUCTION_BACKOFF_MS);
    assert.equal(await introduced(a, "b"), true);
    await drainB();
    a.send({ type: "path_update", peer_id: "b", path: "direct", rtt_ms: 1 });
    b.send({ type: "path_update", peer_id: "a", path: "direct", rtt_ms: 1 });
    await drainB();
    await clock.tick(3000);
    assert.equal(await introduced(a, "b"), true, "after a direct path, 3 s again");
    const metrics = await (await fetch(`${rv.http}/metrics`)).text();
    assert.match(metrics, /holepunch_rendezvous_introductions_deferred_total 9/);
  } finally {
    // Closed before the rendezvous, whose drain waits on the fake clock.
    await a.close();
    await b.close();
    await rv.close();
  }
});
