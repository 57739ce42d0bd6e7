/**
 * What the rendezvous's `/metrics` serves: counters and histograms it
 * updates as sessions come and go, and gauges read from its parts.
 *
 * @module
 */

import { type Counter, type Histogram, Metrics } from "../core/metrics.ts";
import type { StunServerStats } from "../stun/server.ts";
import type { Refused } from "./admission.ts";
import type { Fleet } from "./fleet.ts";
import type { PeerDirectory } from "./peers.ts";

/** The metrics the rendezvous updates itself. */
export interface RendezvousMetrics {
  registrations: Counter;
  reconnects: Counter;
  disconnections: Counter;
  workerRtt: Histogram;
  pathReports: Counter;
  timeToDirect: Histogram;
  /** Client messages not handled, by reason. */
  messagesDropped: Counter;
  /** UDP candidates refused (special-purpose addresses). */
  candidatesRefused: Counter;
}

/** Where the read-through metrics come from. */
export interface MetricSources {
  /** Sessions this instance holds. */
  sessions: () => number;
  /** Workers in the fleet. */
  workers: () => number;
  refused: () => Readonly<Refused>;
  /** Revocations in force. */
  bans: () => number;
  peers: PeerDirectory["stats"];
  stun?: () => StunServerStats;
  fleet?: Fleet;
}

/** Defines the rendezvous's metrics in `m`; returns those it updates. */
export function defineRendezvousMetrics(
  m: Metrics,
  sources: MetricSources,
): RendezvousMetrics {
  const { stun: stunStats, fleet } = sources;
  const ns = "holepunch_rendezvous";
  m.gauge(`${ns}_sessions`, "WebSocket sessions this instance holds.", sources.sessions);
  m.gauge(
    `${ns}_workers`,
    "Workers registered in the fleet (this instance's and, with Redis, everyone else's).",
    sources.workers,
  );
  m.gauge(`${ns}_revocations`, "Revocations in force (POST /admin/revoke).", sources.bans);
  const ms = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000].map((x) => x / 1000);
  const sec = [0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60];
  const handles: RendezvousMetrics = {
    registrations: m.counter(`${ns}_registrations_total`, "Sessions registered."),
    reconnects: m.counter(
      `${ns}_reconnects_total`,
      "Registrations of a worker whose previous session here ended less than 60 s before.",
    ),
    disconnections: m.counter(`${ns}_disconnections_total`, "Sessions ended, by close code."),
    workerRtt: m.histogram(
      `${ns}_worker_rtt_seconds`,
      "Round trip to the rendezvous as workers report it (their echo heartbeat).",
      ms,
    ),
    pathReports: m.counter(
      `${ns}_path_reports_total`,
      "Paths workers report to their peers (direct or relay), by the pair's NAT mappings.",
    ),
    timeToDirect: m.histogram(
      `${ns}_time_to_direct_seconds`,
      "From an introduction to the first direct path reported for it, by NAT pair.",
      sec,
    ),
    candidatesRefused: m.counter(
      `${ns}_candidates_refused_total`,
      "UDP candidates refused: special-purpose addresses (loopback or link-local only for a worker seen at one).",
    ),
    messagesDropped: m.counter(
      `${ns}_messages_dropped_total`,
      "Client messages not handled, by reason (unregistered: before registration succeeded, or after it was refused).",
    ),
  };
  const stats = sources.peers;
  m.counterFrom(
    `${ns}_refused_total`,
    "Connection attempts refused, by reason.",
    () => Object.entries(sources.refused()).map(([reason, n]) => [{ reason }, n]),
  );
  m.counterFrom(
    `${ns}_introductions_total`,
    "Pairs introduced (punch sent to both).",
    () => stats.introductions,
  );
  m.counterFrom(
    `${ns}_introductions_deferred_total`,
    "connect requests not introduced: the pair was introduced within its wait (3 s, doubling after each introduction without a direct path, at most 5 min).",
    () => stats.introductionsDeferred,
  );
  m.counterFrom(
    `${ns}_relay_messages_total`,
    "Relayed JSON messages and transport packets.",
    () => [
      [{ kind: "message" }, stats.relayed],
      [{ kind: "packet" }, stats.packetsRelayed],
    ],
  );
  m.counterFrom(
    `${ns}_relay_bytes_total`,
    "Bytes relayed (base64 text and packets).",
    () => stats.relayBytes,
  );
  m.counterFrom(
    `${ns}_lists_refused_total`,
    "list_peers requests refused over a session's LIST_RATE_PER_MIN.",
    () => stats.listsRefused,
  );
  m.counterFrom(`${ns}_relay_refused_total`, "Relay frames refused or dropped.", () => [
    [{ reason: "rate_limited" }, stats.relayRejected],
    [{ reason: "packet_dropped" }, stats.packetsDropped],
    [{ reason: "receiver_not_reading" }, stats.relayDropped],
  ]);
  if (stunStats) {
    m.counterFrom(
      "holepunch_stun_answered_total",
      "STUN Binding requests answered.",
      () => stunStats().answered,
    );
    m.counterFrom(
      "holepunch_stun_dropped_total",
      "STUN datagrams dropped, by reason.",
      () => Object.entries(stunStats().dropped).map(([reason, n]) => [{ reason }, n]),
    );
  }
  if (fleet) {
    m.gauge(
      "holepunch_fleet_redis_up",
      "1 while Redis is reachable and this instance synced.",
      () => fleet.up ? 1 : 0,
    );
    m.counterFrom(
      "holepunch_fleet_redis_outages_total",
      "Times the Redis connection was lost.",
      () => fleet.stats.redis_outages,
    );
    m.gauge(
      "holepunch_fleet_remote_workers",
      "Workers other instances hold.",
      () => fleet.remoteCount,
    );
  }
  return handles;
}
