/**
 * The rendezvous's configuration, read from environment variables.
 *
 * @module
 */

import {
  boolVar,
  ConfigError,
  type Env,
  LOG_VARIABLES,
  type LogConfig,
  logConfig,
  numberVar,
  portVar,
  stringVar,
  type VariableDoc,
} from "../core/env.ts";
import { parseRedisUrl } from "../redis/client.ts";
import { loadStunConfig, STUN_VARIABLES } from "../stun/config.ts";
import type { StunServerOptions } from "../stun/server.ts";
import { defaultPerClient, RENDEZVOUS_DEFAULTS as D } from "./options.ts";

/** Everything `rendezvous.ts` needs to start. */
export interface RendezvousConfig {
  /** HTTP port (`PORT`); 0 picks a free one. */
  port: number;
  /** Listen address (`HOST`). */
  hostname: string;
  /** Bearer token required of workers and the debug endpoints (`RENDEZVOUS_TOKEN`). */
  token?: string;
  /** Proxies in front whose `X-Forwarded-For` entry is trusted (`TRUST_PROXY`). */
  trustProxyHops: number;
  /** Sessions at once; more are refused with 503 (`MAX_CONNECTIONS`). */
  maxConnections: number;
  /** Sessions one client IP may hold (`MAX_SESSIONS_PER_IP`). */
  maxSessionsPerIp: number;
  /** Registered sessions one worker key may hold (`MAX_SESSIONS_PER_KEY`). */
  maxSessionsPerKey: number;
  /** Handshakes per second, instance-wide (`HANDSHAKE_RATE_PER_SEC`). */
  handshakeRatePerSec: number;
  /** Handshakes in a burst above that (`HANDSHAKE_BURST`). */
  handshakeBurst: number;
  /** Largest message a worker may send (`MAX_MESSAGE_BYTES`). */
  maxMessageBytes: number;
  /** Server pings drop a peer silent this long (`IDLE_TIMEOUT_SEC`). */
  idleTimeoutSec: number;
  /** Messages per second a session may send (`MESSAGE_RATE_PER_SEC`). */
  messageRatePerSec: number;
  /** Burst above that rate (`MESSAGE_BURST`). */
  messageBurst: number;
  /** Relayed messages per second a session may send (`RELAY_RATE_PER_SEC`). */
  relayRatePerSec: number;
  /** Burst above that rate (`RELAY_BURST`). */
  relayBurst: number;
  /** How long a drain may take on SIGTERM (`SHUTDOWN_TIMEOUT_SEC`). */
  shutdownTimeoutSec: number;
  /** Bytes of transport packets a worker may relay per second (`RELAY_BYTES_PER_SEC`). */
  relayBytesPerSec: number;
  /** Unsent bytes to a session beyond which it is not read from (`MAX_SEND_BUFFER_BYTES`). */
  maxSendBufferBytes: number;
  /** `list_peers` a session may ask per minute (`LIST_RATE_PER_MIN`). */
  listRatePerMin: number;
  /** Where a single instance keeps its key bindings across restarts (`KEY_BINDINGS_FILE`). */
  keyBindingsFile?: string;
  /** Where a single instance keeps its revocations across restarts (`REVOCATIONS_FILE`). */
  revocationsFile?: string;
  /** Refuse workers without a key (`REQUIRE_WORKER_KEYS`). */
  requireWorkerKeys: boolean;
  /** How long an id stays bound to its key once idle (`KEY_HOLD_SEC`). */
  keyHoldSec: number;
  /** Authorities key proofs may name (`PUBLIC_HOSTS`); unset: the `Host` header. */
  publicHosts?: string[];
  /** The fleet over Redis (`REDIS_URL` set), or undefined: one instance, in memory. */
  fleet?: FleetConfig;
  /** A STUN server beside the rendezvous (STUN_PORT set), or undefined. */
  stun?: StunServerOptions;
  /** Log level and format (`LOG_LEVEL`, `LOG_FORMAT`). */
  log: LogConfig;
}

/** Many instances as one fleet, over Redis. */
export interface FleetConfig {
  /** `redis://` or `rediss://` with credentials (`REDIS_URL`). */
  url: string;
  /** PEM of the CA that signed Redis's certificate, for `rediss://` (`REDIS_CA_CERT`). */
  caCert?: string;
  /** Prefix of the fleet's keys and channels (`REDIS_PREFIX`). */
  prefix: string;
  /** An instance silent this long leaves the fleet with its workers (`FLEET_TTL_SEC`). */
  ttlSec: number;
}

/** The rendezvous's environment variables. */
export const RENDEZVOUS_VARIABLES: readonly VariableDoc[] = [
  {
    name: "PORT",
    fallback: "8080",
    meaning: "HTTP/WebSocket port (Cloud Run sets it); 0 picks a free one",
  },
  { name: "HOST", fallback: "0.0.0.0", meaning: "address to listen on" },
  {
    name: "RENDEZVOUS_TOKEN",
    fallback: "(unset: open)",
    meaning:
      "bearer token workers, /debug/*, /metrics, the dashboard and the admin API must present (unset: open, and no admin API)",
  },
  {
    name: "TRUST_PROXY",
    fallback: "false",
    meaning: "take the client IP from X-Forwarded-For: true (1 hop, Cloud Run) or a hop count",
  },
  {
    name: "MAX_CONNECTIONS",
    fallback: String(D.maxConnections),
    meaning: "sessions held at once; more get 503",
  },
  {
    name: "MAX_SESSIONS_PER_IP",
    fallback: "MAX_CONNECTIONS / 2",
    meaning: "sessions one client IP (after TRUST_PROXY) may hold; more get 429",
  },
  {
    name: "MAX_SESSIONS_PER_KEY",
    fallback: "MAX_CONNECTIONS / 2",
    meaning: "registered sessions one worker key may hold (a fleet may share a key); more get 429",
  },
  {
    name: "HANDSHAKE_RATE_PER_SEC",
    fallback: String(D.handshakeRatePerSec),
    meaning: "WebSocket handshakes per second, instance-wide; more get 503",
  },
  {
    name: "HANDSHAKE_BURST",
    fallback: String(D.handshakeBurst),
    meaning: "handshakes above that rate in a burst (a fleet coming back at once)",
  },
  {
    name: "MAX_MESSAGE_BYTES",
    fallback: String(D.maxMessageBytes),
    meaning: "largest text frame; larger closes with 1009",
  },
  {
    name: "IDLE_TIMEOUT_SEC",
    fallback: String(D.idleTimeoutSec),
    meaning: "ping a silent worker after half of this, drop it after all of it",
  },
  {
    name: "MESSAGE_RATE_PER_SEC",
    fallback: String(D.messageRatePerSec),
    meaning: "average messages per second per worker; more closes with 1008",
  },
  {
    name: "MESSAGE_BURST",
    fallback: String(D.messageBurst),
    meaning: "messages a worker may send in a burst",
  },
  {
    name: "SHUTDOWN_TIMEOUT_SEC",
    fallback: String(D.shutdownTimeoutSec),
    meaning: "how long shutdown waits for sockets to close (Cloud Run allows 10)",
  },
  {
    name: "RELAY_RATE_PER_SEC",
    fallback: String(D.relayRatePerSec),
    meaning: "relayed frames per second per worker; more are refused with an error",
  },
  {
    name: "RELAY_BURST",
    fallback: String(D.relayBurst),
    meaning: "relayed frames a worker may send in a burst",
  },
  {
    name: "RELAY_BYTES_PER_SEC",
    fallback: String(D.relayBytesPerSec),
    meaning: "transport packets a worker may relay, in bytes/s (burst a quarter); over it, dropped",
  },
  {
    name: "MAX_SEND_BUFFER_BYTES",
    fallback: String(D.maxSendBufferBytes),
    meaning:
      "unsent bytes to a worker that does not read: past it relayed frames are dropped (5 s at most), anything else closes it (4008)",
  },
  {
    name: "KEY_BINDINGS_FILE",
    fallback: "unset (in memory)",
    meaning:
      "a single instance keeps its key bindings here across restarts (a fleet keeps them in Redis)",
  },
  {
    name: "REVOCATIONS_FILE",
    fallback: "unset (in memory)",
    meaning:
      "a single instance keeps its revocations (`POST /admin/revoke`) here across restarts (a fleet keeps them in Redis)",
  },
  {
    name: "LIST_RATE_PER_MIN",
    fallback: String(D.listRatePerMin),
    meaning:
      "`list_peers` a worker may ask per minute (burst a sixth, at least 5); more get an error",
  },
  {
    name: "REQUIRE_WORKER_KEYS",
    fallback: String(D.requireWorkerKeys),
    meaning: "refuse workers that do not register with a key (the seed's worker has none)",
  },
  {
    name: "KEY_HOLD_SEC",
    fallback: String(D.keyHoldSec),
    meaning: "an id stays bound to its key this long after its last session",
  },
  {
    name: "PUBLIC_HOSTS",
    fallback: "(the Host header)",
    meaning: "host[:port] list workers dial, for key proofs behind a proxy that rewrites Host",
  },
  {
    name: "REDIS_URL",
    fallback: "(unset: one instance, in memory)",
    meaning: "redis://[user:password@]host:port[/db] or rediss://: instances share the fleet",
  },
  {
    name: "REDIS_CA_CERT",
    fallback: "(system roots)",
    meaning: "PEM of the CA of Redis's TLS certificate (Memorystore's server CA), for rediss://",
  },
  {
    name: "REDIS_PREFIX",
    fallback: "holepunch",
    meaning: "prefix of the fleet's keys and channels",
  },
  {
    name: "FLEET_TTL_SEC",
    fallback: String(D.fleetTtlSec),
    meaning: "an instance silent this long is dropped from the fleet with its workers",
  },
  ...STUN_VARIABLES,
  ...LOG_VARIABLES,
];

function fleetConfig(env: Env): FleetConfig | undefined {
  const url = stringVar(env, "REDIS_URL");
  if (url === undefined) return undefined;
  try {
    parseRedisUrl(url);
  } catch (cause) {
    throw new ConfigError("REDIS_URL", `Cannot read REDIS_URL: ${(cause as Error).message}`, {
      cause,
    });
  }
  const caCert = stringVar(env, "REDIS_CA_CERT");
  if (caCert !== undefined && !caCert.includes("-----BEGIN CERTIFICATE-----")) {
    throw new ConfigError(
      "REDIS_CA_CERT",
      "Cannot read REDIS_CA_CERT: expected a PEM certificate (-----BEGIN CERTIFICATE-----)",
    );
  }
  const prefix = stringVar(env, "REDIS_PREFIX", "holepunch");
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(prefix)) {
    throw new ConfigError(
      "REDIS_PREFIX",
      `Cannot read REDIS_PREFIX: "${prefix}" is not 1-64 characters of [A-Za-z0-9._-]`,
    );
  }
  return {
    url,
    ...(caCert ? { caCert } : {}),
    prefix,
    ttlSec: numberVar(env, "FLEET_TTL_SEC", D.fleetTtlSec, { min: 1, max: 300 }),
  };
}

function trustProxyHops(env: Env): number {
  const text = stringVar(env, "TRUST_PROXY");
  if (text === undefined) return 0;
  if (/^\d+$/.test(text)) {
    return numberVar(env, "TRUST_PROXY", 0, { min: 0, max: 10, integer: true });
  }
  try {
    return boolVar(env, "TRUST_PROXY", false) ? 1 : 0;
  } catch (cause) {
    throw new ConfigError(
      "TRUST_PROXY",
      `Cannot read TRUST_PROXY: it must be true, false or a hop count: current value is "${text}"`,
      { cause },
    );
  }
}

function publicHosts(env: Env): string[] | undefined {
  const text = stringVar(env, "PUBLIC_HOSTS");
  if (text === undefined) return undefined;
  const hosts = text.split(",").map((h) => h.trim().toLowerCase()).filter((h) => h !== "");
  for (const host of hosts) {
    let parsed: URL | undefined;
    try {
      parsed = new URL(`ws://${host}`);
    } catch {
      parsed = undefined;
    }
    // Only host[:port]: a scheme, path or credentials would never match a Host header.
    if (parsed === undefined || parsed.host !== host) {
      throw new ConfigError(
        "PUBLIC_HOSTS",
        `Cannot read PUBLIC_HOSTS: "${host}" is not host[:port] (no scheme, no path)`,
      );
    }
  }
  if (hosts.length === 0) {
    throw new ConfigError("PUBLIC_HOSTS", "Cannot read PUBLIC_HOSTS: it names no host");
  }
  return hosts;
}

/**
 * Reads the rendezvous configuration.
 *
 * @throws {ConfigError} naming the first bad variable.
 */
export function loadRendezvousConfig(env: Env, isTerminal = false): RendezvousConfig {
  const token = stringVar(env, "RENDEZVOUS_TOKEN");
  const hostname = stringVar(env, "HOST", "0.0.0.0");
  const maxConnections = numberVar(env, "MAX_CONNECTIONS", D.maxConnections, {
    min: 1,
    integer: true,
  });
  const fleet = fleetConfig(env);
  const keyBindingsFile = stringVar(env, "KEY_BINDINGS_FILE");
  if (keyBindingsFile !== undefined && fleet !== undefined) {
    throw new ConfigError(
      "KEY_BINDINGS_FILE",
      "Cannot use KEY_BINDINGS_FILE with REDIS_URL: a fleet keeps its key bindings in Redis",
    );
  }
  const revocationsFile = stringVar(env, "REVOCATIONS_FILE");
  if (revocationsFile !== undefined && fleet !== undefined) {
    throw new ConfigError(
      "REVOCATIONS_FILE",
      "Cannot use REVOCATIONS_FILE with REDIS_URL: a fleet keeps its revocations in Redis",
    );
  }
  return {
    port: portVar(env, "PORT", 8080),
    hostname,
    stun: loadStunConfig(env, { hostname }),
    fleet,
    ...(keyBindingsFile === undefined ? {} : { keyBindingsFile }),
    ...(revocationsFile === undefined ? {} : { revocationsFile }),
    token,
    trustProxyHops: trustProxyHops(env),
    maxConnections,
    maxSessionsPerIp: numberVar(env, "MAX_SESSIONS_PER_IP", defaultPerClient(maxConnections), {
      min: 1,
      integer: true,
    }),
    maxSessionsPerKey: numberVar(env, "MAX_SESSIONS_PER_KEY", defaultPerClient(maxConnections), {
      min: 1,
      integer: true,
    }),
    handshakeRatePerSec: numberVar(env, "HANDSHAKE_RATE_PER_SEC", D.handshakeRatePerSec, {
      min: 1,
    }),
    handshakeBurst: numberVar(env, "HANDSHAKE_BURST", D.handshakeBurst, { min: 1, integer: true }),
    maxMessageBytes: numberVar(env, "MAX_MESSAGE_BYTES", D.maxMessageBytes, {
      min: 256,
      max: 16 * 1024 * 1024,
      integer: true,
    }),
    idleTimeoutSec: numberVar(env, "IDLE_TIMEOUT_SEC", D.idleTimeoutSec, {
      min: 1,
      max: 3600,
      integer: true,
    }),
    messageRatePerSec: numberVar(env, "MESSAGE_RATE_PER_SEC", D.messageRatePerSec, { min: 0.1 }),
    messageBurst: numberVar(env, "MESSAGE_BURST", D.messageBurst, { min: 1, integer: true }),
    relayRatePerSec: numberVar(env, "RELAY_RATE_PER_SEC", D.relayRatePerSec, { min: 0.1 }),
    relayBurst: numberVar(env, "RELAY_BURST", D.relayBurst, { min: 1, integer: true }),
    shutdownTimeoutSec: numberVar(env, "SHUTDOWN_TIMEOUT_SEC", D.shutdownTimeoutSec, {
      min: 0,
      max: 60,
    }),
    relayBytesPerSec: numberVar(env, "RELAY_BYTES_PER_SEC", D.relayBytesPerSec, {
      min: 65_536,
      integer: true,
    }),
    maxSendBufferBytes: numberVar(env, "MAX_SEND_BUFFER_BYTES", D.maxSendBufferBytes, {
      min: 65_536,
      integer: true,
    }),
    listRatePerMin: numberVar(env, "LIST_RATE_PER_MIN", D.listRatePerMin, {
      min: 1,
      integer: true,
    }),
    requireWorkerKeys: boolVar(env, "REQUIRE_WORKER_KEYS", D.requireWorkerKeys),
    keyHoldSec: numberVar(env, "KEY_HOLD_SEC", D.keyHoldSec, { min: 0, max: 30 * 86_400 }),
    publicHosts: publicHosts(env),
    log: logConfig(env, isTerminal),
  };
}
