/**
 * `deno task netcheck`, like `tailscale netcheck`: from where it runs, what
 * the network lets a worker do — UDP at all, the public endpoint each STUN
 * server sees, the NAT's mapping and (with an RFC 5780 server) filtering,
 * IPv6, hairpinning, the round trip to the rendezvous over WebSocket, and
 * whether a direct path to a typical peer is likely.
 *
 * @module
 */

import { type GatewayOffer, probeGateway } from "../portmap/mapper.ts";
import { behindAnotherNat } from "../portmap/gateway.ts";
import {
  MAPPING_PROTOCOL_NAMES,
  MAPPING_PROTOCOLS,
  type NatMapping,
} from "../protocol/messages.ts";
import { UdpEndpoint } from "../peer/udp_endpoint.ts";
import { type BindingResult, formatAddress, StunClient } from "../stun/client.ts";
import { classifyMapping, DISCOVERY_SCHEDULE, hostInterfaces } from "../stun/discovery.ts";
import { normalizeIp } from "../protocol/ip.ts";

/** RFC 4787 filtering, as RFC 5780 §4.4 tells it. */
export type NatFiltering =
  | "endpoint-independent"
  | "address-dependent"
  | "address-and-port-dependent"
  | "unknown";

/** What netcheck found. */
export interface NetcheckReport {
  /** Some STUN server answered over UDP. */
  udp: boolean;
  /** Each server's answer: the endpoint it saw, or why not. */
  stun: { server: string; mapped: string | null; rtt_ms: number | null; error?: string }[];
  /** The public IPv4 address, as the first answering server saw it. */
  public_ip: string | null;
  mapping: NatMapping;
  filtering: NatFiltering;
  /** Which server's RFC 5780 tests told the filtering; null without one. */
  filtering_server: string | null;
  /** Whether a packet to our own public endpoint comes back (null: not tested, or no NAT). */
  hairpinning: boolean | null;
  /** The host's global IPv6 addresses (candidates for peers with IPv6). */
  ipv6: string[];
  /** IPv6 UDP: the endpoint the first STUN server with an IPv6 address saw; null when none answered over IPv6. */
  ipv6_udp: string | null;
  /**
   * Port mapping on the default gateway: which of PCP, NAT-PMP and UPnP-IGD
   * answered (probed, nothing mapped), and the public address it claims; a
   * private or shared one means it sits behind another NAT.
   */
  port_mapping: GatewayOffer | null;
  /** The gateway is behind another NAT (see {@linkcode doubleNat}); null when it did not say. */
  double_nat: boolean | null;
  /** Round trips of WebSocket echoes to the rendezvous; null when none was given. */
  rendezvous: { url: string; rtt_ms: number[]; median_ms: number | null; error?: string } | null;
  /** Whether a direct path to a typical peer is likely, and with whom. */
  direct: { likely: boolean; detail: string };
}

/** Options for {@linkcode runNetcheck}. */
export interface NetcheckOptions {
  /** STUN servers (`host:port`); two or more tell the mapping. */
  stunServers: readonly string[];
  /** The rendezvous's base URL (`http(s)://…`), for the WebSocket round trip. */
  rendezvousUrl?: string;
  /** Its bearer token, if it wants one. */
  token?: string;
  /** Echoes to time. @default {5} */
  echoes?: number;
  /** Address to bind the UDP socket to. @default {"0.0.0.0"} */
  hostname?: string;
  /**
   * Where the port-mapping probe looks for the gateway (tests); false: not
   * probed (`PORT_MAPPING=off`). @default {the default route's}
   */
  portMapping?: Parameters<typeof probeGateway>[0] | false;
}

/**
 * The verdict on direct paths from the NAT's behaviour (the strategies of
 * the peer layer; see docs/punching.md).
 */
export function directVerdict(
  mapping: NatMapping,
  filtering: NatFiltering,
  ipv6: boolean,
): { likely: boolean; detail: string } {
  const v6 = ipv6 ? "; over IPv6 with any peer that has it too" : "";
  switch (mapping) {
    case "no-udp":
      return {
        likely: false,
        detail: "no: UDP does not get out from here; peers reach this host through the relay",
      };
    case "no-nat":
      return { likely: true, detail: "yes, with every peer that has UDP: this host has no NAT" };
    case "endpoint-independent":
      return {
        likely: true,
        detail: filtering === "endpoint-independent"
          ? "yes, with every peer that has UDP (a full-cone NAT)"
          : `yes, with peers behind endpoint-independent NATs (checks) and endpoint-dependent ones (birthday punching, a few seconds)${v6}`,
      };
    case "endpoint-dependent":
      return {
        likely: true,
        detail:
          `with peers behind endpoint-independent NATs, by birthday punching (a few seconds); peers behind endpoint-dependent NATs go through the relay${v6}`,
      };
    default:
      return {
        likely: true,
        detail: "probably: give two STUN servers or more to tell the NAT's mapping",
      };
  }
}

/** Runs every check; never throws for what the network does. */
export async function runNetcheck(options: NetcheckOptions): Promise<NetcheckReport> {
  const udp = UdpEndpoint.bind({ hostname: options.hostname ?? "0.0.0.0", port: 0 });
  const stun = new StunClient((bytes, to) => udp.send(bytes, to), DISCOVERY_SCHEDULE);
  udp.onStun = (bytes, from) => void stun.handle(bytes, from);
  const rendezvous = options.rendezvousUrl
    ? rendezvousRoundTrips(options.rendezvousUrl, options.token, options.echoes ?? 5)
    : Promise.resolve(null);
  const portMapping = options.portMapping === false
    ? Promise.resolve(null)
    : probeGateway(options.portMapping);
  try {
    const started = options.stunServers.map(() => performance.now());
    const results = await Promise.all(
      options.stunServers.map((server, i) =>
        stun.binding(server).then(
          (result) => ({ result, rtt: performance.now() - started[i] }),
          (error: Error) => ({ error: error.message }),
        )
      ),
    );
    const answered = results.map((r) => ("result" in r ? r.result : undefined));
    const interfaces = hostInterfaces();
    const ownIps = new Set(
      interfaces.map((i) => normalizeIp(i.address)).filter((ip): ip is string => ip !== null),
    );
    const mapping = classifyMapping(ownIps, udp.local.port, answered);
    const first = answered.find((r): r is BindingResult => r !== undefined);
    const { filtering, server: filteringServer } = await testFiltering(
      stun,
      options.stunServers,
      answered,
    );
    const hairpinning = mapping === "no-nat" || !first ? null : await testHairpin(udp, first);
    const ipv6Udp = await testIpv6(options.stunServers);
    const ipv6 = interfaces.filter((i) => i.family === "IPv6")
      .map((i) => normalizeIp(i.address))
      .filter((ip): ip is string =>
        ip !== null && ip.includes(":") && !/^(::1$|fe[89ab]|fc|fd|::ffff:)/i.test(ip)
      );
    return {
      udp: first !== undefined,
      stun: options.stunServers.map((server, i) => {
        const r = results[i];
        return "result" in r
          ? { server, mapped: formatAddress(r.result.mapped), rtt_ms: round(r.rtt) }
          : { server, mapped: null, rtt_ms: null, error: r.error };
      }),
      public_ip: first?.mapped.ip ?? null,
      mapping,
      filtering,
      filtering_server: filteringServer,
      hairpinning,
      ipv6,
      ipv6_udp: ipv6Udp,
      port_mapping: await portMapping,
      double_nat: doubleNat(await portMapping, first?.mapped.ip ?? null),
      rendezvous: await rendezvous,
      direct: directVerdict(mapping, filtering, ipv6.length > 0),
    };
  } finally {
    await udp.close();
  }
}

const round = (ms: number) => Math.round(ms * 10) / 10;

/**
 * RFC 5780 §4.4 with the first server that named an OTHER-ADDRESS: an
 * answer from its other IP and port means endpoint-independent filtering;
 * else one from its other port, address-dependent; else
 * address-and-port-dependent.
 */
async function testFiltering(
  stun: StunClient,
  servers: readonly string[],
  answered: (BindingResult | undefined)[],
): Promise<{ filtering: NatFiltering; server: string | null }> {
  const index = answered.findIndex((r) => r?.otherAddress !== undefined);
  if (index < 0) return { filtering: "unknown", server: null };
  const server = answered[index]!.server;
  const answers = (changeIp: boolean) =>
    stun.binding(server, { changeIp, changePort: true }).then(() => true, () => false);
  const filtering = await answers(true)
    ? "endpoint-independent"
    : await answers(false)
    ? "address-dependent"
    : "address-and-port-dependent";
  return { filtering, server: servers[index] };
}

/** A Binding over an IPv6 socket to every server that has an IPv6 address; the first answer. */
async function testIpv6(servers: readonly string[]): Promise<string | null> {
  let udp: UdpEndpoint;
  try {
    udp = UdpEndpoint.bind({ hostname: "::", port: 0 });
  } catch {
    return null; // no IPv6 here at all
  }
  const stun = new StunClient((bytes, to) => udp.send(bytes, to), {
    ...DISCOVERY_SCHEDULE,
    family: 6,
  });
  udp.onStun = (bytes, from) => void stun.handle(bytes, from);
  try {
    const answers = await Promise.all(
      servers.map((server) =>
        stun.binding(server).then((r) => formatAddress(r.mapped), () => null)
      ),
    );
    return answers.find((a) => a !== null) ?? null;
  } finally {
    await udp.close();
  }
}

/** A datagram from a second socket to our own public endpoint: does the NAT loop it back? */
async function testHairpin(udp: UdpEndpoint, mapped: BindingResult): Promise<boolean> {
  const marker = crypto.getRandomValues(new Uint8Array(16));
  marker[0] = 0xfe; // neither STUN (00) nor a peer frame ("HP")
  const arrived = Promise.withResolvers<boolean>();
  udp.onOther = (bytes) => {
    if (bytes.length === marker.length && bytes.every((b, i) => b === marker[i])) {
      arrived.resolve(true);
    }
  };
  const other = UdpEndpoint.bind({ hostname: udp.local.ip, port: 0 });
  try {
    for (let i = 0; i < 3; i++) await other.send(marker, mapped.mapped).catch(() => {});
    const timer = setTimeout(() => arrived.resolve(false), 1000);
    const result = await arrived.promise;
    clearTimeout(timer);
    return result;
  } finally {
    udp.onOther = () => {};
    await other.close();
  }
}

/**
 * Registers a throwaway session (`netcheck-…`, group `netcheck`, so no
 * worker of a real group sees it) and times `echoes` echo round trips.
 */
async function rendezvousRoundTrips(
  base: string,
  token: string | undefined,
  echoes: number,
): Promise<NonNullable<NetcheckReport["rendezvous"]>> {
  const url = new URL(base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const id = `netcheck-${crypto.randomUUID().slice(0, 8)}`;
  url.pathname = `${url.pathname.replace(/\/$/, "")}/ws/register/${id}`;
  url.search = "?group=netcheck";
  const rtts: number[] = [];
  const socket = new WebSocket(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  const next = () =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no answer within 5 s")), 5000);
      socket.onmessage = (e) => {
        clearTimeout(timer);
        resolve(JSON.parse(String(e.data)));
      };
      socket.onclose = (e) => {
        clearTimeout(timer);
        reject(new Error(`closed (${e.code}${e.reason ? `: ${e.reason}` : ""})`));
      };
    });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.onopen = () => resolve();
      socket.onerror = (e) => reject(new Error((e as ErrorEvent).message || "cannot connect"));
    });
    let message = await next();
    if (message.type !== "registered") throw new Error(`expected registered, got ${message.type}`);
    for (let i = 0; i < echoes; i++) {
      const sent = performance.now();
      socket.send(JSON.stringify({ type: "echo_request", payload: i }));
      do message = await next(); while (message.type !== "echo_response");
      rtts.push(round(performance.now() - sent));
    }
    const sorted = rtts.slice().sort((a, b) => a - b);
    return { url: base, rtt_ms: rtts, median_ms: sorted[Math.floor(sorted.length / 2)] ?? null };
  } catch (error) {
    return { url: base, rtt_ms: rtts, median_ms: null, error: (error as Error).message };
  } finally {
    socket.onclose = null;
    if (socket.readyState <= WebSocket.OPEN) socket.close(1000);
  }
}

/** The report for a person reading a terminal. */
export function formatReport(r: NetcheckReport): string {
  const lines = ["holepunch netcheck", ""];
  const row = (label: string, value: string) => lines.push(`  ${label.padEnd(14)} ${value}`);
  row("UDP", r.udp ? "yes" : "no (no STUN server answered)");
  for (const s of r.stun) {
    row(
      "STUN",
      `${s.server} → ${s.mapped ? `${s.mapped} (${s.rtt_ms} ms)` : `no answer (${s.error})`}`,
    );
  }
  row("Public IP", r.public_ip ?? "unknown");
  row("NAT mapping", r.mapping);
  row(
    "NAT filtering",
    r.filtering === "unknown"
      ? "unknown (needs a STUN server with a second address: RFC 5780)"
      : `${r.filtering} (RFC 5780, ${r.filtering_server})`,
  );
  row("Hairpinning", r.hairpinning === null ? "not tested" : r.hairpinning ? "yes" : "no");
  row("IPv6", r.ipv6.length ? r.ipv6.join(", ") : "no global address");
  row("IPv6 UDP", r.ipv6_udp ? `yes, seen as ${r.ipv6_udp}` : "no STUN server answered over IPv6");
  row("Port mapping", describeOffer(r.port_mapping, r.public_ip));
  if (r.rendezvous) {
    row(
      "Rendezvous",
      r.rendezvous.median_ms === null
        ? `${r.rendezvous.url}: ${r.rendezvous.error}`
        : `${r.rendezvous.url}: ${r.rendezvous.median_ms} ms (median of ${r.rendezvous.rtt_ms.length} WebSocket echoes)`,
    );
  }
  row("Direct paths", r.direct.detail);
  return lines.join("\n");
}

/**
 * Whether the gateway sits behind another NAT: its own public address is
 * private or shared (100.64/10, a carrier's), or STUN sees us at another one.
 * Null when the gateway did not say.
 */
export function doubleNat(offer: GatewayOffer | null, stunIp: string | null): boolean | null {
  return behindAnotherNat(offer?.externalIp ?? null, stunIp);
}

/** The "Port mapping" line, as `tailscale netcheck` says "PortMapping". */
export function describeOffer(offer: GatewayOffer | null, stunIp: string | null): string {
  if (offer === null) return "not asked (PORT_MAPPING=off)";
  if (offer.gateway === null) return "no gateway to ask";
  const offered = MAPPING_PROTOCOLS.filter((p) => offer.offered[p]);
  if (offered.length === 0) return `none (gateway ${offer.gateway} answered no probe)`;
  const ip = offer.externalIp;
  const behind = doubleNat(offer, stunIp)
    ? `; it says ${ip}, STUN sees ${
      stunIp ?? "nothing"
    }: another NAT is in front of it (double NAT), so its mappings reach no one outside`
    : ip
    ? `; public address ${ip}`
    : "";
  return `${
    offered.map((p) => MAPPING_PROTOCOL_NAMES[p]).join(", ")
  } (gateway ${offer.gateway}${behind})`;
}
