/**
 * The rendezvous's answer to each client message, one named handler per
 * message type (as nebula's lighthouse has), dispatched from one short
 * switch. Peer services (`list_peers`, `connect`, `relay`) are the peer
 * directory's; the key proof is answered on arrival by the server.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { type ClientMessage, type UdpAddress } from "../protocol/messages.ts";
import { type AddressScope, addressScope } from "../protocol/ip.ts";
import { encodeMessage } from "../protocol/parse.ts";
import type { Dashboard } from "./dashboard_routes.ts";
import type { RendezvousMetrics } from "./metrics.ts";
import { MAX_PEER_PATHS, type PathReports } from "./path_reports.ts";
import type { PeerDirectory } from "./peers.ts";
import { NO_PEER_PATHS, type Registry } from "./registry.ts";
import type { Session } from "./session.ts";

/** What the handlers work with. */
export interface HandlerDeps {
  registry: Registry;
  peers: PeerDirectory;
  dashboard: Dashboard;
  metrics: RendezvousMetrics;
  pathReports: PathReports<Session>;
  logger: Logger;
  clock: Clock;
  /** Runs `work` after the session's earlier registry work (its writes land in order). */
  enqueue: (session: Session, work: () => Promise<void>) => void;
}

/** The handlers of registered sessions' messages. */
export class Handlers {
  #d: HandlerDeps;

  /** Handlers over `deps`. */
  constructor(deps: HandlerDeps) {
    this.#d = deps;
  }

  /** Handles one message of a registered session (in that session's order). */
  async handle(session: Session, message: ClientMessage): Promise<void> {
    if (await this.#d.peers.handle(session, message)) return;
    switch (message.type) {
      case "register_public_ip":
        return await this.registerPublicIp(session, message);
      case "register_udp_endpoint":
        return await this.registerUdpEndpoint(session, message);
      case "path_update":
        return await this.pathUpdate(session, message);
      case "register_transport":
        return await this.registerTransport(session, message);
      case "echo_request":
        return this.echoRequest(session, message);
      case "list_peers":
      case "connect":
      case "relay":
        return; // the peer directory's, above
      case "prove_key":
        return; // answered on arrival by the server
      default: {
        const unreachable: never = message;
        throw new Error(`Unhandled message ${JSON.stringify(unreachable)}`);
      }
    }
  }

  /** `register_public_ip`: the worker's HTTP-echo view of its public IP. */
  async registerPublicIp(
    session: Session,
    message: Extract<ClientMessage, { type: "register_public_ip" }>,
  ): Promise<void> {
    const stored = await this.#d.registry.update(session.workerId, session.id, {
      http_reported_public_ip: message.ip,
    });
    if (!stored) return; // Replaced or gone meanwhile: not ours to change.
    this.#d.logger.info("worker reported public ip", {
      worker_id: session.workerId,
      http_reported_public_ip: message.ip,
    });
    session.send({ type: "public_ip_registered", ip: message.ip });
    return;
  }

  /** `register_udp_endpoint`: its STUN-learned endpoint, local candidates and NAT. */
  async registerUdpEndpoint(
    session: Session,
    message: Extract<ClientMessage, { type: "register_udp_endpoint" }>,
  ): Promise<void> {
    // Peers send probes to these: none may aim them where no worker can be.
    const observed = session.observedIp === null ? "invalid" : addressScope(session.observedIp);
    const refused: string[] = [];
    const usable = (c: UdpAddress) => {
      const why = unusableCandidate(c.ip, observed);
      if (why) refused.push(`${c.ip} (${why})`);
      return why === undefined;
    };
    const pub = message.public && usable(message.public) ? message.public : null;
    const local = message.local.filter(usable);
    const mapped = message.mapped && usable(message.mapped) ? message.mapped : null;
    const public6 = message.public6 && usable(message.public6) ? message.public6 : null;
    if (refused.length > 0) {
      this.#d.metrics.candidatesRefused.inc({}, refused.length);
      this.#d.logger.warn("worker reported unusable addresses", {
        worker_id: session.workerId,
        observed_ip: session.observedIp,
        refused,
      });
      session.send({
        type: "error",
        code: "invalid_message",
        message:
          `Cannot use ${refused.join(", ")}: special-purpose addresses are candidates only ` +
          "for a worker the rendezvous sees at an address of the same kind",
      });
    }
    const udp = {
      public: pub,
      local,
      nat_mapping: message.nat.mapping,
      ...(mapped ? { mapped } : {}),
      ...(public6 ? { public6 } : {}),
      updated_at: new Date(this.#d.clock.now()).toISOString(),
    };
    if (message.rtt_ms !== null && message.rtt_ms !== undefined) {
      session.rttMs = message.rtt_ms;
      this.#d.metrics.workerRtt.observe(message.rtt_ms / 1000);
    }
    const stored = await this.#d.registry.update(session.workerId, session.id, {
      udp_endpoint: udp,
    });
    if (!stored) return;
    await this.#announce(session);
    this.#d.logger.info("worker reported udp endpoint", {
      worker_id: session.workerId,
      udp_public: pub ? `${pub.ip}:${pub.port}` : null,
      udp_mapped: mapped ? `${mapped.ip}:${mapped.port} (${mapped.protocol})` : null,
      udp_public6: public6 ? `[${public6.ip}]:${public6.port}` : null,
      nat_mapping: message.nat.mapping,
      local_candidates: message.local.length,
    });
    session.send({
      type: "udp_endpoint_registered",
      public: pub,
      mapping: message.nat.mapping,
    });
    return;
  }

  /** `path_update`: how it reaches a peer now (kept only for current peers of its group). */
  async pathUpdate(
    session: Session,
    message: Extract<ClientMessage, { type: "path_update" }>,
  ): Promise<void> {
    const record = await this.#d.registry.get(session.workerId);
    if (!record || record.session_id !== session.id) return;
    // A report about a worker that is not (or no longer) in the group is not kept.
    const peer = await this.#d.registry.get(message.peer_id);
    if (!peer || peer.group !== record.group || peer.worker_id === record.worker_id) return;
    const paths = { ...record.peer_paths };
    if (!(message.peer_id in paths) && Object.keys(paths).length >= MAX_PEER_PATHS) return;
    paths[message.peer_id] = {
      path: message.path,
      rtt_ms: message.rtt_ms,
      updated_at: new Date(this.#d.clock.now()).toISOString(),
    };
    if (!(await this.#d.registry.update(session.workerId, session.id, { peer_paths: paths }))) {
      return;
    }
    this.#d.pathReports.reported(session, message.peer_id);
    this.#d.dashboard.worker({ ...record, peer_paths: paths });
    const natPair = [record, peer].map((r) => r?.udp_endpoint?.nat_mapping ?? "unknown").sort()
      .join("/");
    this.#d.metrics.pathReports.inc({ nat_pair: natPair, path: message.path });
    if (message.path === "direct") {
      const at = this.#d.peers.firstDirectSince(session.workerId, message.peer_id);
      if (at !== undefined) {
        this.#d.metrics.timeToDirect.observe((this.#d.clock.now() - at) / 1000, {
          nat_pair: natPair,
        });
      }
    }
    this.#d.logger.info("peer path changed", {
      worker_id: session.workerId,
      peer_id: message.peer_id,
      path: message.path,
      rtt_ms: message.rtt_ms,
    });
    return;
  }

  /** `register_transport`: its transport certificate, vouched for by its key. */
  async registerTransport(
    session: Session,
    message: Extract<ClientMessage, { type: "register_transport" }>,
  ): Promise<void> {
    // Only a key can vouch for a certificate; peers check the signature themselves.
    if (session.key === null) {
      session.send({
        type: "error",
        code: "invalid_message",
        message: "Cannot register_transport: register with a key first",
      });
      return;
    }
    const transport = {
      cert_hash: message.cert_hash,
      signature: message.signature,
      ...(message.vouch === undefined ? {} : { vouch: message.vouch }),
    };
    const stored = await this.#d.registry.update(session.workerId, session.id, { transport });
    if (!stored) return;
    await this.#announce(session);
    this.#d.logger.info("worker published its transport certificate", {
      worker_id: session.workerId,
    });
    return;
  }

  /** The session's record changed: its peers and open dashboards hear it. */
  async #announce(session: Session): Promise<void> {
    const record = await this.#d.registry.get(session.workerId);
    if (!record) return;
    this.#d.peers.updated(session, record);
    this.#d.dashboard.worker(record);
  }

  /** `echo_request`: answered at once (the seed's heartbeat). */
  echoRequest(session: Session, message: Extract<ClientMessage, { type: "echo_request" }>): void {
    let text: string;
    try {
      text = encodeMessage({
        type: "echo_response",
        original_payload: message.payload,
        processed_by_rendezvous: `Rendezvous processed echo for worker ${session.workerId}`,
      });
    } catch {
      // JSON.stringify recurses; a payload nested deep enough exhausts the stack.
      session.send({
        type: "error",
        code: "invalid_message",
        message: "Cannot echo payload: it is nested too deeply",
      });
      return;
    }
    session.sendText(text);
    if (this.#d.logger.enabled("debug")) {
      this.#d.logger.debug("echo answered", { worker_id: session.workerId });
    }
    return;
  }

  /**
   * `peerId` left the fleet: every record of ours that reports a path to it
   * drops that entry (in each reporter's own order of writes).
   */
  prunePathsTo(peerId: string): void {
    for (const session of this.#d.pathReports.left(peerId)) {
      this.#d.enqueue(session, async () => {
        const record = await this.#d.registry.get(session.workerId);
        if (record?.session_id !== session.id || !(peerId in record.peer_paths)) return;
        const { [peerId]: _gone, ...rest } = record.peer_paths;
        const paths = Object.keys(rest).length === 0 ? NO_PEER_PATHS : rest;
        if (await this.#d.registry.update(session.workerId, session.id, { peer_paths: paths })) {
          this.#d.dashboard.worker({ ...record, peer_paths: paths });
        }
      });
    }
  }
}

/**
 * Why `ip` cannot be a candidate of a worker the rendezvous sees at an
 * address of scope `observed`, or undefined when it can: never unspecified,
 * multicast, broadcast, reserved or a cloud's metadata address; loopback and
 * link-local only for a worker seen at such an address itself (the quick
 * start and tests on one host).
 */
export function unusableCandidate(ip: string, observed: AddressScope): string | undefined {
  const scope = addressScope(ip);
  switch (scope) {
    case "unspecified":
    case "multicast":
    case "broadcast":
    case "metadata":
    case "invalid":
      return scope;
    case "loopback":
    case "link-local":
      return observed === scope ? undefined : scope;
    default:
      return undefined;
  }
}
