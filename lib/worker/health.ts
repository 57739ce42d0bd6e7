/**
 * The worker's HTTP endpoints: `/health` for Cloud Run's probes and `/` for a
 * person asking what the worker is doing.
 *
 * @module
 */

import type { PortMapStatus } from "../portmap/mapper.ts";
import { type Labels, Metrics, METRICS_CONTENT_TYPE } from "../core/metrics.ts";
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
  /** How the transport's UDP is read and written: batched through FFI, or Deno's sockets (`PEER_UDP_IO`). */
  udp_io: "ffi" | "deno";
  /**
   * The gateway's port mapping (`PORT_MAPPING`): the gateway asked, which
   * protocols it answered, the mapping held, counters, and whether the
   * gateway sits behind another NAT (null: no mapping to tell by); null
   * when off or without UDP.
   */
  port_mapping: (PortMapStatus & { double_nat: boolean | null }) | null;
  /** Each peer link's path, RTT and counters, by peer id. */
  peers: Record<string, unknown>;
  /** `PEER_FORWARD` listeners (`host:port:peer:port`) with connections and bytes. */
  forwards: Record<string, ForwardStats>;
  /** `PEER_EXPOSE` ports with connections and bytes. */
  exposes: Record<string, ForwardStats>;
  /** Incoming handshakes refused (too many at once) and given up (too slow). */
  handshakes: { refused: number; timed_out: number };
  /** The worker's bounds at work (docs/threat-model.md): what is held, and what was held back. */
  limits: WorkerLimits;
}

/** What the worker's bounds hold now, and what they held back so far. */
export interface WorkerLimits {
  /** Peers with a stand-in (a loopback socket). */
  stand_ins: number;
  /** Of them, those no authenticated connection went through yet (at most 32, for 15 s each). */
  stand_ins_unproven: number;
  /** Extra sockets open for hard-side rounds and rerolls (at most 128). */
  extra_sockets: number;
  /** Transport packets refused: from a peer not introduced, or past the stand-ins' caps. */
  transport_packets_refused: number;
  /** Punching packets not sent over the worker's pace (2,000 a second). */
  punch_packets_paced: number;
  /** Punching packets not sent to an address that never answered (its budget spent). */
  punch_packets_over_budget: number;
}

/** Transport bytes by path and direction (`PeerManager.pathBytes`). */
export interface PathBytes {
  direct: { sent: number; received: number };
  relay: { sent: number; received: number };
}

/**
 * The worker's Prometheus metrics, from its status: its rendezvous session,
 * its peers' paths and RTTs and message counts, transport bytes per path,
 * and each forward's and expose's connections and bytes.
 */
export function workerMetrics(status: WorkerStatus, bytes: PathBytes): string {
  const m = new Metrics();
  const ns = "holepunch_worker";
  m.gauge(
    `${ns}_rendezvous_connected`,
    "1 while registered with the rendezvous.",
    () => status.rendezvous.status === "connected" ? 1 : 0,
  );
  m.counterFrom(
    `${ns}_rendezvous_sessions_total`,
    "Rendezvous sessions opened.",
    () => status.rendezvous.sessions,
  );
  m.counterFrom(
    `${ns}_handshakes_failed_total`,
    "Incoming QUIC handshakes refused (too many at once) or given up (not done within 5 s).",
    () => [
      [{ outcome: "refused" }, status.handshakes.refused],
      [{ outcome: "timed_out" }, status.handshakes.timed_out],
    ],
  );
  const limits = status.limits;
  m.gauge(`${ns}_stand_ins`, "Peers with a stand-in, by whether a connection proved them.", () => [
    [{ state: "proven" }, limits.stand_ins - limits.stand_ins_unproven],
    [{ state: "unproven" }, limits.stand_ins_unproven],
  ]);
  m.gauge(
    `${ns}_extra_sockets`,
    "Extra sockets open for hard-side rounds and rerolls.",
    () => limits.extra_sockets,
  );
  m.counterFrom(
    `${ns}_limited_total`,
    "Packets a bound held back: transport packets refused, punching packets over the pace or an unanswered address's budget.",
    () => [
      [{ limit: "transport_packets" }, limits.transport_packets_refused],
      [{ limit: "punch_pace" }, limits.punch_packets_paced],
      [{ limit: "send_budget" }, limits.punch_packets_over_budget],
    ],
  );
  const links = Object.entries(status.peers) as [string, Record<string, unknown>][];
  m.gauge(
    `${ns}_peers`,
    "Peer links, by current path.",
    () =>
      (["direct", "relay"] as const).map((path) => [
        { path },
        links.filter(([, l]) => l.path === path).length,
      ]),
  );
  m.gauge(
    `${ns}_peer_rtt_seconds`,
    "Round trip of each direct path.",
    () =>
      links.filter(([, l]) => typeof l.rtt_ms === "number").map((
        [peer, l],
      ) => [{ peer }, (l.rtt_ms as number) / 1000]),
  );
  m.counterFrom(
    `${ns}_peer_messages_total`,
    "Peer-link messages by peer, path and direction.",
    () =>
      links.flatMap(([peer, l]) =>
        (["sent", "received"] as const).flatMap((direction) =>
          (["direct", "relay"] as const).map((path): [Labels, number] => [
            { peer, path, direction },
            ((l[direction] as Record<string, number> | undefined)?.[path]) ?? 0,
          ])
        )
      ),
  );
  m.counterFrom(
    `${ns}_transport_bytes_total`,
    "Encrypted transport bytes by path and direction.",
    () =>
      (["direct", "relay"] as const).flatMap((path) =>
        (["sent", "received"] as const).map((direction): [Labels, number] => [
          { path, direction },
          bytes[path][direction],
        ])
      ),
  );
  const forwards = [
    ...Object.entries(status.forwards).map(([spec, s]) => ["forward", spec, s] as const),
    ...Object.entries(status.exposes).map(([spec, s]) => ["expose", spec, s] as const),
  ];
  m.counterFrom(
    `${ns}_forward_connections_total`,
    "TCP connections carried, by forward or expose.",
    () => forwards.map(([kind, spec, s]) => [{ kind, spec }, s.connections]),
  );
  m.counterFrom(
    `${ns}_forward_refused_total`,
    "TCP connections refused, by forward or expose.",
    () => forwards.map(([kind, spec, s]) => [{ kind, spec }, s.refused]),
  );
  m.counterFrom(
    `${ns}_forward_bytes_total`,
    "TCP bytes carried, by forward or expose and direction.",
    () =>
      forwards.flatMap(([kind, spec, s]) => [
        [{ kind, spec, direction: "out" }, s.bytes_out] as [Labels, number],
        [{ kind, spec, direction: "in" }, s.bytes_in] as [Labels, number],
      ]),
  );
  return m.render();
}

/**
 * A `Deno.serve` handler: `GET /health` → 200 "OK" (the worker process is
 * alive, whether or not the rendezvous is reachable, so Cloud Run does not
 * restart it for a rendezvous outage); `GET /` → 200 with a JSON status;
 * `GET /metrics` → Prometheus text, when `metrics` is given.
 */
export function workerHealthHandler(
  status: () => WorkerStatus,
  metrics?: () => string,
): (req: Request) => Response {
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
    if (pathname === "/metrics" && metrics) {
      return new Response(metrics(), { headers: { "content-type": METRICS_CONTENT_TYPE } });
    }
    return new Response("Not Found\n", { status: 404 });
  };
}
