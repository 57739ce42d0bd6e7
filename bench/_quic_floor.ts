/**
 * The floors of the transport benchmark, as their own processes: Deno's bare
 * QUIC (one stream, loopback, the same certificate pinning) and raw UDP
 * (datagrams received per second, no acknowledgements).
 *
 * Args: `quic-server PORTFILE`, `quic-client PORTFILE BYTES`, `udp-recv PORTFILE SECONDS`,
 * `udp-send PORTFILE SECONDS`.
 */
import process from "node:process";
import { createPeerCertificate } from "../lib/peer/cert.ts";
import { fromBase64Url, toBase64Url } from "../lib/protocol/identity.ts";

const [mode, file, arg] = Deno.args;
if (mode === "quic-server") {
  const c = await createPeerCertificate();
  const ep = new Deno.QuicEndpoint({ hostname: "127.0.0.1", port: 0 });
  const listener = ep.listen({ cert: c.cert, key: c.key, alpnProtocols: ["floor"] });
  await Deno.writeTextFile(file, JSON.stringify({ port: ep.addr.port, hash: toBase64Url(c.hash) }));
  const conn = await listener.accept();
  for await (const s of conn.incomingBidirectionalStreams) {
    const cpu0 = process.cpuUsage();
    for await (const _ of s.readable) { /* count nothing: the client times */ }
    const cpu = process.cpuUsage(cpu0);
    console.log(JSON.stringify({ cpu_s: (cpu.user + cpu.system) / 1e6 }));
    const w = s.writable.getWriter();
    await w.write(new Uint8Array([1]));
    await w.close();
    break;
  }
  await new Promise((r) => setTimeout(r, 100));
  Deno.exit(0);
} else if (mode === "quic-client") {
  const { port, hash } = JSON.parse(await Deno.readTextFile(file));
  const conn = await Deno.connectQuic({
    hostname: "127.0.0.1",
    port,
    alpnProtocols: ["floor"],
    serverCertificateHashes: [{ algorithm: "sha-256", value: fromBase64Url(hash) }],
  } as Deno.ConnectQuicOptions<false>);
  const bytes = Number(arg);
  const chunk = crypto.getRandomValues(new Uint8Array(64 * 1024));
  const t = performance.now();
  const cpu0 = process.cpuUsage();
  const s = await conn.createBidirectionalStream();
  const w = s.writable.getWriter();
  for (let sent = 0; sent < bytes; sent += chunk.length) await w.write(chunk);
  await w.close();
  for await (const _ of s.readable) break;
  const secs = (performance.now() - t) / 1000;
  const cpu = process.cpuUsage(cpu0);
  console.log(
    JSON.stringify({
      bytes,
      secs,
      mb_per_s: bytes / secs / 1e6,
      cpu_s: (cpu.user + cpu.system) / 1e6,
    }),
  );
  Deno.exit(0);
} else if (mode === "udp-recv") {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  await Deno.writeTextFile(file, String((sock.addr as Deno.NetAddr).port));
  let n = 0;
  let first = 0;
  let last = 0;
  const buf = new Uint8Array(2048);
  const until = Date.now() + Number(arg) * 1000 + 3000;
  const timer = setTimeout(() => sock.close(), until - Date.now());
  try {
    while (true) {
      const [d] = await sock.receive(buf);
      if (d.length === 1) break; // the sender's end marker
      if (n === 0) first = performance.now();
      last = performance.now();
      n++;
    }
  } catch { /* closed by the timer */ }
  clearTimeout(timer);
  const secs = Math.max(0.001, (last - first) / 1000);
  console.log(JSON.stringify({ datagrams: n, mb_per_s: n * 1200 / secs / 1e6 }));
  Deno.exit(0);
} else if (mode === "udp-send") {
  const port = Number(await Deno.readTextFile(file));
  const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const to = { transport: "udp" as const, hostname: "127.0.0.1", port };
  const payload = new Uint8Array(1200);
  const end = Date.now() + Number(arg) * 1000;
  const inflight: Promise<number>[] = [];
  while (Date.now() < end) {
    inflight.push(sock.send(payload, to));
    if (inflight.length >= 32) await inflight.shift();
  }
  await Promise.all(inflight);
  for (let i = 0; i < 5; i++) await sock.send(new Uint8Array(1), to);
  Deno.exit(0);
}
