/**
 * PCP (RFC 6887) MAP messages: the request a client sends its gateway on
 * port 5351 to map a UDP port, and the gateway's answer. Addresses are
 * 16 bytes, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`, §5). Pure: bytes in,
 * values out; anything that is not an answer to this request (short,
 * oversized, another version or opcode, another nonce, protocol or port)
 * is `undefined`, never an exception.
 *
 * @module
 */

import { checkMapping } from "./_mapping.ts";
import { formatIp, normalizeIp, parseIp } from "../protocol/ip.ts";

/** PCP's version number (NAT-PMP's is 0). */
export const PCP_VERSION = 2;
/** The MAP opcode (§11). */
export const PCP_MAP = 1;
/** The ANNOUNCE opcode (§14.1): a gateway says it restarted. */
export const PCP_ANNOUNCE = 0;
/** A nonce's length (§11.1). */
export const PCP_NONCE_BYTES = 12;
/** A MAP request's and its answer's length with no options: header 24 + MAP 36. */
export const PCP_MAP_BYTES = 60;
/** Largest PCP message (§7): answers over it are refused. */
export const PCP_MAX_BYTES = 1100;
const UDP = 17;

/** Result codes (§7.4). */
export const PCP_RESULTS: Readonly<Record<number, string>> = {
  0: "success",
  1: "unsupported version",
  2: "not authorized",
  3: "malformed request",
  4: "unsupported opcode",
  5: "unsupported option",
  6: "malformed option",
  7: "network failure",
  8: "no resources",
  9: "unsupported protocol",
  10: "user exceeded quota",
  11: "cannot provide external",
  12: "address mismatch",
  13: "excessive remote peers",
};

/** A MAP request for a UDP port. */
export interface PcpMapRequest {
  /** 12 random bytes; the answer must carry them back. */
  nonce: Uint8Array;
  /** Our address as the gateway sees it (the source of the request). */
  clientIp: string;
  internalPort: number;
  /** Suggested; 0: any. */
  externalPort?: number;
  /** Suggested; unset: any (`::`/`0.0.0.0`, §11.1). */
  externalIp?: string;
  /** Seconds; 0 deletes the mapping (§15). */
  lifetime: number;
}

/** The gateway's answer to a MAP request. */
export interface PcpMapResponse {
  result: number;
  /** Seconds the mapping lives (on an error: how long the error holds). */
  lifetime: number;
  /** The gateway's epoch (seconds since its mappings began). */
  epoch: number;
  internalPort: number;
  externalPort: number;
  /** The external address, in text (`a.b.c.d` for an IPv4-mapped one). */
  externalIp: string;
}

/** `ip` as PCP's 16 bytes (IPv4-mapped for IPv4). @throws {RangeError} for text that is not an IP */
function address16(ip: string): Uint8Array {
  const parsed = parseIp(ip);
  if (parsed === null) throw new RangeError(`Cannot encode a PCP address: "${ip}" is not an IP`);
  if (parsed.family === 6) return parsed.bytes;
  const mapped = new Uint8Array(16);
  mapped[10] = mapped[11] = 0xff;
  mapped.set(parsed.bytes, 12);
  return mapped;
}

/** PCP's 16 bytes as text: plain IPv4 for an IPv4-mapped address. */
function addressText(bytes: Uint8Array): string {
  const text = formatIp(bytes);
  return normalizeIp(text) ?? text;
}

/**
 * The MAP request's 60 bytes.
 *
 * @throws {RangeError} for a nonce of the wrong length, ports or lifetime out of range, or an address that is not one
 */
export function encodeMapRequest(request: PcpMapRequest): Uint8Array {
  const { nonce, internalPort, lifetime } = request;
  const externalPort = request.externalPort ?? 0;
  if (nonce.length !== PCP_NONCE_BYTES) {
    throw new RangeError(
      `Cannot encode a PCP MAP request: the nonce is ${nonce.length} bytes, not 12`,
    );
  }
  checkMapping("a PCP MAP request", internalPort, externalPort, lifetime);
  if (internalPort === 0) {
    throw new RangeError("Cannot encode a PCP MAP request: internal port 0 means all ports");
  }
  const bytes = new Uint8Array(PCP_MAP_BYTES);
  const view = new DataView(bytes.buffer);
  bytes[0] = PCP_VERSION;
  bytes[1] = PCP_MAP; // R = 0: a request
  view.setUint32(4, lifetime);
  bytes.set(address16(request.clientIp), 8);
  bytes.set(nonce, 24);
  bytes[36] = UDP;
  view.setUint16(40, internalPort);
  view.setUint16(42, externalPort);
  const suggested = request.externalIp ??
    (request.clientIp.includes(":") ? "::" : "0.0.0.0");
  bytes.set(address16(suggested), 44);
  return bytes;
}

/**
 * Reads the answer to `request`, or undefined when `bytes` is not one: too
 * short or over 1,100 bytes (§7), not version 2, not a MAP response, or
 * another nonce, protocol or internal port (an answer to someone else, or
 * a forgery). Options after the MAP data are skipped.
 */
export function parseMapResponse(
  bytes: Uint8Array,
  request: Pick<PcpMapRequest, "nonce" | "internalPort">,
): PcpMapResponse | undefined {
  if (bytes.length < PCP_MAP_BYTES || bytes.length > PCP_MAX_BYTES || bytes.length % 4 !== 0) {
    return undefined;
  }
  if (bytes[0] !== PCP_VERSION || bytes[1] !== (0x80 | PCP_MAP)) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const nonce = bytes.subarray(24, 36);
  if (!nonce.every((b, i) => b === request.nonce[i])) return undefined;
  if (bytes[36] !== UDP || view.getUint16(40) !== request.internalPort) return undefined;
  return {
    result: bytes[3],
    lifetime: view.getUint32(4),
    epoch: view.getUint32(8),
    internalPort: view.getUint16(40),
    externalPort: view.getUint16(42),
    externalIp: addressText(bytes.subarray(44, 60)),
  };
}

/**
 * Whether `bytes` is a gateway's ANNOUNCE (§14.1: it restarted, or its
 * address changed): its clients map again. Only the header is read.
 */
export function isAnnounce(bytes: Uint8Array): boolean {
  return bytes.length >= 24 && bytes.length <= PCP_MAX_BYTES && bytes[0] === PCP_VERSION &&
    bytes[1] === (0x80 | PCP_ANNOUNCE);
}

/** The ANNOUNCE request (§14.1): 24 bytes, lifetime 0; the probe of whether a gateway speaks PCP. */
export function encodeAnnounceRequest(clientIp: string): Uint8Array {
  const bytes = new Uint8Array(24);
  bytes[0] = PCP_VERSION;
  bytes[1] = PCP_ANNOUNCE;
  bytes.set(address16(clientIp), 8);
  return bytes;
}

/**
 * The answer to an ANNOUNCE request: its result and the gateway's epoch;
 * undefined when `bytes` is not one.
 */
export function parseAnnounceResponse(
  bytes: Uint8Array,
): { result: number; epoch: number } | undefined {
  if (!isAnnounce(bytes) || bytes.length % 4 !== 0) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { result: bytes[3], epoch: view.getUint32(8) };
}
