/**
 * One load-generator process for bench/main.ts: opens `count` connections
 * with Deno's own WebSocket client, speaking the seed protocol (register,
 * report an IP, echo), and reconnecting the way the worker does (at once
 * after 1001, then the worker's own backoff with full jitter).
 *
 * Spread over several loopback destination addresses (127.0.0.1..N, the
 * rendezvous listens on all of them) so no (source, destination) pair runs
 * out of ephemeral ports. Reports JSON lines on stdout; takes commands on
 * stdin: `echo <per-connection rate> <seconds>`, `report`, `stop`.
 *
 * @module
 */

import { ReconnectPolicy } from "../lib/worker/reconnect_policy.ts";

interface Options {
  port: number;
  count: number;
  /** New connections per second from this process. */
  rate: number;
  prefix: string;
  addresses: number;
  reconnect: boolean;
}

const options: Options = JSON.parse(Deno.args[0]);
const encoder = new TextEncoder();
const out = (value: unknown) => Deno.stdout.writeSync(encoder.encode(JSON.stringify(value) + "\n"));

interface Conn {
  id: string;
  index: number;
  socket?: WebSocket;
  createdAt: number;
  registered: boolean;
  openedAt: number;
  policy: ReconnectPolicy;
}

const conns: Conn[] = [];
const registrationMs: number[] = [];
const echoMs: number[] = [];
let drops = 0;
let failures = 0;
let stopping = false;
let registered = 0;

function open(conn: Conn): void {
  const host = `127.0.0.${1 + (conn.index % options.addresses)}`;
  conn.createdAt = performance.now();
  conn.registered = false;
  const socket = new WebSocket(`ws://${host}:${options.port}/ws/register/${conn.id}`);
  conn.socket = socket;
  socket.onopen = () => {
    conn.openedAt = performance.now();
    socket.send(
      JSON.stringify({ type: "register_public_ip", ip: `203.0.113.${conn.index % 250}` }),
    );
  };
  socket.onmessage = (event) => {
    const text = event.data as string;
    if (text.startsWith('{"type":"public_ip_registered"')) {
      registrationMs.push(performance.now() - conn.createdAt);
      conn.registered = true;
      registered++;
    } else if (text.startsWith('{"type":"echo_response"')) {
      const sent = JSON.parse(text).original_payload as number;
      echoMs.push(performance.now() - sent);
    }
  };
  socket.onerror = () => {};
  socket.onclose = (event) => {
    if (conn.registered) registered--;
    else failures++;
    const wasRegistered = conn.registered;
    conn.registered = false;
    const opened = conn.openedAt > 0;
    const durationMs = opened ? performance.now() - conn.openedAt : 0;
    conn.openedAt = 0;
    if (stopping) return;
    if (wasRegistered) drops++;
    if (!options.reconnect) return;
    // The worker's own policy (lib/reconnect_policy.ts), not a tuned client.
    const wait = conn.policy.next({ opened, code: event.code, durationMs }, performance.now());
    setTimeout(() => open(conn), wait);
  };
}

// Ramp at the offered rate, in 10 ms slices.
const started = performance.now();
let next = 0;
const ramp = setInterval(() => {
  const due = Math.min(
    options.count,
    Math.floor(((performance.now() - started) / 1000) * options.rate),
  );
  for (; next < due; next++) {
    const conn: Conn = {
      id: `${options.prefix}-${next}`,
      index: next,
      createdAt: 0,
      registered: false,
      openedAt: 0,
      policy: new ReconnectPolicy(),
    };
    conns.push(conn);
    open(conn);
  }
  if (next >= options.count) clearInterval(ramp);
}, 10);

const report = setInterval(
  () => out({ type: "progress", opened: next, registered, drops, failures }),
  500,
);

let echoTimer: ReturnType<typeof setInterval> | undefined;

function startEcho(perConnRate: number, seconds: number): void {
  echoMs.length = 0;
  const live = conns.filter((c) => c.registered);
  const intervalMs = 10;
  const perTick = (live.length * perConnRate * intervalMs) / 1000;
  let carry = 0;
  let cursor = 0;
  const end = performance.now() + seconds * 1000;
  let sent = 0;
  echoTimer = setInterval(() => {
    if (performance.now() >= end) {
      clearInterval(echoTimer);
      setTimeout(() => {
        const sorted = echoMs.slice().sort((a, b) => a - b);
        const at = (p: number) =>
          sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
        out({
          type: "echo",
          sent,
          answered: sorted.length,
          p50: at(0.5),
          p99: at(0.99),
          max: sorted.at(-1),
        });
      }, 500);
      return;
    }
    carry += perTick;
    for (; carry >= 1; carry--) {
      const conn = live[cursor++ % live.length];
      if (conn.socket?.readyState !== WebSocket.OPEN) continue;
      conn.socket.send(`{"type":"echo_request","payload":${performance.now()}}`);
      sent++;
    }
  }, intervalMs);
}

for await (const line of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  for (const command of line.split("\n").filter((l) => l.trim())) {
    const [verb, a, b] = command.trim().split(/\s+/);
    if (verb === "echo") startEcho(Number(a), Number(b));
    if (verb === "report") {
      out({
        type: "registration",
        latencies: registrationMs.splice(0),
        drops,
        failures,
        registered,
      });
    }
    if (verb === "stop") {
      stopping = true;
      clearInterval(ramp);
      clearInterval(report);
      for (const conn of conns) conn.socket?.close(1000);
      out({ type: "stopped" });
      Deno.exit(0);
    }
  }
}
