/**
 * `Deno.serve` that survives its accept loop dying. When the process runs
 * out of file descriptors, Deno's HTTP server rejects an internal promise
 * ("Http: Too many open files") and stops accepting for good, and the
 * unhandled rejection ends the process, taking every worker's session with
 * it. Here that rejection is logged instead, and the listener is started
 * again once descriptors are free, while existing sessions carry on.
 *
 * @module
 */

import type { Logger } from "../core/log.ts";

/** Options for {@linkcode serveResilient}. */
export interface ResilientServeOptions {
  port: number;
  hostname: string;
  onListen: (addr: Deno.NetAddr) => void;
  onError?: (error: unknown) => Response | Promise<Response>;
  logger: Logger;
  /** Wait before starting a failed listener again. @default {250} */
  restartDelayMs?: number;
}

/** A running listener; `shutdown()` stops it for good. */
export interface ResilientServer {
  shutdown(): Promise<void>;
}

let filterInstalled = false;

/** Keeps Deno's HTTP-layer rejections (not ours) from ending the process. */
function installHttpRejectionFilter(logger: Logger): void {
  if (filterInstalled) return;
  filterInstalled = true;
  globalThis.addEventListener("unhandledrejection", (event) => {
    const reason = event.reason;
    if (reason instanceof Error && reason.name === "Http") {
      event.preventDefault();
      logger.error("http listener failed", { error: reason });
    }
  });
}

/**
 * Serves `handler` like `Deno.serve`, restarting the listener whenever it
 * stops on its own (not through `shutdown()`).
 */
export function serveResilient(
  options: ResilientServeOptions,
  handler: Deno.ServeHandler<Deno.NetAddr>,
): ResilientServer {
  const { logger } = options;
  installHttpRejectionFilter(logger);
  let stopping = false;
  let current: Deno.HttpServer<Deno.NetAddr> | undefined;
  let restartTimer: ReturnType<typeof setTimeout> | undefined;
  // After the first listen, restarts take the same port (PORT=0 picked one).
  let port = options.port;

  const start = () => {
    restartTimer = undefined;
    if (stopping) return;
    let server: Deno.HttpServer<Deno.NetAddr>;
    try {
      server = Deno.serve({
        port,
        hostname: options.hostname,
        onListen: (addr) => {
          port = addr.port;
          options.onListen(addr);
        },
        onError: options.onError,
      }, handler);
    } catch (error) {
      logger.error("cannot listen; retrying", { error, port });
      restartTimer = setTimeout(start, options.restartDelayMs ?? 250);
      return;
    }
    current = server;
    const restart = (error?: unknown) => {
      if (stopping || current !== server) return;
      logger.error("http listener stopped; restarting it", { error });
      restartTimer = setTimeout(start, options.restartDelayMs ?? 250);
    };
    server.finished.then(() => restart(), restart);
  };
  start();

  return {
    async shutdown() {
      stopping = true;
      if (restartTimer !== undefined) clearTimeout(restartTimer);
      await current?.shutdown().catch(() => {});
    },
  };
}
