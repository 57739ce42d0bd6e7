/**
 * What the abuse tests and `deno task bench:abuse` measure of a rendezvous or
 * a worker under attack (resident memory, descriptors, a healthy worker's
 * echo round trips), and the attackers' tools (local STUN servers that
 * describe an endpoint-dependent NAT, real QUIC Initials).
 */
import { listWorkers, spawnRendezvous, spawnWorker, TestClient, waitFor } from "./_helpers.ts";
import { encodeRelayFrame } from "../lib/protocol/relay_frame.ts";
import { SEND_BUDGET } from "../lib/peer/send_budget.ts";
import { answerStun } from "../lib/stun/server.ts";

/** The process's resident memory in MB (Linux). */
export async function rssMb(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

/** Samples the process's RSS every 100 ms until stopped; `stop` resolves with the peak (MB). */
export function peakRss(pid: number): { stop: () => Promise<number> } {
  let peak = 0;
  let running = true;
  const done = (async () => {
    while (running) {
      peak = Math.max(peak, await rssMb(pid).catch(() => 0));
      await new Promise((r) => setTimeout(r, 100));
    }
    return peak;
  })();
  return {
    stop: () => {
      running = false;
      return done;
    },
  };
}

/** A healthy worker's echoes: each answer's round trip (ms), those not answered within 5 s, and anything else it was sent. */
export interface Beats {
  rtts: number[];
  lost: number;
  others: number;
}

/** An echo from `client` every `everyMs` until stopped (the pace of a heartbeat, not a wait). */
export function heartbeat(client: TestClient, everyMs: number): { stop: () => Promise<Beats> } {
  const beats: Beats = { rtts: [], lost: 0, others: 0 };
  let running = true;
  const done = (async () => {
    for (let n = 0; running; n++) {
      const sent = performance.now();
      client.send({ type: "echo_request", payload: `beat ${n}` });
      try {
        let answer = await client.next(5000);
        while (answer.type !== "echo_response") {
          beats.others++;
          answer = await client.next(5000);
        }
        beats.rtts.push(performance.now() - sent);
      } catch {
        beats.lost++;
      }
      await new Promise((r) => setTimeout(r, everyMs));
    }
    return beats;
  })();
  return {
    stop: () => {
      running = false;
      return done;
    },
  };
}

/** Two STUN servers that report a different mapped port each: an endpoint-dependent NAT. */
export function edmStun(): { servers: string; close: () => Promise<void> } {
  const sockets = [1, 2].map(() =>
    Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 })
  );
  const loops = sockets.map(async (socket, i) => {
    try {
      for await (const [bytes, from] of socket) {
        const { hostname, port } = from as Deno.NetAddr;
        const mapped = { family: 4 as const, ip: hostname, port: 20000 + (port + i * 7) % 40000 };
        const answer = answerStun(bytes, mapped);
        if (answer.action === "reply") await socket.send(answer.bytes, from);
      }
    } catch {
      // closed
    }
  });
  return {
    servers: sockets.map((s) => `127.0.0.1:${(s.addr as Deno.NetAddr).port}`).join(","),
    close: async () => {
      for (const s of sockets) s.close();
      await Promise.all(loops);
    },
  };
}

/**
 * `count` distinct real QUIC Initials (each the first datagram of a dial no
 * one answers), 50 dials at a time (a socket's receive buffer holds that many).
 */
export async function initials(count: number): Promise<Uint8Array[]> {
  const seen = new Map<string, Uint8Array>();
  while (seen.size < count) {
    const batch = Math.min(50, count - seen.size);
    const sink = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const endpoint = new Deno.QuicEndpoint({ hostname: "127.0.0.1", port: 0 });
    const dials = Array.from({ length: batch }, () =>
      (Deno.connectQuic({
        endpoint,
        hostname: "127.0.0.1",
        port: (sink.addr as Deno.NetAddr).port,
        alpnProtocols: ["holepunch/1"],
        serverCertificateHashes: [{ algorithm: "sha-256", value: new Uint8Array(32) }],
      } as Deno.ConnectQuicOptions<false>) as Promise<Deno.QuicConn>).catch(() => {}));
    const target = seen.size + batch;
    for await (const [bytes] of sink) {
      // Long header: byte 5 is the destination connection id's length, then the id.
      const dcid = [...bytes.subarray(6, 6 + bytes[5])].join(",");
      if (!seen.has(dcid)) seen.set(dcid, bytes.slice());
      if (seen.size >= target) break;
    }
    endpoint.close();
    sink.close();
    await Promise.allSettled(dials);
  }
  return [...seen.values()];
}

/** The process's open descriptors (Linux). */
export async function fds(pid: number): Promise<number> {
  let n = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) n++;
  return n;
}

/** What {@linkcode fakeMembersAttack} measured of the worker. */
export interface FakeMembersResult {
  /** Hard-side rounds the worker started, and rounds that ran their course without a path. */
  rounds: number;
  failed: number;
  before: { fds: number; rss: number };
  peak: { fds: number; rss: number };
  /** The worker's `GET /` `limits` at the end of the attack. */
  limits: Record<string, number>;
  /** Once the members left: ms until its extra sockets and stand-ins were all given back. */
  givenBackMs: number;
  /** With `timeHealth`: the worker's health endpoint during the attack, its round trips (ms). */
  healthMs: number[];
}

/**
 * `members` fake group members against a real worker process behind an
 * endpoint-dependent NAT (as two local STUN servers describe it): each
 * registers a vouched endpoint-independent endpoint and asks for an
 * introduction (so the worker runs a hard-side round toward it), and relays
 * a real QUIC Initial before and after it is introduced (so the worker would
 * hold a stand-in and a handshake for it). Measured until every round ran
 * its course once; then the members leave.
 */
export async function fakeMembersAttack(
  members: number,
  options: { timeHealth?: boolean } = {},
): Promise<FakeMembersResult> {
  const rv = await spawnRendezvous();
  const stun = edmStun();
  const worker = spawnWorker(rv.http, {
    WORKER_ID: "target",
    STUN_SERVERS: stun.servers,
    PEER_HELLO_MS: "0",
  });
  const pid = worker.child.pid;
  const fakes: TestClient[] = [];
  try {
    await waitFor(
      async () =>
        (await listWorkers(rv.http)).workers.target?.udp_endpoint?.nat_mapping ===
          "endpoint-dependent",
      "the target to report an endpoint-dependent NAT",
      15_000,
    );
    const health = `http://127.0.0.1:${(await worker.waitForLog("health server listening")).port}/`;
    const status = async () => (await (await fetch(health)).json()) as Record<string, unknown>;
    const packets = await initials(members);
    const before = { fds: await fds(pid), rss: await rssMb(pid) };
    const peak = { ...before };
    const healthMs: number[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak.fds = Math.max(peak.fds, await fds(pid).catch(() => 0));
        peak.rss = Math.max(peak.rss, await rssMb(pid).catch(() => 0));
        if (options.timeHealth) {
          const asked = performance.now();
          await fetch(health).then((r) => r.body?.cancel(), () => {});
          healthMs.push(performance.now() - asked);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    for (let i = 0; i < members; i++) {
      const fake = await TestClient.connect(`ws://127.0.0.1:${rv.port}/ws/register/fake-${i}`);
      fake.send({
        type: "register_udp_endpoint",
        public: { ip: "127.0.0.1", port: 30000 + i },
        local: [],
        nat: { mapping: "endpoint-independent" },
      });
      fake.send({ type: "connect", peer_id: "target" });
      fake.socket.send(encodeRelayFrame("target", packets[i]));
      fakes.push(fake);
    }
    const count = (message: string, strategy?: string) =>
      worker.lines.filter((l) =>
        l.message === message && (strategy === undefined || l.strategy === strategy)
      ).length;
    const rounds = () => count("peer punch started", "hard-side");
    await waitFor(() => rounds() >= members * 0.9, "the introductions to reach the worker", 60_000);
    // Again, now that every member is introduced: each gets a stand-in, or is refused.
    for (const [i, fake] of fakes.entries()) {
      fake.socket.send(encodeRelayFrame("target", packets[i]));
    }
    // The rounds run their course while they share the pool.
    await waitFor(
      () => count("peer punch failed") >= members * 0.9,
      "the rounds to run their course",
      60_000,
    );
    sampling = false;
    await sampler;
    const limits = (await status()).limits as Record<string, number>;
    // The members leave: what they held is given back.
    const left = performance.now();
    await Promise.all(fakes.splice(0).map((f) => f.close().catch(() => {})));
    await waitFor(
      async () => {
        const now = (await status()).limits as Record<string, number>;
        return now.extra_sockets === 0 && now.stand_ins === 0;
      },
      "the worker to give back its sockets",
      30_000,
    );
    return {
      rounds: rounds(),
      failed: count("peer punch failed"),
      before,
      peak,
      limits,
      givenBackMs: performance.now() - left,
      healthMs,
    };
  } finally {
    await Promise.all(fakes.map((f) => f.close().catch(() => {})));
    await worker.stop();
    await rv.proc.stop();
    await stun.close();
  }
}

/** What {@linkcode victimAttack} measured. */
export interface VictimResult {
  /** Packets that reached the victim's host, and the budget's bound for the run. */
  received: number;
  allowed: number;
  /** The strategies of the punch rounds the worker started toward the registrants. */
  strategies: string[];
  seconds: number;
}

/**
 * Five registrants name ports of one victim host (127.0.0.2) as their UDP
 * endpoint, claim an endpoint-dependent NAT and ask a real worker to be
 * introduced twice a second for `seconds`: what reached the victim.
 */
export async function victimAttack(seconds: number): Promise<VictimResult> {
  const rv = await spawnRendezvous({ STUN_PORT: "0" });
  const stunPort = (await rv.proc.waitForLog("stun server listening")).port as number;
  const victim = Deno.listenDatagram({ hostname: "127.0.0.2", port: 0, transport: "udp" });
  const victimPort = (victim.addr as Deno.NetAddr).port;
  // The registrants name ports next to the victim's: the victim host counts them all.
  const others = Array.from(
    { length: 4 },
    (_, i) =>
      Deno.listenDatagram({ hostname: "127.0.0.2", port: victimPort + i + 1, transport: "udp" }),
  );
  let received = 0;
  const counting = Promise.all([victim, ...others].map(async (socket) => {
    try {
      for await (const _ of socket) received++;
    } catch {
      // closed
    }
  }));
  const worker = spawnWorker(rv.http, {
    WORKER_ID: "target",
    STUN_SERVERS: `127.0.0.1:${stunPort}`,
    PEER_HELLO_MS: "0",
  });
  const mallories: TestClient[] = [];
  try {
    await waitFor(
      async () => (await listWorkers(rv.http)).workers.target?.udp_endpoint,
      "the target's udp report",
    );
    // Five registrants (so five pairs, each with its own introduction backoff) aim at one victim.
    for (let i = 0; i < 5; i++) {
      const mallory = await TestClient.connect(
        `ws://127.0.0.1:${rv.port}/ws/register/mallory-${i}`,
      );
      mallory.send({
        type: "register_udp_endpoint",
        public: { ip: "127.0.0.2", port: victimPort + i },
        local: [],
        nat: { mapping: "endpoint-dependent" },
      });
      mallories.push(mallory);
    }
    const started = performance.now();
    while (performance.now() - started < seconds * 1000) {
      for (const m of mallories) m.send({ type: "connect", peer_id: "target" });
      await new Promise((r) => setTimeout(r, 500));
    }
    const punches = worker.lines.filter((l) => l.message === "peer punch started");
    const allowed = SEND_BUDGET.burst + (SEND_BUDGET.perMinute * seconds) / 60;
    return { received, allowed, strategies: punches.map((p) => String(p.strategy)), seconds };
  } finally {
    for (const m of mallories) await m.close().catch(() => {});
    await worker.stop();
    await rv.proc.stop();
    for (const socket of [victim, ...others]) socket.close();
    await counting;
  }
}
