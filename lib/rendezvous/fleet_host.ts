/**
 * The rendezvous's side of the fleet: what the fleet calls when something
 * happens on another instance (a message or packet for one of our workers,
 * a worker that joined, changed, left, or replaced one of our sessions),
 * and the workers of other instances as peer sessions that send through it.
 *
 * @module
 */

import type { Logger } from "../core/log.ts";
import { CloseCode, CloseReason } from "../protocol/close_codes.ts";
import type { Dashboard } from "./dashboard_routes.ts";
import type { Fleet, FleetHost, RemoteWorker } from "./fleet.ts";
import type { Handlers } from "./handlers.ts";
import type { PeerDirectory, PeerSession } from "./peers.ts";
import type { MemoryRegistry } from "./registry.ts";
import type { Session } from "./session.ts";

/** What {@linkcode fleetHost} wires together. */
export interface FleetHostDeps {
  /** The registered session of each worker on this instance. */
  sessions: ReadonlyMap<string, Session>;
  /** This instance's own records. */
  local: MemoryRegistry;
  peers: PeerDirectory;
  dashboard: Dashboard;
  handlers: Handlers;
  logger: Logger;
  /** `KEY_HOLD_SEC` in ms. */
  keyHoldMs: number;
}

/** The {@linkcode FleetHost} a rendezvous instance gives its fleet. */
export function fleetHost(d: FleetHostDeps): FleetHost {
  return {
    deliver: (workerId, group, message) => {
      const session = d.sessions.get(workerId);
      if (session?.group !== group) return;
      // Relayed frames are dropped for a worker that does not read; anything else may close it.
      if (message.type === "relayed") session.sendDroppable(message);
      else session.send(message);
    },
    deliverBinary: (workerId, group, bytes) => {
      const session = d.sessions.get(workerId);
      if (session?.group !== group || !session.sendBinary(bytes)) d.peers.stats.packetsDropped++;
    },
    replaced: (workerId, sessionId) => {
      const session = d.sessions.get(workerId);
      if (session?.id !== sessionId) return;
      d.logger.info("worker session replaced on another instance", {
        worker_id: workerId,
        old_observed_ip: session.observedIp,
      });
      session.close(CloseCode.SESSION_REPLACED, CloseReason.REPLACED);
    },
    joined: (record) => {
      d.peers.remoteJoined(record);
      d.dashboard.worker(record);
    },
    updated: (record) => {
      d.peers.remoteUpdated(record);
      d.dashboard.worker(record);
    },
    left: (workerId, group, why) => {
      d.peers.remoteLeft(workerId, group, why);
      d.dashboard.left(workerId);
      d.handlers.prunePathsTo(workerId);
    },
    localRecords: () => d.local.list(),
    rttOf: (workerId) => d.sessions.get(workerId)?.rttMs ?? null,
    keyHoldMs: d.keyHoldMs,
  };
}

/**
 * Workers registered on other instances, as peer sessions that send
 * through the fleet. Made once per remote record (relayed packets look them
 * up one by one); a changed record is a new object, so the cache follows.
 */
export class RemotePeers {
  #fleet?: Fleet;
  #cache = new WeakMap<RemoteWorker, PeerSession>();

  /** Peers of `fleet` (none without one). */
  constructor(fleet?: Fleet) {
    this.#fleet = fleet;
  }

  /** The worker `workerId` on another instance, if there is one. */
  get(workerId: string): PeerSession | undefined {
    const fleet = this.#fleet;
    const worker = fleet?.remote(workerId);
    if (!fleet || !worker) return undefined;
    let peer = this.#cache.get(worker);
    if (!peer) this.#cache.set(worker, peer = remotePeer(fleet, worker));
    return peer;
  }
}

function remotePeer(fleet: Fleet, worker: RemoteWorker): PeerSession {
  const { instance, record } = worker;
  const workerId = record.worker_id;
  return {
    workerId,
    group: record.group,
    rttMs: worker.rttMs,
    watching: false,
    takeRelay: () => true,
    takeList: () => true,
    takeRelayBytes: () => true,
    send: (message) => fleet.send(instance, workerId, record.group, message),
    // Dropped, if at all, where the worker's session is (its instance's own bound).
    sendDroppable: (message) => {
      fleet.send(instance, workerId, record.group, message);
      return true;
    },
    sendBinary: (bytes) => fleet.sendBinary(instance, workerId, record.group, bytes),
  };
}
