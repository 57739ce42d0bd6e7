/**
 * One WebSocket session of the rendezvous: who it is, its limits, and how
 * to send to it. Kept small: a fleet holds tens of thousands, and what each
 * costs beyond Deno's own WebSocket is what the product costs.
 *
 * @module
 */

import { randomHex } from "../core/encoding.ts";

import { TokenBucket } from "../core/rate_limit.ts";
import { type ServerMessage } from "../protocol/messages.ts";
import { encodeMessage } from "../protocol/parse.ts";
import type { PeerSession } from "./peers.ts";
import { NO_PEER_PATHS, type WorkerRecord } from "./registry.ts";

/**
 * Bytes waiting in a session's send buffer beyond which relayed packets to
 * it are dropped: about 10 ms at 100 MB/s, so a slow receiver costs the
 * rendezvous little memory and the senders' QUIC sees loss, not delay.
 */
const MAX_BUFFERED_RELAY = 1 << 20;

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
