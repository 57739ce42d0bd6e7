import assert from "node:assert/strict";
import { Logger, silentLogger } from "../../lib/core/log.ts";
import { LINK_TIMING } from "../../lib/peer/link.ts";
import { FakeClock } from "../_fake_clock.ts";
import { toBase64 } from "../../lib/peer/frame.ts";
import { PeerManager } from "../../lib/peer/manager.ts";
import type { ClientMessage, PeerInfo } from "../../lib/protocol/messages.ts";

function setup(autoConnect = true) {
  const sent: ClientMessage[] = [];
  const received: { peer: string; text: string }[] = [];
  const manager = new PeerManager({
    sendToRendezvous: (m) => {
      sent.push(m);
      return true;
    },
    autoConnect,
    logger: silentLogger,
    onMessage: (peer, payload) => received.push({ peer, text: new TextDecoder().decode(payload) }),
  });
  const connects = () =>
    sent.filter((m) => m.type === "connect").map((m) => (m as { peer_id: string }).peer_id);
  return { manager, sent, received, connects };
}

const peer = (id: string, port: number | null): PeerInfo => ({
  worker_id: id,
  public: port === null ? null : { ip: "203.0.113.9", port },
  local: [],
  nat_mapping: port === null ? null : "endpoint-independent",
  key: null,
  transport: null,
});

Deno.test("PeerManager introduces itself only once both endpoints are known", () => {
  const t = setup();
  t.manager.handle({ type: "peers", peers: [peer("a", null)] });
  assert.deepEqual(t.connects(), [], "the peer has not reported its UDP endpoint");
  t.manager.handle({ type: "peer_updated", peer: peer("a", 4000) });
  assert.deepEqual(t.connects(), [], "we have not reported ours");
  t.manager.ownEndpointReported({ ip: "198.51.100.1", port: 5000 });
  assert.deepEqual(t.connects(), ["a"]);
  t.manager.handle({ type: "peer_joined", peer: peer("b", 4001) });
  assert.deepEqual(t.connects(), ["a", "b"]);
});

Deno.test("PeerManager punches again when a peer's or its own endpoint moves", async () => {
  const t = setup();
  t.manager.ownEndpointReported({ ip: "198.51.100.1", port: 5000 });
  t.manager.handle({ type: "peers", peers: [peer("a", 4000)] });
  await t.manager.handle({
    type: "punch",
    peer_id: "a",
    session_id: "00000000000000a1",
    key: toBase64(new Uint8Array(32)),
    candidates: [],
    peer_nat: "endpoint-independent",
    own_nat: "endpoint-independent",
    role: "initiator",
    delay_ms: 0,
  });
  assert.deepEqual(t.connects(), ["a"]);
  t.manager.handle({ type: "peer_updated", peer: peer("a", 4000) });
  assert.deepEqual(t.connects(), ["a"], "same endpoint: nothing to do");
  t.manager.handle({ type: "peer_updated", peer: peer("a", 4444) });
  assert.deepEqual(t.connects(), ["a", "a"], "the peer moved");
  t.manager.ownEndpointReported({ ip: "198.51.100.1", port: 5000 });
  assert.deepEqual(t.connects(), ["a", "a"], "our endpoint unchanged");
  t.manager.ownEndpointReported({ ip: "198.51.100.1", port: 5001 });
  assert.deepEqual(t.connects(), ["a", "a", "a"], "we moved");
  await t.manager.close();
});

Deno.test("PeerManager without autoconnect waits for the application, and relays after the punch", async () => {
  const t = setup(false);
  t.manager.ownEndpointReported(null);
  t.manager.handle({ type: "peers", peers: [peer("a", 4000)] });
  assert.deepEqual(t.connects(), []);
  t.manager.send("a", new TextEncoder().encode("hello"));
  assert.deepEqual(t.connects(), ["a"], "sending asks for an introduction");
  const key = toBase64(crypto.getRandomValues(new Uint8Array(32)));
  t.manager.handle({
    type: "punch",
    peer_id: "a",
    session_id: "00000000000000b2",
    key,
    candidates: [],
    peer_nat: "no-udp",
    own_nat: "no-udp",
    role: "responder",
    delay_ms: 0,
  });
  // The queued message leaves through the relay as soon as the key is imported.
  const relay = await (async () => {
    for (let i = 0; i < 100; i++) {
      const found = t.sent.find((m) => m.type === "relay");
      if (found) return found;
      await new Promise((r) => setTimeout(r, 0));
    }
  })();
  assert.equal(relay?.type, "relay");
  t.manager.handle({ type: "peer_left", peer_id: "a" });
  assert.deepEqual(t.manager.peers, []);
  await t.manager.close();
});

Deno.test("PeerManager: a first round that ran its course makes the other first rounds from the same socket reroll at once", async () => {
  const clock = new FakeClock(0);
  const lines: Record<string, unknown>[] = [];
  const manager = new PeerManager({
    sendToRendezvous: () => true,
    logger: new Logger({ sink: (l) => lines.push(JSON.parse(l)), format: "json" }),
    stunServers: ["127.0.0.1:3478"],
    openingTtl: 0,
    clock,
  });
  const punch = (peerId: string, session: string) =>
    manager.handle({
      type: "punch",
      peer_id: peerId,
      session_id: session,
      key: toBase64(new Uint8Array(32).fill(3)),
      candidates: [{ ip: "203.0.113.9", port: 4000, kind: "public" }],
      peer_nat: "endpoint-independent",
      own_nat: "endpoint-independent",
      role: "initiator",
      delay_ms: 0,
    });
  const failed = () =>
    lines.filter((l) => l.message === "peer punch failed")
      .map((l) => [l.peer_id, l.cause, l.suspect, l.ms_since_punch]);
  try {
    punch("a", "00000000000000a1");
    await clock.tick(1000);
    punch("b", "00000000000000b1");
    await clock.tick(LINK_TIMING.rerollIceMs - 1000 + 10);
    // a's round ran out (nothing answers here); b's, a second younger, goes with it.
    assert.deepEqual(failed(), [
      ["a", "timeout", true, LINK_TIMING.rerollIceMs],
      ["b", "mapping_suspect", false, LINK_TIMING.rerollIceMs - 1000],
    ]);
  } finally {
    await manager.close();
  }
});

Deno.test("PeerManager: a first round that failed toward a peer behind our own public address (our NAT, our carrier's) makes no other round suspect", async () => {
  const clock = new FakeClock(0);
  const lines: Record<string, unknown>[] = [];
  const manager = new PeerManager({
    sendToRendezvous: () => true,
    logger: new Logger({ sink: (l) => lines.push(JSON.parse(l)), format: "json" }),
    stunServers: ["127.0.0.1:3478"],
    openingTtl: 0,
    clock,
  });
  manager.ownEndpointReported({ ip: "203.0.113.9", port: 5000 });
  // The rendezvous's listing: the sibling is seen at our own address.
  manager.handle({
    type: "peers",
    peers: [
      peer("sibling", 4000),
      { ...peer("far", 4000), public: { ip: "198.51.100.7", port: 4000 } },
    ],
  });
  const punch = (peerId: string, session: string, ip: string) =>
    manager.handle({
      type: "punch",
      peer_id: peerId,
      session_id: session,
      key: toBase64(new Uint8Array(32).fill(3)),
      candidates: [{ ip, port: 4000, kind: "public" }],
      peer_nat: "endpoint-independent",
      own_nat: "endpoint-independent",
      role: "initiator",
      delay_ms: 0,
    });
  const failed = () =>
    lines.filter((l) => l.message === "peer punch failed").map((l) => [l.peer_id, l.cause]);
  try {
    punch("sibling", "00000000000000a1", "203.0.113.9"); // behind the same NAT, no hairpinning
    await clock.tick(1000);
    punch("far", "00000000000000b1", "198.51.100.7");
    await clock.tick(LINK_TIMING.rerollIceMs - 1000 + 10);
    // The sibling's round ran out; far's goes on to its own end.
    assert.deepEqual(failed(), [["sibling", "timeout"]]);
    await clock.tick(1000);
    assert.deepEqual(failed(), [["sibling", "timeout"], ["far", "timeout"]]);
  } finally {
    await manager.close();
  }
});
