/**
 * The values of STUN attributes (RFC 8489 §14, RFC 5780 §7): transport
 * addresses plain and XOR-ed, ERROR-CODE, UNKNOWN-ATTRIBUTES,
 * CHANGE-REQUEST and text. Pure functions over `Uint8Array`; each decoder
 * throws `StunError` for a value it cannot read.
 *
 * @module
 */

import { formatIp, normalizeIp, parseIp } from "../protocol/ip.ts";
import { Attr, getAttribute, MAGIC_COOKIE, StunError, type StunMessage } from "./codec.ts";

/** An IP address and port. */
export interface TransportAddress {
  /** IPv4 or IPv6. */
  family: 4 | 6;
  /** Canonical text form. */
  ip: string;
  /** 0-65535. */
  port: number;
}

/**
 * A socket address from Deno as a {@linkcode TransportAddress}, or null when
 * the host is not an IP. Deno already gives IPv4 in canonical form, so only
 * IPv6 is re-formatted (this runs once per packet).
 */
export function toTransportAddress(addr: Deno.NetAddr): TransportAddress | null {
  if (!addr.hostname.includes(":")) return { family: 4, ip: addr.hostname, port: addr.port };
  const ip = normalizeIp(addr.hostname);
  if (ip === null) return null;
  return { family: ip.includes(":") ? 6 : 4, ip, port: addr.port };
}

/** RFC 8489 §14.1: family codes. */
const FAMILY_CODE = { 4: 0x01, 6: 0x02 } as const;

function badValue(what: string, why: string): StunError {
  return new StunError("bad_value", `Cannot decode ${what}: ${why}`);
}

function addressBytes(address: TransportAddress): Uint8Array {
  const parsed = parseIp(address.ip);
  if (parsed === null || parsed.family !== address.family) {
    throw new RangeError(
      `Cannot encode address: "${address.ip}" is not an IPv${address.family} address`,
    );
  }
  if (!Number.isInteger(address.port) || address.port < 0 || address.port > 0xffff) {
    throw new RangeError(`Cannot encode address: port ${address.port} is out of range`);
  }
  return parsed.bytes;
}

function readAddress(
  value: Uint8Array,
  what: string,
): { family: 4 | 6; port: number; bytes: Uint8Array } {
  if (value.length < 4) throw badValue(what, "shorter than 4 bytes");
  const code = value[1];
  const family = code === 0x01 ? 4 : code === 0x02 ? 6 : undefined;
  if (family === undefined) throw badValue(what, `unknown address family 0x${code.toString(16)}`);
  const expected = family === 4 ? 8 : 20;
  if (value.length !== expected) {
    throw badValue(what, `IPv${family} needs ${expected} bytes, got ${value.length}`);
  }
  return { family, port: (value[2] << 8) | value[3], bytes: value.slice(4) };
}

/** MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS (§14.1, RFC 5780). */
export function encodeAddress(address: TransportAddress): Uint8Array {
  const ip = addressBytes(address);
  const out = new Uint8Array(4 + ip.length);
  out[1] = FAMILY_CODE[address.family];
  out[2] = address.port >> 8;
  out[3] = address.port & 0xff;
  out.set(ip, 4);
  return out;
}

/** Decodes a plain address attribute value. */
export function decodeAddress(value: Uint8Array, what = "address"): TransportAddress {
  const { family, port, bytes } = readAddress(value, what);
  return { family, ip: formatIp(bytes), port };
}

function xorBytes(bytes: Uint8Array, transactionId: Uint8Array): Uint8Array {
  const mask = new Uint8Array(16);
  new DataView(mask.buffer).setUint32(0, MAGIC_COOKIE);
  mask.set(transactionId, 4);
  return bytes.map((b, i) => b ^ mask[i]);
}

/** XOR-MAPPED-ADDRESS (§14.2). */
export function encodeXorAddress(address: TransportAddress, transactionId: Uint8Array): Uint8Array {
  const plain = encodeAddress(address);
  const port = address.port ^ (MAGIC_COOKIE >>> 16);
  plain[2] = port >> 8;
  plain[3] = port & 0xff;
  plain.set(xorBytes(plain.subarray(4), transactionId), 4);
  return plain;
}

/** Decodes XOR-MAPPED-ADDRESS (or its 0x8020 variant). */
export function decodeXorAddress(value: Uint8Array, transactionId: Uint8Array): TransportAddress {
  const { family, port, bytes } = readAddress(value, "XOR-MAPPED-ADDRESS");
  return {
    family,
    ip: formatIp(xorBytes(bytes, transactionId)),
    port: port ^ (MAGIC_COOKIE >>> 16),
  };
}

/**
 * The mapped address of a response: XOR-MAPPED-ADDRESS, else its 0x8020
 * variant, else MAPPED-ADDRESS. Undefined when none is present.
 *
 * @throws {StunError} when the attribute present is malformed.
 */
export function getMappedAddress(message: StunMessage): TransportAddress | undefined {
  const xor = getAttribute(message, Attr.XOR_MAPPED_ADDRESS) ??
    getAttribute(message, Attr.XOR_MAPPED_ADDRESS_OLD);
  if (xor) return decodeXorAddress(xor, message.transactionId);
  const plain = getAttribute(message, Attr.MAPPED_ADDRESS);
  return plain ? decodeAddress(plain, "MAPPED-ADDRESS") : undefined;
}

/** ERROR-CODE (§14.8): `code` 300–699 and a reason phrase. */
export function encodeErrorCode(code: number, reason: string): Uint8Array {
  if (!Number.isInteger(code) || code < 300 || code > 699) {
    throw new RangeError(`Cannot encode ERROR-CODE: ${code} is not in 300-699`);
  }
  const text = new TextEncoder().encode(reason).subarray(0, 763);
  const out = new Uint8Array(4 + text.length);
  out[2] = Math.floor(code / 100);
  out[3] = code % 100;
  out.set(text, 4);
  return out;
}

/** Decodes ERROR-CODE. */
export function decodeErrorCode(value: Uint8Array): { code: number; reason: string } {
  if (value.length < 4) throw badValue("ERROR-CODE", "shorter than 4 bytes");
  const cls = value[2] & 0x07;
  const number = value[3];
  if (cls < 3 || cls > 6 || number > 99) {
    throw badValue("ERROR-CODE", `invalid code ${cls}${number}`);
  }
  return { code: cls * 100 + number, reason: new TextDecoder().decode(value.subarray(4)) };
}

/** UNKNOWN-ATTRIBUTES (§14.9): a list of 16-bit types. */
export function encodeUnknownAttributes(types: readonly number[]): Uint8Array {
  const out = new Uint8Array(types.length * 2);
  types.forEach((t, i) => {
    out[i * 2] = t >> 8;
    out[i * 2 + 1] = t & 0xff;
  });
  return out;
}

/** Decodes UNKNOWN-ATTRIBUTES. */
export function decodeUnknownAttributes(value: Uint8Array): number[] {
  if (value.length % 2 !== 0) throw badValue("UNKNOWN-ATTRIBUTES", "odd length");
  const out: number[] = [];
  for (let i = 0; i < value.length; i += 2) out.push((value[i] << 8) | value[i + 1]);
  return out;
}

/** CHANGE-REQUEST (RFC 5780 §7.2) flags. */
export interface ChangeRequest {
  changeIp: boolean;
  changePort: boolean;
}

/** Encodes CHANGE-REQUEST. */
export function encodeChangeRequest(change: ChangeRequest): Uint8Array {
  return new Uint8Array([0, 0, 0, (change.changeIp ? 0x04 : 0) | (change.changePort ? 0x02 : 0)]);
}

/** Decodes CHANGE-REQUEST. */
export function decodeChangeRequest(value: Uint8Array): ChangeRequest {
  if (value.length !== 4) throw badValue("CHANGE-REQUEST", `needs 4 bytes, got ${value.length}`);
  return { changeIp: (value[3] & 0x04) !== 0, changePort: (value[3] & 0x02) !== 0 };
}

/** SOFTWARE and other UTF-8 text attributes (§14.14: under 128 characters). */
export function encodeText(text: string): Uint8Array {
  return new TextEncoder().encode(text).subarray(0, 763);
}

/** Decodes a UTF-8 text attribute. */
export function decodeText(value: Uint8Array): string {
  return new TextDecoder().decode(value);
}
