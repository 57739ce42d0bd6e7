/**
 * Where to ask for a mapping: the default IPv4 route's gateway and our
 * address toward it. On Linux from `/proc/net/route` (pure parsing apart
 * from the read) and `Deno.networkInterfaces()`; where `/proc` cannot be
 * read (Deno allows it only with `--allow-all`) or elsewhere, the first
 * address of the LAN's subnet; null without a default route or an
 * interface to guess from.
 *
 * @module
 */

import { addressScope, normalizeIp } from "../protocol/ip.ts";

/** The default route's gateway and the interface it leaves by. */
export interface DefaultRoute {
  gateway: string;
  iface: string;
}

/** The gateway to ask, and our address on its network (PCP's client address, UPnP's internal client). */
export interface Gateway {
  /** The gateway's IPv4 address. */
  gateway: string;
  /** Ours on its network. */
  clientIp: string;
}

/** An address in /proc/net/route's form: 8 hex digits, the bytes in host (little-endian) order. */
function routeAddress(hex: string): string | undefined {
  if (!/^[0-9A-Fa-f]{8}$/.test(hex)) return undefined;
  const n = parseInt(hex, 16);
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24].join(".");
}

/**
 * The default route with the lowest metric in `/proc/net/route`'s text
 * (destination and mask 0, the gateway flag set, up), or undefined.
 */
export function parseRouteTable(text: string): DefaultRoute | undefined {
  let best: (DefaultRoute & { metric: number }) | undefined;
  for (const line of text.split("\n").slice(1, 1025)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const [iface, destination, gatewayHex, flagsHex, , , metricText, mask] = f;
    const flags = parseInt(flagsHex, 16);
    if (destination !== "00000000" || mask !== "00000000" || (flags & 0x3) !== 0x3) continue;
    const gateway = routeAddress(gatewayHex);
    const metric = Number(metricText);
    if (!gateway || gateway === "0.0.0.0" || !Number.isInteger(metric)) continue;
    if (!best || metric < best.metric) best = { iface, gateway, metric };
  }
  return best && { iface: best.iface, gateway: best.gateway };
}

/** Our IPv4 address on `iface`, among `interfaces`. */
export function addressOn(
  iface: string,
  interfaces: readonly Deno.NetworkInterfaceInfo[],
): string | undefined {
  return interfaces.find((i) => i.name === iface && i.family === "IPv4")?.address;
}

/**
 * Without the route table (Deno lets only `--allow-all` read `/proc`): the
 * first host address of the first LAN interface's subnet, where routers
 * sit by convention (192.168.1.1 for 192.168.1.20/24). A wrong guess costs
 * one unanswered probe round.
 */
export function guessGateway(
  interfaces: readonly Deno.NetworkInterfaceInfo[],
): Gateway | undefined {
  for (const i of interfaces) {
    if (
      i.family !== "IPv4" || /^(lo|docker|br-|veth|virbr|cni|flannel|tailscale|wg)/.test(i.name)
    ) {
      continue;
    }
    const bytes = i.address.split(".").map(Number);
    const mask = i.netmask.split(".").map(Number);
    if (bytes.length !== 4 || mask.length !== 4 || bytes[0] === 127) continue;
    if (bytes[0] === 169 && bytes[1] === 254) continue;
    const first = bytes.map((b, k) => b & mask[k]);
    first[3] += 1;
    const gateway = first.join(".");
    if (gateway === i.address || mask[3] === 255) continue; // a /32, or we are the .1
    return { gateway, clientIp: i.address };
  }
  return undefined;
}

/**
 * The gateway to ask and our address toward it: from the default route
 * where `/proc/net/route` can be read (Linux, `--allow-all`), else guessed
 * ({@linkcode guessGateway}); null where there is none to ask.
 */
export async function findGateway(): Promise<Gateway | null> {
  let interfaces: Deno.NetworkInterfaceInfo[];
  try {
    interfaces = Deno.networkInterfaces();
  } catch {
    return null;
  }
  if (Deno.build.os === "linux") {
    try {
      const route = parseRouteTable(await Deno.readTextFile("/proc/net/route"));
      const clientIp = route && addressOn(route.iface, interfaces);
      if (route && clientIp) return { gateway: route.gateway, clientIp };
      if (!route) return null; // read, and no default route
    } catch {
      // Not readable with these permissions: guessed below.
    }
  }
  return guessGateway(interfaces) ?? null;
}

/**
 * Whether a gateway sits behind another NAT: the public address it claims
 * (its mapping's, or NAT-PMP's answer) is private or shared (100.64/10, a
 * carrier's), or STUN sees us at another one. Null when it claims none.
 */
export function behindAnotherNat(claimed: string | null, stunIp: string | null): boolean | null {
  if (claimed === null) return null;
  return addressScope(claimed) !== "global" ||
    (stunIp !== null && normalizeIp(claimed) !== normalizeIp(stunIp));
}
