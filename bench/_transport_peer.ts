/**
 * One side of the transport benchmark, as its own process: a whole worker
 * (startWorker) that either receives streams and acknowledges each one, or
 * connects to its peer and sends. Prints one JSON line with its figures.
 *
 * The receiver also echoes datagrams: the sender pings with them right after
 * its first byte, while the path is still the relay (the round trip the
 * first-byte target is measured against).
 *
 * Args (JSON): { role: "send" | "recv", rendezvous, id, peer, bytes, streams,
 * stun: "host:port,host:port" | "off", direct: boolean, cc?: congestion control,
 * io?: PEER_UDP_IO }
 */
import process from "node:process";
import { loadWorkerConfig } from "../lib/worker/config.ts";
import { startWorker } from "../lib/worker/worker.ts";
import type { PeerConnection, PeerStream } from "../lib/peer/connection.ts";

const o = JSON.parse(Deno.args[0]);
const cpu0 = process.cpuUsage();
const accepted = Promise.withResolvers<PeerConnection>();
const worker = await startWorker(
  loadWorkerConfig({
    RENDEZVOUS_SERVICE_URL: o.rendezvous,
    WORKER_ID: o.id,
    IP_ECHO_URL: "off",
    STUN_SERVERS: o.stun,
    UDP_HOST: "127.0.0.1",
    PEER_CONGESTION_CONTROL: o.cc ?? "default",
    PEER_UDP_IO: o.io ?? "auto",
  }),
  { health: false, onConnection: (c) => accepted.resolve(c) },
);
const cpu = () => {
  const u = process.cpuUsage(cpu0);
  return (u.user + u.system) / 1e6;
};

async function drain(stream: PeerStream): Promise<number> {
  let n = 0;
  for await (const chunk of stream.readable) n += chunk.length;
  const w = stream.writable.getWriter();
  await w.write(new Uint8Array([1]));
  await w.close();
  return n;
}

if (o.role === "recv") {
  const conn = await accepted.promise;
  console.log(JSON.stringify({ ready: true }));
  void (async () => {
    while (true) {
      const ping = await conn.readDatagram().catch(() => null);
      if (ping === null) return;
      await conn.sendDatagram(ping).catch(() => {});
    }
  })();
  let total = 0;
  const reading: Promise<number>[] = [];
  for await (const stream of conn.incomingStreams) {
    reading.push(drain(stream));
    if (reading.length === o.streams + 1) break; // +1: the first-byte probe
  }
  total = (await Promise.all(reading)).reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ received: total, cpu_s: cpu(), stray: worker.peers.strayPackets }));
  // Closing now could drop the acknowledgements still in flight: the sender closes.
  await conn.closed;
} else {
  // First byte counts from connect() with the peer already known, as for a
  // worker that has been up a while: registered (startWorker returns before
  // it registers) and its warm-up done (the peer publishes its certificate
  // only once its own is). Both processes are fresh: a few hundred ms old.
  await worker.connections.warmedUp;
  while (!worker.peers.peer(o.peer)?.transport) await new Promise((r) => setTimeout(r, 5));
  const t0 = performance.now();
  const conn = await worker.connect(o.peer, { timeoutMs: 30_000 });
  // Time to first byte: connect, open a stream, one byte there and back.
  const probe = await conn.openStream();
  const pw = probe.writable.getWriter();
  await pw.write(new Uint8Array([7]));
  await pw.close();
  for await (const _ of probe.readable) break;
  const firstByteMs = performance.now() - t0;
  // Round trips on the path of the moment (the relay, unless the punch was quicker):
  // 8-byte datagrams echoed by the peer, each given up after 500 ms.
  const pingPath = conn.path;
  const pings: number[] = [];
  const pongs = new Map<number, (at: number) => void>();
  void (async () => {
    while (true) {
      const pong = await conn.readDatagram().catch(() => null);
      if (pong === null || pong.length !== 8) return;
      pongs.get(new DataView(pong.buffer, pong.byteOffset).getUint32(0))?.(performance.now());
    }
  })();
  for (let seq = 0; seq < 20; seq++) {
    const ping = new Uint8Array(8);
    new DataView(ping.buffer).setUint32(0, seq);
    const pong = Promise.withResolvers<number>();
    pongs.set(seq, pong.resolve);
    const t = performance.now();
    await conn.sendDatagram(ping);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const at = await Promise.race([
      pong.promise,
      new Promise<null>((r) => timer = setTimeout(() => r(null), 500)),
    ]);
    clearTimeout(timer);
    pongs.delete(seq);
    if (at !== null) pings.push(at - t);
  }
  pings.sort((a, b) => a - b);
  if (o.direct && conn.path !== "direct") {
    const ready = Promise.withResolvers<void>();
    conn.addEventListener("path", (e) => {
      if ((e as CustomEvent).detail.path === "direct") ready.resolve();
    });
    if ((conn.path as string) !== "direct") await ready.promise;
  }
  const chunk = crypto.getRandomValues(new Uint8Array(64 * 1024));
  const per = Math.floor(o.bytes / o.streams);
  const cpuStart = cpu();
  const wireStart = worker.transportStats.bytesSent;
  const t1 = performance.now();
  await Promise.all(Array.from({ length: o.streams }, async () => {
    const s = await conn.openStream();
    const w = s.writable.getWriter();
    for (let sent = 0; sent < per; sent += chunk.length) {
      await w.write(chunk.subarray(0, Math.min(chunk.length, per - sent)));
    }
    await w.close();
    for await (const _ of s.readable) break; // the receiver's acknowledgement
  }));
  const secs = (performance.now() - t1) / 1000;
  console.log(JSON.stringify({
    path: conn.path,
    bytes: per * o.streams,
    secs,
    mb_per_s: per * o.streams / secs / 1e6,
    first_byte_ms: firstByteMs,
    ping_path: pingPath,
    ping_ms: pings.length ? pings[Math.floor(pings.length / 2)] : null,
    cpu_s: cpu() - cpuStart,
    wire_bytes: worker.transportStats.bytesSent - wireStart,
  }));
}
await worker.close();
Deno.exit(0);
