/**
 * Every WebSocket close code the rendezvous sends, and what a worker does
 * when it sees one. Standard codes come from RFC 6455 §7.4.1 and the IANA
 * registry; application codes sit in the private 4000–4999 range.
 *
 * @module
 */

/** Close codes used between workers and the rendezvous. */
export const CloseCode = {
  /** RFC 6455: normal closure; a worker that shuts down sends this. */
  NORMAL: 1000,
  /** RFC 6455: the server is going away (shutdown, deploy); reconnect at once. */
  GOING_AWAY: 1001,
  /** RFC 6455: a binary frame arrived where only JSON text is spoken. */
  UNSUPPORTED_DATA: 1003,
  /** RFC 6455: the peer broke a policy, here the message rate limit. */
  POLICY_VIOLATION: 1008,
  /** RFC 6455: a frame larger than the configured message limit. */
  MESSAGE_TOO_BIG: 1009,
  /** RFC 6455: the server hit an unexpected condition. */
  INTERNAL_ERROR: 1011,
  /** IANA: the service is restarting; reconnect at once. */
  SERVICE_RESTART: 1012,
  /** A newer session registered the same worker id (the seed's behaviour). */
  SESSION_REPLACED: 4000,
  /** The worker stopped answering heartbeats (sent by the worker to itself). */
  HEARTBEAT_TIMEOUT: 4001,
  /**
   * The worker id is bound to another key (or, for a keyless session, to a
   * key) that held it recently; the session was refused, the holder kept.
   */
  KEY_REFUSED: 4003,
  /** The worker did not prove its key: a bad signature, no answer in time, or another message first. */
  KEY_PROOF_FAILED: 4004,
  /**
   * The worker did not read what the rendezvous sent it: its send buffer
   * passed `MAX_SEND_BUFFER_BYTES` with a message that cannot be dropped.
   */
  SEND_BUFFER_FULL: 4008,
  /**
   * An administrator revoked the worker's key or id (`POST /admin/revoke`);
   * the reason says why. Reconnects are refused the same way until the ban
   * is lifted or lapses.
   */
  REVOKED: 4009,
} as const;

/** One of the {@linkcode CloseCode} values. */
export type CloseCode = typeof CloseCode[keyof typeof CloseCode];

/** Reasons sent with each close; RFC 6455 §5.5 limits them to 123 bytes. */
export const CloseReason = {
  SHUTDOWN: "rendezvous shutting down",
  REPLACED: "New connection from same worker ID",
  BINARY: "binary frames are relay frames only: send JSON text",
  TOO_BIG: "message exceeds the size limit",
  RATE_LIMITED: "message rate limit exceeded",
  WORKER_STOPPING: "worker shutting down",
  HEARTBEAT_TIMEOUT: "no heartbeat answer in time",
  KEY_BOUND: "worker id is bound to another key",
  KEY_REQUIRED: "worker id is bound to a key: register with it",
  KEY_PROOF_FAILED: "key proof failed",
  KEY_PROOF_TIMEOUT: "key proof timed out",
  SEND_BUFFER_FULL: "not reading: send buffer full",
} as const;

/**
 * True when a close with `code` means "the server is going away, come back
 * now": after a deploy or restart, waiting out a backoff only delays the
 * fleet's return, and the jitter spreads the storm anyway.
 *
 * @example
 * ```ts
 * reconnectsImmediately(1001); // true
 * reconnectsImmediately(4000); // false
 * ```
 */
export function reconnectsImmediately(code: number): boolean {
  return code === CloseCode.GOING_AWAY || code === CloseCode.SERVICE_RESTART;
}
