/**
 * The worker's HTTP endpoints: `/health` for Cloud Run's probes and `/` for a
 * person asking what the worker is doing.
 *
 * @module
 */

import type { UdpEndpointReport } from "../stun/discovery.ts";
import type { ClientSnapshot } from "./client.ts";
import type { ForwardStats } from "./forward.ts";

/** What a worker is doing, as `GET /` shows it. */
export interface WorkerStatus {
  /** The worker's id at the rendezvous. */
  worker_id: string;
  /** The program's version. */
  version: string;
  /** The worker's public key (base64url Ed25519) and its fingerprint. */
  key: { public_key: string; fingerprint: string };
  /** The rendezvous session. */
  rendezvous: ClientSnapshot;
  /** The last UDP discovery report; null before the first or without UDP. */
  udp: UdpEndpointReport | null;
  /** Each peer link's path, RTT and counters, by peer id. */
  peers: Record<string, unknown>;
  /** `PEER_FORWARD` listeners (`host:port:peer:port`) with connections and bytes. */
  forwards: Record<string, ForwardStats>;
  /** `PEER_EXPOSE` ports with connections and bytes. */
  exposes: Record<string, ForwardStats>;
}

/**
 * A `Deno.serve` handler: `GET /health` → 200 "OK" (the worker process is
 * alive, whether or not the rendezvous is reachable, so Cloud Run does not
 * restart it for a rendezvous outage); `GET /` → 200 with a JSON status.
 */
export function workerHealthHandler(status: () => WorkerStatus): (req: Request) => Response {
  return (req) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("Method Not Allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    const { pathname } = new URL(req.url);
    if (pathname === "/health") {
      return new Response("OK", { headers: { "content-type": "text/plain; charset=utf-8" } });
    }
    if (pathname === "/") {
      return Response.json(status());
    }
    return new Response("Not Found\n", { status: 404 });
  };
}
