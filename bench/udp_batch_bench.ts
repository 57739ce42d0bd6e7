/**
 * Issue 21's evaluation of batched UDP (`deno task bench:udp`): what it
 * costs a process to take a datagram from one UDP socket and send it on
 * through another — the hop every transport packet makes twice per worker
 * (stand-in ↔ punched socket) — with Deno's own sockets (the workers' way:
 * one `receive` and one `send` op per packet, eight receive loops) and with
 * sockets opened through FFI (`recvmmsg` on a helper thread, `sendmmsg`,
 * up to 64 datagrams a call: the workers' own `lib/peer/ffi_udp.ts`, GSO
 * included where the kernel takes it); `node:dgram`, Deno's Node layer over the
 * same ops, for completeness.
 *
 * A generator in this process sends 1,200-byte datagrams through FFI (so it
 * is never the limit) to a forwarder process, which sends them on to a
 * socket nobody reads; the forwarder reports the packets it moved and its
 * CPU seconds. Rows: a fixed rate (the CPU per packet at the same load) and
 * flat out (the packets per second one core moves). Flags: `--seconds N`
 * (default 3), `--rate N` packets/s for the fixed rows (default 50,000).
 *
 * @module
 */

import dgram from "node:dgram";
import process from "node:process";
import { FfiUdp } from "../lib/peer/ffi_udp.ts";
import { machineState, numberFlag } from "./_common.ts";

const SIZE = 1200;

if (Deno.args[0] === "forward") {
  const [, mode, sinkPort, seconds] = Deno.args;
  await forward(mode, Number(sinkPort), Number(seconds));
  Deno.exit(0);
}

/** The forwarder process: prints its port, then {packets, cpu_s} after `seconds` of traffic. */
async function forward(mode: string, sinkPort: number, seconds: number): Promise<void> {
  let packets = 0;
  let first = 0;
  const started = Promise.withResolvers<void>();
  const sink = { transport: "udp", hostname: "127.0.0.1", port: sinkPort } as Deno.NetAddr;
  if (mode === "deno") {
    const input = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const output = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    console.log(JSON.stringify({ port: (input.addr as Deno.NetAddr).port }));
    for (let i = 0; i < 8; i++) {
      void (async () => {
        const buffer = new Uint8Array(2048);
        while (true) {
          const [data] = await input.receive(buffer);
          if (packets++ === 0) started.resolve();
          await output.send(data, sink).catch(() => {});
        }
      })();
    }
  } else if (mode === "node") {
    const input = dgram.createSocket("udp4");
    const output = dgram.createSocket("udp4");
    await new Promise<void>((r) => input.bind(0, "127.0.0.1", () => r()));
    await new Promise<void>((r) => output.bind(0, "127.0.0.1", () => r()));
    console.log(JSON.stringify({ port: input.address().port }));
    input.on("message", (message) => {
      if (packets++ === 0) started.resolve();
      output.send(message, sinkPort, "127.0.0.1");
    });
  } else {
    // The workers' own batched sockets (lib/peer/ffi_udp.ts), GSO where the kernel takes it.
    const hub = FfiUdp.open();
    if (!(hub instanceof FfiUdp)) throw new Error(`no batched UDP here: ${hub.reason}`);
    const input = hub.bind("127.0.0.1", 0);
    const output = hub.bind("127.0.0.1", 0);
    console.log(JSON.stringify({ port: input.port }));
    input.onPacket = (bytes) => {
      if (packets++ === 0) started.resolve();
      output.send(bytes, "127.0.0.1", sinkPort);
    };
  }
  await started.promise;
  const cpu0 = process.cpuUsage();
  first = packets;
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const cpu = process.cpuUsage(cpu0);
  console.log(JSON.stringify({ packets: packets - first, cpu_s: (cpu.user + cpu.system) / 1e6 }));
}

const seconds = numberFlag("--seconds", 3);
const rate = numberFlag("--rate", 50_000);

/** One row: a forwarder in `mode`, fed at `pps` (0: flat out). */
async function row(mode: "deno" | "node" | "ffi", pps: number) {
  // Nobody reads the sink: the kernel drops what its buffer cannot hold.
  const sink = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const sinkPort = (sink.addr as Deno.NetAddr).port;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--unstable-net",
      new URL(import.meta.url).pathname,
      "forward",
      mode,
      String(sinkPort),
      String(seconds),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const next = async () => {
    while (!text.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("forwarder ended");
      text += value;
    }
    const i = text.indexOf("\n");
    const line = JSON.parse(text.slice(0, i));
    text = text.slice(i + 1);
    return line;
  };
  const { port } = await next();
  const generator = FfiUdp.open();
  if (!(generator instanceof FfiUdp)) throw new Error(`no batched UDP here: ${generator.reason}`);
  const gen = generator.bind("127.0.0.1", 0);
  const datagram = new Uint8Array(SIZE);
  /** Sends `n` datagrams in one batch; returns `n`. */
  const burst = (n: number) => {
    for (let i = 0; i < n; i++) gen.send(datagram, "127.0.0.1", port);
    generator.flush();
    return n;
  };
  let stop = false;
  const result = next().finally(() => (stop = true));
  const t0 = performance.now();
  let sent = 0;
  while (!stop) {
    if (pps > 0) {
      const due = Math.floor((performance.now() - t0) / 1000 * pps) - sent;
      if (due <= 0) {
        await new Promise((r) => setTimeout(r, 1));
        continue;
      }
      sent += burst(Math.min(64, due));
    } else {
      sent += burst(64);
      if (sent % 4096 < 64) await new Promise((r) => setTimeout(r, 0));
    }
  }
  const { packets, cpu_s } = await result;
  child.kill();
  await child.status;
  await generator.close();
  sink.close();
  return {
    mode,
    offered: pps || "flat out",
    forwarded_pps: Math.round(packets / seconds),
    cpu_pct: Math.round(cpu_s / seconds * 100),
    us_per_packet: Number((cpu_s / packets * 1e6).toFixed(2)),
  };
}

const machine = machineState(new Date());
console.error(`udp batch bench: ${seconds} s a row; load ${machine.loadavg_before.join(" ")}`);
const rows = [];
for (
  const [mode, pps] of [
    ["deno", rate],
    ["node", rate],
    ["ffi", rate],
    ["deno", 0],
    ["node", 0],
    ["ffi", 0],
  ] as const
) {
  const r = await row(mode, pps);
  console.error(JSON.stringify(r));
  rows.push(r);
}
console.log(JSON.stringify({ machine, rows }, null, 2));
