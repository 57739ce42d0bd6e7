/**
 * Where to ask for a mapping: the default IPv4 route's gateway and our
 * address toward it. On Linux from `/proc/net/route` (pure parsing apart
 * from the read) and `Deno.networkInterfaces()`; elsewhere, or without a
 * default route (Cloud Run's sandbox has a gateway that answers none of
 * the protocols, but a route), null.
 *
 * @module
 */

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

/** The gateway to ask and our address toward it; null where there is none to ask. */
export async function findGateway(): Promise<Gateway | null> {
  if (Deno.build.os !== "linux") return null;
  let text: string;
  try {
    text = await Deno.readTextFile("/proc/net/route");
  } catch {
    return null;
  }
  const route = parseRouteTable(text);
  if (!route) return null;
  let interfaces: Deno.NetworkInterfaceInfo[];
  try {
    interfaces = Deno.networkInterfaces();
  } catch {
    return null;
  }
  const clientIp = addressOn(route.iface, interfaces);
  return clientIp ? { gateway: route.gateway, clientIp } : null;
}
