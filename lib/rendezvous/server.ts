/**
 * The rendezvous service as a `(Request, info) => Response` handler with an
 * explicit lifecycle, so tests can drive it through a real `Deno.serve` on
 * port 0 and the entry point stays a few lines long.
 *
 * @module
 */

import { CloseCode, CloseReason } from "../protocol/close_codes.ts";
import { type Clock, delay, systemClock, type TimerId } from "../core/clock.ts";
import { normalizeIp } from "../protocol/ip.ts";
import { type Logger, silentLogger } from "../core/log.ts";
import {
  type ClientMessage,
  encodeMessage,
  isValidWorkerId,
  parseClientMessage,
  PROTOCOL_VERSION,
  ProtocolError,
  REGISTER_PATH_PREFIX,
  type ServerMessage,
  type WorkerListingEntry,
} from "../protocol/messages.ts";
import { TokenBucket } from "../core/rate_limit.ts";
import { type Counter, type Histogram, Metrics, METRICS_CONTENT_TYPE } from "../core/metrics.ts";
import type { StunServerStats } from "../stun/server.ts";
import {
  DashboardHub,
  dashboardPages,
  dashboardWorker,
  hasSession,
  sessionCookie,
} from "./dashboard.ts";
import { parseRelayFrame, type RelayFrame } from "../protocol/relay_frame.ts";
import {
  fingerprint,
  importPublicKey,
  newNonce,
  parsePublicKey,
  registrationPayload,
  verifySignature,
} from "../protocol/identity.ts";
import { PeerDirectory, type PeerSession } from "./peers.ts";
import { MemoryRegistry, type Registry, type WorkerRecord } from "./registry.ts";
import { type Fleet, FleetRegistry, type RemoteWorker } from "./fleet.ts";
import { MAX_PEER_PATHS, PathReports } from "./path_reports.ts";
import {
  RENDEZVOUS_DEFAULTS,
  type RendezvousOptions,
  type ResolvedOptions,
  resolveOptions,
} from "./options.ts";

export type { RendezvousOptions } from "./options.ts";

/** Lifecycle of a {@linkcode Rendezvous}. */
export type RendezvousState = "starting" | "running" | "closing" | "closed";

/** Connection info as `Deno.serve` passes it. */
export type ServeInfo = Deno.ServeHandlerInfo<Deno.NetAddr>;

/** Workers serialized per turn of the event loop by the listing. */
const LIST_SLICE = 250;

/**
 * Bytes waiting in a session's send buffer beyond which relayed packets to
 * it are dropped: about 10 ms at 100 MB/s, so a slow receiver costs the
 * rendezvous little memory and the senders' QUIC sees loss, not delay.
 */
const MAX_BUFFERED_RELAY = 1 << 20;

const encoder = new TextEncoder();
/** Shared by every record that has no peer paths yet (most of a fleet). */
const NO_PEER_PATHS: Readonly<Record<string, never>> = Object.freeze({});

const JSON_HEADERS = { "content-type": "application/json; charset=utf-8" };

function decrement(counts: Map<string, number>, key: string): void {
  const n = (counts.get(key) ?? 0) - 1;
  if (n <= 0) counts.delete(key);
  else counts.set(key, n);
}

function json(body: unknown, status = 200, headers: HeadersInit = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...JSON_HEADERS, ...headers },
  });
}

function problem(status: number, error: string, headers: HeadersInit = {}): Response {
  return json({ error }, status, headers);
}

/** UTF-8 length of `text`, stopping early once it passes `limit`. */
function utf8LengthExceeds(text: string, limit: number): boolean {
  // Every UTF-16 unit is at least one UTF-8 byte and at most three.
  if (text.length > limit) return true;
  if (text.length * 3 <= limit) return false;
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff) {
      bytes += 4; // A surrogate pair: one four-byte sequence.
      i++;
    } else bytes += 3;
    if (bytes > limit) return true;
  }
  return false;
}

/** Compares secrets in time independent of where they first differ. */
function constantTimeEqual(a: string, b: string): boolean {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  if (x.length !== y.length) return false;
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

/**
 * The client address from `X-Forwarded-For`, trusting `hops` proxies: each
 * proxy appends the address it saw, so the entry `hops` from the right is the
 * last one a trusted proxy wrote. Entries left of it are the client's to
 * forge and are never used.
 */
export function forwardedClientIp(header: string | null, hops: number): string | null {
  if (header === null || hops < 1) return null;
  const entries = header.split(",").map((e) => e.trim()).filter((e) => e !== "");
  const entry = entries[entries.length - hops];
  if (entry === undefined) return null;
  // Some proxies write "[v6]:port" or "v4:port".
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(entry);
  if (bracketed) return normalizeIp(bracketed[1]);
  const v4WithPort = /^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(entry);
  return normalizeIp(v4WithPort ? v4WithPort[1] : entry);
}

/** Per-process prefix of session ids, so ids stay unique in a shared registry. */
const INSTANCE = [...crypto.getRandomValues(new Uint8Array(4))]
  .map((b) => b.toString(16).padStart(2, "0")).join("");
let sessionCounter = 0;
const SETTLED: Promise<unknown> = Promise.resolve();

interface SessionInit {
  relayBytes: number;
  workerId: string;
  group: string;
  key: string | null;
  authority: string;
  socket: WebSocket;
  observedIp: string | null;
  observedPort: number | null;
  now: number;
  bucket: TokenBucket;
  relayLimit: { rate: number; burst: number };
}

/**
 * One WebSocket session. Kept small: a fleet holds tens of thousands, and
 * what each costs beyond Deno's own WebSocket is what the product costs.
 */
class Session implements PeerSession {
  readonly id = `${INSTANCE}.${(sessionCounter++).toString(36)}`;
  readonly workerId: string;
  readonly group: string;
  /** The key the worker registered with (`?key=`), proven before it is registered. */
  readonly key: string | null;
  /** The `Host` the worker dialed, for its key proof. */
  readonly authority: string;
  /** Resolves with the `prove_key` signature, or null when the socket closes first. */
  proof?: PromiseWithResolvers<string | null>;
  readonly socket: WebSocket;
  readonly observedIp: string | null;
  readonly observedPort: number | null;
  readonly connectedAt: number;
  readonly bucket: TokenBucket;
  #relayLimit: { rate: number; burst: number };
  #relayBucket?: TokenBucket;
  #relayBytes: number;
  #relayBytesBucket?: TokenBucket;
  lastSeen: number;
  rttMs: number | null = null;
  watching = false;
  /** Serializes this session's registry work so its writes land in order. */
  tail: Promise<unknown> = SETTLED;
  registered = false;

  constructor(init: SessionInit) {
    this.workerId = init.workerId;
    this.group = init.group;
    this.key = init.key;
    this.authority = init.authority;
    this.socket = init.socket;
    this.observedIp = init.observedIp;
    this.observedPort = init.observedPort;
    this.connectedAt = init.now;
    this.lastSeen = init.now;
    this.bucket = init.bucket;
    this.#relayLimit = init.relayLimit;
    this.#relayBytes = init.relayBytes;
  }

  takeRelayBytes(now: number, bytes: number): boolean {
    this.#relayBytesBucket ??= new TokenBucket(this.#relayBytes, this.#relayBytes / 4, now);
    return this.#relayBytesBucket.take(now, bytes);
  }

  sendBinary(bytes: Uint8Array): boolean {
    const socket = this.socket;
    if (socket.readyState !== WebSocket.OPEN || socket.bufferedAmount > MAX_BUFFERED_RELAY) {
      return false;
    }
    try {
      socket.send(bytes);
      return true;
    } catch {
      return false;
    }
  }

  /** Spends a relay token; the bucket exists only for sessions that relay. */
  takeRelay(now: number): boolean {
    this.#relayBucket ??= new TokenBucket(this.#relayLimit.rate, this.#relayLimit.burst, now);
    return this.#relayBucket.take(now);
  }

  send(message: ServerMessage): void {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    try {
      this.socket.send(encodeMessage(message));
    } catch {
      // The socket closed under us; its close handler cleans up.
    }
  }

  close(code: number, reason: string): void {
    try {
      this.socket.close(code, reason);
    } catch {
      // Already closing or closed.
    }
  }
}

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
  #perIp = new Map<string, number>();
  #perKey = new Map<string, number>();
  #handshakes?: TokenBucket;
  /** Refused connection attempts, by why; and when each kind was last logged. */
  readonly refused = { at_capacity: 0, per_ip: 0, per_key: 0, handshake_rate: 0, sign_in: 0 };
  #refusalLoggedAt = new Map<string, { at: number; suppressed: number }>();
  /** What `/metrics` serves. */
  readonly metrics: Metrics = new Metrics();
  #m!: {
    registrations: Counter;
    reconnects: Counter;
    disconnections: Counter;
    workerRtt: Histogram;
    pathReports: Counter;
    timeToDirect: Histogram;
  };
  #dashboard = new DashboardHub();
  /** Which sessions' records name which peers, pruned when a peer leaves. */
  #pathReports = new PathReports<Session>();
  #dashboardTimer?: TimerId;
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
    this.registry = options.fleet
      ? new FleetRegistry(
        new MemoryRegistry(),
        options.fleet,
        (options.keyHoldSec ?? RENDEZVOUS_DEFAULTS.keyHoldSec) * 1000,
      )
      : options.registry ?? new MemoryRegistry();
    this.#log = options.logger ?? silentLogger;
    this.#clock = options.clock ?? systemClock;
    this.#options = resolveOptions(options, this.#log, this.#clock);
    this.#relayLimit = {
      rate: this.#options.relayRatePerSec,
      burst: this.#options.relayBurst,
    };
    this.#peers = new PeerDirectory({
      registry: this.registry,
      sessionOf: (id) => this.#byWorker.get(id) ?? this.#remotePeer(id),
      clock: this.#clock,
      logger: this.#log,
      ...(options.fleet
        ? {
          claimIntroduction: (pair: string, sessionId: string, windowMs: number) =>
            options.fleet!.claimIntroduction(pair, sessionId, windowMs),
        }
        : {}),
    });
    this.#defineMetrics(options.stunStats);
    this.#fleet?.start({
      deliver: (workerId, group, message) => {
        const session = this.#byWorker.get(workerId);
        if (session?.group === group) session.send(message);
      },
      deliverBinary: (workerId, group, bytes) => {
        const session = this.#byWorker.get(workerId);
        if (session?.group !== group || !session.sendBinary(bytes)) {
          this.#peers.stats.packetsDropped++;
        }
      },
      replaced: (workerId, sessionId) => {
        const session = this.#byWorker.get(workerId);
        if (session?.id !== sessionId) return;
        this.#log.info("worker session replaced on another instance", {
          worker_id: workerId,
          old_observed_ip: session.observedIp,
        });
        session.close(CloseCode.SESSION_REPLACED, CloseReason.REPLACED);
      },
      joined: (record) => {
        this.#peers.remoteJoined(record);
        this.#dashboard.worker(record);
      },
      updated: (record) => {
        this.#peers.remoteUpdated(record);
        this.#dashboard.worker(record);
      },
      left: (workerId, group) => {
        this.#peers.remoteLeft(workerId, group);
        this.#dashboard.left(workerId);
        this.#prunePathsTo(workerId);
      },
      localRecords: () => (this.registry as FleetRegistry).local.list(),
      rttOf: (workerId) => this.#byWorker.get(workerId)?.rttMs ?? null,
      keyHoldMs: this.#options.keyHoldSec * 1000,
    });
  }

  #defineMetrics(stunStats?: () => StunServerStats): void {
    const m = this.metrics;
    const ns = "holepunch_rendezvous";
    m.gauge(`${ns}_sessions`, "WebSocket sessions this instance holds.", () => this.#sessions.size);
    m.gauge(
      `${ns}_workers`,
      "Workers registered in the fleet (this instance's and, with Redis, everyone else's).",
      () => this.#byWorker.size + (this.#fleet?.remoteCount ?? 0),
    );
    const ms = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000].map((x) => x / 1000);
    const sec = [0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60];
    this.#m = {
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
    };
    const stats = this.#peers.stats;
    m.counterFrom(
      `${ns}_refused_total`,
      "Connection attempts refused, by reason.",
      () => Object.entries(this.refused).map(([reason, n]) => [{ reason }, n]),
    );
    m.counterFrom(
      `${ns}_introductions_total`,
      "Pairs introduced (punch sent to both).",
      () => stats.introductions,
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
    m.counterFrom(`${ns}_relay_refused_total`, "Relay frames refused or dropped.", () => [
      [{ reason: "rate_limited" }, stats.relayRejected],
      [{ reason: "packet_dropped" }, stats.packetsDropped],
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
    const fleet = this.#fleet;
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
  }

  /** Bearer token, or (dashboard paths) the sign-in cookie; always, without a token. */
  async #dashboardAuthorized(req: Request): Promise<boolean> {
    const token = this.#options.token;
    return token === undefined || this.#authorized(req) ||
      await hasSession(req, token, this.#clock.now());
  }

  async #dashboardPage(req: Request): Promise<Response> {
    const pages = await dashboardPages();
    const headers = {
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": pages.csp,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "cache-control": "no-store",
    };
    if (!(await this.#dashboardAuthorized(req))) {
      return new Response(pages.signIn(), { status: 401, headers });
    }
    return new Response(pages.page, { headers });
  }

  /** The sign-in form's POST: the token, checked, for a cookie; then back to the page. */
  async #signIn(req: Request, url: URL): Promise<Response> {
    const token = this.#options.token;
    if (token === undefined) return Response.redirect(new URL("/dashboard", url), 303);
    // The form is small: read at most 4 KiB of it, whatever the client claims.
    let given = "";
    const reader = req.body?.getReader();
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      while (reader) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.length;
        if (size > 4096) {
          await reader.cancel();
          return problem(413, "Cannot read a sign-in form larger than 4 KiB");
        }
        chunks.push(value);
      }
      const bytes = new Uint8Array(size);
      let at = 0;
      for (const chunk of chunks) {
        bytes.set(chunk, at);
        at += chunk.length;
      }
      const body = new TextDecoder().decode(bytes);
      given = new URLSearchParams(body).get("token") ?? "";
    } catch {
      given = "";
    }
    const pages = await dashboardPages();
    if (!constantTimeEqual(given, token)) {
      // Counted and logged like any refusal (at most once a second), answered with the form.
      this.#noteRefusal("sign_in", 401, { path: "/dashboard/login" });
      return new Response(pages.signIn("That is not the token."), {
        status: 401,
        headers: {
          "content-type": "text/html; charset=utf-8",
          "content-security-policy": pages.csp,
        },
      });
    }
    const secure = url.protocol === "https:" ||
      req.headers.get("x-forwarded-proto")?.split(",")[0].trim() === "https";
    return new Response(null, {
      status: 303,
      headers: {
        location: "/dashboard",
        "set-cookie": await sessionCookie(token, this.#clock.now(), secure),
      },
    });
  }

  async #dashboardEvents(req: Request): Promise<Response> {
    if (!(await this.#dashboardAuthorized(req))) return this.#unauthorized();
    const stream = this.#dashboard.open(async () =>
      (await this.registry.list()).map(dashboardWorker)
    );
    this.#dashboardTick();
    return new Response(stream, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
      },
    });
  }

  /** Counters to open dashboards once a second, while any is open. */
  #dashboardTick(): void {
    if (this.#dashboardTimer !== undefined) return;
    const tick = () => {
      this.#dashboardTimer = undefined;
      if (this.#dashboard.clients === 0 || this.#state === "closed") return;
      const outcomes: Record<string, Record<string, number>> = {};
      for (const { labels, value } of this.#m.pathReports.samples()) {
        (outcomes[labels.nat_pair] ??= {})[labels.path] = value;
      }
      this.#dashboard.stats({
        at: this.#clock.now(),
        workers: this.#byWorker.size + (this.#fleet?.remoteCount ?? 0),
        registrations: this.#m.registrations.get(),
        introductions: this.#peers.stats.introductions,
        relay_bytes: this.#peers.stats.relayBytes,
        outcomes,
      });
      this.#dashboardTimer = this.#clock.setTimeout(tick, 1000);
    };
    this.#dashboardTimer = this.#clock.setTimeout(tick, 0);
  }

  /**
   * A worker registered on another instance, as a peer session that sends
   * through the fleet. Made once per remote record (relayed packets look it
   * up one by one); a changed record is a new object, so the cache follows.
   */
  #remotePeer(workerId: string): PeerSession | undefined {
    const fleet = this.#fleet;
    const worker = fleet?.remote(workerId);
    if (!fleet || !worker) return undefined;
    let peer = this.#remotePeers.get(worker);
    if (!peer) this.#remotePeers.set(worker, peer = this.#makeRemotePeer(fleet, worker));
    return peer;
  }

  #remotePeers = new WeakMap<RemoteWorker, PeerSession>();

  #makeRemotePeer(fleet: Fleet, worker: RemoteWorker): PeerSession {
    const { instance, record } = worker;
    const workerId = record.worker_id;
    return {
      workerId,
      group: record.group,
      rttMs: worker.rttMs,
      watching: false,
      takeRelay: () => true,
      takeRelayBytes: () => true,
      send: (message) => fleet.send(instance, workerId, record.group, message),
      sendBinary: (bytes) => fleet.sendBinary(instance, workerId, record.group, bytes),
    };
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
  handler = (req: Request, info: ServeInfo): Response | Promise<Response> => {
    const url = new URL(req.url);
    const path = url.pathname;
    if (path.startsWith(REGISTER_PATH_PREFIX)) return this.#register(req, url, info);
    if (path === "/dashboard/login" && req.method === "POST") return this.#signIn(req, url);
    if (req.method !== "GET" && req.method !== "HEAD") {
      return problem(405, `Method ${req.method} is not allowed`, { allow: "GET, HEAD" });
    }
    switch (path) {
      case "/":
        return json({
          message:
            "Rendezvous Service is running. Connect via WebSocket at /ws/register/{worker_id}",
          name: this.#options.name,
          version: this.#options.version,
        });
      case "/health":
        return json({ status: "ok" });
      case "/ready":
        // An instance whose Redis is away still serves what it holds: it
        // says so, and stays in rotation (taking it out would cut everyone).
        if (this.#state !== "running") return json({ status: this.#state }, 503);
        if (this.#fleet && !this.#fleet.up) {
          return json({ status: "degraded", redis: "unavailable", instance: this.#fleet.instance });
        }
        return json({
          status: "ready",
          ...(this.#fleet ? { redis: "up", instance: this.#fleet.instance } : {}),
        });
      case "/debug/list_workers":
        return this.#authorized(req) ? this.#listWorkers() : this.#unauthorized();
      case "/debug/stats":
        return this.#authorized(req) ? this.#stats() : this.#unauthorized();
      case "/dashboard":
        return this.#dashboardPage(req);
      case "/dashboard/events":
        return this.#dashboardEvents(req);
      case "/metrics":
        return this.#authorized(req)
          ? new Response(this.metrics.render(), {
            headers: { "content-type": METRICS_CONTENT_TYPE },
          })
          : this.#unauthorized();
      default:
        return problem(404, `Cannot find ${path}`);
    }
  };

  #authorized(req: Request): boolean {
    const token = this.#options.token;
    if (token === undefined) return true;
    const header = req.headers.get("authorization") ?? "";
    const match = /^Bearer\s+(.+)$/i.exec(header);
    return match !== null && constantTimeEqual(match[1].trim(), token);
  }

  #unauthorized(): Response {
    return problem(401, "Missing or invalid bearer token", {
      "www-authenticate": 'Bearer realm="holepunch"',
    });
  }

  /** Counts without listing anyone: cheap enough to poll during a storm. */
  async #stats(): Promise<Response> {
    const memory = Deno.memoryUsage();
    return json({
      state: this.#state,
      sessions: this.#sessions.size,
      registered: await this.registry.size(),
      peers: this.#peers.stats,
      refused: this.refused,
      ...(this.#fleet
        ? {
          fleet: {
            instance: this.#fleet.instance,
            up: this.#fleet.up,
            remote_workers: this.#fleet.remoteCount,
            ...this.#fleet.stats,
          },
        }
        : {}),
      memory: { rss: memory.rss, heap_used: memory.heapUsed },
    });
  }

  #listEntry(record: WorkerRecord): WorkerListingEntry {
    const session = this.#byWorker.get(record.worker_id);
    const local = session?.id === record.session_id ? session : undefined;
    return {
      websocket_observed_ip: record.observed_ip,
      websocket_observed_port: record.observed_port,
      http_reported_public_ip: record.http_reported_public_ip,
      // A record lives only while its session does; a local one can say more.
      websocket_connected: local ? local.socket.readyState === WebSocket.OPEN : true,
      connected_at: new Date(record.connected_at).toISOString(),
      last_seen: local ? new Date(local.lastSeen).toISOString() : null,
      udp_endpoint: record.udp_endpoint,
      group: record.group,
      peer_paths: record.peer_paths,
      key: record.key,
      key_fingerprint: record.key_fingerprint,
    };
  }

  /**
   * The seed's listing, streamed: a snapshot of the registry is serialized
   * in slices of {@linkcode LIST_SLICE} workers with a turn of the event loop
   * between them, so a listing of a whole fleet never stalls the sessions.
   */
  async #listWorkers(): Promise<Response> {
    const records = await this.registry.list();
    let index = 0;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        controller.enqueue(
          encoder.encode(`{"connected_workers_count":${records.length},"workers":{`),
        );
      },
      // Each slice is pulled after the previous one was written to the
      // socket, an I/O turn in between: other sessions run meanwhile.
      pull: (controller) => {
        const end = Math.min(records.length, index + LIST_SLICE);
        let chunk = "";
        for (; index < end; index++) {
          const record = records[index];
          chunk += `${index === 0 ? "" : ","}${JSON.stringify(record.worker_id)}:${
            JSON.stringify(this.#listEntry(record))
          }`;
        }
        if (index >= records.length) {
          controller.enqueue(encoder.encode(chunk + "}}"));
          controller.close();
        } else {
          controller.enqueue(encoder.encode(chunk));
        }
      },
    });
    return new Response(body, { headers: JSON_HEADERS });
  }

  #register(req: Request, url: URL, info: ServeInfo): Response {
    if (this.#state !== "running") {
      return problem(503, `Rendezvous is ${this.#state}`, { "retry-after": "1" });
    }
    // A plain slice, not URLPattern: this runs once per registration, and
    // URLPattern's matcher was a measurable share of it.
    const segment = url.pathname.slice(REGISTER_PATH_PREFIX.length);
    let workerId: string | undefined;
    try {
      workerId = segment.includes("/") ? undefined : decodeURIComponent(segment);
    } catch {
      workerId = undefined;
    }
    if (workerId === undefined || !isValidWorkerId(workerId)) {
      return problem(
        400,
        "Cannot register: worker_id must be 1-128 characters of [A-Za-z0-9._-]",
      );
    }
    const group = url.searchParams.get("group") ?? "default";
    if (!isValidWorkerId(group)) {
      return problem(400, "Cannot register: group must be 1-128 characters of [A-Za-z0-9._-]");
    }
    if (!this.#authorized(req)) return this.#unauthorized();
    const keyParam = url.searchParams.get("key");
    let key: string | null = null;
    if (keyParam !== null) {
      try {
        key = parsePublicKey(keyParam);
      } catch (error) {
        return problem(400, `Cannot register: ${(error as Error).message}`);
      }
    } else if (this.#options.requireWorkerKeys) {
      this.#log.warn("worker refused: no key", { worker_id: workerId });
      return problem(
        401,
        "Cannot register: this rendezvous requires a worker key (?key=, proven by signature)",
      );
    }
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return problem(426, "Cannot register: this endpoint needs a WebSocket upgrade", {
        upgrade: "websocket",
      });
    }
    let observedIp: string | null = null;
    let observedPort: number | null = null;
    if (this.#options.trustProxyHops > 0) {
      observedIp = forwardedClientIp(
        req.headers.get("x-forwarded-for"),
        this.#options.trustProxyHops,
      );
    } else {
      try {
        // Throws "Request closed" when the client is already gone.
        observedIp = normalizeIp(info.remoteAddr.hostname);
        observedPort = info.remoteAddr.port;
      } catch {
        return problem(400, "Client went away");
      }
    }

    // Limits, cheapest first; each refusal says when to come back.
    const now = this.#clock.now();
    this.#handshakes ??= new TokenBucket(
      this.#options.handshakeRatePerSec,
      this.#options.handshakeBurst,
      now,
    );
    if (!this.#handshakes.take(now)) {
      return this.#refuse("handshake_rate", 503, "Too many handshakes at once; retry shortly", 1, {
        worker_id: workerId,
        handshake_rate_per_sec: this.#options.handshakeRatePerSec,
      });
    }
    if (this.#sessions.size >= this.#options.maxConnections) {
      return this.#refuse("at_capacity", 503, "Rendezvous is at capacity", 5, {
        worker_id: workerId,
        max_connections: this.#options.maxConnections,
      });
    }
    if (
      observedIp !== null && (this.#perIp.get(observedIp) ?? 0) >= this.#options.maxSessionsPerIp
    ) {
      return this.#refuse("per_ip", 429, "Too many sessions from this address", 10, {
        worker_id: workerId,
        observed_ip: observedIp,
        max_sessions_per_ip: this.#options.maxSessionsPerIp,
      });
    }
    if (key !== null && (this.#perKey.get(key) ?? 0) >= this.#options.maxSessionsPerKey) {
      return this.#refuse("per_key", 429, "Too many sessions with this key", 10, {
        worker_id: workerId,
        max_sessions_per_key: this.#options.maxSessionsPerKey,
      });
    }

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
    });
    this.#sessions.set(socket, session);
    if (observedIp !== null) this.#perIp.set(observedIp, (this.#perIp.get(observedIp) ?? 0) + 1);
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

  /** A refused connection attempt: noted (below), answered with `Retry-After`. */
  #refuse(
    kind: keyof Rendezvous["refused"],
    status: number,
    message: string,
    retryAfterSec: number,
    fields: Record<string, unknown>,
  ): Response {
    this.#noteRefusal(kind, status, fields);
    return problem(status, message, { "retry-after": String(retryAfterSec) });
  }

  /** Counts a refusal and logs it at most once a second per kind, with how many went unlogged. */
  #noteRefusal(
    kind: keyof Rendezvous["refused"],
    status: number,
    fields: Record<string, unknown>,
  ): void {
    this.refused[kind]++;
    const now = this.#clock.now();
    const last = this.#refusalLoggedAt.get(kind);
    if (!last || now - last.at >= 1000) {
      this.#log.warn(`connection refused: ${kind.replaceAll("_", " ")}`, {
        ...fields,
        status,
        suppressed_since_last: last?.suppressed ?? 0,
      });
      this.#refusalLoggedAt.set(kind, { at: now, suppressed: 0 });
    } else {
      last.suppressed++;
    }
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

  /**
   * Challenges a keyed session and checks its answer; true when the key is
   * proven. On failure the session is closed with 4004 and logged.
   */
  async #proveKey(session: Session, key: string): Promise<boolean> {
    const nonce = newNonce();
    session.proof = Promise.withResolvers<string | null>();
    session.send({ type: "challenge", nonce });
    const timeout = new AbortController();
    const signature = await Promise.race([
      session.proof.promise,
      delay(this.#options.keyProofTimeoutMs, { signal: timeout.signal, clock: this.#clock })
        .then(() => undefined, () => undefined),
    ]);
    timeout.abort();
    session.proof = undefined;
    if (signature === null) return false; // The socket closed.
    const fields = {
      worker_id: session.workerId,
      key_fingerprint: await fingerprint(key),
      observed_ip: session.observedIp,
    };
    if (signature === undefined) {
      this.#log.warn("worker refused: key proof timed out", fields);
      session.close(CloseCode.KEY_PROOF_FAILED, CloseReason.KEY_PROOF_TIMEOUT);
      return false;
    }
    const verifier = await importPublicKey(key);
    for (const authority of this.#options.publicHosts ?? [session.authority]) {
      const payload = registrationPayload(authority, session.workerId, nonce);
      if (await verifySignature(verifier, payload, signature)) return true;
    }
    this.#log.warn("worker refused: key proof failed", {
      ...fields,
      authorities: this.#options.publicHosts ?? [session.authority],
    });
    session.close(CloseCode.KEY_PROOF_FAILED, CloseReason.KEY_PROOF_FAILED);
    return false;
  }

  async #onOpen(session: Session): Promise<void> {
    if (session.socket.readyState !== WebSocket.OPEN) return;
    const { key } = session;
    if (key !== null && !(await this.#proveKey(session, key))) return;
    if (session.socket.readyState !== WebSocket.OPEN) return;
    const claim = await this.registry.claimKey(
      session.workerId,
      key,
      this.#clock.now(),
      this.#options.keyHoldSec * 1000,
    );
    if (!claim.ok) {
      this.#log.warn("worker refused: id bound to another key", {
        worker_id: session.workerId,
        key_fingerprint: key === null ? null : await fingerprint(key),
        bound_fingerprint: await fingerprint(claim.bound),
        observed_ip: session.observedIp,
      });
      session.close(
        CloseCode.KEY_REFUSED,
        key === null ? CloseReason.KEY_REQUIRED : CloseReason.KEY_BOUND,
      );
      return;
    }
    const record: WorkerRecord = {
      worker_id: session.workerId,
      session_id: session.id,
      observed_ip: session.observedIp,
      observed_port: session.observedPort,
      http_reported_public_ip: null,
      connected_at: session.connectedAt,
      udp_endpoint: null,
      group: session.group,
      peer_paths: NO_PEER_PATHS,
      key,
      key_fingerprint: key === null ? null : await fingerprint(key),
      transport: null,
    };
    const previous = await this.registry.put(record);
    session.registered = true;
    if (key !== null) this.#perKey.set(key, (this.#perKey.get(key) ?? 0) + 1);
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
    if (typeof data !== "string") return this.#onBinary(session, data);
    if (utf8LengthExceeds(data, this.#options.maxMessageBytes)) {
      this.#log.warn("worker sent an oversize message", {
        worker_id: session.workerId,
        length: data.length,
        limit: this.#options.maxMessageBytes,
      });
      session.close(CloseCode.MESSAGE_TOO_BIG, CloseReason.TOO_BIG);
      return;
    }
    let message: ClientMessage;
    try {
      message = parseClientMessage(data);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      if (!this.#withinRate(session, now)) return;
      this.#log.info("worker sent an invalid message", {
        worker_id: session.workerId,
        code: error.code,
        error: error.message,
      });
      session.send({ type: "error", code: error.code, message: error.message });
      return;
    }
    // Relayed frames have their own budget (the peer directory's), so data
    // cannot starve a worker's control messages, nor the reverse.
    if (message.type !== "relay" && !this.#withinRate(session, now)) return;
    // The proof answers the challenge #onOpen is waiting on, so it cannot
    // queue behind it; everything else does, and runs once registered.
    if (message.type === "prove_key") {
      if (session.proof) session.proof.resolve(message.signature);
      else {
        session.send({
          type: "error",
          code: "invalid_message",
          message: "Cannot use prove_key: no challenge is pending",
        });
      }
      return;
    }
    this.#enqueue(session, () => this.#handle(session, message));
  }

  /**
   * A binary frame: a transport packet to relay, from a registered session.
   * Anything else binary is a protocol error (the seed's protocol is text).
   */
  #onBinary(session: Session, data: unknown): void {
    let frame: RelayFrame | undefined;
    if (data instanceof ArrayBuffer) {
      try {
        frame = parseRelayFrame(new Uint8Array(data));
      } catch {
        frame = undefined;
      }
    }
    // A well-formed packet before the session is registered (a worker with
    // live connections that just reconnected) is dropped, like any packet.
    if (frame !== undefined && !session.registered) {
      this.#peers.stats.packetsDropped++;
      return;
    }
    if (frame === undefined) {
      this.#log.warn("worker sent a binary frame that is not a relay frame", {
        worker_id: session.workerId,
      });
      session.close(CloseCode.UNSUPPORTED_DATA, CloseReason.BINARY);
      return;
    }
    this.#peers.relayPacket(session, frame);
  }

  #withinRate(session: Session, now: number): boolean {
    if (session.bucket.take(now)) return true;
    this.#log.warn("worker exceeded the message rate", { worker_id: session.workerId });
    session.close(CloseCode.POLICY_VIOLATION, CloseReason.RATE_LIMITED);
    return false;
  }

  async #handle(session: Session, message: ClientMessage): Promise<void> {
    if (await this.#peers.handle(session, message)) return;
    switch (message.type) {
      case "register_public_ip": {
        const stored = await this.registry.update(session.workerId, session.id, {
          http_reported_public_ip: message.ip,
        });
        if (!stored) return; // Replaced or gone meanwhile: not ours to change.
        this.#log.info("worker reported public ip", {
          worker_id: session.workerId,
          http_reported_public_ip: message.ip,
        });
        session.send({ type: "public_ip_registered", ip: message.ip });
        return;
      }
      case "register_udp_endpoint": {
        const udp = {
          public: message.public,
          local: message.local,
          nat_mapping: message.nat.mapping,
          updated_at: new Date(this.#clock.now()).toISOString(),
        };
        if (message.rtt_ms !== null && message.rtt_ms !== undefined) {
          session.rttMs = message.rtt_ms;
          this.#m.workerRtt.observe(message.rtt_ms / 1000);
        }
        const stored = await this.registry.update(session.workerId, session.id, {
          udp_endpoint: udp,
        });
        if (!stored) return;
        const record = await this.registry.get(session.workerId);
        if (record) {
          this.#peers.updated(session, record);
          this.#dashboard.worker(record);
        }
        this.#log.info("worker reported udp endpoint", {
          worker_id: session.workerId,
          udp_public: message.public ? `${message.public.ip}:${message.public.port}` : null,
          nat_mapping: message.nat.mapping,
          local_candidates: message.local.length,
        });
        session.send({
          type: "udp_endpoint_registered",
          public: message.public,
          mapping: message.nat.mapping,
        });
        return;
      }
      case "path_update": {
        const record = await this.registry.get(session.workerId);
        if (!record || record.session_id !== session.id) return;
        // A report about a worker that is not (or no longer) in the group is not kept.
        const peer = await this.registry.get(message.peer_id);
        if (!peer || peer.group !== record.group || peer.worker_id === record.worker_id) return;
        const paths = { ...record.peer_paths };
        if (!(message.peer_id in paths) && Object.keys(paths).length >= MAX_PEER_PATHS) return;
        paths[message.peer_id] = {
          path: message.path,
          rtt_ms: message.rtt_ms,
          updated_at: new Date(this.#clock.now()).toISOString(),
        };
        if (!(await this.registry.update(session.workerId, session.id, { peer_paths: paths }))) {
          return;
        }
        this.#pathReports.reported(session, message.peer_id);
        this.#dashboard.worker({ ...record, peer_paths: paths });
        const natPair = [record, peer].map((r) => r?.udp_endpoint?.nat_mapping ?? "unknown").sort()
          .join("/");
        this.#m.pathReports.inc({ nat_pair: natPair, path: message.path });
        if (message.path === "direct") {
          const at = this.#peers.firstDirectSince(session.workerId, message.peer_id);
          if (at !== undefined) {
            this.#m.timeToDirect.observe((this.#clock.now() - at) / 1000, { nat_pair: natPair });
          }
        }
        this.#log.info("peer path changed", {
          worker_id: session.workerId,
          peer_id: message.peer_id,
          path: message.path,
          rtt_ms: message.rtt_ms,
        });
        return;
      }
      case "list_peers":
      case "connect":
      case "relay":
        return; // handled by the peer directory above
      case "prove_key":
        return; // handled on arrival, see #onMessage
      case "register_transport": {
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
        const stored = await this.registry.update(session.workerId, session.id, { transport });
        if (!stored) return;
        const record = await this.registry.get(session.workerId);
        if (record) {
          this.#peers.updated(session, record);
          this.#dashboard.worker(record);
        }
        this.#log.info("worker published its transport certificate", {
          worker_id: session.workerId,
        });
        return;
      }
      case "echo_request": {
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
        if (session.socket.readyState === WebSocket.OPEN) session.socket.send(text);
        if (this.#log.enabled("debug")) {
          this.#log.debug("echo answered", { worker_id: session.workerId });
        }
        return;
      }
      default: {
        const unreachable: never = message;
        throw new Error(`Unhandled message ${JSON.stringify(unreachable)}`);
      }
    }
  }

  #onClose(session: Session, event: CloseEvent): void {
    this.#sessions.delete(session.socket);
    if (session.observedIp !== null) decrement(this.#perIp, session.observedIp);
    if (session.registered && session.key !== null) decrement(this.#perKey, session.key);
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
        await this.registry.remove(session.workerId, session.id);
      this.#pathReports.forget(session);
      this.#peers.left(session, removed);
      if (removed) {
        this.#dashboard.left(session.workerId);
        this.#prunePathsTo(session.workerId);
      }
      if (removed && session.key !== null) {
        await this.registry.releaseKey(session.workerId, session.key, this.#clock.now());
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
   * `peerId` left the fleet: every record of ours that reports a path to it
   * drops that entry (in each reporter's own order of writes).
   */
  #prunePathsTo(peerId: string): void {
    for (const session of this.#pathReports.left(peerId)) {
      this.#enqueue(session, async () => {
        const record = await this.registry.get(session.workerId);
        if (record?.session_id !== session.id || !(peerId in record.peer_paths)) return;
        const { [peerId]: _gone, ...rest } = record.peer_paths;
        const paths = Object.keys(rest).length === 0 ? NO_PEER_PATHS : rest;
        if (await this.registry.update(session.workerId, session.id, { peer_paths: paths })) {
          this.#dashboard.worker({ ...record, peer_paths: paths });
        }
      });
    }
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
    if (this.#dashboardTimer !== undefined) this.#clock.clearTimeout(this.#dashboardTimer);
    this.#log.info("rendezvous closed", { remaining: this.#sessions.size });
  }
}
