/**
 * `deno task ctl`: asks the worker on this machine what it is doing,
 * through its control socket (`lib/worker/control.ts`), never the network.
 *
 *   deno task ctl status [--json]       the worker, then a line per peer
 *   deno task ctl peers [--json]        the group: NAT, key fingerprint, path
 *   deno task ctl forwards [--json]     PEER_FORWARD and PEER_EXPOSE, with counts
 *   deno task ctl ping PEER [-c N]      round trips and the path of each
 *
 * Which worker: `--port P` (or the `PORT` it was started with), `--worker
 * ID`, else the only one running; `--dir` (or `CONTROL_DIR`) where their
 * sockets are.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { defaultControlDir, type PeerView } from "../worker/control.ts";
import type { WorkerStatus } from "../worker/health.ts";
import type { Pong } from "../worker/ping.ts";
import { formatTable } from "../core/table.ts";
import { formatForwards, formatPeers, formatPong, formatStatus } from "./format.ts";

const USAGE = `Usage: deno task ctl <command> [options]

Commands:
  status             this worker, its rendezvous session, UDP endpoint and NAT, and its peers
  peers              the peers it knows: NAT, key fingerprint, path
  forwards           its PEER_FORWARD and PEER_EXPOSE, with connections and bytes
  ping PEER          ping PEER over its link: each round trip and its path

Options:
  --json             print JSON instead of a table (status, peers, forwards)
  -c, --count N      pings to send (default 5; 0: until interrupted)
  --timeout S        seconds to wait for each pong (default 5)
  --port P           the worker whose health server listens on P (default: $PORT)
  --worker ID        the worker with this id
  --dir DIR          where the control sockets are (default: $CONTROL_DIR, else
                     $XDG_RUNTIME_DIR/holepunch, else /tmp/holepunch-$USER)
  -h, --help         this text`;

/** A control socket and the worker behind it. */
interface Found {
  path: string;
  port: number;
  client: Deno.HttpClient;
}

class CtlError extends Error {
  override name = "CtlError";
}

async function call<T>(found: Found, method: string, path: string): Promise<T> {
  const response = await fetch(`http://worker${path}`, { method, client: found.client });
  const body = await response.json();
  if (!response.ok) throw new CtlError(body?.error ?? `the worker answered ${response.status}`);
  return body as T;
}

function open(path: string, port: number): Found {
  return {
    path,
    port,
    client: Deno.createHttpClient(
      { proxy: { transport: "unix", path } } as Deno.CreateHttpClientOptions,
    ),
  };
}

/** The control sockets in `dir` that answer, with their workers' status. */
async function running(dir: string): Promise<{ found: Found; status: WorkerStatus }[]> {
  const out: { found: Found; status: WorkerStatus }[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
  for (const entry of entries) {
    const m = /^worker-(\d+)\.sock$/.exec(entry.name);
    if (!m) continue;
    const found = open(`${dir}/${entry.name}`, Number(m[1]));
    try {
      out.push({ found, status: await call<WorkerStatus>(found, "GET", "/status") });
    } catch {
      found.client.close(); // a socket left by a worker that died
    }
  }
  return out.sort((a, b) => a.found.port - b.found.port);
}

/** The worker the options name: by port, by id, or the only one running. */
async function pick(
  dir: string,
  port: number | undefined,
  workerId: string | undefined,
): Promise<Found> {
  const all = await running(dir);
  const chosen = port !== undefined
    ? all.filter((r) => r.found.port === port)
    : workerId !== undefined
    ? all.filter((r) => r.status.worker_id === workerId)
    : all;
  for (const r of all) if (!chosen.includes(r)) r.found.client.close();
  if (chosen.length === 1) return chosen[0].found;
  if (all.length === 0) {
    throw new CtlError(
      `No worker is running here: no control socket answers in ${dir} (is the worker started, with CONTROL_DIR the same as here?)`,
    );
  }
  const list = formatTable([
    ["port", "worker"],
    ...all.map((r) => [String(r.found.port), r.status.worker_id]),
  ]);
  if (chosen.length === 0) {
    const which = port !== undefined ? `on port ${port}` : `with id "${workerId}"`;
    throw new CtlError(`No worker ${which} is running here. Running:\n${list}`);
  }
  for (const r of chosen) r.found.client.close();
  throw new CtlError(
    `Several workers are running here; choose one with --port or --worker:\n${list}`,
  );
}

/** Runs the command in `args`; returns the exit code. */
export async function main(args: string[], env = Deno.env.toObject()): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: "boolean" },
      count: { type: "string", short: "c" },
      timeout: { type: "string" },
      port: { type: "string" },
      worker: { type: "string" },
      dir: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  const [command, target] = positionals;
  if (values.help || command === undefined) {
    console.log(USAGE);
    return values.help ? 0 : 2;
  }
  const set = (name: string) => env[name]?.trim() || undefined;
  const dir = values.dir ?? set("CONTROL_DIR") ?? defaultControlDir(set);
  const portText = values.port ?? (values.worker === undefined ? set("PORT") : undefined);
  const port = portText === undefined ? undefined : Number(portText);
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) {
    throw new CtlError(`--port must be a port number, not "${portText}"`);
  }
  const found = await pick(dir, port, values.worker);
  try {
    const status = await call<WorkerStatus>(found, "GET", "/status");
    switch (command) {
      case "status":
        console.log(values.json ? JSON.stringify(status, null, 2) : formatStatus(status));
        return 0;
      case "forwards":
        console.log(
          values.json
            ? JSON.stringify({ forwards: status.forwards, exposes: status.exposes }, null, 2)
            : formatForwards(status),
        );
        return 0;
      case "peers": {
        const peers = await call<PeerView[]>(found, "GET", "/peers");
        console.log(values.json ? JSON.stringify(peers, null, 2) : formatPeers(peers));
        return 0;
      }
      case "ping":
        return await ping(found, target, values.count, values.timeout);
      default:
        throw new CtlError(`Unknown command "${command}"\n\n${USAGE}`);
    }
  } finally {
    found.client.close();
  }
}

async function ping(
  found: Found,
  peer: string | undefined,
  countText = "5",
  timeoutText = "5",
): Promise<number> {
  if (!peer) throw new CtlError("Usage: deno task ctl ping PEER [-c N] [--timeout S]");
  const count = Number(countText);
  const timeoutMs = Number(timeoutText) * 1000;
  if (!Number.isInteger(count) || count < 0) {
    throw new CtlError(`-c must be a count, not "${countText}"`);
  }
  if (!(timeoutMs > 0 && timeoutMs <= 60_000)) {
    throw new CtlError(`--timeout must be 0-60 seconds, not "${timeoutText}"`);
  }
  let pongs = 0;
  for (let n = 0; count === 0 || n < count; n++) {
    const started = performance.now();
    try {
      const pong = await call<Pong & { to: string | null }>(
        found,
        "POST",
        `/ping?peer=${encodeURIComponent(peer)}&timeout_ms=${timeoutMs}`,
      );
      pongs++;
      console.log(formatPong(peer, pong));
    } catch (error) {
      console.log(`no pong from ${peer}: ${(error as Error).message}`);
    }
    const wait = 1000 - (performance.now() - started);
    if ((count === 0 || n + 1 < count) && wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  console.log(`${pongs} of ${count} pongs`);
  return pongs > 0 ? 0 : 1;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(error instanceof CtlError ? error.message : error);
    Deno.exit(1);
  }
}
