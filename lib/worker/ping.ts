/**
 * Pings between workers (`deno task ctl ping`, like `tailscale ping`): a
 * ping is a diagnostic message over the peer link — the path in use,
 * relay or direct, authenticated under the introduction's key — and the
 * peer's worker answers with a pong the same way. The pong says which path
 * it came back on, so a series shows the move from the relay to a direct
 * path. A worker of an earlier version logs the ping and does not answer.
 *
 * @module
 */

import { TokenBucket } from "../core/rate_limit.ts";
import { randomHex } from "../core/encoding.ts";
import type { PathKind } from "../protocol/messages.ts";

/** Pongs a worker sends a second, to all peers together (more pings go unanswered). */
export const PONGS_PER_SEC = 50;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** A ping or pong is small; anything longer is some other message. */
const MAX_PING_BYTES = 64;

/** No pong came in time. */
export class PingTimeoutError extends Error {
  /** Always `"PingTimeoutError"`. */
  override name = "PingTimeoutError";
}

/** What a pong told. */
export interface Pong {
  /** The path the pong came back on. */
  path: PathKind;
  /** Round trip, milliseconds. */
  ms: number;
}

/** The payload of a ping or pong carrying `nonce` (16 hex digits). */
export function encodePing(kind: "ping" | "pong", nonce: string): Uint8Array {
  return encoder.encode(JSON.stringify({ [kind]: nonce }));
}

/** A ping or pong, or null for any other payload. */
export function decodePing(payload: Uint8Array): { kind: "ping" | "pong"; nonce: string } | null {
  if (payload.length > MAX_PING_BYTES || payload[0] !== 0x7b) return null; // "{"
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(payload));
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const entries = Object.entries(value);
  if (entries.length !== 1) return null;
  const [kind, nonce] = entries[0];
  if ((kind !== "ping" && kind !== "pong") || typeof nonce !== "string") return null;
  return /^[0-9a-f]{16}$/.test(nonce) ? { kind, nonce } : null;
}

/** A worker's pings out and pongs back. */
export class Pinger {
  #send: (peerId: string, payload: Uint8Array) => void;
  #waiting = new Map<string, { peerId: string; sentAt: number; done: (pong: Pong) => void }>();
  #pongs = new TokenBucket(PONGS_PER_SEC, PONGS_PER_SEC, performance.now());

  /** Pings that send over `send` (the peer link's diagnostic messages). */
  constructor(send: (peerId: string, payload: Uint8Array) => void) {
    this.#send = send;
  }

  /**
   * Pings `peerId` once (asking for an introduction first if there is
   * none yet) and resolves with the pong's path and the round trip.
   *
   * @throws {PingTimeoutError} when no pong comes within `timeoutMs`
   */
  ping(peerId: string, timeoutMs: number): Promise<Pong> {
    const nonce = randomHex(8);
    const { promise, resolve, reject } = Promise.withResolvers<Pong>();
    const timer = setTimeout(() => {
      this.#waiting.delete(nonce);
      reject(new PingTimeoutError(`No pong from ${peerId} within ${timeoutMs} ms`));
    }, timeoutMs);
    this.#waiting.set(nonce, {
      peerId,
      sentAt: performance.now(),
      done: (pong) => {
        clearTimeout(timer);
        resolve(pong);
      },
    });
    try {
      this.#send(peerId, encodePing("ping", nonce));
    } catch (error) {
      clearTimeout(timer);
      this.#waiting.delete(nonce);
      reject(error);
    }
    return promise;
  }

  /**
   * A diagnostic message from `peerId` arrived over `path`: a ping is
   * answered (within {@linkcode PONGS_PER_SEC}), a pong ends its ping.
   * Returns false for any other message.
   */
  receive(peerId: string, payload: Uint8Array, path: PathKind): boolean {
    const message = decodePing(payload);
    if (!message) return false;
    if (message.kind === "ping") {
      if (this.#pongs.take(performance.now())) {
        try {
          this.#send(peerId, encodePing("pong", message.nonce));
        } catch {
          // The link is gone: the pinger times out.
        }
      }
      return true;
    }
    const waiting = this.#waiting.get(message.nonce);
    // Only the peer pinged can end its ping.
    if (waiting?.peerId === peerId) {
      this.#waiting.delete(message.nonce);
      waiting.done({ path, ms: performance.now() - waiting.sentAt });
    }
    return true;
  }
}
