import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import { PeerTransport, TransportError } from "../../lib/peer/transport.ts";
import { PeerConnections } from "../../lib/peer/connection.ts";
import { rehearse } from "../../lib/peer/rehearsal.ts";
import { rehearseLinks } from "../../lib/peer/link_rehearsal.ts";
import { STAND_IN_LIMITS, type StandInLimits } from "../../lib/peer/stand_in.ts";
import { waitFor } from "../_helpers.ts";

async function transport(logs: Record<string, unknown>[] = []) {
  const sent: string[] = [];
  const t = await PeerTransport.start({
    workerId: "w1",
    identity: await Identity.generate(),
    logger: new Logger({ sink: (l) => logs.push(JSON.parse(l)), format: "json" }),
    sendPacket: (peerId) => void sent.push(peerId),
    peer: (peerId) => peerId === "known" ? { key: null, transport: null } : undefined,
    onConnection: () => assert.fail("nobody dials"),
  });
  return { t, sent };
}

Deno.test("the warm-up dial goes through loopback only, and counts and sends nothing", async () => {
  const logs: Record<string, unknown>[] = [];
  const { t, sent } = await transport(logs);
  try {
    assert.equal(await t.warmedUp, true);
    assert.deepEqual(t.stats, {
      packetsSent: 0,
      bytesSent: 0,
      packetsReceived: 0,
      bytesReceived: 0,
    });
    assert.deepEqual(sent, [], "no packet left for a peer");
    assert.deepEqual(logs.filter((l) => l.severity !== "INFO" && l.severity !== "DEBUG"), []);
  } finally {
    await t.close();
  }
});

Deno.test("packets from strangers, empty ones and oversized ones never reach QUIC", async () => {
  const { t } = await transport();
  try {
    await t.warmedUp;
    assert.equal(t.receive("stranger", new Uint8Array(100)), undefined);
    assert.equal(t.receive("known", new Uint8Array(0)), undefined);
    assert.equal(t.receive("known", new Uint8Array(4096)), undefined);
    assert.equal(t.stats.packetsReceived, 0);
    // A peer the rendezvous named gets its packets handed on (QUIC drops garbage itself).
    await t.receive("known", new Uint8Array(100));
    assert.equal(t.stats.packetsReceived, 1);
  } finally {
    await t.close();
  }
});

Deno.test("the connections rehearse on the warm-up's loop: a stream and a datagram each way, nothing counted or sent, the loop closed after", async () => {
  const logs: Record<string, unknown>[] = [];
  const { t, sent } = await transport(logs);
  try {
    const logger = new Logger({
      sink: (l) => logs.push(JSON.parse(l)),
      format: "json",
      level: "debug",
    });
    assert.equal(await rehearse(t, logger), true);
    assert.ok(logs.some((l) => l.message === "peer connection rehearsed"), JSON.stringify(logs));
    assert.deepEqual(t.stats, {
      packetsSent: 0,
      bytesSent: 0,
      packetsReceived: 0,
      bytesReceived: 0,
    });
    assert.deepEqual(sent, [], "no packet left for a peer");
    assert.equal(t.standIns, 0, "the loop's stand-in is gone");
    // Once is all: the loop is closed, a second rehearsal has nothing to run on.
    assert.equal(await rehearse(t, logger), false);
  } finally {
    await t.close();
  }
});

Deno.test("a dial waits for the connections' warm-up, within its own timeout", async () => {
  const { t } = await transport();
  const warm = Promise.withResolvers<void>();
  const dialed: string[] = [];
  const stub = Object.create(t) as PeerTransport;
  stub.dial = (peerId: string) => {
    dialed.push(peerId);
    return Promise.reject(new TransportError("refused: test"));
  };
  const connections = new PeerConnections({
    workerId: "w1",
    transport: stub,
    warmUp: () => warm.promise,
    introduce: () => {},
    ready: () => true,
    pathOf: () => ({ path: "relay", rttMs: null }),
    logger: new Logger({ sink: () => {}, format: "json" }),
  });
  try {
    const connecting = connections.connect("w2", { timeoutMs: 5000 });
    connecting.catch(() => {});
    // Nothing dials while the warm-up runs (a turn of the event loop later still).
    await new Promise((r) => setTimeout(r, 0));
    assert.deepEqual(dialed, []);
    warm.resolve();
    await assert.rejects(connecting, /refused: test/);
    assert.deepEqual(dialed, ["w2"]);
    // A warm-up that never ends holds a dial only until the dial's own deadline.
    const stuck = new PeerConnections({
      workerId: "w1",
      transport: stub,
      warmUp: () => new Promise(() => {}),
      introduce: () => {},
      ready: () => true,
      pathOf: () => ({ path: "relay", rttMs: null }),
      logger: new Logger({ sink: () => {}, format: "json" }),
    });
    await assert.rejects(stuck.connect("w3", { timeoutMs: 50 }), /timed out|refused: test/);
  } finally {
    connections.close();
    await t.close();
  }
});

Deno.test("closing during the warm-up is clean", async () => {
  const { t } = await transport();
  await t.close();
  assert.equal(typeof (await t.warmedUp), "boolean");
});

/**
 * Two transports joined by a path the test controls: `deliver(from, packet)`
 * decides what reaches the other side (the packets are copies; the
 * transport reuses its buffers). Each also knows keyless `ghost-*` peers,
 * whose packets the test hands it directly.
 */
async function joined(
  deliver: (from: "a" | "b", packet: Uint8Array) => void,
  standIns?: Partial<StandInLimits>,
) {
  const ids = { a: await Identity.generate(), b: await Identity.generate() };
  const incoming = Promise.withResolvers<Deno.QuicConn>();
  const firstStream = Promise.withResolvers<Deno.QuicBidirectionalStream>();
  const accepted: Deno.QuicConn[] = [];
  const made: Record<string, PeerTransport> = {};
  for (const [me, other] of [["a", "b"], ["b", "a"]] as const) {
    made[me] = await PeerTransport.start({
      workerId: me,
      identity: ids[me],
      logger: new Logger({ sink: () => {} }),
      sendPacket: (_peer, packet) => deliver(me, packet.slice(1)),
      standIns,
      peer: (id) =>
        id === other
          ? { key: ids[other].publicKey, transport: made[other].credentials }
          : id.startsWith("ghost-")
          ? { key: null, transport: null }
          : undefined,
      onConnection: (_peer, auth) => {
        accepted.push(auth.conn);
        incoming.resolve(auth.conn);
        void (async () => {
          for await (const stream of auth.incoming) {
            streams.push(stream);
            firstStream.resolve(stream);
          }
        })();
      },
    });
  }
  const streams: Deno.QuicBidirectionalStream[] = [];
  return {
    a: made.a,
    b: made.b,
    incoming: incoming.promise,
    firstStream: firstStream.promise,
    accepted,
    streams,
  };
}

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
}
const toHex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");

Deno.test("an attacker on the path replays, reorders and forges packets: nothing extra, nothing corrupt is delivered", async () => {
  const recorded: Uint8Array[] = [];
  let attack = true;
  let forged = 0;
  const held = { a: [] as Uint8Array[], b: [] as Uint8Array[] };
  let lab: Awaited<ReturnType<typeof joined>> | undefined = undefined;
  const to = (from: "a" | "b") => from === "a" ? lab!.b : lab!.a;
  lab = await joined((from, packet) => {
    const target = to(from);
    if (from === "a") recorded.push(packet);
    if (!attack) return void target.receive(from, packet);
    // Every packet arrives, but some only after later ones (reordered)…
    held[from].push(packet);
    if (held[from].length >= 4) {
      held[from].sort(() => Math.random() - 0.5);
      for (const p of held[from].splice(0)) void target.receive(from, p);
    }
    // …some twice (replayed)…
    if (Math.random() < 0.2) void target.receive(from, packet);
    // …and forged ones besides: a copy with a byte changed, or noise.
    if (Math.random() < 0.1) {
      const bad = packet.slice();
      bad[Math.floor(Math.random() * bad.length)] ^= 1 + Math.floor(Math.random() * 255);
      void target.receive(from, bad);
      void target.receive(from, crypto.getRandomValues(new Uint8Array(packet.length)));
      forged += 2;
    }
  });
  // Held packets must not wait for company forever: flush them often.
  const flush = setInterval(() => {
    for (const from of ["a", "b"] as const) {
      for (const p of held[from].splice(0)) void to(from).receive(from, p);
    }
  }, 2);
  const { a, b } = lab;
  try {
    const dialed = await a.dial("b");
    const accepted = await lab.incoming;
    // A stream of 1 MiB…
    const payload = new Uint8Array(1 << 20);
    for (let i = 0; i < payload.length; i += 65536) {
      crypto.getRandomValues(payload.subarray(i, i + 65536));
    }
    const stream = await dialed.conn.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const sent = (async () => {
      for (let i = 0; i < payload.length; i += 16384) {
        await writer.write(payload.slice(i, i + 16384));
      }
      await writer.close();
    })();
    // …and 50 numbered datagrams.
    for (let n = 0; n < 50; n++) await dialed.conn.sendDatagram(new Uint8Array([n]));
    const got = new Uint8Array(await new Response((await lab.firstStream).readable).arrayBuffer());
    await sent;
    assert.equal(got.length, payload.length);
    assert.equal(await sha256(got), await sha256(payload), "the stream arrives intact, once");
    // Datagrams may be lost (that is what they are) but never arrive twice.
    attack = false;
    const marker = 200;
    await dialed.conn.sendDatagram(new Uint8Array([marker]));
    const datagrams: number[] = [];
    while (true) {
      const [n] = await accepted.readDatagram();
      if (n === marker) break;
      datagrams.push(n);
    }
    assert.equal(new Set(datagrams).size, datagrams.length, `duplicates in ${datagrams}`);
    // Everything a sent, replayed once more after the fact: nothing new comes out.
    const before = recorded.length;
    for (const p of recorded.slice(0, before)) void b.receive("a", p);
    await dialed.conn.sendDatagram(new Uint8Array([marker + 1]));
    const [next] = await accepted.readDatagram();
    assert.equal(next, marker + 1, "a replayed datagram was delivered again");
    assert.equal(lab.streams.length, 1, "a replayed stream was opened again");
    assert.equal(lab.accepted.length, 1, "a replayed handshake made a connection");
    assert.ok(forged > 0);
    dialed.conn.close();
  } finally {
    clearInterval(flush);
    await a.close();
    await b.close();
  }
});

Deno.test("only introduced peers' packets open a stand-in (others' wait for their introduction, 64 peers at most); at most 32 unproven ones at once, each for 15 s at most", async () => {
  // 500 group members each relay one (Initial-sized) packet; one of them was introduced.
  const members = Array.from({ length: 1100 }, (_, i) => `member-${i}`);
  let admitAll = false;
  const introduced = new Set(["member-7"]);
  const unprovenMs = 400;
  const t = await PeerTransport.start({
    workerId: "w",
    identity: await Identity.generate(),
    logger: new Logger({ sink: () => {} }),
    sendPacket: () => {},
    peer: (id) => id.startsWith("member-") ? { key: "k", transport: null } : undefined,
    admits: (id) => admitAll || introduced.has(id),
    standIns: { unprovenMs },
  });
  try {
    const initial = new Uint8Array(1200).fill(0xc0);
    for (const id of members.slice(0, 500)) await t.receive(id, initial);
    assert.equal(t.standIns, 1, "only the introduced peer");
    await t.receive("stranger", initial);
    assert.equal(t.refusedPackets, 1, "a peer the rendezvous never named: refused");
    // The others' packets wait for an introduction, the newest 64 peers' only.
    introduced.add("member-3");
    t.introduced("member-3");
    assert.equal(t.standIns, 1, "member-3's packet made way for newer ones");
    introduced.add("member-499");
    t.introduced("member-499");
    assert.equal(t.standIns, 2, "member-499's packet went to QUIC once it was introduced");
    t.introduced("member-499");
    assert.equal(t.stats.packetsReceived, 2, "each held packet is delivered once");
    // Were every member introduced, those that never finish a handshake
    // hold at most maxUnproven sockets…
    admitAll = true;
    for (const id of members) await t.receive(id, initial);
    const cap = STAND_IN_LIMITS.maxUnproven;
    assert.equal(t.standIns, cap);
    assert.equal(t.refusedPackets, 1 + members.length - cap);
    // …and only for unprovenMs: then others get theirs.
    await waitFor(() => t.standIns === 0, "the unproven stand-ins to close", unprovenMs + 3000);
    await t.receive("member-1099", initial);
    assert.equal(t.standIns, 1);
  } finally {
    await t.close();
  }
});

Deno.test("stand-ins stay within their total cap, and one that carries a connection outlives the unproven limit", async () => {
  const t = await PeerTransport.start({
    workerId: "w",
    identity: await Identity.generate(),
    logger: new Logger({ sink: () => {} }),
    sendPacket: () => {},
    peer: () => ({ key: "k", transport: null }),
    standIns: { max: 20, maxUnproven: 1000 },
  });
  try {
    for (let i = 0; i < 50; i++) await t.receive(`m${i}`, new Uint8Array(1200).fill(0xc0));
    assert.equal(t.standIns, 20);
    assert.equal(t.refusedPackets, 30);
  } finally {
    await t.close();
  }
  // A real connection (both ways proven) keeps its stand-ins past unprovenMs.
  let lab: Awaited<ReturnType<typeof joined>> | undefined = undefined;
  const to = (from: "a" | "b") => from === "a" ? lab!.b : lab!.a;
  lab = await joined((from, packet) => void to(from).receive(from, packet), { unprovenMs: 300 });
  try {
    const dialed = await lab.a.dial("b", 5000);
    await lab.incoming;
    // A ghost's Initial opens an unproven stand-in on each side, after the
    // connection's: the sweep that closes the ghost's has passed the
    // connection's unproven time too.
    for (const t of [lab.a, lab.b]) await t.receive("ghost-1", new Uint8Array(1200).fill(0xc0));
    assert.deepEqual([lab.a.standIns, lab.b.standIns], [2, 2]);
    await waitFor(
      () => lab!.a.standIns === 1 && lab!.b.standIns === 1,
      "the ghosts' unproven stand-ins to close",
      3000,
    );
    assert.equal(lab.a.standInsUnproven, 0, "the dialer's stand-in stays, proven");
    assert.equal(lab.b.standInsUnproven, 0, "the listener's stand-in stays, proven");
    const stream = await dialed.conn.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    await writer.write(new Uint8Array([1, 2, 3]));
    await writer.close();
    const got = new Uint8Array(await new Response((await lab.firstStream).readable).arrayBuffer());
    assert.deepEqual([...got], [1, 2, 3]);
    dialed.conn.close();
  } finally {
    await lab.a.close();
    await lab.b.close();
  }
});

Deno.test("a stand-in no packet went through for idleMs is closed; the peer's next packet opens one again", async () => {
  const t = await PeerTransport.start({
    workerId: "w",
    identity: await Identity.generate(),
    logger: new Logger({ sink: () => {} }),
    sendPacket: () => {},
    peer: (id) => id === "p" ? { key: "k", transport: null } : undefined,
    standIns: { idleMs: 200 },
  });
  try {
    await t.receive("p", new Uint8Array(1200).fill(0xc0));
    assert.equal(t.standIns, 1);
    await waitFor(() => t.standIns === 0, "the idle stand-in to close", 3000);
    await t.receive("p", new Uint8Array(1200).fill(0xc0));
    assert.equal(t.standIns, 1, "opened again");
  } finally {
    await t.close();
  }
});

// The test's sanitizers fail it if a rehearsal leaves a socket or a timer behind.
Deno.test("the links' rehearsal punches two links in memory through to a direct path, twice over, and leaves nothing running", async () => {
  assert.equal(await rehearseLinks(), true);
  assert.equal(await rehearseLinks(), true, "each rehearsal starts from nothing");
});
