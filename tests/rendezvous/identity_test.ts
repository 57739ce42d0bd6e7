import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import { MemoryRegistry } from "../../lib/rendezvous/registry.ts";
import { encodeRelayFrame } from "../../lib/protocol/relay_frame.ts";
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

/** A rendezvous whose log lines the test can read. */
async function rendezvous(options: RendezvousOptions = {}) {
  const logs: Record<string, unknown>[] = [];
  const rv = await startRendezvous({
    logger: new Logger({ sink: (line) => logs.push(JSON.parse(line)) }),
    ...options,
  });
  return { rv, logs };
}

/** Opens a session for `id` with `key` (default: the identity's) and returns it at the challenge. */
async function challenged(
  rv: TestRendezvous,
  id: string,
  identity: Identity,
  key = identity.publicKey,
): Promise<{ client: TestClient; nonce: string }> {
  const client = new TestClient(`${rv.ws}/ws/register/${id}?key=${key}`);
  await within(client.opened, 5000, "open");
  const challenge = await client.next();
  assert.equal(challenge.type, "challenge");
  return { client, nonce: challenge.nonce as string };
}

/** A worker that answers its challenge as a real one does. */
async function keyed(rv: TestRendezvous, id: string, identity: Identity): Promise<TestClient> {
  const { client, nonce } = await challenged(rv, id, identity);
  const signature = await identity.proveRegistration(`127.0.0.1:${rv.port}`, id, nonce);
  client.send({ type: "prove_key", signature });
  const registered = await client.next();
  assert.equal(registered.type, "registered");
  return client;
}

/** The rightful worker is still registered and answering on its session. */
async function stillServed(rv: TestRendezvous, client: TestClient, id: string, key: string) {
  client.send({ type: "echo_request", payload: "still here" });
  assert.equal((await client.next()).type, "echo_response");
  assert.equal((await listWorkers(rv.http)).workers[id]?.key, key);
}

Deno.test("a keyed worker proves its key, and the listing and its peers show the key", async () => {
  const { rv, logs } = await rendezvous();
  const identity = await Identity.generate();
  try {
    const client = await keyed(rv, "w1", identity);
    const entry = (await listWorkers(rv.http)).workers.w1;
    assert.equal(entry.key, identity.publicKey);
    assert.equal(entry.key_fingerprint, identity.fingerprint);
    const peer = await TestClient.connect(`${rv.ws}/ws/register/w2`);
    peer.send({ type: "list_peers", watch: false });
    const peers = await peer.next();
    assert.deepEqual((peers.peers as { key: string }[]).map((p) => p.key), [identity.publicKey]);
    assert.ok(
      logs.some((l) =>
        l.message === "worker registered" && l.key_fingerprint === identity.fingerprint
      ),
    );
    await peer.close();
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("messages sent before the proof wait for it and then count", async () => {
  const { rv } = await rendezvous();
  const identity = await Identity.generate();
  try {
    const { client, nonce } = await challenged(rv, "early", identity);
    client.send({ type: "register_public_ip", ip: "203.0.113.5" });
    client.send({
      type: "prove_key",
      signature: await identity.proveRegistration(`127.0.0.1:${rv.port}`, "early", nonce),
    });
    assert.equal((await client.next()).type, "registered");
    assert.deepEqual(await client.next(), { type: "public_ip_registered", ip: "203.0.113.5" });
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("hijack attempts are refused and logged, and never disconnect the rightful worker", async (t) => {
  const { rv, logs } = await rendezvous();
  const rightful = await Identity.generate();
  const attacker = await Identity.generate();
  const authority = `127.0.0.1:${rv.port}`;
  const owner = await keyed(rv, "victim", rightful);
  const refusals = () => logs.filter((l) => String(l.message).startsWith("worker refused"));
  try {
    await t.step("another key for the id: 4003", async () => {
      const before = refusals().length;
      const { client, nonce } = await challenged(rv, "victim", attacker);
      client.send({
        type: "prove_key",
        signature: await attacker.proveRegistration(authority, "victim", nonce),
      });
      const closed = await within(client.closed, 5000, "refusal");
      assert.equal(closed.code, CloseCode.KEY_REFUSED);
      assert.match(closed.reason, /bound to another key/);
      const logged = refusals().slice(before);
      assert.equal(logged.length, 1);
      assert.equal(logged[0].bound_fingerprint, rightful.fingerprint);
      assert.equal(logged[0].key_fingerprint, attacker.fingerprint);
      await stillServed(rv, owner, "victim", rightful.publicKey);
    });

    await t.step("no key for a bound id: 4003", async () => {
      const client = new TestClient(`${rv.ws}/ws/register/victim`);
      const closed = await within(client.closed, 5000, "refusal");
      assert.equal(closed.code, CloseCode.KEY_REFUSED);
      assert.match(closed.reason, /bound to a key/);
      await stillServed(rv, owner, "victim", rightful.publicKey);
    });

    await t.step(
      "the rightful key without its private half: a replayed signature fails",
      async () => {
        // The attacker saw one of the victim's proofs (for an earlier nonce).
        const seen = await challenged(rv, "victim", rightful);
        const replay = await rightful.proveRegistration(authority, "victim", seen.nonce);
        seen.client.send({ type: "prove_key", signature: replay }); // the victim's own reconnect
        assert.equal((await seen.client.next()).type, "registered");
        const ownerClosed = await within(owner.closed, 5000, "the replaced session's close");
        assert.equal(
          ownerClosed.code,
          CloseCode.SESSION_REPLACED,
          "same key: a normal replacement",
        );

        const { client } = await challenged(rv, "victim", rightful);
        client.send({ type: "prove_key", signature: replay });
        const closed = await within(client.closed, 5000, "refusal");
        assert.equal(closed.code, CloseCode.KEY_PROOF_FAILED);
        assert.ok(logs.some((l) => l.message === "worker refused: key proof failed"));
        await stillServed(rv, seen.client, "victim", rightful.publicKey);
        await seen.client.close();
      },
    );
  } finally {
    await owner.close();
    await rv.close();
  }
});

Deno.test("a proof for another id or another rendezvous is refused", async () => {
  const { rv } = await rendezvous();
  const identity = await Identity.generate();
  try {
    for (
      const [authority, id] of [
        [`127.0.0.1:${rv.port}`, "someone-else"],
        ["rendezvous.example:443", "w1"],
      ]
    ) {
      const { client, nonce } = await challenged(rv, "w1", identity);
      client.send({
        type: "prove_key",
        signature: await identity.proveRegistration(authority, id, nonce),
      });
      assert.equal((await within(client.closed, 5000, "refusal")).code, CloseCode.KEY_PROOF_FAILED);
    }
    assert.equal((await listWorkers(rv.http)).connected_workers_count, 0);
  } finally {
    await rv.close();
  }
});

Deno.test("PUBLIC_HOSTS: proofs must name a configured authority, whatever Host says", async () => {
  const { rv } = await rendezvous({ publicHosts: ["Rendezvous.example"] });
  const identity = await Identity.generate();
  try {
    const bad = await challenged(rv, "w1", identity);
    bad.client.send({
      type: "prove_key",
      signature: await identity.proveRegistration(`127.0.0.1:${rv.port}`, "w1", bad.nonce),
    });
    assert.equal(
      (await within(bad.client.closed, 5000, "refusal")).code,
      CloseCode.KEY_PROOF_FAILED,
    );
    const good = await challenged(rv, "w1", identity);
    good.client.send({
      type: "prove_key",
      signature: await identity.proveRegistration("rendezvous.example", "w1", good.nonce),
    });
    assert.equal((await good.client.next()).type, "registered");
    await good.client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("a keyed worker that never answers the challenge is closed with 4004", async () => {
  const { rv, logs } = await rendezvous({ keyProofTimeoutMs: 100 });
  const identity = await Identity.generate();
  try {
    const { client } = await challenged(rv, "silent", identity);
    client.send({ type: "echo_request", payload: 1 }); // not a proof: waits, then dies with it
    const closed = await within(client.closed, 5000, "timeout close");
    assert.equal(closed.code, CloseCode.KEY_PROOF_FAILED);
    assert.match(closed.reason, /timed out/);
    assert.ok(logs.some((l) => l.message === "worker refused: key proof timed out"));
    assert.equal((await listWorkers(rv.http)).connected_workers_count, 0);
  } finally {
    await rv.close();
  }
});

Deno.test("handshake checks: a malformed key is 400, a keyless worker is 401 when keys are required", async () => {
  const { rv } = await rendezvous({ requireWorkerKeys: true });
  try {
    const bad = await fetch(`${rv.http}/ws/register/w1?key=c2hvcnQ`);
    assert.equal(bad.status, 400);
    assert.match((await bad.json()).error, /Ed25519 key is 32 bytes/);
    const keyless = await fetch(`${rv.http}/ws/register/w1`, { headers: { upgrade: "websocket" } });
    assert.equal(keyless.status, 401);
    assert.match((await keyless.json()).error, /requires a worker key/);
    // A keyed worker still gets in.
    const client = await keyed(rv, "w1", await Identity.generate());
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("prove_key with no challenge pending is answered with an error and changes nothing", async () => {
  const { rv } = await rendezvous();
  try {
    const client = await TestClient.connect(`${rv.ws}/ws/register/keyless`);
    client.send({ type: "prove_key", signature: "A".repeat(86) });
    const error = await client.next();
    assert.equal(error.type, "error");
    assert.match(error.message as string, /no challenge is pending/);
    assert.equal((await listWorkers(rv.http)).workers.keyless.key, null);
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("a keyed worker replaces a keyless session of its id; the binding then holds", async () => {
  const { rv } = await rendezvous();
  const identity = await Identity.generate();
  try {
    const keyless = await TestClient.connect(`${rv.ws}/ws/register/w1`);
    const owner = await keyed(rv, "w1", identity);
    assert.equal(
      (await within(keyless.closed, 5000, "replacement")).code,
      CloseCode.SESSION_REPLACED,
    );
    const again = new TestClient(`${rv.ws}/ws/register/w1`);
    assert.equal((await within(again.closed, 5000, "refusal")).code, CloseCode.KEY_REFUSED);
    await owner.close();
  } finally {
    await rv.close();
  }
});

Deno.test("an id is held for its key for KEY_HOLD_SEC after its last session, then freed", async () => {
  const clock = new FakeClock(Date.now());
  const { rv } = await rendezvous({ clock, keyHoldSec: 60 });
  const first = await Identity.generate();
  const second = await Identity.generate();
  try {
    const owner = await keyed(rv, "w1", first);
    await owner.close();
    // Gone from the listing: its close was handled and the hold started.
    for (let i = 0; i < 100 && (await listWorkers(rv.http)).connected_workers_count > 0; i++) {
      await clock.tick(0);
    }
    const early = await challenged(rv, "w1", second);
    early.client.send({
      type: "prove_key",
      signature: await second.proveRegistration(`127.0.0.1:${rv.port}`, "w1", early.nonce),
    });
    assert.equal((await within(early.client.closed, 5000, "refusal")).code, CloseCode.KEY_REFUSED);
    await clock.tick(60_000);
    const late = await keyed(rv, "w1", second);
    assert.equal((await listWorkers(rv.http)).workers.w1.key, second.publicKey);
    await late.close();
  } finally {
    await rv.close();
  }
});

Deno.test("MemoryRegistry.claimKey() binds, holds and frees ids as documented", async () => {
  const registry = new MemoryRegistry();
  const hold = 1000;
  const claim = (key: string | null, session: string, now: number) =>
    registry.claimKey("a", key, session, now, hold);
  assert.deepEqual(await claim(null, "s0", 0), { ok: true }, "keyless, unbound");
  assert.deepEqual(await claim("K1", "s1", 0), { ok: true }, "binds");
  assert.deepEqual(await claim("K1", "s2", 1), { ok: true }, "same key: s2 holds it now");
  assert.deepEqual(await claim("K2", "x", 5000), { ok: false, bound: "K1" });
  assert.deepEqual(await claim(null, "x", 5000), { ok: false, bound: "K1" });
  await registry.releaseKey("a", "K2", "x", 5000); // not the bound key: no effect
  // A late cleanup of the session s2 replaced: s2 still holds the binding, no countdown starts.
  await registry.releaseKey("a", "K1", "s1", 5000);
  assert.deepEqual(await claim("K2", "x", 9000), { ok: false, bound: "K1" });
  await registry.releaseKey("a", "K1", "s2", 10_000);
  assert.deepEqual(await claim("K2", "x", 10_999), { ok: false, bound: "K1" });
  assert.deepEqual(await claim("K2", "s3", 11_000), { ok: true }, "freed");
  assert.deepEqual(await claim("K1", "x", 11_001), { ok: false, bound: "K2" });
  await registry.releaseKey("a", "K2", "s3", 20_000);
  assert.deepEqual(await claim(null, "s4", 21_000), { ok: true }, "keyless after the hold");
  assert.deepEqual(await claim("K1", "s5", 21_000), { ok: true }, "no binding left");
});

Deno.test("a relay packet sent before the key proof is dropped, not a reason to close", async () => {
  const { rv } = await rendezvous();
  const identity = await Identity.generate();
  try {
    const { client, nonce } = await challenged(rv, "early-relay", identity);
    client.socket.send(encodeRelayFrame("someone", new Uint8Array([1, 2, 3])));
    client.send({
      type: "prove_key",
      signature: await identity.proveRegistration(`127.0.0.1:${rv.port}`, "early-relay", nonce),
    });
    assert.equal((await client.next()).type, "registered");
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("a refused session handles nothing: no introduction, no relay, no dedup slot taken", async () => {
  const { rv } = await rendezvous();
  const rightful = await Identity.generate();
  const attacker = await Identity.generate();
  const authority = `127.0.0.1:${rv.port}`;
  const owner = await keyed(rv, "victim", rightful);
  const other = await TestClient.connect(`${rv.ws}/ws/register/other`);
  const dropped = async () => {
    const text = await (await fetch(`${rv.http}/metrics`)).text();
    return Number(text.match(/messages_dropped_total\{reason="unregistered"\} (\d+)/)?.[1] ?? 0);
  };
  const attack = [
    { type: "connect", peer_id: "other" },
    { type: "relay", to: "other", data: "ZnJvbSB0aGUgdmljdGlt" },
    { type: "list_peers", watch: false },
  ];
  try {
    // Another key for a bound id (4003): its messages wait for the proof,
    // so they are queued before the refusal is known.
    const { client, nonce } = await challenged(rv, "victim", attacker);
    for (const message of attack) client.send(message);
    client.send({
      type: "prove_key",
      signature: await attacker.proveRegistration(authority, "victim", nonce),
    });
    assert.equal((await within(client.closed, 5000, "refusal")).code, CloseCode.KEY_REFUSED);
    // A bad proof (4004), the same way.
    const forged = await challenged(rv, "victim", rightful);
    for (const message of attack) forged.client.send(message);
    forged.client.send({ type: "prove_key", signature: "A".repeat(86) });
    assert.equal(
      (await within(forged.client.closed, 5000, "refusal")).code,
      CloseCode.KEY_PROOF_FAILED,
    );
    await waitFor(async () => (await dropped()) === 2 * attack.length, "messages dropped", 5000);
    // No key for the bound id (4003), its messages at once: whichever arrive are dropped too.
    const keyless = new TestClient(`${rv.ws}/ws/register/victim`);
    await within(keyless.opened, 5000, "open").catch(() => {});
    for (const message of attack) {
      if (keyless.socket.readyState === WebSocket.OPEN) keyless.send(message);
    }
    assert.equal((await within(keyless.closed, 5000, "refusal")).code, CloseCode.KEY_REFUSED);
    other.send({ type: "echo_request", payload: "anything before this?" });
    assert.equal((await other.next()).type, "echo_response", "no punch, no relayed frame");
    // The pair's introduction slot is free: the rightful worker is introduced at once.
    owner.send({ type: "connect", peer_id: "other" });
    const punch = await other.next();
    assert.equal(punch.type, "punch");
    assert.equal(punch.peer_id, "victim");
    await other.close();
    await owner.close();
  } finally {
    await rv.close();
  }
});
