/**
 * The rendezvous service as a `(Request, info) => Response` handler with an
 * explicit lifecycle, so tests can drive it through a real `Deno.serve` on
 * port 0 and the entry point stays a few lines long.
 *
 * @module
 */

import { type Clock, delay, systemClock } from "../core/clock.ts";
import { type Logger, silentLogger } from "../core/log.ts";
import { Metrics } from "../core/metrics.ts";
import { TokenBucket } from "../core/rate_limit.ts";
import { CloseCode, CloseReason } from "../protocol/close_codes.ts";
import { fingerprint } from "../protocol/identity.ts";
import { PROTOCOL_VERSION } from "../protocol/messages.ts";
import { Admin } from "./admin.ts";
import { Admission, type Refused } from "./admission.ts";
import { Dashboard } from "./dashboard_routes.ts";
import { type Fleet, FleetRegistry } from "./fleet.ts";
import { fleetHost, RemotePeers } from "./fleet_host.ts";
import { Handlers } from "./handlers.ts";
import { problem } from "./http.ts";
import { guessClient, Guesses } from "./guesses.ts";
import { admitKey } from "./key_proof.ts";
import { answerChallenge, readBinary, readText } from "./intake.ts";
import { listingResponse } from "./listing.ts";
import { defineRendezvousMetrics, type RendezvousMetrics } from "./metrics.ts";
import { type RendezvousOptions, type ResolvedOptions, resolveOptions } from "./options.ts";
import { PathReports } from "./path_reports.ts";
import { PeerDirectory } from "./peers.ts";
import {
  clientAddress,
  parseRegistration,
  type RegistrationPolicy,
  type ServeInfo,
} from "./registration.ts";
import { revokedCloseReason } from "./revocations.ts";
import { route, type RouteTarget } from "./routes.ts";
import { MemoryRegistry, type Registry } from "./registry.ts";
import { Session, type SessionLimits, sessionLimits } from "./session.ts";
import {
  dashboardStats,
  readyResponse,
  type RendezvousState,
  statsResponse,
  type StatusSource,
} from "./status.ts";

export { forwardedClientIp } from "./http.ts";
export type { RendezvousOptions } from "./options.ts";
export type { ServeInfo } from "./registration.ts";

/** Lifecycle of a {@linkcode Rendezvous}. */
export type { RendezvousState } from "./status.ts";

/**
 * The rendezvous service.
 *
 * @example
 * ```ts
 * const rendezvous = new Rendezvous({ token: "s3cret" });
 * const server = Deno.serve({ port: 0, onListen: () => rendezvous.markReady() },
 *   rendezvous.handler);
 * // … later
 * await rendezvous.close();
 * await server.shutdown();
 * ```
 */
export class Rendezvous {
  /** Where the sessions' records live. */
  readonly registry: Registry;
  #options: ResolvedOptions;
  #log: Logger;
  #clock: Clock;
  #state: RendezvousState = "starting";
  /**
   * Live sessions of this instance, by socket: one set of socket handlers
   * finds its session here (no closure per socket, no property added to
   * Deno's WebSocket objects).
   */
  #sessions = new Map<WebSocket, Session>();
  /** The registered session of each worker on this instance. */
  #byWorker = new Map<string, Session>();
  #closing?: Promise<void>;
  #peers: PeerDirectory;
  #fleet?: Fleet;
  /** Sessions per client IP, and registered sessions per key. */
  #admission: Admission;
  /** Wrong credentials per client. */
  #guesses: Guesses;
  #registration: RegistrationPolicy;
  /** The send-buffer bound every session shares, and what happens past it. */
  #sendLimit: SessionLimits;
  /** Refused connection attempts, by why; and when each kind was last logged. */
  get refused(): Readonly<Refused> {
    return this.#admission.refused;
  }
  /** What `/metrics` serves. */
  readonly metrics: Metrics = new Metrics();
  #m!: RendezvousMetrics;
  #dashboard: Dashboard;
  /** The admin API and the revocations it makes (`admin.ts`, `revocations.ts`). */
  #admin: Admin;
  /** Which sessions' records name which peers, pruned when a peer leaves. */
  #pathReports = new PathReports<Session>();
  #handlers!: Handlers;
  /** What the status answers (`status.ts`) read. */
  #status!: StatusSource;
  /** When each worker id's last session here ended (for reconnects), pruned. */
  #endedAt = new Map<string, number>();
  #relayLimit: { rate: number; burst: number };
  /** Sessions whose close is still being cleaned up. */
  #cleaning = 0;
  #drained?: PromiseWithResolvers<void>;
  // One set of socket handlers for every session (no closures per socket).
  #socketOpen = (event: Event) => {
    const session = this.#sessions.get(event.target as WebSocket);
    if (session) this.#enqueue(session, () => this.#onOpen(session));
  };
  #socketMessage = (event: MessageEvent) => {
    const session = this.#sessions.get(event.target as WebSocket);
    if (!session) return;
    try {
      this.#onMessage(session, event);
    } catch (error) {
      // A bug of ours must cost one session, never the process (every session).
      this.#log.error("message handler failed", { worker_id: session.workerId, error });
      session.close(CloseCode.INTERNAL_ERROR, "internal error");
    }
  };
  #socketClose = (event: CloseEvent) => {
    const session = this.#sessions.get(event.target as WebSocket);
    if (session) this.#onClose(session, event);
  };

  /** A rendezvous with the given limits; serve {@linkcode Rendezvous.handler}. */
  constructor(options: RendezvousOptions = {}) {
    this.#fleet = options.fleet;
    this.#log = options.logger ?? silentLogger;
    this.#clock = options.clock ?? systemClock;
    this.#options = resolveOptions(options, this.#log, this.#clock);
    // In a fleet, this instance's own sessions stay in memory and the registry spans the fleet.
    const local = options.fleet ? new MemoryRegistry() : undefined;
    this.registry = options.fleet && local
      ? new FleetRegistry(local, options.fleet, this.#options.keyHoldSec * 1000)
      : options.registry ?? new MemoryRegistry();
    const remotePeers = new RemotePeers(options.fleet);
    this.#admission = new Admission(this.#options, this.#log, this.#clock);
    this.#guesses = new Guesses(
      this.#clock,
      (client) => this.#admission.note("guesses", 429, { client }),
    );
    this.#registration = { ...this.#options, guesses: this.#guesses };
    this.#admin = new Admin({
      ...this.#options,
      store: options.fleet?.bans ?? options.bans,
      sessions: () => this.#sessions.values(),
      registry: this.registry,
    });
    this.#sendLimit = sessionLimits(this.#options, this.#log, this.#clock);
    this.#dashboard = new Dashboard({
      token: this.#options.token,
      clock: this.#clock,
      workers: () => this.registry.list(),
      stats: () => dashboardStats(this.#status),
      refused: (fields) => this.#admission.note("sign_in", 401, fields),
      guesses: this.#guesses,
      revoke: (workerId, client) => this.#admin.revokeFromDashboard(workerId, client),
    });
    this.#relayLimit = {
      rate: this.#options.relayRatePerSec,
      burst: this.#options.relayBurst,
    };
    this.#peers = new PeerDirectory({
      registry: this.registry,
      sessionOf: (id) => this.#byWorker.get(id) ?? remotePeers.get(id),
      clock: this.#clock,
      logger: this.#log,
      ...(options.fleet
        ? {
          claimIntroduction: (pair: string, sessionId: string, windowMs: number) =>
            options.fleet!.claimIntroduction(pair, sessionId, windowMs),
        }
        : {}),
    });
    this.#m = defineRendezvousMetrics(this.metrics, {
      sessions: () => this.#sessions.size,
      workers: () => this.#byWorker.size + (this.#fleet?.remoteCount ?? 0),
      refused: () => this.refused,
      bans: () => this.#admin.bans.size,
      peers: this.#peers.stats,
      stun: options.stunStats,
      fleet: this.#fleet,
    });
    this.#status = {
      state: () => this.#state,
      fleet: this.#fleet,
      sessions: () => this.#sessions.size,
      local: () => this.#byWorker.size,
      registered: () => this.registry.size(),
      peers: this.#peers.stats,
      refused: () => this.refused,
      metrics: this.#m,
      clock: this.#clock,
    };
    this.#handlers = new Handlers({
      registry: this.registry,
      peers: this.#peers,
      dashboard: this.#dashboard,
      metrics: this.#m,
      pathReports: this.#pathReports,
      logger: this.#log,
      clock: this.#clock,
      enqueue: (session, work) => this.#enqueue(session, work),
    });
    if (this.#fleet && local) {
      this.#fleet.start(fleetHost({
        sessions: this.#byWorker,
        local,
        peers: this.#peers,
        dashboard: this.#dashboard,
        handlers: this.#handlers,
        logger: this.#log,
        keyHoldMs: this.#options.keyHoldSec * 1000,
      }));
    }
  }

  /** The options in force, every default filled in (`RENDEZVOUS_DEFAULTS`). */
  get settings(): Readonly<Omit<ResolvedOptions, "logger" | "clock" | "token">> {
    const { logger: _logger, clock: _clock, token: _token, ...settings } = this.#options;
    return settings;
  }

  /** Where the service is in its life. */
  get state(): RendezvousState {
    return this.#state;
  }

  /** Sessions held now, registered or not. */
  get connectionCount(): number {
    return this.#sessions.size;
  }

  /** Marks the service ready (call from `onListen`); `/ready` turns 200. */
  markReady(): void {
    if (this.#state === "starting") this.#state = "running";
  }

  /** Handles one HTTP request; pass it to `Deno.serve`. */
  handler = (req: Request, info: ServeInfo): Response | Promise<Response> =>
    route(req, info, this.#routes);

  /** What the routes (`routes.ts`) reach. */
  #routes: RouteTarget = {
    register: (req, url, info) => this.#register(req, url, info),
    ready: () => readyResponse(this.#status),
    about: () => ({ name: this.#options.name, version: this.#options.version }),
    guard: (req, client) => this.#guesses.bearer(req, this.#options.token, client),
    client: (req, info) =>
      guessClient(clientAddress(req, info, this.#options.trustProxyHops)?.ip ?? null),
    listWorkers: () => this.#listWorkers(),
    stats: () => statsResponse(this.#status),
    metrics: () => this.metrics.render(),
    dashboard: () => this.#dashboard,
    admin: (req, path, client) =>
      this.#admin.handle(req, path, client, () => this.#routes.guard(req, client)),
  };

  /** The seed's listing of the fleet, streamed (`listing.ts`). */
  async #listWorkers(): Promise<Response> {
    return listingResponse(await this.registry.list(), (record) => {
      const session = this.#byWorker.get(record.worker_id);
      return session?.id === record.session_id ? session : undefined;
    });
  }

  #register(req: Request, url: URL, info: ServeInfo): Response {
    if (this.#state !== "running") {
      return problem(503, `Rendezvous is ${this.#state}`, { "retry-after": "1" });
    }
    const request = parseRegistration(req, url, info, this.#registration);
    if (request instanceof Response) return request;
    const { workerId, group, key, observedIp, observedPort } = request;

    // Limits, cheapest first; each refusal says when to come back.
    const refusal = this.#admission.check(this.#sessions.size, observedIp, key, workerId);
    if (refusal) return refusal;
    const now = this.#clock.now();

    // Headers cannot be read once the request is upgraded.
    const authority = (req.headers.get("host") ?? "").toLowerCase();
    let socket: WebSocket;
    let response: Response;
    try {
      ({ socket, response } = Deno.upgradeWebSocket(req, {
        idleTimeout: this.#options.idleTimeoutSec,
      }));
    } catch (error) {
      return problem(400, `Cannot upgrade to WebSocket: ${(error as Error).message}`);
    }
    const session = new Session({
      workerId,
      group,
      key,
      authority,
      socket,
      observedIp,
      observedPort,
      now,
      bucket: new TokenBucket(this.#options.messageRatePerSec, this.#options.messageBurst, now),
      relayLimit: this.#relayLimit,
      relayBytes: this.#options.relayBytesPerSec,
      sendLimit: this.#sendLimit,
    });
    this.#sessions.set(socket, session);
    this.#admission.opened(observedIp);
    this.#log.info("worker connecting", {
      worker_id: workerId,
      observed_ip: observedIp,
      observed_port: observedPort,
    });
    socket.binaryType = "arraybuffer";
    // Once: the listener is dropped after it fires, so an idle session holds none.
    socket.addEventListener("open", this.#socketOpen, { once: true });
    socket.onmessage = this.#socketMessage;
    socket.onclose = this.#socketClose;
    // No error listener: the close event that follows an error does the work.
    return response;
  }

  #enqueue(session: Session, work: () => Promise<void>): void {
    session.tail = session.tail.then(work).catch((error) => {
      this.#log.error("session task failed", {
        worker_id: session.workerId,
        error,
      });
      session.close(CloseCode.INTERNAL_ERROR, "internal error");
    });
  }

  async #onOpen(session: Session): Promise<void> {
    if (session.socket.readyState !== WebSocket.OPEN) return;
    // A revoked key or id, before anything else (a ban made later closes it: #closeRevoked).
    const ban = this.#admin.bans.match(session.workerId, session.key);
    if (ban) {
      this.#admission.note("revoked", CloseCode.REVOKED, {
        worker_id: session.workerId,
        ban: ban.id,
        observed_ip: session.observedIp,
      });
      return session.close(CloseCode.REVOKED, revokedCloseReason(ban));
    }
    if (!(await admitKey(session, this.registry, this.#options))) return;
    const { key } = session;
    const record = session.record(key === null ? null : await fingerprint(key));
    const previous = await this.registry.put(record);
    session.registered = true;
    this.#admission.registered(key);
    this.#m.registrations.inc();
    const ended = this.#endedAt.get(session.workerId);
    if (ended !== undefined && this.#clock.now() - ended < 60_000) this.#m.reconnects.inc();
    const before = this.#byWorker.get(session.workerId);
    const replaced = previous && before?.id === previous.session_id ? before : undefined;
    this.#byWorker.set(session.workerId, session);
    if (replaced) {
      this.#log.info("worker session replaced", {
        worker_id: session.workerId,
        old_observed_ip: replaced.observedIp,
        old_observed_port: replaced.observedPort,
      });
      replaced.close(CloseCode.SESSION_REPLACED, CloseReason.REPLACED);
    }
    this.#log.info("worker registered", {
      worker_id: session.workerId,
      observed_ip: session.observedIp,
      observed_port: session.observedPort,
      key_fingerprint: record.key_fingerprint ?? undefined,
      total: await this.registry.size(),
    });
    session.send({
      type: "registered",
      worker_id: session.workerId,
      observed_ip: session.observedIp,
      observed_port: session.observedPort,
      protocol_version: PROTOCOL_VERSION,
    });
    this.#peers.joined(session, record);
    this.#dashboard.worker(record);
  }

  #onMessage(session: Session, event: MessageEvent): void {
    const now = this.#clock.now();
    session.lastSeen = now;
    const data = event.data;
    if (typeof data !== "string") {
      const frame = readBinary(session, data, this.#log);
      if (frame === undefined) return;
      // A packet before the session is registered (a worker with live
      // connections that just reconnected) is dropped, like any packet.
      if (!session.registered) this.#peers.stats.packetsDropped++;
      else this.#peers.relayPacket(session, frame);
      return;
    }
    const message = readText(session, data, now, this.#options);
    if (message === undefined) return;
    // The proof answers the challenge #onOpen is waiting on, so it cannot
    // queue behind it; everything else does, and runs once registered: a
    // refused session (other key, bad proof, no key for a keyed id) handles
    // nothing at all, so it can neither introduce nor relay nor take a
    // pair's introduction slot.
    if (message.type === "prove_key") return answerChallenge(session, message.signature);
    this.#enqueue(session, async () => {
      if (!session.registered) return this.#m.messagesDropped.inc({ reason: "unregistered" });
      await this.#handlers.handle(session, message);
    });
  }

  #onClose(session: Session, event: CloseEvent): void {
    this.#sessions.delete(session.socket);
    this.#admission.closed(session.observedIp, session.key, session.registered);
    this.#m.disconnections.inc({ code: String(event.code) });
    if (session.registered) {
      if (this.#endedAt.size >= 100_000) this.#endedAt.clear(); // bounded: a reconnect may go uncounted
      this.#endedAt.set(session.workerId, this.#clock.now());
    }
    session.proof?.resolve(null);
    this.#cleaning++;
    this.#log.info("worker disconnected", {
      worker_id: session.workerId,
      observed_ip: session.observedIp,
      observed_port: session.observedPort,
      code: event.code,
      reason: event.reason || undefined,
    });
    this.#enqueue(session, async () => {
      if (this.#byWorker.get(session.workerId) === session) this.#byWorker.delete(session.workerId);
      const removed = session.registered &&
        await this.registry.remove(session.workerId, session.id, session.leaving);
      this.#pathReports.forget(session);
      this.#peers.left(session, removed, session.leaving);
      if (removed) {
        this.#dashboard.left(session.workerId);
        this.#handlers.prunePathsTo(session.workerId);
      }
      if (removed && session.key !== null) {
        await this.registry.releaseKey(
          session.workerId,
          session.key,
          session.id,
          this.#clock.now(),
        );
      }
      if (removed) {
        this.#log.info("worker de-registered", {
          worker_id: session.workerId,
          total: await this.registry.size(),
        });
      }
    });
    session.tail.finally(() => {
      this.#cleaning--;
      if (this.#sessions.size === 0 && this.#cleaning === 0) this.#drained?.resolve();
    });
  }

  /**
   * Stops accepting workers and closes every session with 1001 so workers
   * reconnect at once (to another instance, or to this one's successor).
   * Resolves when every session closed or `timeoutMs` passed. Idempotent.
   */
  close(timeoutMs = 5000): Promise<void> {
    this.#closing ??= this.#close(timeoutMs);
    return this.#closing;
  }

  async #close(timeoutMs: number): Promise<void> {
    this.#state = "closing";
    const sessions = [...this.#sessions.values()];
    this.#log.info("rendezvous closing", { sessions: sessions.length });
    this.#drained = Promise.withResolvers<void>();
    if (sessions.length === 0 && this.#cleaning === 0) this.#drained.resolve();
    const startedAt = this.#clock.now();
    const abort = new AbortController();
    const wait = (ms: number) =>
      delay(ms, { signal: abort.signal, clock: this.#clock }).catch(() => {});
    if (sessions.length > 0) {
      // Workers that understand the notice go quiet before the close frame.
      const notice = { type: "going_away", reason: CloseReason.SHUTDOWN } as const;
      for (const session of sessions) session.send(notice);
      const noticeMs = Math.min(this.#options.closeNoticeMs, timeoutMs);
      await Promise.race([this.#drained.promise, wait(noticeMs)]);
    }
    for (const session of this.#sessions.values()) {
      session.close(CloseCode.GOING_AWAY, CloseReason.SHUTDOWN);
    }
    const left = Math.max(0, timeoutMs - (this.#clock.now() - startedAt));
    await Promise.race([this.#drained.promise, wait(left)]);
    abort.abort();
    this.#state = "closed";
    this.#dashboard.close();
    this.#log.info("rendezvous closed", { remaining: this.#sessions.size });
  }
}
