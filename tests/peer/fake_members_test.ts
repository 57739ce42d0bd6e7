/**
 * 500 fake group members against a real worker process behind an
 * endpoint-dependent NAT (as two local STUN servers describe it): each asks
 * for an introduction, so the worker runs a hard-side round toward it, and
 * relays a real QUIC Initial, so the worker would hold a stand-in and a
 * handshake for it. The worker's descriptors and memory stay bounded: the
 * rounds share one pool of extra sockets, and unproven stand-ins are few and
 * short-lived.
 */
import assert from "node:assert/strict";
import { answerStun } from "../../lib/stun/server.ts";
import { encodeRelayFrame } from "../../lib/protocol/relay_frame.ts";
import { rssMb } from "../_abuse.ts";
import { listWorkers, spawnRendezvous, spawnWorker, TestClient, waitFor } from "../_helpers.ts";

const MEMBERS = 500;

/** Two STUN servers that report a different mapped port each: an endpoint-dependent NAT. */
function edmStun(): { servers: string; close: () => Promise<void> } {
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
async function initials(count: number): Promise<Uint8Array[]> {
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

async function fds(pid: number): Promise<number> {
  let n = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) n++;
  return n;
}

Deno.test({
  name:
    "500 fake members asking for introductions and relaying QUIC Initials hold at most 200 of a hard-side worker's descriptors and 100 MB",
  ignore: Deno.build.os !== "linux",
  async fn() {
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
      const packets = await initials(MEMBERS);
      const before = { fds: await fds(pid), rss: await rssMb(pid) };
      const peak = { fds: before.fds, rss: before.rss };
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          peak.fds = Math.max(peak.fds, await fds(pid).catch(() => 0));
          peak.rss = Math.max(peak.rss, await rssMb(pid).catch(() => 0));
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      // Each member: registers a vouched endpoint-independent endpoint, asks
      // for an introduction, and relays one Initial once introduced.
      for (let i = 0; i < MEMBERS; i++) {
        const fake = await TestClient.connect(
          `ws://127.0.0.1:${rv.port}/ws/register/fake-${i}`,
        );
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
      const punched = () =>
        worker.lines.filter((l) => l.message === "peer punch started" && l.strategy === "hard-side")
          .length;
      await waitFor(
        () => punched() >= MEMBERS * 0.9,
        "the introductions to reach the worker",
        60_000,
      );
      // Again, now that every member is introduced: each gets a stand-in, or is refused.
      for (const [i, fake] of fakes.entries()) {
        fake.socket.send(encodeRelayFrame("target", packets[i]));
      }
      // The rounds run their course (15 s at most each) while the pool is shared.
      const started = performance.now();
      await waitFor(() => performance.now() - started > 16_000, "the rounds to run", 20_000, 500);
      sampling = false;
      await sampler;
      const status = await (await fetch(
        `http://127.0.0.1:${(await worker.waitForLog("health server listening")).port}/`,
      )).json();
      console.log(
        `${punched()} hard-side rounds; fds ${before.fds} → peak ${peak.fds}; RSS ${
          before.rss.toFixed(0)
        } → peak ${peak.rss.toFixed(0)} MB; limits ${JSON.stringify(status.limits)}`,
      );
      assert.ok(peak.fds <= 200, `peak ${peak.fds} descriptors`);
      assert.ok(peak.rss - before.rss <= 100, `RSS grew ${(peak.rss - before.rss).toFixed(0)} MB`);
      // The bounds were what held: the members' packets were refused, not ignored by chance.
      assert.ok(status.limits.transport_packets_refused > 0, "no packet was refused");
      assert.ok(status.limits.extra_sockets <= 128);
      assert.ok(status.limits.stand_ins_unproven <= 32);
    } finally {
      await Promise.all(fakes.map((f) => f.close().catch(() => {})));
      await worker.stop();
      await rv.proc.stop();
      await stun.close();
    }
  },
});
