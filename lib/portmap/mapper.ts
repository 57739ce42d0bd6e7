/**
 * A worker's port mapping, kept: PCP, NAT-PMP and UPnP-IGD are probed at
 * once on the default gateway (none of the probes maps anything), the first
 * that answers maps the port, the mapping is renewed at half its lifetime
 * (the gateway looked up again each time: a new gateway, and the old
 * mapping is deleted and the probing starts over), and deleted on `stop()`.
 * A gateway that refuses, answers garbage or says nothing costs a log line
 * and a counter; every exchange is bounded (see `client.ts`,
 * `upnp_client.ts`).
 *
 * @module
 */

import { type Clock, systemClock, type TimerId } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import {
  mapNatPmp,
  mapPcp,
  type PortMapCounts,
  type PortMapping,
  type PortMapTarget,
  probeNatPmp,
  probePcp,
} from "./client.ts";
import { findGateway as findDefaultGateway, type Gateway } from "./gateway.ts";
import type { IgdControl } from "./upnp.ts";
import { MAPPING_PROTOCOLS, type MappingProtocol } from "../protocol/messages.ts";
import { discoverIgd, mapUpnp, unmapUpnp, type UpnpTarget } from "./upnp_client.ts";

/** Lifetime asked for (seconds): two hours, RFC 6886 §3.3's recommendation. */
export const DEFAULT_MAPPING_LIFETIME_SEC = 7200;
/** After a failed renewal or probe, the next try waits this long (doubling to 32×). */
const RETRY_MS = 30_000;
/** How long a deletion at stop may take. */
const DELETE_WAITS_MS: readonly number[] = [250, 500];

/** Options for {@linkcode PortMapper}. */
export interface PortMapperOptions {
  /** The UDP port to map (the worker's punching socket's). */
  internalPort: number;
  /** Lifetime to ask for, seconds. @default {DEFAULT_MAPPING_LIFETIME_SEC} */
  lifetimeSec?: number;
  /** Where the gateway is. @default {the default route's, on Linux} */
  findGateway?: () => Promise<Gateway | null>;
  /** NAT-PMP/PCP port and waits, SSDP targets (tests). @default {the protocols' own} */
  target?: Pick<PortMapTarget, "port" | "waitsMs"> & Pick<UpnpTarget, "searchTo">;
  /** A mapping was made, renewed to another address, or lost (null). */
  onMapping?(mapping: PortMapping | null): void;
  /** Where mappings, refusals and silences are logged. */
  logger: Logger;
  /** The renewals' timers. @default {systemClock} */
  clock?: Clock;
}

/** What the mapper knows, for `GET /`, the dashboard and netcheck. */
export interface PortMapStatus {
  /** The gateway asked, or null when there is none to ask. */
  gateway: string | null;
  /** Which protocols the gateway answered (null: not probed, or still probing). */
  offered: Record<MappingProtocol, boolean | null>;
  /** The mapping held now. */
  mapping: PortMapping | null;
  /** Mappings made, renewals, failures, datagrams ignored (not the answer). */
  counts: { mapped: number; renewed: number; failed: number; ignored: number };
}

/** A mapping as shown: without the PCP nonce or the UPnP control endpoint. */
function shown(m: PortMapping): PortMapping {
  return {
    protocol: m.protocol,
    externalIp: m.externalIp,
    externalPort: m.externalPort,
    internalPort: m.internalPort,
    lifetime: m.lifetime,
    epoch: m.epoch,
  };
}

/** Keeps one UDP port mapping on the default gateway. */
export class PortMapper {
  /** What the mapper knows now (`GET /`'s `port_mapping`). */
  readonly status: PortMapStatus = {
    gateway: null,
    offered: { pcp: null, "nat-pmp": null, upnp: null },
    mapping: null,
    counts: { mapped: 0, renewed: 0, failed: 0, ignored: 0 },
  };
  readonly #o: PortMapperOptions;
  readonly #clock: Clock;
  #gateway: Gateway | null = null;
  /** The mapping held, with what renews and deletes it (`status.mapping` shows it without). */
  #mapping: PortMapping | null = null;
  #control: IgdControl | undefined;
  #timer: TimerId | undefined;
  #retries = 0;
  #stopped = false;
  #abort = new AbortController();
  #running: Promise<unknown> = Promise.resolve();
  #probing: Promise<unknown> = Promise.resolve();
  readonly #firstRound = Promise.withResolvers<void>();
  /** Some probe has answered (this process). */
  #answered = false;

  /** Nothing is asked until {@linkcode PortMapper.start}. */
  constructor(options: PortMapperOptions) {
    this.#o = options;
    this.#clock = options.clock ?? systemClock;
  }

  /**
   * Probes and maps; resolves with the mapping, or null (none to be had
   * now). The probes that have not answered go on: {@linkcode PortMapper.probed}
   * resolves once every one has (what the gateway offers, for netcheck).
   */
  start(): Promise<PortMapping | null> {
    const run = this.#probeAndMap();
    run.finally(() => this.#firstRound.resolve()).catch(() => {});
    this.#running = run;
    return run;
  }

  /**
   * Resolves once the first round has an outcome (a mapping, or none), or
   * after `quietMs` when no probe has answered by then: what a worker waits
   * for before its first endpoint report, so that peers are introduced to
   * the mapping at once where the gateway makes one, and a gateway that
   * says nothing (Cloud Run's) holds it back `quietMs` at most.
   */
  firstRound(quietMs: number): Promise<void> {
    const settled = this.#firstRound.promise;
    const quiet = new Promise<void>((resolve) => {
      const timer = this.#clock.setTimeout(() => {
        if (!this.#answered) resolve();
      }, quietMs);
      settled.then(() => this.#clock.clearTimeout(timer));
    });
    return Promise.race([settled, quiet]);
  }

  /** Resolves once every probe of the last round has answered or given up. */
  get probed(): Promise<unknown> {
    return this.#probing;
  }

  get #counts(): PortMapCounts {
    return this.status.counts;
  }

  #target(): PortMapTarget & UpnpTarget {
    return { gateway: this.#gateway!.gateway, ...this.#o.target, signal: this.#abort.signal };
  }

  async #probeAndMap(): Promise<PortMapping | null> {
    const log = this.#o.logger;
    this.#gateway = await (this.#o.findGateway ?? findDefaultGateway)().catch(() => null);
    this.status.gateway = this.#gateway?.gateway ?? null;
    if (!this.#gateway || this.#stopped) {
      log.debug("port mapping: no gateway to ask");
      return null;
    }
    const { clientIp } = this.#gateway;
    const target = this.#target();
    const probes: Record<MappingProtocol, Promise<unknown>> = {
      pcp: probePcp(target, clientIp, this.#counts),
      "nat-pmp": probeNatPmp(target, this.#counts),
      // The gateway answered once its SSDP answer came (the description takes longer).
      upnp: discoverIgd(target, this.#counts, () => this.#answered = true)
        .then((control) => this.#control = control),
    };
    const answered: MappingProtocol[] = [];
    const open = new Set<Promise<void>>();
    for (const p of MAPPING_PROTOCOLS) {
      const done: Promise<void> = probes[p].then(
        () => {
          this.status.offered[p] = true;
          this.#answered = true;
          answered.push(p);
        },
        (error) => {
          this.status.offered[p] = false;
          log.debug("port mapping: no answer", { protocol: p, error: (error as Error).message });
        },
      ).finally(() => open.delete(done));
      open.add(done);
    }
    this.#probing = Promise.allSettled([...open]);
    // The first that answers maps; if it then refuses, the next that answered.
    const tried = new Set<MappingProtocol>();
    while (!this.#stopped) {
      // Of those that answered by now, the preferred one.
      const next = MAPPING_PROTOCOLS.find((p) => answered.includes(p) && !tried.has(p));
      if (!next) {
        if (open.size === 0) break;
        await Promise.race(open);
        continue;
      }
      tried.add(next);
      try {
        const mapping = await this.#map(next, this.#o.lifetimeSec ?? DEFAULT_MAPPING_LIFETIME_SEC);
        this.status.counts.mapped++;
        this.#held(mapping);
        log.info("port mapped", {
          protocol: mapping.protocol,
          gateway: this.#gateway.gateway,
          external: `${mapping.externalIp}:${mapping.externalPort}`,
          lifetime_sec: mapping.lifetime,
        });
        return mapping;
      } catch (error) {
        this.status.counts.failed++;
        log.info("port mapping refused", { protocol: next, error: (error as Error).message });
      }
    }
    if (this.#retries === 0) {
      // Once, not at every retry: what a person reading the log wants to know.
      const offered = MAPPING_PROTOCOLS.filter((p) => this.status.offered[p]);
      log.info("no port mapping", {
        gateway: this.#gateway.gateway,
        offered,
        reason: offered.length === 0 ? "the gateway answered no probe" : "the gateway refused",
      });
    }
    this.#retryLater();
    return null;
  }

  async #map(protocol: MappingProtocol, lifetime: number, previous?: PortMapping) {
    const { clientIp } = this.#gateway!;
    const port = this.#o.internalPort;
    const target = this.#target();
    if (protocol === "pcp") {
      return await mapPcp(target, clientIp, port, lifetime, this.#counts, previous?.nonce);
    }
    if (protocol === "nat-pmp") return await mapNatPmp(target, port, lifetime, this.#counts);
    return await mapUpnp(this.#control!, clientIp, port, lifetime, this.#abort.signal);
  }

  /** A mapping is held: say so if it changed, renew it at half its lifetime. */
  #held(mapping: PortMapping): void {
    const before = this.#mapping;
    this.#mapping = mapping;
    this.status.mapping = shown(mapping);
    this.#retries = 0;
    if (
      !before || before.externalIp !== mapping.externalIp ||
      before.externalPort !== mapping.externalPort
    ) this.#o.onMapping?.(mapping);
    this.#clock.clearTimeout(this.#timer);
    const renewIn = Math.max(1, mapping.lifetime) * 500;
    this.#timer = this.#clock.setTimeout(() => {
      this.#running = this.#renew();
    }, renewIn);
  }

  async #renew(): Promise<void> {
    const held = this.#mapping;
    if (!held || this.#stopped) return;
    const gateway = await (this.#o.findGateway ?? findDefaultGateway)().catch(() => null);
    if (this.#stopped) return;
    if (
      gateway?.gateway !== this.#gateway?.gateway || gateway?.clientIp !== this.#gateway?.clientIp
    ) {
      this.#o.logger.info("port mapping: the gateway changed", {
        from: this.#gateway?.gateway ?? null,
        to: gateway?.gateway ?? null,
      });
      await this.#delete(held);
      this.#lost();
      await this.#probeAndMap();
      return;
    }
    try {
      const mapping = await this.#map(held.protocol, held.lifetime || 1, held);
      this.status.counts.renewed++;
      this.#held(mapping);
    } catch (error) {
      this.status.counts.failed++;
      this.#o.logger.info("port mapping not renewed", {
        protocol: held.protocol,
        error: (error as Error).message,
      });
      this.#lost();
      this.#retryLater();
    }
  }

  #lost(): void {
    if (this.#mapping === null) return;
    this.#mapping = null;
    this.status.mapping = null;
    this.#o.onMapping?.(null);
  }

  #retryLater(): void {
    if (this.#stopped) return;
    this.#clock.clearTimeout(this.#timer);
    const ms = RETRY_MS * 2 ** Math.min(this.#retries++, 5);
    this.#timer = this.#clock.setTimeout(() => {
      this.#running = this.#probeAndMap();
    }, ms);
  }

  /** Deletes `mapping` (lifetime 0), within a second; failures are only logged. */
  async #delete(mapping: PortMapping): Promise<void> {
    if (!this.#gateway) return;
    const target = { gateway: this.#gateway.gateway, ...this.#o.target, waitsMs: DELETE_WAITS_MS };
    try {
      if (mapping.protocol === "pcp") {
        await mapPcp(
          target,
          this.#gateway.clientIp,
          mapping.internalPort,
          0,
          this.#counts,
          mapping.nonce,
        );
      } else if (mapping.protocol === "nat-pmp") {
        await mapNatPmp(target, mapping.internalPort, 0, this.#counts);
      } else if (this.#control) {
        await unmapUpnp(this.#control, mapping.externalPort, AbortSignal.timeout(1000));
      }
      this.#o.logger.info("port mapping deleted", { protocol: mapping.protocol });
    } catch (error) {
      this.#o.logger.info("port mapping not deleted", {
        protocol: mapping.protocol,
        error: (error as Error).message,
      });
    }
  }

  /** Stops renewing and deletes the mapping (within about a second). */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#firstRound.resolve();
    this.#clock.clearTimeout(this.#timer);
    this.#abort.abort();
    await this.#running.catch(() => {});
    await this.#probing;
    const held = this.#mapping;
    if (held) await this.#delete(held);
    this.#mapping = null;
    this.status.mapping = null;
  }
}

/** What a gateway offers (netcheck's "Port mapping" line). */
export interface GatewayOffer {
  /** The gateway asked; null when there is none to ask. */
  gateway: string | null;
  /** Which protocols answered a probe (none maps anything). */
  offered: Record<MappingProtocol, boolean>;
  /** The public address the gateway says it has (NAT-PMP's or UPnP's answer), if any. */
  externalIp: string | null;
}

/**
 * Probes the default gateway for PCP, NAT-PMP and UPnP-IGD at once, maps
 * nothing; about 2 s where nothing answers.
 */
export async function probeGateway(
  options: Pick<PortMapperOptions, "findGateway" | "target"> = {},
): Promise<GatewayOffer> {
  const offered = { pcp: false, "nat-pmp": false, upnp: false };
  const found = await (options.findGateway ?? findDefaultGateway)().catch(() => null);
  if (!found) return { gateway: null, offered, externalIp: null };
  const target = { gateway: found.gateway, ...options.target };
  let externalIp: string | null = null;
  await Promise.allSettled([
    probePcp(target, found.clientIp).then(() => offered.pcp = true),
    probeNatPmp(target).then((ip) => {
      offered["nat-pmp"] = true;
      externalIp ??= ip;
    }),
    discoverIgd(target).then(() => offered.upnp = true),
  ]);
  return { gateway: found.gateway, offered, externalIp };
}
