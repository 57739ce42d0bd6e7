import assert from "node:assert/strict";
import { listWorkers, startRendezvous, TestClient, waitFor, within } from "../_helpers.ts";
import { encodeRelayFrame, parseRelayFrame } from "../../lib/protocol/relay_frame.ts";

const endpoint = (n: number, mapping = "endpoint-independent") => ({
  type: "register_udp_endpoint",
  public: { ip: `203.0.113.${n}`, port: 40000 + n },
  local: [{ ip: `10.0.0.${n}`, port: 5000 + n }],
  nat: { mapping },
  rtt_ms: 10 * n,
});

async function withUdp(url: string, n: number, mapping?: string): Promise<TestClient> {
  const client = await TestClient.connect(url);
  client.send(endpoint(n, mapping));
  assert.equal((await client.next()).type, "udp_endpoint_registered");
  return client;
}

Deno.test("list_peers returns the group's other workers; watchers hear joins, updates and leaves", async () => {
  const rv = await startRendezvous();
  try {
    const a = await withUdp(`${rv.ws}/ws/register/a?group=g1`, 1);
    const other = await withUdp(`${rv.ws}/ws/register/x?group=g2`, 9);
    a.send({ type: "list_peers", watch: true });
    assert.deepEqual(await a.next(), { type: "peers", peers: [] }, "x is in another group");

    const b = await TestClient.connect(`${rv.ws}/ws/register/b?group=g1`);
    assert.deepEqual(await a.next(), {
      type: "peer_joined",
      peer: {
        worker_id: "b",
        public: null,
        local: [],
        nat_mapping: null,
        key: null,
        transport: null,
      },
    });
    b.send(endpoint(2, "endpoint-dependent"));
    await b.next();
    assert.deepEqual(await a.next(), {
      type: "peer_updated",
      peer: {
        worker_id: "b",
        public: { ip: "203.0.113.2", port: 40002 },
        local: [{ ip: "10.0.0.2", port: 5002 }],
        nat_mapping: "endpoint-dependent",
        key: null,
        transport: null,
      },
    });
    b.send({ type: "list_peers", watch: false });
    const peers = await b.next();
    assert.deepEqual((peers.peers as { worker_id: string }[]).map((p) => p.worker_id), ["a"]);
    await b.close();
    assert.deepEqual(await a.next(), { type: "peer_left", peer_id: "b" });
    const listing = await listWorkers(rv.http);
    assert.equal(listing.workers.a.group, "g1");
    await a.close();
    await other.close();
  } finally {
    await rv.close();
  }
});

Deno.test("connect introduces both sides at once with candidates, one session per pair, timed by RTT", async () => {
  const rv = await startRendezvous();
  try {
    const a = await withUdp(`${rv.ws}/ws/register/a`, 1);
    const b = await withUdp(`${rv.ws}/ws/register/b`, 5);
    a.send({ type: "connect", peer_id: "b" });
    b.send({ type: "connect", peer_id: "a" }); // simultaneous: same session
    const toA = await a.next();
    const toB = await b.next();
    assert.equal(toA.type, "punch");
    assert.equal(toB.type, "punch");
    assert.equal(toA.session_id, toB.session_id);
    assert.equal(toA.key, toB.key);
    assert.match(String(toA.session_id), /^[0-9a-f]{16}$/);
    assert.equal(atob(String(toA.key)).length, 32);
    assert.equal(toA.role, "initiator");
    assert.equal(toB.role, "responder");
    assert.deepEqual(toA.candidates, [
      { ip: "10.0.0.5", port: 5005, kind: "local" },
      // b's session comes from 127.0.0.1, not from this address: checked, never sprayed at.
      { ip: "203.0.113.5", port: 40005, kind: "public", vouched: false },
    ]);
    assert.equal(toA.peer_nat, "endpoint-independent");
    // a is 10 ms away, b 50 ms: both start 25 ms + margin after the send.
    assert.equal(toB.delay_ms, 20);
    assert.equal(toA.delay_ms, 40);
    // Nothing else arrives: the second connect did not make a second session.
    a.send({ type: "echo_request", payload: "sync" });
    assert.equal((await a.next()).type, "echo_response");
    b.send({ type: "echo_request", payload: "sync" });
    assert.equal((await b.next()).type, "echo_response");
    await a.close();
    await b.close();
  } finally {
    await rv.close();
  }
});

Deno.test("connect and relay to an unknown peer, another group or oneself answer unknown_peer", async () => {
  const rv = await startRendezvous();
  try {
    const a = await TestClient.connect(`${rv.ws}/ws/register/a?group=g1`);
    const x = await TestClient.connect(`${rv.ws}/ws/register/x?group=g2`);
    for (
      const message of [
        { type: "connect", peer_id: "nobody" },
        { type: "connect", peer_id: "x" },
        { type: "connect", peer_id: "a" },
        { type: "relay", to: "x", data: "aGk=" },
      ]
    ) {
      a.send(message);
      const reply = await a.next();
      assert.equal(reply.code, "unknown_peer", JSON.stringify(message));
    }
    a.send({ type: "relay", to: "x", data: "not base64!" });
    assert.equal((await a.next()).code, "invalid_message");
    await a.close();
    await x.close();
  } finally {
    await rv.close();
  }
});

Deno.test("relay carries data between peers in order, within its own rate limit", async () => {
  const rv = await startRendezvous({ relayRatePerSec: 1, relayBurst: 50, messageBurst: 5 });
  try {
    const a = await TestClient.connect(`${rv.ws}/ws/register/a`);
    const b = await TestClient.connect(`${rv.ws}/ws/register/b`);
    // 50 relayed frames pass although the message budget is 5: separate budgets.
    for (let i = 0; i < 50; i++) a.send({ type: "relay", to: "b", data: btoa(`m${i}`) });
    for (let i = 0; i < 50; i++) {
      assert.deepEqual(await b.next(), { type: "relayed", from: "a", data: btoa(`m${i}`) });
    }
    a.send({ type: "relay", to: "b", data: btoa("over") });
    assert.equal((await a.next()).code, "rate_limited", "the 51st is refused, the session goes on");
    a.send({ type: "echo_request", payload: 1 });
    assert.equal((await a.next()).type, "echo_response");
    await a.close();
    await b.close();
  } finally {
    await rv.close();
  }
});

Deno.test("path_update shows each peer's path in the listing", async () => {
  const rv = await startRendezvous();
  try {
    const a = await TestClient.connect(`${rv.ws}/ws/register/a`);
    const b = await TestClient.connect(`${rv.ws}/ws/register/b`);
    a.send({ type: "path_update", peer_id: "b", path: "relay", rtt_ms: null });
    a.send({ type: "path_update", peer_id: "b", path: "direct", rtt_ms: 1.234 });
    a.send({ type: "path_update", peer_id: "b", path: "sideways", rtt_ms: 1 });
    assert.equal((await a.next()).code, "invalid_message");
    const entry = await waitFor(async () => {
      const e = (await listWorkers(rv.http)).workers.a;
      return e.peer_paths.b?.path === "direct" && e;
    }, "path in listing");
    assert.equal(entry.peer_paths.b.rtt_ms, 1.2);
    await a.close();
    await b.close();
  } finally {
    await rv.close();
  }
});

Deno.test("path reports name only the group's current workers: a peer that leaves is pruned, so departed peers never fill the 256 kept", async () => {
  const rv = await startRendezvous({ messageRatePerSec: 1000, messageBurst: 1000 });
  const clients: TestClient[] = [];
  try {
    const a = await TestClient.connect(`${rv.ws}/ws/register/a?group=g`);
    clients.push(a);
    const pathsOfA = async () => (await listWorkers(rv.http)).workers.a.peer_paths;
    // Reports about a worker never registered, one of another group, or itself are not kept.
    const stranger = await TestClient.connect(`${rv.ws}/ws/register/s?group=other`);
    clients.push(stranger);
    for (const peer of ["nobody", "s", "a"]) {
      a.send({ type: "path_update", peer_id: peer, path: "direct", rtt_ms: 1 });
    }
    // 256 peers come, are reported, and go — more than the listing keeps.
    for (let round = 0; round < 4; round++) {
      const batch = await Promise.all(
        Array.from(
          { length: 64 },
          (_, i) => TestClient.connect(`${rv.ws}/ws/register/p${round}-${i}?group=g`),
        ),
      );
      for (let i = 0; i < batch.length; i++) {
        a.send({ type: "path_update", peer_id: `p${round}-${i}`, path: "relay", rtt_ms: null });
      }
      await waitFor(
        async () => Object.keys(await pathsOfA()).length === 64,
        `round ${round}: 64 paths listed`,
      );
      await Promise.all(batch.map((c) => c.close()));
      await waitFor(
        async () => Object.keys(await pathsOfA()).length === 0,
        `round ${round}: the departed peers pruned`,
      );
    }
    // A newcomer after all of them is still reported.
    const late = await TestClient.connect(`${rv.ws}/ws/register/late?group=g`);
    clients.push(late);
    a.send({ type: "path_update", peer_id: "late", path: "direct", rtt_ms: 2 });
    const paths = await waitFor(async () => {
      const p = await pathsOfA();
      return p.late && p;
    }, "the newcomer's path listed");
    assert.deepEqual(Object.keys(paths), ["late"]);
    // Its leaving prunes it too, and a report that arrives after it left is not kept.
    await late.close();
    a.send({ type: "path_update", peer_id: "late", path: "direct", rtt_ms: 2 });
    a.send({ type: "echo_request", payload: "after" });
    while ((await a.next()).type !== "echo_response");
    assert.deepEqual(await pathsOfA(), {});
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await rv.close();
  }
});

Deno.test("a malformed group is refused before the upgrade", async () => {
  const rv = await startRendezvous();
  try {
    const response = await fetch(`${rv.http}/ws/register/a?group=bad%20group`, {
      headers: { upgrade: "websocket", connection: "Upgrade" },
    });
    await response.body?.cancel();
    assert.equal(response.status, 400);
  } finally {
    await rv.close();
  }
});

Deno.test("binary relay frames reach peers of the same group only, named by their sender", async () => {
  const rv = await startRendezvous();
  try {
    const open = async (id: string, group: string) => {
      const client = await TestClient.connect(`${rv.ws}/ws/register/${id}?group=${group}`);
      client.socket.binaryType = "arraybuffer";
      return client;
    };
    const a = await open("a", "g1");
    const c = await open("c", "g1");
    const other = await open("x", "g2");
    const packet = crypto.getRandomValues(new Uint8Array(1200));
    a.socket.send(encodeRelayFrame("x", packet)); // another group: dropped
    a.socket.send(encodeRelayFrame("c", packet));
    const got = await c.next();
    assert.ok(got instanceof ArrayBuffer);
    const frame = parseRelayFrame(new Uint8Array(got));
    assert.equal(frame.peerId, "a");
    assert.deepEqual(frame.packet, packet);
    // x got nothing: its next message is the answer to its own echo.
    other.send({ type: "echo_request", payload: "only this" });
    assert.equal((await other.next()).type, "echo_response");
    // A binary frame that is not a relay frame closes the sender with 1003.
    a.socket.send(new Uint8Array([7, 7, 7]));
    assert.equal((await within(a.closed, 5000, "close")).code, 1003);
    for (const client of [c, other]) await client.close();
  } finally {
    await rv.close();
  }
});
