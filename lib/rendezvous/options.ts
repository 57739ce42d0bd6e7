/**
 * The rendezvous's options and their defaults, in one table that the
 * options, the environment (`config.ts`), `--help` and docs/configuration.md's
 * configuration table all read; `tests/config_test.ts` holds them to it.
 *
 * @module
 */

import type { BanStore } from "./revocations.ts";
import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type { StunServerStats } from "../stun/server.ts";
import type { Fleet } from "./fleet.ts";
import type { Registry } from "./registry.ts";

/** The default of every limit and timing (sessions per IP and per key: half of `maxConnections`). */
export const RENDEZVOUS_DEFAULTS = {
  trustProxyHops: 0,
  maxConnections: 10_000,
  handshakeRatePerSec: 4000,
  handshakeBurst: 10_000,
  maxMessageBytes: 65_536,
  idleTimeoutSec: 30,
  messageRatePerSec: 50,
  messageBurst: 100,
  relayRatePerSec: 500,
  relayBurst: 1000,
  relayBytesPerSec: 32 * 1024 * 1024,
  maxSendBufferBytes: 1024 * 1024,
  listRatePerMin: 30,
  closeNoticeMs: 200,
  requireWorkerKeys: false,
  keyHoldSec: 300,
  keyProofTimeoutMs: 10_000,
  shutdownTimeoutSec: 5,
  fleetTtlSec: 5,
} as const;

/** Sessions one client IP, or one key, may hold unless set: half of `maxConnections`. */
export function defaultPerClient(maxConnections: number): number {
  return Math.ceil(maxConnections / 2);
}

/** Options for `Rendezvous`; every one has a production default, from {@linkcode RENDEZVOUS_DEFAULTS}. */
export interface RendezvousOptions {
  /** Where registrations live. @default {new MemoryRegistry()} */
  registry?: Registry;
  /**
   * The fleet this instance is part of (`REDIS_URL`): the registry becomes
   * this instance's sessions plus everyone else's, and peer services reach
   * workers on other instances. Started here; the caller closes it after
   * {@linkcode Rendezvous.close}.
   */
  fleet?: Fleet;
  /**
   * Where a single instance keeps its revocations (`REVOCATIONS_FILE`:
   * `BansFile`); a fleet keeps them in Redis. @default {in memory}
   */
  bans?: BanStore;
  /** Bearer token required of workers and of the debug list; unset = open. */
  token?: string;
  /**
   * How many proxies in front of us to trust for `X-Forwarded-For`; 0 takes
   * the address from the connection. Cloud Run's front end is one hop.
   * @default {0}
   */
  trustProxyHops?: number;
  /** Sessions held at once (each is one Cloud Run request). @default {10000} */
  maxConnections?: number;
  /**
   * Sessions one client IP (after `trustProxyHops`) may hold; more are
   * refused with 429. @default {half of maxConnections}
   */
  maxSessionsPerIp?: number;
  /**
   * Registered sessions one worker key may hold (a fleet may share one key);
   * more are refused with 429. @default {half of maxConnections}
   */
  maxSessionsPerKey?: number;
  /** WebSocket handshakes per second for the whole instance; more get 503. @default {4000} */
  handshakeRatePerSec?: number;
  /** Handshakes above that rate in a burst (a fleet coming back at once). @default {10000} */
  handshakeBurst?: number;
  /** The STUN server beside this rendezvous, for `/metrics`. */
  stunStats?: () => StunServerStats;
  /** Largest accepted text frame, in UTF-8 bytes. @default {65536} */
  maxMessageBytes?: number;
  /**
   * Seconds of silence after which the server pings, then drops a worker that
   * still says nothing: a dead worker is gone within this bound.
   * @default {30}
   */
  idleTimeoutSec?: number;
  /** Messages per second a session may send on average. @default {50} */
  messageRatePerSec?: number;
  /** Messages a session may send in a burst. @default {100} */
  messageBurst?: number;
  /** Relayed frames per second a session may send on average. @default {500} */
  relayRatePerSec?: number;
  /** Relayed frames a session may send in a burst. @default {1000} */
  relayBurst?: number;
  /**
   * Bytes of binary transport packets a session may relay per second on
   * average (a burst of a quarter of it); beyond it packets are dropped.
   * @default {33554432}
   */
  relayBytesPerSec?: number;
  /**
   * Bytes waiting in a session's send buffer (the worker is not reading)
   * beyond which relayed frames to it are dropped and any other message
   * closes it (4008), as does a buffer that stays past it for 5 s.
   * @default {1048576}
   */
  maxSendBufferBytes?: number;
  /**
   * `list_peers` requests a session may make per minute (a burst of a
   * sixth of it, at least 5); beyond them, an error answers instead.
   * @default {30}
   */
  listRatePerMin?: number;
  /**
   * On shutdown, how long workers have between the `going_away` notice and
   * the 1001 close, to stop sending (a frame that crosses the close frame
   * makes Deno drop the connection without one).
   * @default {200}
   */
  closeNoticeMs?: number;
  /**
   * Refuse workers that do not register with a key (`?key=`), with 401
   * before the upgrade. Off, keyless workers (the seed's) register, but never
   * take an id bound to a key.
   * @default {false}
   */
  requireWorkerKeys?: boolean;
  /**
   * How long an id stays bound to its key after its last session ended; a
   * session with another key (or none) is refused until then.
   * @default {300}
   */
  keyHoldSec?: number;
  /**
   * The authorities (`host[:port]`, as workers dial them) that registration
   * proofs may name. Unset: the request's `Host` header, which is what the
   * worker dialed when nothing rewrites it (Cloud Run and haproxy keep it).
   */
  publicHosts?: readonly string[];
  /** How long a keyed worker has to answer the challenge. @default {10000} */
  keyProofTimeoutMs?: number;
  /** Where the service logs. @default {silentLogger} */
  logger?: Logger;
  /** Time source, for tests. @default {systemClock} */
  clock?: Clock;
  /** Reported by `GET /`. */
  name?: string;
  /** Reported by `GET /`. */
  version?: string;
}

/** Options with every default filled in. */
export type ResolvedOptions =
  & Required<
    Omit<RendezvousOptions, "registry" | "fleet" | "bans" | "token" | "publicHosts" | "stunStats">
  >
  & { token?: string; publicHosts?: readonly string[] };

/** `options` with the defaults of {@linkcode RENDEZVOUS_DEFAULTS} filled in. */
export function resolveOptions(
  options: RendezvousOptions,
  logger: Logger,
  clock: Clock,
): ResolvedOptions {
  const d = RENDEZVOUS_DEFAULTS;
  const maxConnections = options.maxConnections ?? d.maxConnections;
  return {
    token: options.token,
    trustProxyHops: options.trustProxyHops ?? d.trustProxyHops,
    maxConnections,
    maxSessionsPerIp: options.maxSessionsPerIp ?? defaultPerClient(maxConnections),
    maxSessionsPerKey: options.maxSessionsPerKey ?? defaultPerClient(maxConnections),
    handshakeRatePerSec: options.handshakeRatePerSec ?? d.handshakeRatePerSec,
    handshakeBurst: options.handshakeBurst ?? d.handshakeBurst,
    maxMessageBytes: options.maxMessageBytes ?? d.maxMessageBytes,
    idleTimeoutSec: options.idleTimeoutSec ?? d.idleTimeoutSec,
    messageRatePerSec: options.messageRatePerSec ?? d.messageRatePerSec,
    messageBurst: options.messageBurst ?? d.messageBurst,
    relayRatePerSec: options.relayRatePerSec ?? d.relayRatePerSec,
    relayBurst: options.relayBurst ?? d.relayBurst,
    relayBytesPerSec: options.relayBytesPerSec ?? d.relayBytesPerSec,
    maxSendBufferBytes: options.maxSendBufferBytes ?? d.maxSendBufferBytes,
    listRatePerMin: options.listRatePerMin ?? d.listRatePerMin,
    closeNoticeMs: options.closeNoticeMs ?? d.closeNoticeMs,
    requireWorkerKeys: options.requireWorkerKeys ?? d.requireWorkerKeys,
    keyHoldSec: options.keyHoldSec ?? d.keyHoldSec,
    publicHosts: options.publicHosts?.map((h) => h.toLowerCase()),
    keyProofTimeoutMs: options.keyProofTimeoutMs ?? d.keyProofTimeoutMs,
    logger,
    clock,
    name: options.name ?? "holepunch-rendezvous",
    version: options.version ?? "0.0.0",
  };
}
