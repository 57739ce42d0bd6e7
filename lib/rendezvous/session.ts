/**
 * One WebSocket session of the rendezvous: who it is, its limits, and how
 * to send to it. Kept small: a fleet holds tens of thousands, and what each
 * costs beyond Deno's own WebSocket is what the product costs.
 *
 * @module
 */

import { randomHex } from "../core/encoding.ts";

import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { CloseCode, CloseReason } from "../protocol/close_codes.ts";
import { TokenBucket } from "../core/rate_limit.ts";
import type { LeaveReason, ServerMessage } from "../protocol/messages.ts";
import { encodeMessage } from "../protocol/parse.ts";
import type { PeerSession } from "./peers.ts";
import { NO_PEER_PATHS, type WorkerRecord } from "./registry.ts";

/**
 * The limits every session shares (one object for all). The bound of its
 * send buffer (`MAX_SEND_BUFFER_BYTES`) and what happens past it: relayed
 * frames are dropped there (the senders' QUIC sees loss, not delay, and a
 * slow receiver costs the rendezvous little memory); a message that cannot
 * be dropped (an answer, a listing, an event) closes the session instead.
 */
export interface SessionLimits {
  maxBytes: number;
  /**
   * How long a buffer may stay past its bound while only droppable frames
   * find it full before the session is closed all the same: a worker that
   * reads nothing for this long is not coming back.
   */
  fullForMs: number;
  clock: Clock;
  /** `list_peers` a session may ask per minute (`LIST_RATE_PER_MIN`). */
  listPerMin: number;
  /** A message that cannot be dropped found the buffer full: close the session, log and count. */
  overflow(session: Session): void;
}

/** How long a send buffer may stay past its bound, with only droppable frames finding it full. */
const FULL_FOR_MS = 5_000;

/** The limits of `MAX_SEND_BUFFER_BYTES` and `LIST_RATE_PER_MIN`; past the bound, a logged 4008. */
export function sessionLimits(
  o: { maxSendBufferBytes: number; listRatePerMin: number },
  log: Logger,
  clock: Clock,
): SessionLimits {
  return {
    maxBytes: o.maxSendBufferBytes,
    listPerMin: o.listRatePerMin,
    fullForMs: FULL_FOR_MS,
    clock,
    overflow: (session) => {
      log.warn("worker closed: not reading", {
        worker_id: session.workerId,
        observed_ip: session.observedIp,
        buffered_bytes: session.socket.bufferedAmount,
        limit: o.maxSendBufferBytes,
      });
      session.close(CloseCode.SEND_BUFFER_FULL, CloseReason.SEND_BUFFER_FULL);
    },
  };
}

/** Per-process prefix of session ids, so ids stay unique in a shared registry. */
const INSTANCE = randomHex(4);
let sessionCounter = 0;
const SETTLED: Promise<unknown> = Promise.resolve();

/** What a session is made from. */
export interface SessionInit {
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
  sendLimit: SessionLimits;
}

/**
 * One WebSocket session. Kept small: a fleet holds tens of thousands, and
 * what each costs beyond Deno's own WebSocket is what the product costs.
 */
export class Session implements PeerSession {
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
  #sendLimit: SessionLimits;
  /** Since when droppable frames have found the send buffer full. */
  #fullSince?: number;
  /** `list_peers` tokens, made on the first request. */
  #listBucket?: TokenBucket;
  lastSeen: number;
  rttMs: number | null = null;
  watching = false;
  /** Why it is being closed, when its peers must hear it (a revocation). */
  leaving?: LeaveReason;
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
    this.#sendLimit = init.sendLimit;
  }

  /** The registry record of this session, as it registers (`keyFingerprint` of its key). */
  record(keyFingerprint: string | null): WorkerRecord {
    return {
      worker_id: this.workerId,
      session_id: this.id,
      observed_ip: this.observedIp,
      observed_port: this.observedPort,
      http_reported_public_ip: null,
      connected_at: this.connectedAt,
      udp_endpoint: null,
      group: this.group,
      peer_paths: NO_PEER_PATHS,
      key: this.key,
      key_fingerprint: keyFingerprint,
      transport: null,
    };
  }

  takeRelayBytes(now: number, bytes: number): boolean {
    this.#relayBytesBucket ??= new TokenBucket(this.#relayBytes, this.#relayBytes / 4, now);
    return this.#relayBytesBucket.take(now, bytes);
  }

  sendBinary(bytes: Uint8Array): boolean {
    const socket = this.socket;
    if (socket.readyState !== WebSocket.OPEN || this.#full()) return false;
    try {
      socket.send(bytes);
      return true;
    } catch {
      return false;
    }
  }

  /** Spends a `list_peers` token (a burst of a sixth of the minute's, at least 5). */
  takeList(now: number): boolean {
    const perMin = this.#sendLimit.listPerMin;
    this.#listBucket ??= new TokenBucket(perMin / 60, Math.max(5, Math.floor(perMin / 6)), now);
    return this.#listBucket.take(now);
  }

  /** Spends a relay token; the bucket exists only for sessions that relay. */
  takeRelay(now: number): boolean {
    this.#relayBucket ??= new TokenBucket(this.#relayLimit.rate, this.#relayLimit.burst, now);
    return this.#relayBucket.take(now);
  }

  /**
   * Sends a message that cannot be dropped; a session whose send buffer is
   * already past its bound is closed instead (4008): it is not reading.
   */
  send(message: ServerMessage): void {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    this.sendText(encodeMessage(message));
  }

  /** {@linkcode Session.send} for a message encoded already (the echo's answer). */
  sendText(text: string): void {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    if (this.socket.bufferedAmount > this.#sendLimit.maxBytes) {
      return this.#sendLimit.overflow(this);
    }
    try {
      this.socket.send(text);
    } catch {
      // The socket closed under us; its close handler cleans up.
    }
  }

  /**
   * Sends a message that may be lost (a relayed frame); false only when it
   * was dropped for a full buffer (to a closing socket it is lost like any).
   */
  sendDroppable(message: ServerMessage): boolean {
    if (this.socket.readyState !== WebSocket.OPEN) return true;
    if (this.#full()) return false;
    this.send(message);
    return true;
  }

  /** Whether the send buffer is past its bound (closing a session full for too long). */
  #full(): boolean {
    const limit = this.#sendLimit;
    if (this.socket.bufferedAmount <= limit.maxBytes) {
      this.#fullSince = undefined;
      return false;
    }
    const now = limit.clock.now();
    this.#fullSince ??= now;
    if (now - this.#fullSince >= limit.fullForMs) limit.overflow(this);
    return true;
  }

  close(code: number, reason: string): void {
    try {
      this.socket.close(code, reason);
    } catch {
      // Already closing or closed.
    }
  }
}
