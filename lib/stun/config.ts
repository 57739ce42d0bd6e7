/**
 * STUN server configuration, shared by `stun.ts` and the rendezvous (which
 * runs a STUN server beside itself when `STUN_PORT` is set).
 *
 * @module
 */

import { ConfigError, type Env, portVar, stringVar, type VariableDoc } from "../core/env.ts";
import { normalizeIp } from "../protocol/ip.ts";
import { flushLogs, type Logger } from "../core/log.ts";
import { formatAddress } from "./client.ts";
import { StunServer, type StunServerOptions } from "./server.ts";

/** Public STUN servers a worker (and netcheck) asks by default: two, to tell the NAT's mapping. */
export const DEFAULT_STUN_SERVERS = "stun.l.google.com:19302,stun.cloudflare.com:3478";

/** The STUN variables. */
export const STUN_VARIABLES: readonly VariableDoc[] = [
  {
    name: "STUN_PORT",
    fallback: "3478 (rendezvous: off)",
    meaning: "UDP port of the STUN server; 0 picks one",
  },
  {
    name: "STUN_HOST",
    fallback: "0.0.0.0 (rendezvous: HOST)",
    meaning: "UDP address of the STUN server",
  },
  {
    name: "STUN_ALT_HOST",
    fallback: "(unset)",
    meaning: "a second IP of this host: enables RFC 5780 (OTHER-ADDRESS, CHANGE-REQUEST)",
  },
  { name: "STUN_ALT_PORT", fallback: "STUN_PORT+1", meaning: "the second port for RFC 5780" },
];

/**
 * Reads the STUN server settings. Returns undefined when `STUN_PORT` is unset
 * and `defaultPort` is undefined (the rendezvous's default: no STUN).
 *
 * @throws {ConfigError}
 */
export function loadStunConfig(
  env: Env,
  defaults: { port?: number; hostname: string },
): StunServerOptions | undefined {
  if (stringVar(env, "STUN_PORT") === undefined && defaults.port === undefined) return undefined;
  const port = portVar(env, "STUN_PORT", defaults.port ?? 3478);
  const hostname = stringVar(env, "STUN_HOST", defaults.hostname);
  const altHost = stringVar(env, "STUN_ALT_HOST");
  if (altHost === undefined) return { hostname, port };
  for (const [name, value] of [["STUN_ALT_HOST", altHost], ["STUN_HOST", hostname]] as const) {
    const ip = normalizeIp(value);
    if (ip === null || ip === "0.0.0.0" || ip === "::") {
      throw new ConfigError(
        name,
        `Cannot read ${name}: RFC 5780 needs a concrete IP address here: current value is "${value}"`,
      );
    }
  }
  const altPort = portVar(env, "STUN_ALT_PORT", port === 0 ? 0 : port + 1);
  if (altPort === port && port !== 0) {
    throw new ConfigError(
      "STUN_ALT_PORT",
      `Cannot read STUN_ALT_PORT: it must differ from STUN_PORT (${port})`,
    );
  }
  return { hostname, port, alternate: { hostname: altHost, port: altPort } };
}

/**
 * Starts a STUN server and logs where it listens.
 *
 * @throws {Deno.errors.AddrInUse} (or another bind error) when a port cannot be bound
 */
export function startStun(
  options: StunServerOptions,
  logger: Logger,
  fields: Record<string, unknown> = {},
): StunServer {
  const server = StunServer.listen({ ...options, logger });
  logger.info("stun server listening", {
    addresses: server.addresses.map(formatAddress),
    port: server.addresses[0].port,
    rfc5780: server.addresses.length > 1,
    ...fields,
  });
  return server;
}

/** Logs why a STUN server could not start, for an entry point about to exit. */
export function logStunStartFailure(
  options: StunServerOptions,
  logger: Logger,
  error: unknown,
): void {
  logger.error("cannot start the stun server", {
    error,
    hostname: options.hostname,
    port: options.port,
  });
}

/**
 * Starts a STUN server for an entry point and logs where it listens; when
 * the port cannot be bound, logs why and exits with status 1.
 */
export function startStunOrExit(
  options: StunServerOptions,
  logger: Logger,
  fields: Record<string, unknown> = {},
): StunServer {
  try {
    return startStun(options, logger, fields);
  } catch (error) {
    logStunStartFailure(options, logger, error);
    flushLogs();
    Deno.exit(1);
  }
}
