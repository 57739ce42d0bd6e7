/**
 * Revoking a worker in a fleet (real redis-server, two rendezvous processes,
 * haproxy in front): revoked on one instance, its session on the other is
 * closed (4009) within a second; its peer on the first hears `peer_left`
 * with reason `revoked` and closes its connection to it; it is refused on
 * every instance and through the front; the ban outlives every instance
 * (Redis holds it) until it is lifted.
 */

import assert from "node:assert/strict";
import type { ClientEvent } from "../../lib/worker/client.ts";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { startWorker, type Worker } from "../../lib/worker/worker.ts";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { requireOrSkip, TestClient, waitFor, within } from "../_helpers.ts";
import { fleetUnavailable, keyedAt, TestFleet } from "../_fleet.ts";

const skip = requireOrSkip(await fleetUnavailable(), "fleet revocation tests");
const TOKEN = "s3cret";
const AUTH = { authorization: `Bearer ${TOKEN}` };

/** An in-process worker of `http` (one instance, relay only), its rendezvous events kept. */
async function worker(http: string, id: string) {
  const events: ClientEvent[] = [];
  const registered = Promise.withResolvers<void>();
  const closed = Promise.withResolvers<{ code: number; reason: string; at: number }>();
  const w: Worker = await startWorker(
    loadWorkerConfig({
      RENDEZVOUS_SERVICE_URL: http,
      RENDEZVOUS_TOKEN: TOKEN,
      WORKER_ID: id,
      IP_ECHO_URL: "off",
      STUN_SERVERS: "off",
      UDP_HOST: "127.0.0.1",
      CONTROL_DIR: "off",
      // A revoked worker waits half to all of this between attempts.
      RECONNECT_MAX_SEC: "0.5",
    }),
    {
      health: false,
      onEvent: (event) => {
        events.push(event);
        if (event.type === "registered") registered.resolve();
        if (event.type === "disconnected") {
          closed.resolve({ code: event.code, reason: event.reason, at: performance.now() });
        }
      },
    },
  );
  await within(registered.promise, 10_000, `${id} registering`);
  return { worker: w, events, closed: closed.promise };
}

Deno.test({
  name:
    "revoke in a fleet: closed on the other instance within 1 s, peers drop it, refused everywhere, the ban survives restarts until lifted",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2, { RENDEZVOUS_TOKEN: TOKEN });
    const [one, two] = fleet.instances;
    const running: Worker[] = [];
    try {
      // The peer on instance one, the worker to revoke on instance two.
      const good = await worker(one.http, "good");
      const bad = await worker(two.http, "bad");
      running.push(good.worker, bad.worker);
      const connection = await good.worker.connect("bad", { timeoutMs: 15_000 });
      const badKey = bad.worker.identity;

      // Revoked through instance one; bad's session is on instance two.
      const started = performance.now();
      const response = await fetch(`${one.http}/admin/revoke`, {
        method: "POST",
        headers: { ...AUTH, "content-type": "application/json" },
        body: JSON.stringify({ worker_id: "bad", reason: "compromised host" }),
      });
      assert.equal(response.status, 201, await response.clone().text());
      const { ban, sessions_closed } = await response.json();
      assert.equal(sessions_closed, 0, "none of its sessions is on the instance asked");
      assert.equal(ban.key, badKey.publicKey, "the key it registered with, read from the fleet");
      const disconnected = await within(bad.closed, 5000, "bad's session closing");
      assert.equal(disconnected.code, CloseCode.REVOKED);
      assert.equal(disconnected.reason, "revoked: compromised host");
      const ms = disconnected.at - started;
      console.log(
        `revoked on instance one; session on instance two closed ${
          ms.toFixed(0)
        } ms after the request`,
      );
      assert.ok(ms < 1000, `closed after ${ms} ms`);

      // Its peer on the other instance was told why, and dropped its connection.
      const info = await within(connection.closed, 5000, "good's connection to bad closing");
      assert.match(info.reason, /revoked/);
      assert.equal(good.worker.connections.get("bad"), undefined);

      // bad's own reconnects are refused (it keeps trying, with backoff).
      await waitFor(
        () =>
          bad.events.filter((e) => e.type === "disconnected" && e.code === CloseCode.REVOKED)
            .length >= 2,
        "bad's reconnect refused",
        15_000,
        20,
      );
      await bad.worker.close();
      running.splice(running.indexOf(bad.worker), 1);

      // Refused on both instances and through haproxy, by key under any id and by id.
      for (const port of [one.port, two.port, fleet.front.port]) {
        const keyed = new TestClient(
          `ws://127.0.0.1:${port}/ws/register/renamed?key=${badKey.publicKey}`,
          AUTH,
        );
        assert.equal((await within(keyed.closed, 5000, "refusal")).code, CloseCode.REVOKED);
        const keyless = new TestClient(`ws://127.0.0.1:${port}/ws/register/bad`, AUTH);
        assert.equal((await within(keyless.closed, 5000, "refusal")).code, CloseCode.REVOKED);
      }

      // Every instance goes; a new one reads the ban from Redis.
      await good.worker.close();
      running.length = 0;
      await Promise.all([one.proc.stop(), two.proc.stop()]);
      const three = await fleet.spawnInstance();
      const listed = await waitFor(
        async () => {
          const r = await fetch(`${three.http}/admin/revoked`, { headers: AUTH });
          const body = await r.json();
          return body.bans?.length === 1 && body;
        },
        "the new instance's bans",
        10_000,
        50,
      );
      assert.equal(listed.bans[0].id, badKey.fingerprint);
      const refused = new TestClient(
        `ws://127.0.0.1:${three.port}/ws/register/bad?key=${badKey.publicKey}`,
        AUTH,
      );
      assert.equal((await within(refused.closed, 5000, "refusal")).code, CloseCode.REVOKED);

      // Lifted: the key registers again.
      const lifted = await fetch(`${three.http}/admin/revoked/bad`, {
        method: "DELETE",
        headers: AUTH,
      });
      assert.equal(lifted.status, 200);
      assert.equal(
        (await fetch(`${three.http}/admin/revoked`, { headers: AUTH }).then((r) => r.json())).bans
          .length,
        0,
      );
      const back = await keyedAt(three.port, "bad", badKey, AUTH);
      assert.equal((await back.next()).type, "registered");
      await back.close();
    } finally {
      await Promise.all(running.map((w) => w.close()));
      await fleet.close();
    }
  },
});
