/**
 * Three rendezvous processes over one real redis-server, behind haproxy:
 * the fleet listed on every instance, peer events, introductions and relay
 * (JSON and binary) across instances, group isolation, the same id on two
 * instances, an instance killed with -9, and Redis stopped and restarted
 * empty with nothing lost.
 */

import assert from "node:assert/strict";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import { encodeRelayFrame, parseRelayFrame } from "../../lib/protocol/relay_frame.ts";
import {
  listWorkers,
  requireOrSkip,
  spawnWorker,
  TestClient,
  waitFor,
  within,
} from "../_helpers.ts";
import { fleetUnavailable, keyedAt, type Message, TestFleet, until } from "../_fleet.ts";

const skip = requireOrSkip(await fleetUnavailable(), "fleet tests");

const stats = async (http: string) => await (await fetch(`${http}/debug/stats`)).json();

/** Sessions each instance holds, in order. */
async function sessionsPerInstance(fleet: TestFleet): Promise<number[]> {
  return await Promise.all(fleet.instances.map(async (r) => (await stats(r.http)).sessions));
}

Deno.test({
  name:
    "fleet: every instance lists the whole fleet; peer events, introductions and relay (JSON and binary) cross instances; groups stay apart",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(3);
    const clients: TestClient[] = [];
    try {
      // Through haproxy, round robin: two workers land on each instance.
      for (let i = 0; i < 6; i++) {
        clients.push(await TestClient.connect(`${fleet.front.ws}/ws/register/w${i}`));
      }
      assert.deepEqual(await sessionsPerInstance(fleet), [2, 2, 2]);
      for (const r of fleet.instances) {
        const listing = await waitFor(async () => {
          const l = await listWorkers(r.http);
          return l.connected_workers_count === 6 && l;
        }, `instance ${r.port} to list six`);
        assert.deepEqual(Object.keys(listing.workers).sort(), ["w0", "w1", "w2", "w3", "w4", "w5"]);
        // X-Forwarded-For from haproxy, trusted (TRUST_PROXY): the client's address, no port.
        for (const w of Object.values(listing.workers)) {
          assert.equal(w.websocket_observed_ip, "127.0.0.1");
          assert.equal(w.websocket_observed_port, null);
        }
      }
      const [a, b] = clients; // w0 and w1: different instances
      a.send({ type: "list_peers", watch: true });
      const peers = await until(a, (m) => m.type === "peers", "peers");
      assert.equal((peers.peers as unknown[]).length, 5);

      // A worker joining on another instance is announced to a's watch.
      const late = await TestClient.connect(`${fleet.front.ws}/ws/register/late`);
      clients.push(late);
      const joined = await until(a, (m) => m.type === "peer_joined", "peer_joined");
      assert.equal((joined.peer as Message).worker_id, "late");

      // Introduction across instances: both sides get the same session.
      a.send({ type: "connect", peer_id: "w1" });
      const punchA = await until(a, (m) => m.type === "punch", "punch at a");
      const punchB = await until(b, (m) => m.type === "punch", "punch at b");
      assert.equal(punchA.session_id, punchB.session_id);
      assert.equal(punchA.peer_id, "w1");
      assert.equal(punchB.peer_id, "w0");
      assert.equal(punchB.role, "responder");

      // Relay across instances, JSON and binary (transport packets).
      a.send({ type: "relay", to: "w1", data: "aGVsbG8=" });
      const relayed = await until(b, (m) => m.type === "relayed", "relayed");
      assert.deepEqual(relayed, { type: "relayed", from: "w0", data: "aGVsbG8=" });
      b.socket.binaryType = "arraybuffer";
      const packet = Uint8Array.from({ length: 1200 }, (_, i) => i & 0xff);
      a.socket.send(encodeRelayFrame("w1", packet));
      const binary = await until(b, (m) => m instanceof ArrayBuffer, "a binary frame") as unknown;
      const frame = parseRelayFrame(new Uint8Array(binary as ArrayBuffer));
      assert.equal(frame.peerId, "w0", "readdressed to its sender");
      assert.deepEqual(frame.packet, packet);

      // Another group is out of reach, wherever it is.
      const other = await TestClient.connect(`${fleet.front.ws}/ws/register/g1?group=other`);
      clients.push(other);
      await waitFor(
        async () => (await listWorkers(fleet.instances[0].http)).connected_workers_count === 8,
        "eight listed",
      );
      a.send({ type: "relay", to: "g1", data: "eA==" });
      const refused = await until(a, (m) => m.type === "error", "an error");
      assert.equal(refused.code, "unknown_peer");
      other.send({ type: "connect", peer_id: "w0" });
      assert.equal(
        (await until(other, (m) => m.type === "error", "an error")).code,
        "unknown_peer",
      );

      // A worker leaving on another instance: peer_left at a.
      await clients[2].close();
      const left = await until(a, (m) => m.type === "peer_left", "peer_left");
      assert.equal(left.peer_id, "w2");
      for (const r of fleet.instances) {
        await waitFor(
          async () => !("w2" in (await listWorkers(r.http)).workers),
          "w2 gone everywhere",
        );
      }
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await fleet.close();
    }
  },
});

Deno.test({
  name: "fleet: two sides asking to connect at once on two instances get one introduction",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    const [one, two] = fleet.instances;
    const a = await TestClient.connect(`ws://127.0.0.1:${one.port}/ws/register/sa`);
    const b = await TestClient.connect(`ws://127.0.0.1:${two.port}/ws/register/sb`);
    try {
      for (const r of [one, two]) {
        await waitFor(
          async () => (await listWorkers(r.http)).connected_workers_count === 2,
          "both",
        );
      }
      a.send({ type: "connect", peer_id: "sb" });
      b.send({ type: "connect", peer_id: "sa" });
      // An echo behind each connect: once answered, that connect was handled.
      a.send({ type: "echo_request", payload: 1 });
      b.send({ type: "echo_request", payload: 2 });
      const pa = await until(a, (m) => m.type === "punch", "punch at a");
      const pb = await until(b, (m) => m.type === "punch", "punch at b");
      assert.equal(pa.session_id, pb.session_id, "one session for both sides");
      await until(a, (m) => m.type === "echo_response", "echo at a");
      await until(b, (m) => m.type === "echo_response", "echo at b");
      const introductions = await Promise.all(
        [one, two].map(async (r) => (await stats(r.http)).peers.introductions as number),
      );
      assert.equal(introductions[0] + introductions[1], 1, `introductions: ${introductions}`);
    } finally {
      await a.close();
      await b.close();
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet: the same id on two instances — the newer session wins, the older is closed with 4000",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    try {
      const [one, two] = fleet.instances;
      const first = await TestClient.connect(`ws://127.0.0.1:${one.port}/ws/register/dup`);
      await waitFor(async () => "dup" in (await listWorkers(two.http)).workers, "dup seen by two");
      const second = await TestClient.connect(`ws://127.0.0.1:${two.port}/ws/register/dup`);
      const closed = await within(first.closed, 5000, "the older session closed");
      assert.equal(closed.code, 4000);
      for (const r of [one, two]) {
        await waitFor(async () => {
          const l = await listWorkers(r.http);
          return l.connected_workers_count === 1 && "dup" in l.workers;
        }, "one dup listed");
      }
      assert.equal((await stats(two.http)).sessions, 1);
      assert.equal((await stats(one.http)).registered, 1, "no peer_left: it moved");
      await second.close();
      for (const r of [one, two]) {
        await waitFor(
          async () => (await listWorkers(r.http)).connected_workers_count === 0,
          "gone",
        );
      }
    } finally {
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet: kill -9 of an instance — its workers leave the fleet within the TTL (peer_left), reconnect through haproxy, and the fleet is whole again",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(3);
    // Real workers through haproxy (they reconnect by themselves)...
    const workers = Array.from({ length: 6 }, (_, i) =>
      spawnWorker(fleet.front.ws, {
        WORKER_ID: `k${i}`,
        STUN_SERVERS: "off",
        HEALTH_PORT: "0",
        PEER_HELLO_SEC: "0",
      }));
    const [survivor, , victim] = fleet.instances;
    const direct = (r: { port: number }, id: string) =>
      TestClient.connect(`ws://127.0.0.1:${r.port}/ws/register/${id}`);
    // ...a watcher on a survivor, and two sessions on the victim that never come back.
    const watcher = await direct(survivor, "watcher");
    const gone = [await direct(victim, "gone1"), await direct(victim, "gone2")];
    try {
      const ids = (extra: string[]) =>
        [...workers.map((_, i) => `k${i}`), "watcher", ...extra].sort();
      const listed = async (http: string, want: string[]) =>
        JSON.stringify(Object.keys((await listWorkers(http)).workers).sort()) ===
          JSON.stringify(want);
      for (const r of fleet.instances) {
        await waitFor(() => listed(r.http, ids(["gone1", "gone2"])), "fleet whole", 20_000);
      }
      watcher.send({ type: "list_peers", watch: true });
      await until(watcher, (m) => m.type === "peers", "peers");
      const held = (await stats(victim.http)).sessions as number;
      assert.ok(held > 2, "round robin gave the victim workers too");
      const killedAt = Date.now();
      await victim.proc.stop("SIGKILL");
      // The sessions that do not come back leave the fleet, within the TTL
      // (2 s here) and a heartbeat: peer_left reaches the watcher elsewhere.
      const lefts = new Set<string>();
      while (!lefts.has("gone1") || !lefts.has("gone2")) {
        const m = await until(watcher, (m) => m.type === "peer_left", "peer_left", 10_000);
        lefts.add(m.peer_id as string);
      }
      const leftAfter = Date.now() - killedAt;
      // The workers reconnect through haproxy, to the instances left.
      const survivors = fleet.instances.slice(0, 2);
      for (const r of survivors) {
        await waitFor(() => listed(r.http, ids([])), "fleet whole again", 40_000, 100);
      }
      const wholeAfter = Date.now() - killedAt;
      console.log(
        `kill -9 of an instance with ${
          held - 2
        } workers and 2 sessions that never return: those left the fleet after ${leftAfter} ms (FLEET_TTL_SEC=2), the fleet was whole again after ${wholeAfter} ms`,
      );
      assert.ok(leftAfter < 2000 + 3000, `left within the TTL and a heartbeat (${leftAfter} ms)`);
      const sessions = await Promise.all(
        survivors.map(async (r) => (await stats(r.http)).sessions),
      );
      assert.equal(sessions[0] + sessions[1], 7);
    } finally {
      await Promise.all([watcher, ...gone].map((c) => c.close().catch(() => {})));
      await Promise.all(workers.map((w) => w.stop("SIGTERM")));
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet: Redis stopped — instances keep serving what they hold and say so on /ready; restarted empty — nothing lost",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    const clients: TestClient[] = [];
    try {
      const [one, two] = fleet.instances;
      const ws = (r: { port: number }, id: string) => `ws://127.0.0.1:${r.port}/ws/register/${id}`;
      clients.push(
        await TestClient.connect(ws(one, "a1")),
        await TestClient.connect(ws(one, "a2")),
      );
      clients.push(await TestClient.connect(ws(two, "b1")));
      await waitFor(
        async () => (await listWorkers(two.http)).connected_workers_count === 3,
        "three",
      );
      assert.equal((await (await fetch(`${one.http}/ready`)).json()).redis, "up");

      await fleet.redis.stop();
      await waitFor(
        async () => (await (await fetch(`${one.http}/ready`)).json()).status === "degraded",
        "/ready to say degraded",
      );
      const ready = await fetch(`${one.http}/ready`);
      assert.equal(ready.status, 200, "still in rotation: it serves what it holds");
      assert.deepEqual(await ready.json(), {
        status: "degraded",
        redis: "unavailable",
        instance: (await stats(one.http)).fleet.instance,
      });
      // Local services go on: echo, introductions and relay between a1 and a2.
      const [a1, a2] = clients;
      a1.send({ type: "echo_request", payload: "still here" });
      const echo = await until(a1, (m) => m.type === "echo_response", "echo");
      assert.equal(echo.original_payload, "still here");
      a1.send({ type: "connect", peer_id: "a2" });
      await until(a2, (m) => m.type === "punch", "punch");
      a1.send({ type: "relay", to: "a2", data: "b2s=" });
      assert.equal((await until(a2, (m) => m.type === "relayed", "relayed")).data, "b2s=");
      // A worker registers during the outage, another leaves.
      clients.push(await TestClient.connect(ws(two, "b2")));
      await clients[2].close(); // b1

      await fleet.redis.restart(); // empty
      for (const r of [one, two]) {
        await waitFor(
          async () => (await (await fetch(`${r.http}/ready`)).json()).status === "ready",
          "ready again",
          15_000,
        );
        let ids: string[] = [];
        await waitFor(
          async () => {
            ids = Object.keys((await listWorkers(r.http)).workers).sort();
            return JSON.stringify(ids) === JSON.stringify(["a1", "a2", "b2"]);
          },
          "a1, a2 and b2 listed everywhere, b1 not",
          10_000,
        ).catch((error) => {
          throw new Error(`${r.port} lists ${ids}:\n${r.proc.dump()}`, { cause: error });
        });
      }
      // And the fleet works across instances again.
      a1.send({ type: "relay", to: "b2", data: "YmFjaw==" });
      assert.equal(
        (await until(clients[3], (m) => m.type === "relayed", "relayed")).data,
        "YmFjaw==",
      );
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet: a key binds its id fleet-wide — another key is refused (4003) on another instance, and the owner keeps its session",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    const [one, two] = fleet.instances;
    const rightful = await Identity.generate();
    const attacker = await Identity.generate();
    const owner = await keyedAt(one.port, "bound", rightful);
    try {
      assert.equal((await owner.next()).type, "registered");
      const thief = await keyedAt(two.port, "bound", attacker);
      const closed = await within(thief.closed, 5000, "refusal");
      assert.equal(closed.code, CloseCode.KEY_REFUSED);
      const keyless = new TestClient(`ws://127.0.0.1:${two.port}/ws/register/bound`);
      assert.equal((await within(keyless.closed, 5000, "refusal")).code, CloseCode.KEY_REFUSED);
      owner.send({ type: "echo_request", payload: "mine" });
      assert.equal(
        (await until(owner, (m) => m.type === "echo_response", "echo")).original_payload,
        "mine",
      );
      for (const r of [one, two]) {
        assert.equal((await listWorkers(r.http)).workers.bound?.key, rightful.publicKey);
      }
      // The same key moves freely between instances (a worker reconnecting elsewhere).
      const moved = await keyedAt(two.port, "bound", rightful);
      assert.equal(
        (await until(moved, (m) => m.type === "registered", "registered")).type,
        "registered",
      );
      assert.equal((await within(owner.closed, 5000, "replaced")).code, CloseCode.SESSION_REPLACED);
      await moved.close();
    } finally {
      await owner.close().catch(() => {});
      await fleet.close();
    }
  },
});

Deno.test({
  name: "fleet: an instance that drains (SIGTERM) removes its workers from the fleet at once",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    const [one, two] = fleet.instances;
    const watcher = await TestClient.connect(`ws://127.0.0.1:${one.port}/ws/register/watcher`);
    const leaving = await TestClient.connect(`ws://127.0.0.1:${two.port}/ws/register/leaving`);
    try {
      await waitFor(
        async () => "leaving" in (await listWorkers(one.http)).workers,
        "leaving listed",
      );
      watcher.send({ type: "list_peers", watch: true });
      await until(watcher, (m) => m.type === "peers", "peers");
      const started = Date.now();
      await two.proc.stop("SIGTERM");
      const left = await until(watcher, (m) => m.type === "peer_left", "peer_left", 5000);
      assert.equal(left.peer_id, "leaving");
      const after = Date.now() - started;
      console.log(`drained instance's worker left the fleet ${after} ms after SIGTERM`);
      assert.ok(after < 2000, "before the TTL (2 s) could have reaped it");
      assert.deepEqual(Object.keys((await listWorkers(one.http)).workers), ["watcher"]);
    } finally {
      await watcher.close().catch(() => {});
      await leaving.close().catch(() => {});
      await fleet.close();
    }
  },
});
