/**
 * The worker's HTTP endpoints: `/health` for Cloud Run's probes and `/` for a
 * person asking what the worker is doing.
 *
 * @module
 */

import type { UdpEndpointReport } from "../stun/discovery.ts";
import type { ClientSnapshot } from "./client.ts";

/** What the handler reports besides the client's snapshot. */
export interface WorkerHealthInfo {
  workerId: string;
  version: string;
  snapshot: () => ClientSnapshot;
  /** The last UDP discovery report, if any. */
  udp?: () => UdpEndpointReport | null;
  /** Each peer link's path, RTT and counters. */
  peers?: () => Record<string, unknown>;
}

/**
 * A `Deno.serve` handler: `GET /health` → 200 "OK" (the worker process is
 * alive, whether or not the rendezvous is reachable, so Cloud Run does not
 * restart it for a rendezvous outage); `GET /` → 200 with a JSON status.
 */
export function workerHealthHandler(info: WorkerHealthInfo): (req: Request) => Response {
  return (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("Method Not Allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    const { pathname } = new URL(req.url);
    if (pathname === "/health") {
      return new Response("OK", { headers: { "content-type": "text/plain; charset=utf-8" } });
    }
    if (pathname === "/") {
      return Response.json({
        worker_id: info.workerId,
        version: info.version,
        rendezvous: info.snapshot(),
        udp: info.udp?.() ?? null,
        peers: info.peers?.() ?? {},
      });
    }
    return new Response("Not Found\n", { status: 404 });
  };
}
