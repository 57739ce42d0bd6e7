/**
 * Per-client limits: sessions per client IP (after TRUST_PROXY), registered
 * sessions per key, and an instance-wide handshake rate. Each refusal is a
 * 429 or 503 with Retry-After, counted and logged (at most once a second).
 */

import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import type { RendezvousOptions } from "../../lib/rendezvous/server.ts";
import { FakeClock } from "../_fake_clock.ts";
import {
  listWorkers,
  startRendezvous,
  TestClient,
  type TestRendezvous,
  waitFor,
  within,
} from "../_helpers.ts";

async function rendezvous(options: RendezvousOptions) {
  const logs: Record<string, unknown>[] = [];
  const rv = await startRendezvous({
    logger: new Logger({ sink: (line) => logs.push(JSON.parse(line)) }),
    ...options,
  });
  return { rv, logs };
}

/** A handshake attempt by plain HTTP: its status, Retry-After and error. */
async function attempt(rv: TestRendezvous, id: string, headers: Record<string, string> = {}) {
  const response = await fetch(`${rv.http}/ws/register/${id}`, {
    headers: { upgrade: "websocket", connection: "Upgrade", ...headers },
  });
  const body = await response.json().catch(() => ({}));
  return {
    status: response.status,
    retryAfter: response.headers.get("retry-after"),
    error: body.error,
  };
}

const from = (ip: string) => ({ "x-forwarded-for": ip });

Deno.test("one client IP at its cap gets 429 with Retry-After, and leaves room for everyone else", async () => {
  const { rv, logs } = await rendezvous({
    trustProxyHops: 1,
    maxSessionsPerIp: 3,
    maxConnections: 10,
  });
  const clients: TestClient[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      clients.push(
        await TestClient.connect(`${rv.ws}/ws/register/greedy-${i}`, from("203.0.113.7")),
      );
    }
    const refused = await attempt(rv, "greedy-3", from("203.0.113.7"));
    assert.deepEqual(refused, {
      status: 429,
      retryAfter: "10",
      error: "Too many sessions from this address",
    });
    // Others are still welcome, up to the instance's capacity.
    for (let i = 0; i < 3; i++) {
      clients.push(
        await TestClient.connect(`${rv.ws}/ws/register/other-${i}`, from(`203.0.113.${20 + i}`)),
      );
    }
    assert.equal((await listWorkers(rv.http)).connected_workers_count, 6);
    // A session of the greedy client ends: it may open one again.
    await clients[0].close();
    await waitFor(
      async () => (await (await fetch(`${rv.http}/debug/stats`)).json()).sessions === 5,
      "the close seen",
    );
    clients.push(
      await TestClient.connect(`${rv.ws}/ws/register/greedy-again`, from("203.0.113.7")),
    );
    assert.equal(rv.rendezvous.refused.per_ip, 1);
    const logged = logs.filter((l) => l.message === "connection refused: per ip");
    assert.equal(logged.length, 1);
    assert.equal(logged[0].observed_ip, "203.0.113.7");
    assert.equal(logged[0].status, 429);
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await rv.close();
  }
});

/** A keyed session that answers its challenge; resolves once registered. */
async function keyed(rv: TestRendezvous, id: string, identity: Identity): Promise<TestClient> {
  const client = new TestClient(`${rv.ws}/ws/register/${id}?key=${identity.publicKey}`);
  await within(client.opened, 5000, "open");
  const challenge = await client.next();
  client.send({
    type: "prove_key",
    signature: await identity.proveRegistration(
      `127.0.0.1:${rv.port}`,
      id,
      challenge.nonce as string,
    ),
  });
  assert.equal((await client.next()).type, "registered");
  return client;
}

Deno.test("a key at its cap of registered sessions gets 429; sessions that never prove the key count for nothing", async () => {
  const { rv } = await rendezvous({ maxSessionsPerKey: 2 });
  const owner = await Identity.generate();
  const clients: TestClient[] = [];
  try {
    // Someone who knows only the public key opens sessions with it and never proves it.
    for (let i = 0; i < 4; i++) {
      const squatter = new TestClient(`${rv.ws}/ws/register/squat-${i}?key=${owner.publicKey}`);
      await within(squatter.opened, 5000, "open");
      assert.equal((await squatter.next()).type, "challenge");
      clients.push(squatter);
    }
    // The owner still registers its two.
    clients.push(await keyed(rv, "fleet-a", owner), await keyed(rv, "fleet-b", owner));
    const refused = await attempt(rv, `fleet-c?key=${owner.publicKey}`);
    assert.deepEqual(refused, {
      status: 429,
      retryAfter: "10",
      error: "Too many sessions with this key",
    });
    // Another key is not concerned.
    clients.push(await keyed(rv, "someone-else", await Identity.generate()));
    assert.equal(rv.rendezvous.refused.per_key, 1);
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await rv.close();
  }
});

Deno.test("the instance-wide handshake rate refuses with 503 and Retry-After, logs once a second, and recovers", async () => {
  const clock = new FakeClock(0);
  const { rv, logs } = await rendezvous({ handshakeRatePerSec: 1, handshakeBurst: 2, clock });
  const clients: TestClient[] = [];
  try {
    clients.push(await TestClient.connect(`${rv.ws}/ws/register/h1`));
    clients.push(await TestClient.connect(`${rv.ws}/ws/register/h2`));
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await attempt(rv, `h-late-${i}`), {
        status: 503,
        retryAfter: "1",
        error: "Too many handshakes at once; retry shortly",
      });
    }
    assert.equal(logs.filter((l) => l.message === "connection refused: handshake rate").length, 1);
    await clock.tick(1000);
    clients.push(await TestClient.connect(`${rv.ws}/ws/register/h3`));
    assert.equal((await attempt(rv, "h4")).status, 503);
    const lines = logs.filter((l) => l.message === "connection refused: handshake rate");
    assert.equal(lines.length, 2);
    assert.equal(
      lines[1].suppressed_since_last,
      4,
      "the refusals in between were counted, not logged",
    );
    assert.equal(rv.rendezvous.refused.handshake_rate, 6);
    const stats = await (await fetch(`${rv.http}/debug/stats`)).json();
    assert.deepEqual(stats.refused, {
      at_capacity: 0,
      per_ip: 0,
      per_key: 0,
      handshake_rate: 6,
      sign_in: 0,
      guesses: 0,
      revoked: 0,
    });
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await rv.close();
  }
});
