/**
 * A worker's view of its own UDP socket from outside: ask several STUN
 * servers for the mapped endpoint, classify the NAT's mapping behaviour, and
 * keep the mapping alive.
 *
 * The STUN queries run on the very socket later used for hole punching, so
 * the mapping learned is the one peers must aim at.
 *
 * @module
 */

import { type Clock, delay, systemClock } from "../core/clock.ts";
import { addressScope, normalizeIp } from "../protocol/ip.ts";
import { type Logger, silentLogger } from "../core/log.ts";
import type { NatMapping, RegisterUdpEndpointMessage, UdpAddress } from "../protocol/messages.ts";
import { MAX_LOCAL_CANDIDATES } from "../protocol/messages.ts";
import type { BindingResult, StunClient } from "./client.ts";
import { formatAddress } from "./client.ts";

/** What discovery concluded. */
export type UdpEndpointReport = Omit<RegisterUdpEndpointMessage, "type">;

/**
 * Discovery is latency-sensitive (peers wait for it), so the worker — for
 * its endpoint, a reroll's fresh socket, and netcheck — uses a shorter
 * schedule than RFC 8489's 39.5 s default, as Tailscale's netcheck does:
 * sends at 0, 250, 750, 1750 and 3750 ms, verdict at 4.75 s. A lost answer
 * costs little: the keepalive asks again every STUN_KEEPALIVE_SEC.
 */
export const DISCOVERY_SCHEDULE = { rtoMs: 250, maxSends: 5, finalWaitFactor: 4 } as const;

/** Keepalive every 20 s: Cloud NAT drops idle UDP mappings after 30 s. */
export const DEFAULT_KEEPALIVE_MS = 20_000;

/**
 * Classifies the mapping from the answers of several servers (RFC 4787 §4.1;
 * RFC 5780 §4.3 does the same with one server's two addresses).
 *
 * @param ownIps every address of this host (loopback included), to spot "no NAT"
 * @param localPort the socket's port
 * @param results one entry per server asked; undefined where it did not answer
 */
export function classifyMapping(
  ownIps: ReadonlySet<string>,
  localPort: number,
  results: readonly (BindingResult | undefined)[],
): NatMapping {
  const answered = results.filter((r): r is BindingResult => r !== undefined);
  if (answered.length === 0) return "no-udp";
  if (answered.every((r) => ownIps.has(r.mapped.ip) && r.mapped.port === localPort)) {
    return "no-nat";
  }
  const first = answered[0].mapped;
  if (answered.some((r) => r.mapped.ip !== first.ip || r.mapped.port !== first.port)) {
    return "endpoint-dependent";
  }
  return answered.length >= 2 ? "endpoint-independent" : "unknown";
}

/** An interface address, as `Deno.networkInterfaces()` gives it. */
export interface InterfaceAddress {
  family: "IPv4" | "IPv6";
  address: string;
}

/**
 * Candidate addresses peers on other hosts could reach: interface addresses
 * of the socket's family, without loopback and link-local ones (RFC 8445
 * §5.1.1.1), each with the socket's port. A socket bound to one address
 * offers only that address.
 */
export function localCandidates(
  interfaces: readonly InterfaceAddress[],
  bound: { ip: string; port: number; family: 4 | 6 },
): UdpAddress[] {
  if (bound.ip !== "0.0.0.0" && bound.ip !== "::") return [{ ip: bound.ip, port: bound.port }];
  const seen = new Set<string>();
  const out: UdpAddress[] = [];
  for (const iface of interfaces) {
    if (iface.family !== (bound.family === 4 ? "IPv4" : "IPv6")) continue;
    const ip = normalizeIp(iface.address);
    if (ip === null || seen.has(ip)) continue;
    const scope = addressScope(ip);
    if (scope === "loopback" || scope === "link-local" || scope === "metadata") continue;
    seen.add(ip);
    out.push({ ip, port: bound.port });
  }
  return out.slice(0, MAX_LOCAL_CANDIDATES);
}

/** Every address of this host, loopback included (empty without permission). */
export function hostInterfaces(): InterfaceAddress[] {
  try {
    return Deno.networkInterfaces().map((i) => ({ family: i.family, address: i.address }));
  } catch {
    return []; // Needs --allow-sys=networkInterfaces.
  }
}

/** Options for {@linkcode UdpPresence}. */
export interface UdpPresenceOptions {
  stun: Pick<StunClient, "binding">;
  /** `host:port` of each STUN server; at least two to classify the mapping. */
  servers: readonly string[];
  /** The socket's bound address. */
  local: { ip: string; port: number; family: 4 | 6 };
  /** @default {hostInterfaces} */
  interfaces?: () => InterfaceAddress[];
  /** More local candidates, after the socket's own (an IPv6 socket's addresses). */
  moreLocal?: () => UdpAddress[];
  /** @default {20000} */
  keepaliveMs?: number;
  /** Called with every report that differs from the last one. */
  onChange?: (report: UdpEndpointReport) => void;
  /** @default {systemClock} */
  clock?: Clock;
  /** @default {silentLogger} */
  logger?: Logger;
}

function sameReport(a: UdpEndpointReport | undefined, b: UdpEndpointReport): boolean {
  return a !== undefined && JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Discovers and keeps alive the worker's public UDP endpoint.
 *
 * @example
 * ```ts
 * const presence = new UdpPresence({ stun, servers, local: udp.local, onChange: report });
 * await presence.discover();
 * presence.keepAlive(signal);
 * ```
 */
export class UdpPresence {
  #o: Required<Omit<UdpPresenceOptions, "onChange" | "moreLocal">> & {
    onChange?: (report: UdpEndpointReport) => void;
    moreLocal?: () => UdpAddress[];
  };
  #last?: UdpEndpointReport;
  /** The server whose answer the keepalive checks. */
  #anchor?: string;
  #running?: Promise<UdpEndpointReport>;

  constructor(options: UdpPresenceOptions) {
    this.#o = {
      stun: options.stun,
      servers: options.servers,
      local: options.local,
      interfaces: options.interfaces ?? hostInterfaces,
      keepaliveMs: options.keepaliveMs ?? DEFAULT_KEEPALIVE_MS,
      onChange: options.onChange,
      moreLocal: options.moreLocal,
      clock: options.clock ?? systemClock,
      logger: options.logger ?? silentLogger,
    };
  }

  /** The last report, if discovery ran. */
  get last(): UdpEndpointReport | undefined {
    return this.#last;
  }

  /**
   * Asks every server at once and classifies the answers. Concurrent calls
   * share one run.
   */
  discover(signal?: AbortSignal): Promise<UdpEndpointReport> {
    this.#running ??= this.#discover(signal).finally(() => this.#running = undefined);
    return this.#running;
  }

  async #discover(signal?: AbortSignal): Promise<UdpEndpointReport> {
    const { stun, servers, local, logger } = this.#o;
    const results = await Promise.all(servers.map(async (server) => {
      try {
        return await stun.binding(server, { signal });
      } catch (error) {
        if (signal?.aborted) throw error;
        logger.warn("stun server did not answer", { server, error: (error as Error).message });
        return undefined;
      }
    }));
    const interfaces = this.#o.interfaces();
    const ownIps = new Set(
      interfaces.map((i) => normalizeIp(i.address)).filter((ip) => ip !== null),
    );
    if (local.ip !== "0.0.0.0" && local.ip !== "::") ownIps.add(local.ip);
    const mapping = classifyMapping(ownIps, local.port, results);
    const firstAnswer = results.findIndex((r) => r !== undefined);
    this.#anchor = firstAnswer >= 0 ? servers[firstAnswer] : undefined;
    const mapped = firstAnswer >= 0 ? results[firstAnswer]!.mapped : undefined;
    const report: UdpEndpointReport = {
      public: mapped ? { ip: mapped.ip, port: mapped.port } : null,
      local: [...localCandidates(interfaces, local), ...(this.#o.moreLocal?.() ?? [])]
        .slice(0, MAX_LOCAL_CANDIDATES),
      nat: { mapping },
    };
    logger.info("udp endpoint discovered", {
      udp_public: mapped ? formatAddress(mapped) : null,
      nat_mapping: mapping,
      servers_answered: results.filter((r) => r !== undefined).length,
      servers_asked: servers.length,
      mapped_by_server: Object.fromEntries(
        servers.map((s, i) => [s, results[i] ? formatAddress(results[i]!.mapped) : null]),
      ),
    });
    if (!sameReport(this.#last, report)) {
      this.#last = report;
      this.#o.onChange?.(report);
    }
    return report;
  }

  /**
   * Until `signal` aborts: every `keepaliveMs`, a Binding request to the
   * anchor server refreshes the NAT mapping; if the mapped endpoint moved or
   * the server stopped answering, discovery runs again (and `onChange` fires
   * when the report differs).
   */
  async keepAlive(signal: AbortSignal): Promise<void> {
    const { stun, clock, logger, keepaliveMs } = this.#o;
    while (!signal.aborted) {
      try {
        await delay(keepaliveMs, { signal, clock });
      } catch {
        return;
      }
      const anchor = this.#anchor;
      try {
        if (anchor === undefined) {
          await this.discover(signal);
          continue;
        }
        const result = await stun.binding(anchor, { signal });
        const known = this.#last?.public;
        if (known && (known.ip !== result.mapped.ip || known.port !== result.mapped.port)) {
          logger.info("udp mapping changed", {
            from: formatAddress(known),
            to: formatAddress(result.mapped),
          });
          await this.discover(signal);
        }
      } catch {
        if (signal.aborted) return;
        await this.discover(signal).catch(() => {});
      }
    }
  }
}
