/**
 * The worker's side of the rendezvous: connect, register, report the public
 * IP, heartbeat, and reconnect with backoff for as long as it runs.
 *
 * Everything it touches (socket constructor, clock, public-IP lookup) is
 * injected, so tests drive it against real servers or against fakes with a
 * fake clock.
 *
 * @module
 */

import { Backoff } from "../core/backoff.ts";
import { connectWebSocket } from "../core/websocket_client.ts";
import { CloseCode } from "../protocol/close_codes.ts";
import { ReconnectPolicy } from "./reconnect_policy.ts";
import { type AttemptHost, ConnectionAttempt, type SessionOutcome } from "./connection_attempt.ts";
import { type Clock, delay, systemClock } from "../core/clock.ts";
import { type Logger, silentLogger } from "../core/log.ts";
import {
  type ClientMessage,
  type PeerServerMessage,
  type ServerMessage,
} from "../protocol/messages.ts";
import { encodeMessage } from "../protocol/parse.ts";
import type { Identity } from "../protocol/identity.ts";
import { encodeRelayFrame, parseRelayFrame, type RelayFrame } from "../protocol/relay_frame.ts";

/** The part of `WebSocket` the client uses. */
export interface WebSocketLike extends EventTarget {
  readonly readyState: number;
  /** Bytes queued but not yet sent (0 where the socket cannot tell). */
  readonly bufferedAmount?: number;
  send(data: string | Uint8Array<ArrayBuffer>): void;
  close(code?: number, reason?: string): void;
}

/** Opens a WebSocket to `url` sending `headers` with the handshake. */
export type SocketFactory = (url: string, headers: Record<string, string>) => WebSocketLike;

/** Looks up this machine's public IP (throws when it cannot). */
export type PublicIpLookup = (signal: AbortSignal) => Promise<string>;

/** What the client is doing. */
export type ClientStatus = "connecting" | "connected" | "waiting" | "stopped";

/** Events the client reports, in order, to its tracer and logs. */
export type ClientEvent =
  | { type: "connecting"; attempt: number }
  | { type: "connected" }
  | { type: "registered"; observed_ip: string | null; observed_port: number | null }
  | { type: "public_ip_reported"; ip: string }
  | { type: "public_ip_failed"; error: string }
  | { type: "heartbeat_timeout" }
  | { type: "disconnected"; code: number; reason: string; opened: boolean }
  | { type: "reconnect_scheduled"; delay_ms: number }
  | { type: "stopped" };

/** Options for {@linkcode RendezvousClient}. */
export interface RendezvousClientOptions {
  /** Full registration URL (`ws(s)://…/ws/register/{id}`). */
  url: URL;
  workerId: string;
  /** Sent as `Authorization: Bearer …`. */
  token?: string;
  /**
   * The worker's key: sent as `?key=` and proven when the rendezvous
   * challenges it. Without one the worker registers keyless, as the seed's does.
   */
  identity?: Identity;
  /** Heartbeat period. @default {25000} */
  pingIntervalMs?: number;
  /** Reconnect when a heartbeat (or the handshake) gets no answer in this. @default {25000} */
  pingTimeoutMs?: number;
  /** @default {new Backoff()} */
  backoff?: Backoff;
  /** A session that lasted this long resets the backoff. @default {10000} */
  stableSessionMs?: number;
  /** Restart handling (see lib/reconnect_policy.ts); the defaults suit production. */
  restartGraceMs?: number;
  restartWindowMs?: number;
  /** Jitter source for the restart window. @default {Math.random} */
  random?: () => number;
  /** Run on every connect; its answer is sent as `register_public_ip`. */
  lookupPublicIp?: PublicIpLookup;
  /** @default {a WebSocket client with Nagle off} */
  openSocket?: SocketFactory;
  /** @default {systemClock} */
  clock?: Clock;
  /** @default {silentLogger} */
  logger?: Logger;
  /** Receives every {@linkcode ClientEvent}. */
  onEvent?: (event: ClientEvent) => void;
  /** Receives the peer messages (`peers`, `peer_*`, `punch`, `relayed`). */
  onPeerMessage?: (message: PeerServerMessage) => void;
  /** Receives transport packets a peer sent through the relay (binary frames). */
  onRelayPacket?: (peerId: string, packet: Uint8Array) => void;
}

/**
 * Our own client over TCP with Nagle off (see `websocket_client.ts`):
 * Deno's `WebSocket` delays a frame written right after another by up to
 * 40 ms, which stalled relayed packets and introductions.
 */
const defaultSocket: SocketFactory = (url, headers) => connectWebSocket(url, headers);

/**
 * Bytes queued on the socket beyond which relayed packets are dropped, not
 * queued: QUIC reads the loss and slows down, and the heartbeat's frames
 * never wait behind seconds of bulk data.
 */
const MAX_BUFFERED_RELAY = 512 * 1024;

/** A snapshot for the worker's health endpoint. */
export interface ClientSnapshot {
  /** Where the session is. */
  status: ClientStatus;
  /** When the current session opened (ISO 8601), or null. */
  connected_since: string | null;
  /** Sessions opened so far. */
  sessions: number;
  /** The address the rendezvous saw this worker connect from. */
  observed_ip: string | null;
  /** The port it saw; null behind a proxy. */
  observed_port: number | null;
  /** What the IP echo service said, as reported to the rendezvous. */
  http_reported_public_ip: string | null;
}

/**
 * Keeps a worker registered with the rendezvous.
 *
 * @example
 * ```ts
 * const client = new RendezvousClient({
 *   url: new URL("ws://localhost:8080/ws/register/w1"),
 *   workerId: "w1",
 *   lookupPublicIp: (signal) => fetchPublicIp("https://api.ipify.org", { signal }),
 * });
 * const controller = new AbortController();
 * const done = client.run(controller.signal);
 * // … on SIGTERM:
 * controller.abort();
 * await done;
 * ```
 */
export class RendezvousClient {
  #o:
    & Required<
      Omit<
        RendezvousClientOptions,
        | "token"
        | "identity"
        | "lookupPublicIp"
        | "onEvent"
        | "onPeerMessage"
        | "onRelayPacket"
        | "backoff"
        | "stableSessionMs"
        | "restartGraceMs"
        | "restartWindowMs"
        | "random"
      >
    >
    & {
      policy: ReconnectPolicy;
      token?: string;
      identity?: Identity;
      lookupPublicIp?: PublicIpLookup;
      onEvent?: (event: ClientEvent) => void;
      onPeerMessage?: (message: PeerServerMessage) => void;
      onRelayPacket?: (peerId: string, packet: Uint8Array) => void;
    };
  #status: ClientStatus = "waiting";
  #sessions = 0;
  #connectedSince: number | null = null;
  #observed: { ip: string | null; port: number | null } = { ip: null, port: null };
  #reportedIp: string | null = null;
  #running = false;
  /** The socket of the open session, if any. */
  #socket: WebSocketLike | undefined;
  /** A socket the rendezvous said it is about to close: nothing more is sent on it. */
  #quiet: WebSocketLike | undefined;
  #rttMs: number | null = null;
  /** The socket whose session the rendezvous has registered (relay packets wait for it). */
  #registeredOn: WebSocketLike | undefined;
  #openedAt = 0;
  /** The heartbeat in flight: its number and when it left. */
  #heartbeat = { seq: 0, at: 0 };
  /** What each connection attempt reaches of the client. */
  #attemptHost: AttemptHost;

  /**
   * Who hears the client (the layers above it, made after it): replaces
   * the handlers given as options. Set before {@linkcode RendezvousClient.run}.
   */
  setHandlers(
    handlers: Pick<RendezvousClientOptions, "onEvent" | "onPeerMessage" | "onRelayPacket">,
  ): void {
    this.#o.onEvent = handlers.onEvent;
    this.#o.onPeerMessage = handlers.onPeerMessage;
    this.#o.onRelayPacket = handlers.onRelayPacket;
  }

  constructor(options: RendezvousClientOptions) {
    this.#o = {
      url: options.url,
      workerId: options.workerId,
      token: options.token,
      identity: options.identity,
      pingIntervalMs: options.pingIntervalMs ?? 25_000,
      pingTimeoutMs: options.pingTimeoutMs ?? 25_000,
      policy: new ReconnectPolicy({
        backoff: options.backoff ?? new Backoff(),
        stableSessionMs: options.stableSessionMs,
        restartGraceMs: options.restartGraceMs,
        restartWindowMs: options.restartWindowMs,
        random: options.random,
      }),
      lookupPublicIp: options.lookupPublicIp,
      openSocket: options.openSocket ?? defaultSocket,
      clock: options.clock ?? systemClock,
      logger: options.logger ?? silentLogger,
      onEvent: options.onEvent,
      onPeerMessage: options.onPeerMessage,
      onRelayPacket: options.onRelayPacket,
    };
    const o = this.#o;
    this.#attemptHost = {
      clock: o.clock,
      logger: o.logger,
      workerId: o.workerId,
      identity: o.identity,
      token: o.token,
      pingIntervalMs: o.pingIntervalMs,
      pingTimeoutMs: o.pingTimeoutMs,
      openSocket: o.openSocket,
      emit: (event) => this.#emit(event),
      opened: (socket, at) => {
        this.#socket = socket;
        this.#openedAt = at;
        this.#sessions++;
        this.#status = "connected";
        this.#connectedSince = at;
      },
      ended: (socket) => {
        this.#connectedSince = null;
        if (this.#socket === socket) this.#socket = undefined;
        if (this.#quiet === socket) this.#quiet = undefined;
      },
      quiet: (socket) => {
        this.#quiet = socket;
      },
      heartbeat: (seq, at) => {
        this.#heartbeat = { seq, at };
      },
      send: (socket, message) => this.#send(socket, message),
      relayFrame: (data) => this.#onRelayFrame(data),
      serverMessage: (message) => this.#onServerMessage(message),
      reportPublicIp: (socket, signal) => this.#reportPublicIp(socket, signal),
    };
  }

  /** Smoothed round trip to the rendezvous (registration and heartbeats), if measured. */
  get rttMs(): number | null {
    return this.#rttMs;
  }

  #sampleRtt(ms: number): void {
    this.#rttMs = this.#rttMs === null ? ms : 0.8 * this.#rttMs + 0.2 * ms;
  }

  /** What the client is doing now. */
  get status(): ClientStatus {
    return this.#status;
  }

  /** State for a health endpoint. */
  snapshot(): ClientSnapshot {
    return {
      status: this.#status,
      connected_since: this.#connectedSince === null
        ? null
        : new Date(this.#connectedSince).toISOString(),
      sessions: this.#sessions,
      observed_ip: this.#observed.ip,
      observed_port: this.#observed.port,
      http_reported_public_ip: this.#reportedIp,
    };
  }

  /**
   * Sends `message` on the open session. Returns false when there is none
   * (the caller sends it again after the next `registered` event).
   */
  send(message: ClientMessage): boolean {
    const socket = this.#socket;
    if (socket === undefined || this.#status !== "connected") return false;
    return this.#send(socket, message);
  }

  /**
   * Sends a transport packet to `peerId` through the relay. Returns false
   * (the packet is lost, as on UDP) without a session or when the socket's
   * buffer is full.
   */
  sendPacket(peerId: string, packet: Uint8Array): boolean {
    const socket = this.#socket;
    if (
      socket === undefined || this.#status !== "connected" || socket === this.#quiet ||
      socket !== this.#registeredOn ||
      socket.readyState !== WebSocket.OPEN || (socket.bufferedAmount ?? 0) > MAX_BUFFERED_RELAY
    ) {
      return false;
    }
    try {
      socket.send(encodeRelayFrame(peerId, packet));
      return true;
    } catch {
      return false;
    }
  }

  #emit(event: ClientEvent): void {
    this.#o.onEvent?.(event);
  }

  /**
   * Connects and stays connected until `signal` aborts; then closes with 1000
   * and resolves. Never rejects.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (this.#running) throw new Error("Cannot run a RendezvousClient twice at once");
    this.#running = true;
    const { clock, logger } = this.#o;
    const policy = this.#o.policy;
    try {
      while (!signal.aborted) {
        const attempt = policy.backoff.attempt;
        const outcome = await this.#session(signal, attempt);
        if (signal.aborted) break;
        const wait = policy.next(outcome, clock.now());
        if (outcome.code === CloseCode.SESSION_REPLACED) {
          logger.error("another connection registered this worker id; is WORKER_ID shared?", {
            worker_id: this.#o.workerId,
          });
        } else if (outcome.code === CloseCode.KEY_REFUSED) {
          logger.error(
            "the rendezvous refused this worker: its id is bound to another key (keep the key in WORKER_KEY_FILE, or wait out the rendezvous's KEY_HOLD_SEC)",
            { worker_id: this.#o.workerId, key_fingerprint: this.#o.identity?.fingerprint },
          );
        } else if (outcome.code === CloseCode.REVOKED) {
          logger.error(
            "the rendezvous revoked this worker; it refuses it until the ban is lifted",
            {
              worker_id: this.#o.workerId,
              key_fingerprint: this.#o.identity?.fingerprint,
              reason: outcome.reason,
            },
          );
        } else if (outcome.code === CloseCode.KEY_PROOF_FAILED) {
          logger.error("the rendezvous did not accept this worker's key proof", {
            worker_id: this.#o.workerId,
            reason: outcome.reason,
            hint: "a proxy that rewrites Host needs PUBLIC_HOSTS on the rendezvous",
          });
        }
        this.#status = "waiting";
        this.#emit({ type: "reconnect_scheduled", delay_ms: wait });
        logger.info("reconnecting to rendezvous", {
          worker_id: this.#o.workerId,
          delay_ms: wait,
          attempt: policy.backoff.attempt,
        });
        await delay(wait, { signal, clock }).catch(() => {});
      }
    } finally {
      this.#status = "stopped";
      this.#running = false;
      this.#emit({ type: "stopped" });
    }
  }

  /** One connection, from open to close; resolves with how it ended. */
  #session(signal: AbortSignal, attempt: number): Promise<SessionOutcome> {
    const { logger, workerId } = this.#o;
    this.#status = "connecting";
    this.#emit({ type: "connecting", attempt });
    logger.info("connecting to rendezvous", { worker_id: workerId, url: redact(this.#o.url) });

    return new ConnectionAttempt(this.#attemptHost, this.#o.url, signal).run();
  }

  #onRelayFrame(data: ArrayBuffer): void {
    let frame: RelayFrame;
    try {
      frame = parseRelayFrame(new Uint8Array(data));
    } catch {
      return; // Not ours to understand: dropped, as a bad UDP packet would be.
    }
    this.#o.onRelayPacket?.(frame.peerId, frame.packet);
  }

  #onServerMessage(message: ServerMessage): void {
    const { logger, workerId } = this.#o;
    switch (message.type) {
      case "registered":
        this.#registeredOn = this.#socket;
        this.#sampleRtt(this.#o.clock.now() - this.#openedAt);
        this.#observed = { ip: message.observed_ip, port: message.observed_port };
        this.#emit({
          type: "registered",
          observed_ip: message.observed_ip,
          observed_port: message.observed_port,
        });
        logger.info("registered with rendezvous", {
          worker_id: workerId,
          observed_ip: message.observed_ip,
          observed_port: message.observed_port,
        });
        return;
      case "public_ip_registered":
        logger.debug("rendezvous stored public ip", { worker_id: workerId, ip: message.ip });
        return;
      case "echo_response": {
        const beat = (message.original_payload as { heartbeat?: unknown } | null)?.heartbeat;
        if (beat === this.#heartbeat.seq && beat > 0) {
          this.#sampleRtt(this.#o.clock.now() - this.#heartbeat.at);
        }
        return;
      }
      case "peers":
      case "peer_joined":
      case "peer_updated":
      case "peer_left":
      case "punch":
      case "relayed":
        this.#o.onPeerMessage?.(message);
        return;
      case "udp_endpoint_registered":
        logger.debug("rendezvous stored udp endpoint", {
          worker_id: workerId,
          mapping: message.mapping,
        });
        return;
      case "going_away": // handled by the session
      case "challenge":
        return;
      case "error":
        logger.warn("rendezvous rejected a message", {
          worker_id: workerId,
          code: message.code,
          error: message.message,
        });
        return;
      default: {
        const unreachable: never = message;
        logger.debug("ignored a message", { message: unreachable });
      }
    }
  }

  async #reportPublicIp(socket: WebSocketLike, signal: AbortSignal): Promise<void> {
    const { lookupPublicIp, logger, workerId } = this.#o;
    if (lookupPublicIp === undefined) return;
    let ip: string;
    try {
      ip = await lookupPublicIp(signal);
    } catch (error) {
      if (signal.aborted) return;
      const message = (error as Error).message;
      this.#emit({ type: "public_ip_failed", error: message });
      logger.warn("cannot get public ip; the rendezvous will use the observed address", {
        worker_id: workerId,
        error: message,
      });
      return;
    }
    if (signal.aborted) return;
    this.#send(socket, { type: "register_public_ip", ip });
    this.#reportedIp = ip;
    this.#emit({ type: "public_ip_reported", ip });
    logger.info("reported public ip", { worker_id: workerId, http_reported_public_ip: ip });
  }

  #send(socket: WebSocketLike, message: ClientMessage): boolean {
    if (socket.readyState !== WebSocket.OPEN || socket === this.#quiet) return false;
    try {
      socket.send(encodeMessage(message));
      return true;
    } catch {
      return false; // The close event follows.
    }
  }
}

/** The URL without credentials or query, fit for a log line. */
function redact(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}
