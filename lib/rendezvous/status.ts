/**
 * What the rendezvous says about itself: `/ready` (an instance whose Redis
 * is away still serves what it holds, and says so), `/debug/stats` (counts
 * without listing anyone: cheap enough to poll during a storm) and the
 * counters open dashboards get once a second.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import type { Refused } from "./admission.ts";
import type { Fleet } from "./fleet.ts";
import { json } from "./http.ts";
import type { RendezvousMetrics } from "./metrics.ts";
import type { PeerDirectory } from "./peers.ts";

/** Where the service is in its life. */
export type RendezvousState = "starting" | "running" | "closing" | "closed";

/** What the answers read of a rendezvous. */
export interface StatusSource {
  state(): RendezvousState;
  fleet: Fleet | undefined;
  /** Sessions held now, registered or not. */
  sessions(): number;
  /** Workers registered here. */
  local(): number;
  /** Records in the registry (the fleet's, with Redis). */
  registered(): Promise<number>;
  peers: PeerDirectory["stats"];
  refused(): Readonly<Refused>;
  metrics: RendezvousMetrics;
  clock: Clock;
}

/** `/ready`: 200 once running (degraded without Redis), 503 before and after. */
export function readyResponse(s: StatusSource): Response {
  const state = s.state();
  if (state !== "running") return json({ status: state }, 503);
  const fleet = s.fleet;
  if (fleet && !fleet.up) {
    return json({ status: "degraded", redis: "unavailable", instance: fleet.instance });
  }
  return json({ status: "ready", ...(fleet ? { redis: "up", instance: fleet.instance } : {}) });
}

/** `/debug/stats`: counts, no one listed. */
export async function statsResponse(s: StatusSource): Promise<Response> {
  const memory = Deno.memoryUsage();
  const fleet = s.fleet;
  return json({
    state: s.state(),
    sessions: s.sessions(),
    registered: await s.registered(),
    peers: s.peers,
    refused: s.refused(),
    ...(fleet
      ? {
        fleet: {
          instance: fleet.instance,
          up: fleet.up,
          remote_workers: fleet.remoteCount,
          ...fleet.stats,
        },
      }
      : {}),
    memory: { rss: memory.rss, heap_used: memory.heapUsed },
  });
}

/** The counters open dashboards get once a second. */
export function dashboardStats(s: StatusSource): unknown {
  const outcomes: Record<string, Record<string, number>> = {};
  for (const { labels, value } of s.metrics.pathReports.samples()) {
    (outcomes[labels.nat_pair] ??= {})[labels.path] = value;
  }
  return {
    at: s.clock.now(),
    workers: s.local() + (s.fleet?.remoteCount ?? 0),
    registrations: s.metrics.registrations.get(),
    introductions: s.peers.introductions,
    relay_bytes: s.peers.relayBytes,
    outcomes,
  };
}
