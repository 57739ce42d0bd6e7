/**
 * NAT-PMP (RFC 6886) messages: the public-address request and the UDP
 * mapping request a client sends its gateway on port 5351, and the
 * gateway's answers. Pure: bytes in, values out; anything that is not an
 * answer to what was asked (short, oversized, another version or opcode)
 * is `undefined`, never an exception — the gateway is on the network.
 *
 * @module
 */

import { checkMapping } from "./_mapping.ts";
/** The port a NAT-PMP (and PCP) server listens on (RFC 6886 §3.1). */
export const NATPMP_PORT = 5351;
/** NAT-PMP's version number (PCP is 2). */
export const NATPMP_VERSION = 0;

/** Opcodes (a response's is the request's + 128). */
export const NatPmpOp = {
  PUBLIC_ADDRESS: 0,
  MAP_UDP: 1,
  MAP_TCP: 2,
} as const;

/** Result codes (RFC 6886 §3.5). */
export const NATPMP_RESULTS: Readonly<Record<number, string>> = {
  0: "success",
  1: "unsupported version",
  2: "not authorized or refused",
  3: "network failure",
  4: "out of resources",
  5: "unsupported opcode",
};

/** The gateway's answer to a public-address request. */
export interface NatPmpAddress {
  result: number;
  /** Seconds since the gateway's port-mapping table started (its epoch). */
  epoch: number;
  /** Its public IPv4 address (meaningful when `result` is 0). */
  ip: string;
}

/** The gateway's answer to a mapping request. */
export interface NatPmpMapping {
  result: number;
  epoch: number;
  internalPort: number;
  /** The port it mapped on its public address (0 with a refusal). */
  externalPort: number;
  /** Seconds the mapping lives (0: deleted). */
  lifetime: number;
}

/** The public-address request: two bytes. */
export function encodePublicAddressRequest(): Uint8Array {
  return new Uint8Array([NATPMP_VERSION, NatPmpOp.PUBLIC_ADDRESS]);
}

/**
 * A UDP mapping request for `internalPort`, suggesting `externalPort`
 * (0: any), for `lifetime` seconds (0 deletes the mapping of
 * `internalPort`, RFC 6886 §3.4).
 *
 * @throws {RangeError} for a port or lifetime out of range
 */
export function encodeMapRequest(
  internalPort: number,
  externalPort: number,
  lifetime: number,
): Uint8Array {
  checkMapping("a NAT-PMP mapping", internalPort, externalPort, lifetime);
  const bytes = new Uint8Array(12);
  const view = new DataView(bytes.buffer);
  bytes[0] = NATPMP_VERSION;
  bytes[1] = NatPmpOp.MAP_UDP;
  view.setUint16(4, internalPort);
  view.setUint16(6, externalPort);
  view.setUint32(8, lifetime);
  return bytes;
}

/** Version, opcode and result of an answer to `op`, or undefined when it is not one. */
function header(bytes: Uint8Array, op: number, length: number) {
  // Exactly the answer's size: a longer datagram is not a NAT-PMP answer.
  if (bytes.length !== length || bytes[0] !== NATPMP_VERSION || bytes[1] !== op + 128) {
    return undefined;
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { view, result: view.getUint16(2), epoch: view.getUint32(4) };
}

/**
 * Reads an answer to a public-address request (12 bytes), or undefined.
 * A refusal carries only its result code and epoch (RFC 6886 §3.5).
 */
export function parsePublicAddressResponse(bytes: Uint8Array): NatPmpAddress | undefined {
  const h = header(bytes, NatPmpOp.PUBLIC_ADDRESS, 12);
  if (!h) return undefined;
  return { result: h.result, epoch: h.epoch, ip: [...bytes.subarray(8, 12)].join(".") };
}

/** Reads an answer to a UDP mapping request (16 bytes), or undefined. */
export function parseMapResponse(bytes: Uint8Array): NatPmpMapping | undefined {
  const h = header(bytes, NatPmpOp.MAP_UDP, 16);
  if (!h) return undefined;
  return {
    result: h.result,
    epoch: h.epoch,
    internalPort: h.view.getUint16(8),
    externalPort: h.view.getUint16(10),
    lifetime: h.view.getUint32(12),
  };
}

/**
 * Whether the gateway lost its mappings (rebooted, or its table was
 * cleared) between two answers: RFC 6886 §3.6 — its epoch should have
 * advanced by about the time that passed; a client that sees it advance
 * by less than 7/8 of that, less 2 seconds, maps again.
 *
 * @example
 * ```ts
 * epochJumped({ epoch: 1000, at: 0 }, { epoch: 1060, at: 60_000 }); // false
 * epochJumped({ epoch: 1000, at: 0 }, { epoch: 5, at: 60_000 });    // true
 * ```
 */
export function epochJumped(
  before: { epoch: number; at: number },
  now: { epoch: number; at: number },
): boolean {
  const elapsedSec = Math.max(0, now.at - before.at) / 1000;
  return now.epoch + 2 < before.epoch + elapsedSec * 7 / 8;
}
