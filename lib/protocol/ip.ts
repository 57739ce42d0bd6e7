/**
 * Strict parsing and canonical formatting of IPv4 and IPv6 addresses.
 *
 * Addresses arrive from the network (a worker's self-reported IP, an echo
 * service's answer, later STUN attributes), so the parser accepts only the
 * textual forms of RFC 4291 §2.2 and dotted-quad IPv4 without leading zeros,
 * and formats IPv6 the one canonical way of RFC 5952 §4 so equal addresses
 * compare equal as strings.
 *
 * @module
 */

/** Address family of a parsed address. */
export type IpFamily = 4 | 6;

/** A parsed address: its family and its bytes in network order (4 or 16). */
export interface ParsedIp {
  family: IpFamily;
  bytes: Uint8Array;
}

/** Longest textual IPv6 form: eight groups of four plus an embedded IPv4. */
const MAX_IP_TEXT_LENGTH = 45;

const IPV4_PART = /^(?:0|[1-9][0-9]{0,2})$/;
const IPV6_GROUP = /^[0-9a-fA-F]{1,4}$/;

function parseIpv4Into(text: string, out: Uint8Array, offset: number): boolean {
  const parts = text.split(".");
  if (parts.length !== 4) return false;
  for (let i = 0; i < 4; i++) {
    const part = parts[i];
    if (!IPV4_PART.test(part)) return false;
    const value = Number(part);
    if (value > 255) return false;
    out[offset + i] = value;
  }
  return true;
}

/** Parses one side of a "::" into 16-bit groups, or null when malformed. */
function parseIpv6Groups(text: string, allowIpv4Tail: boolean): number[] | null {
  if (text === "") return [];
  const pieces = text.split(":");
  const groups: number[] = [];
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i];
    if (allowIpv4Tail && i === pieces.length - 1 && piece.includes(".")) {
      const v4 = new Uint8Array(4);
      if (!parseIpv4Into(piece, v4, 0)) return null;
      groups.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
    } else {
      if (!IPV6_GROUP.test(piece)) return null;
      groups.push(parseInt(piece, 16));
    }
  }
  return groups;
}

function parseIpv6(text: string): Uint8Array | null {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  let groups: number[];
  if (halves.length === 2) {
    const head = parseIpv6Groups(halves[0], false);
    const tail = parseIpv6Groups(halves[1], true);
    if (head === null || tail === null) return null;
    // "::" stands for at least one group of zeros.
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return null;
    groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else {
    const all = parseIpv6Groups(text, true);
    if (all === null || all.length !== 8) return null;
    groups = all;
  }
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[i * 2] = groups[i] >> 8;
    bytes[i * 2 + 1] = groups[i] & 0xff;
  }
  return bytes;
}

/**
 * Parses an IPv4 or IPv6 address in text form.
 *
 * Returns `null` for anything else, including zone ids (`fe80::1%eth0`),
 * brackets, ports, and IPv4 parts with leading zeros (ambiguous: octal or
 * decimal?).
 *
 * @example
 * ```ts
 * parseIp("192.0.2.1"); // { family: 4, bytes: Uint8Array [192, 0, 2, 1] }
 * parseIp("2001:db8::1")?.family; // 6
 * parseIp("example.com"); // null
 * ```
 */
export function parseIp(text: string): ParsedIp | null {
  if (typeof text !== "string" || text.length === 0 || text.length > MAX_IP_TEXT_LENGTH) {
    return null;
  }
  if (text.includes(":")) {
    const bytes = parseIpv6(text);
    return bytes === null ? null : { family: 6, bytes };
  }
  const bytes = new Uint8Array(4);
  return parseIpv4Into(text, bytes, 0) ? { family: 4, bytes } : null;
}

/** True when `text` is an IPv4 or IPv6 address that {@linkcode parseIp} accepts. */
export function isIp(text: string): boolean {
  return parseIp(text) !== null;
}

function isIpv4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/**
 * Formats 4 or 16 address bytes as text: dotted quad for IPv4, RFC 5952
 * canonical form for IPv6 (lowercase, no leading zeros, the longest run of
 * two or more zero groups shortened to "::", IPv4-mapped as `::ffff:a.b.c.d`).
 *
 * @example
 * ```ts
 * formatIp(new Uint8Array([192, 0, 2, 1])); // "192.0.2.1"
 * ```
 */
export function formatIp(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join(".");
  if (bytes.length !== 16) {
    throw new RangeError(
      `Cannot format an IP address from ${bytes.length} bytes: expected 4 or 16`,
    );
  }
  if (isIpv4Mapped(bytes)) return `::ffff:${bytes.subarray(12).join(".")}`;
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((bytes[i * 2] << 8) | bytes[i * 2 + 1]);
  let bestStart = -1;
  let bestLength = 1; // RFC 5952 §4.2.2: never shorten a single zero group.
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  const head = hex.slice(0, bestStart).join(":");
  const tail = hex.slice(bestStart + bestLength).join(":");
  return `${head}::${tail}`;
}

/**
 * Parses and re-formats an address into its canonical text, turning an
 * IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as a dual-stack socket reports
 * an IPv4 peer) into plain IPv4. Returns `null` when `text` is not an address.
 *
 * @example
 * ```ts
 * normalizeIp("2001:DB8:0:0:0:0:0:1"); // "2001:db8::1"
 * normalizeIp("::ffff:192.0.2.1"); // "192.0.2.1"
 * ```
 */
export function normalizeIp(text: string): string | null {
  const parsed = parseIp(text);
  if (parsed === null) return null;
  if (parsed.family === 6 && isIpv4Mapped(parsed.bytes)) {
    return formatIp(parsed.bytes.subarray(12));
  }
  return formatIp(parsed.bytes);
}

/**
 * What kind of address `ip` is (RFC 6890's special-purpose registries, the
 * ones that matter for where a worker may be asked to send packets):
 * `metadata` is the cloud instance-metadata address 169.254.169.254 (and
 * AWS's fd00:ec2::254); `shared` is carrier-grade NAT space (100.64.0.0/10).
 * IPv4-mapped IPv6 addresses are judged as their IPv4 address.
 */
export type AddressScope =
  | "unspecified"
  | "loopback"
  | "metadata"
  | "link-local"
  | "multicast"
  | "broadcast"
  | "private"
  | "shared"
  | "global"
  | "invalid";

/** The {@linkcode AddressScope} of `ip`. */
export function addressScope(ip: string): AddressScope {
  const parsed = parseIp(ip);
  if (!parsed) return "invalid";
  let b = parsed.bytes;
  if (parsed.family === 6) {
    const mapped = b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
    if (mapped) b = b.slice(12);
  }
  if (b.length === 4) {
    if (b.every((x) => x === 0)) return "unspecified";
    if (b[0] === 127) return "loopback";
    if (b[0] === 169 && b[1] === 254) {
      return b[2] === 169 && b[3] === 254 ? "metadata" : "link-local";
    }
    if (b[0] >= 224 && b[0] <= 239) return "multicast";
    if (b.every((x) => x === 255)) return "broadcast";
    if (b[0] === 0 || b[0] >= 240) return "invalid"; // "this network" and reserved
    if (b[0] === 10 || (b[0] === 172 && (b[1] & 0xf0) === 16) || (b[0] === 192 && b[1] === 168)) {
      return "private";
    }
    if (b[0] === 100 && (b[1] & 0xc0) === 64) return "shared";
    return "global";
  }
  if (b.every((x) => x === 0)) return "unspecified";
  if (b.slice(0, 15).every((x) => x === 0) && b[15] === 1) return "loopback";
  if (b[0] === 0xff) return "multicast";
  if (b[0] === 0xfe && (b[1] & 0xc0) === 0x80) return "link-local";
  if (formatIp(b) === "fd00:ec2::254") return "metadata";
  if ((b[0] & 0xfe) === 0xfc) return "private";
  return "global";
}
