/**
 * The worker's control endpoint, for `deno task ctl` on the same machine: a
 * Unix socket in a directory only its user may enter (0700; the socket
 * 0600), never a network port. One socket per worker, named by its health
 * port (`worker-8080.sock`), so the tool finds the worker started with the
 * same `PORT`.
 *
 *   GET  /status               the worker's `GET /` JSON
 *   GET  /peers                the peers it knows: NAT, endpoint, key fingerprint, path
 *   POST /ping?peer=ID[&timeout_ms=N]
 *                              one ping over the peer link: { path, to, ms },
 *                              or 504 { error } without a pong in time
 *
 * @module
 */

import type { Logger } from "../core/log.ts";
import type { WorkerStatus } from "./health.ts";
import { PingTimeoutError, type Pong } from "./ping.ts";
import { isValidWorkerId } from "../protocol/messages.ts";

/** The longest wait a ping may ask for. */
const MAX_PING_TIMEOUT_MS = 60_000;

/**
 * Where control sockets live unless `CONTROL_DIR` says: the user's runtime
 * directory (`$XDG_RUNTIME_DIR/holepunch`), else `/tmp/holepunch-$USER`.
 */
export function defaultControlDir(env: (name: string) => string | undefined): string {
  const runtime = env("XDG_RUNTIME_DIR");
  if (runtime) return `${runtime}/holepunch`;
  const user = (env("USER") ?? env("LOGNAME") ?? "user").replace(/[^A-Za-z0-9._-]/g, "_");
  return `/tmp/holepunch-${user}`;
}

/** The control socket of the worker whose health server listens on `port`. */
export function controlSocketPath(dir: string, port: number): string {
  return `${dir}/worker-${port}.sock`;
}

/** What the control endpoint serves. */
export interface ControlOptions {
  dir: string;
  /** The worker's health port: the socket's name. */
  port: number;
  status(): WorkerStatus;
  peers(): Promise<PeerView[]>;
  ping(peerId: string, timeoutMs: number): Promise<Pong & { to: string | null }>;
  logger: Logger;
}

/** A peer as `GET /peers` shows it. */
export interface PeerView {
  /** The peer's id. */
  worker_id: string;
  /** Its NAT's mapping behaviour, as it reported it. */
  nat_mapping: string | null;
  /** Its public UDP endpoint (`ip:port`), as it reported it. */
  public: string | null;
  /** Its key's fingerprint; null for a keyless peer. */
  fingerprint: string | null;
  /** The link's path, if there is a link. */
  path: string | null;
  /** The direct path's address, while it is direct. */
  direct_to: string | null;
}

/** A running control endpoint. */
export interface Control {
  path: string;
  close(): Promise<void>;
}

/** The control endpoint's requests. */
export function controlHandler(
  options: Pick<ControlOptions, "status" | "peers" | "ping">,
): (request: Request) => Promise<Response> {
  return async (request) => {
    const url = new URL(request.url);
    if (request.method === "GET" && url.pathname === "/status") {
      return Response.json(options.status());
    }
    if (request.method === "GET" && url.pathname === "/peers") {
      return Response.json(await options.peers());
    }
    if (request.method === "POST" && url.pathname === "/ping") {
      const peer = url.searchParams.get("peer") ?? "";
      if (!isValidWorkerId(peer)) {
        return Response.json({ error: `"${peer}" is not a worker id` }, { status: 400 });
      }
      const timeoutMs = Number(url.searchParams.get("timeout_ms") ?? 5000);
      if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_PING_TIMEOUT_MS) {
        return Response.json({ error: `timeout_ms must be 1-${MAX_PING_TIMEOUT_MS}` }, {
          status: 400,
        });
      }
      try {
        return Response.json(await options.ping(peer, timeoutMs));
      } catch (error) {
        const status = error instanceof PingTimeoutError ? 504 : 502;
        return Response.json({ error: (error as Error).message }, { status });
      }
    }
    return Response.json({ error: "not found" }, { status: 404 });
  };
}

/**
 * Serves the control endpoint on `dir`/worker-`port`.sock: the directory is
 * made 0700 if it is not there, a socket left by a worker that died is
 * replaced, and the socket is made 0600.
 *
 * @throws {Deno.errors.PermissionDenied} without `--allow-read` and `--allow-write` for `dir`
 */
export async function startControl(options: ControlOptions): Promise<Control> {
  const path = controlSocketPath(options.dir, options.port);
  await Deno.mkdir(options.dir, { recursive: true, mode: 0o700 });
  await Deno.remove(path).catch(() => {});
  const listening = Promise.withResolvers<void>();
  const server = Deno.serve(
    {
      path,
      onListen: () => listening.resolve(),
      onError: () => new Response(null, { status: 500 }),
    },
    controlHandler(options),
  );
  await listening.promise;
  await Deno.chmod(path, 0o600);
  options.logger.info("control socket listening", { path });
  return {
    path,
    close: async () => {
      await server.shutdown();
      await Deno.remove(path).catch(() => {});
    },
  };
}
