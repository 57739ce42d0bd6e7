/**
 * Wires a worker's UDP socket, STUN client and {@linkcode UdpPresence} to its
 * rendezvous session: discover after every registration, report each new
 * result once per session, keep the mapping alive in between.
 *
 * @module
 */

import { FfiUdp } from "../peer/ffi_udp.ts";
import { PortMapper, type PortMapperOptions } from "../portmap/mapper.ts";
import { findGateway } from "../portmap/gateway.ts";
import type { MappedEndpoint, UdpAddress } from "../protocol/messages.ts";
import type { Logger } from "../core/log.ts";
import { addressScope, parseIp } from "../protocol/ip.ts";
import { parseServerSpec, StunClient } from "../stun/client.ts";
import { UdpEndpoint } from "../peer/udp_endpoint.ts";
import {
  DISCOVERY_SCHEDULE,
  hostInterfaces,
  localCandidates,
  type UdpEndpointReport,
  UdpPresence,
} from "../stun/discovery.ts";

/** Options for {@linkcode startWorkerUdp}. */
export interface WorkerUdpOptions {
  hostname: string;
  port: number;
  stunServers: readonly string[];
  keepaliveMs: number;
  /** Batched sockets for the IPv4 socket (`PEER_UDP_IO`); unset: Deno's own. */
  ffi?: FfiUdp;
  logger: Logger;
  /** Sends a report to the rendezvous; false when no session is open. */
  report: (report: UdpEndpointReport) => boolean;
  /** Ask the gateway to map the socket's port (`PORT_MAPPING=auto`). @default {false} */
  portMapping?: boolean;
  /** Its lifetime, seconds (`PORT_MAPPING_LIFETIME_SEC`). @default {DEFAULT_MAPPING_LIFETIME_SEC} */
  portMappingLifetimeSec?: number;
  /** Where the mapper looks for the gateway (tests). @default {the default route's} */
  portMapper?: Pick<PortMapperOptions, "findGateway" | "target">;
}

/** Hears each report the rendezvous took (its public address, null without one). */
export type ReportedListener = (report: UdpEndpointReport) => void;

/** A running UDP side of a worker. */
export interface WorkerUdp {
  udp: UdpEndpoint;
  /** The IPv6 socket, when the host has a global IPv6 address and the main one is bound to all. */
  udp6?: UdpEndpoint;
  presence: UdpPresence;
  /** Call on every `registered` event: rediscover and report. */
  onRegistered(): void;
  /** Sets who hears each report the rendezvous took (the peer manager, made after the socket). */
  setReportedListener(listener: ReportedListener): void;
  /** The gateway's port mapping of the socket (`PORT_MAPPING=auto`), if asked for. */
  portMapper?: PortMapper;
  /** Deletes the port mapping (if any), then closes the sockets. */
  close(): Promise<void>;
}

/** Binds the socket and starts the keepalive. */
export function startWorkerUdp(options: WorkerUdpOptions): WorkerUdp {
  const { logger } = options;
  const udp = UdpEndpoint.bind({
    hostname: options.hostname,
    port: options.port,
    ffi: options.ffi,
  });
  const stun = new StunClient((bytes, to) => udp.send(bytes, to), {
    family: udp.local.family,
    ...DISCOVERY_SCHEDULE,
  });
  udp.onStun = (bytes, from) => stun.handle(bytes, from);
  let sentThisSession: string | undefined;
  let reported: ReportedListener | undefined;
  // The last discovery's report, and the gateway's mapping (sent with every report).
  let last: UdpEndpointReport | undefined;
  let mapped: MappedEndpoint | null = null;
  // What an IPv6 STUN server saw of the IPv6 socket (sent with every report).
  let public6: UdpAddress | null = null;
  // The first report waits for the port mapper's first round (at most
  // MAPPING_QUIET_MS where no gateway answers), so the first introductions
  // already carry the mapping.
  let gate: Promise<void> | undefined;
  const sendIfNew = (discovered: UdpEndpointReport) => {
    last = discovered;
    if (gate) {
      void gate.then(() => {
        gate = undefined;
        if (last) sendIfNew(last);
      });
      return;
    }
    const report = {
      ...discovered,
      ...(mapped === null ? {} : { mapped }),
      ...(public6 === null ? {} : { public6 }),
    };
    const text = JSON.stringify(report);
    if (text === sentThisSession) return;
    if (!options.report(report)) return;
    sentThisSession = text;
    reported?.(report);
  };
  // A mapping reaches the socket only where it listens on the gateway's side:
  // bound to all addresses, or to our address toward the gateway (a socket
  // on loopback, as in tests, asks nobody).
  const lookUp = options.portMapper?.findGateway ?? findGateway;
  const portMapper = options.portMapping
    ? new PortMapper({
      internalPort: udp.local.port,
      lifetimeSec: options.portMappingLifetimeSec,
      logger,
      ...options.portMapper,
      findGateway: async () => {
        const gateway = await lookUp();
        const bound = options.hostname;
        return gateway && (bound === "0.0.0.0" || bound === gateway.clientIp) ? gateway : null;
      },
      onMapping: (mapping) => {
        mapped = mapping && {
          ip: mapping.externalIp,
          port: mapping.externalPort,
          protocol: mapping.protocol,
          lifetime_sec: mapping.lifetime,
        };
        if (last) sendIfNew(last);
      },
    })
    : undefined;
  if (portMapper) {
    void portMapper.start();
    gate = portMapper.firstRound(MAPPING_QUIET_MS);
  }
  // IPv6: no NAT to discover, so no STUN; the socket's global addresses are
  // candidates as they are (a stateful firewall lets the punch through).
  let udp6: UdpEndpoint | undefined;
  // IPv6 STUN: servers given as [IPv6]:port, and names (which may have IPv6 addresses).
  const servers6 = options.stunServers.filter((s) => serverFamily(s) !== 4);
  let discover6: ((signal: AbortSignal) => Promise<void>) | undefined;
  const globalV6 = (ip: string) =>
    ip.includes(":") && !/^::ffff:/i.test(ip) && addressScope(ip) === "global";
  if (
    options.hostname === "0.0.0.0" &&
    hostInterfaces().some((i) => i.family === "IPv6" && globalV6(i.address))
  ) {
    try {
      udp6 = UdpEndpoint.bind({ hostname: "::", port: 0 });
      const stun6 = new StunClient((bytes, to) => udp6!.send(bytes, to), {
        family: 6,
        ...DISCOVERY_SCHEDULE,
      });
      udp6.onStun = (bytes, from) => stun6.handle(bytes, from);
      discover6 = async (signal) => {
        if (servers6.length === 0) return;
        const seen = await Promise.any(servers6.map((s) => stun6.binding(s, { signal })))
          .then((r) => ({ ip: r.mapped.ip, port: r.mapped.port }), () => null);
        if (signal.aborted || seen?.ip === public6?.ip && seen?.port === public6?.port) return;
        public6 = seen;
        logger.info("udp6 endpoint discovered", {
          udp6_public: seen ? `[${seen.ip}]:${seen.port}` : null,
          rewritten: seen !== null && !hostInterfaces().some((i) => i.address === seen.ip),
        });
        if (last) sendIfNew(last);
      };
      logger.info("udp6 socket bound", { udp6_local: `[::]:${udp6.local.port}` });
    } catch (error) {
      logger.warn("cannot bind an IPv6 socket; IPv4 only", { error: (error as Error).message });
    }
  }
  const presence = new UdpPresence({
    stun,
    // The IPv4 socket asks the servers that may have an IPv4 address.
    servers: options.stunServers.filter((s) => serverFamily(s) !== 6),
    local: udp.local,
    moreLocal: () =>
      udp6 ? localCandidates(hostInterfaces(), udp6.local).filter((c) => globalV6(c.ip)) : [],
    keepaliveMs: options.keepaliveMs,
    logger,
    onChange: sendIfNew,
  });
  const stop = new AbortController();
  const keepalive = presence.keepAlive(stop.signal);
  // The IPv6 endpoint is looked at again as often as the IPv4 mapping is kept alive.
  const keepalive6 = discover6 &&
    setInterval(() => void discover6!(stop.signal), options.keepaliveMs);
  logger.info("udp socket bound", { udp_local: `${udp.local.ip}:${udp.local.port}` });
  return {
    udp,
    udp6,
    presence,
    onRegistered() {
      sentThisSession = undefined;
      presence.discover(stop.signal).then(sendIfNew, () => {});
      void discover6?.(stop.signal);
    },
    portMapper,
    async close() {
      await portMapper?.stop();
      clearInterval(keepalive6);
      stop.abort();
      await keepalive;
      await udp.close();
      await udp6?.close();
    },
    setReportedListener(listener) {
      reported = listener;
    },
  };
}

/**
 * How long a worker's first endpoint report waits for a gateway that has
 * not answered any port-mapping probe (one gateway round trip is a few ms;
 * a silent gateway, Cloud Run's, costs this once).
 */
export const MAPPING_QUIET_MS = 250;

/** A STUN server's family when given as an address literal; undefined for a name. */
function serverFamily(spec: string): 4 | 6 | undefined {
  try {
    return parseIp(parseServerSpec(spec).host)?.family;
  } catch {
    return undefined;
  }
}

/** `PEER_UDP_IO=ffi` where batched sockets cannot be had; the message says why. */
export class UdpIoError extends Error {
  /** Always `"UdpIoError"`. */
  override name = "UdpIoError";
}

/**
 * The batched sockets `PEER_UDP_IO` asks for: none for `deno`; for `auto`,
 * FFI's where it can be had (Linux, `--allow-ffi`), else none; for `ffi`,
 * FFI's or an error. Says which in the log.
 *
 * @throws {UdpIoError} for `ffi` when batched sockets cannot be had here
 */
export function openUdpIo(mode: "auto" | "ffi" | "deno", logger: Logger): FfiUdp | undefined {
  if (mode === "deno") {
    logger.info("udp io: Deno's sockets", { udp_io: "deno", why: "PEER_UDP_IO=deno" });
    return undefined;
  }
  const opened = FfiUdp.open();
  if (opened instanceof FfiUdp) {
    logger.info("udp io: batched (recvmmsg/sendmmsg through FFI)", {
      udp_io: "ffi",
      gso: opened.gso,
    });
    return opened;
  }
  if (mode === "ffi") {
    throw new UdpIoError(
      `Cannot use PEER_UDP_IO=ffi: ${opened.reason} (run with --allow-ffi on Linux, or set PEER_UDP_IO=auto)`,
    );
  }
  logger.info("udp io: Deno's sockets", { udp_io: "deno", why: opened.reason });
  return undefined;
}
