/**
 * STUN (RFC 8489) message codec: pure functions over `Uint8Array`, no
 * sockets. Attributes of RFC 8489 and RFC 5780 (NAT behaviour discovery).
 *
 * The parser is strict about framing (lengths, padding, cookie, FINGERPRINT
 * position and value) and lax about what it does not need: unknown
 * comprehension-optional attributes are kept and ignored. It returns a whole
 * message or throws {@linkcode StunError}; never a half-filled result.
 *
 * @module
 */

/** RFC 8489 §5: fixed value in every message since RFC 5389. */
export const MAGIC_COOKIE = 0x2112a442;
/** RFC 8489 §5: the header is 20 bytes. */
export const HEADER_LENGTH = 20;
/** RFC 8489 §14.7: FINGERPRINT is CRC-32 of the message XOR this ("STUN"). */
export const FINGERPRINT_XOR = 0x5354554e;
/** RFC 8489 §14.5: HMAC-SHA1 output length. */
const INTEGRITY_LENGTH = 20;
/** RFC 8489 §6: a datagram larger than this is not a STUN message we accept. */
export const MAX_MESSAGE_LENGTH = 1500;

/** RFC 8489 §5: message classes, as bits of the message type. */
export const StunClass = {
  REQUEST: 0x0000,
  INDICATION: 0x0010,
  SUCCESS: 0x0100,
  ERROR: 0x0110,
} as const;
/** One of {@linkcode StunClass}. */
export type StunClass = typeof StunClass[keyof typeof StunClass];

/** RFC 8489 §18.2: methods. */
export const StunMethod = { BINDING: 0x001 } as const;

/** Attribute types (RFC 8489 §18.3, RFC 5780 §7, RFC 8445 §16.1). */
export const Attr = {
  MAPPED_ADDRESS: 0x0001,
  CHANGE_REQUEST: 0x0003, // RFC 5780 §7.2
  SOURCE_ADDRESS: 0x0004, // RFC 3489, seen in old servers' responses
  CHANGED_ADDRESS: 0x0005, // RFC 3489, seen in old servers' responses
  USERNAME: 0x0006,
  MESSAGE_INTEGRITY: 0x0008,
  ERROR_CODE: 0x0009,
  UNKNOWN_ATTRIBUTES: 0x000a,
  REALM: 0x0014,
  NONCE: 0x0015,
  MESSAGE_INTEGRITY_SHA256: 0x001c,
  PASSWORD_ALGORITHM: 0x001d,
  USERHASH: 0x001e,
  XOR_MAPPED_ADDRESS: 0x0020,
  PRIORITY: 0x0024, // RFC 8445
  USE_CANDIDATE: 0x0025, // RFC 8445
  PADDING: 0x0026, // RFC 5780 §7.6
  RESPONSE_PORT: 0x0027, // RFC 5780 §7.5
  PASSWORD_ALGORITHMS: 0x8002,
  ALTERNATE_DOMAIN: 0x8003,
  XOR_MAPPED_ADDRESS_OLD: 0x8020, // pre-RFC 5389 drafts; still sent by some servers
  SOFTWARE: 0x8022,
  ALTERNATE_SERVER: 0x8023,
  FINGERPRINT: 0x8028,
  ICE_CONTROLLED: 0x8029, // RFC 8445
  ICE_CONTROLLING: 0x802a, // RFC 8445
  RESPONSE_ORIGIN: 0x802b, // RFC 5780 §7.3
  OTHER_ADDRESS: 0x802c, // RFC 5780 §7.4
} as const;

/** Comprehension-required attributes (below 0x8000) this codec understands. */
export const KNOWN_REQUIRED_ATTRIBUTES: ReadonlySet<number> = new Set(
  Object.values(Attr).filter((t) => t < 0x8000),
);

/** Why a datagram is not an acceptable STUN message. */
export type StunErrorCode =
  | "not_stun"
  | "bad_length"
  | "bad_attribute"
  | "bad_fingerprint"
  | "unknown_required"
  | "bad_value";

/** Parsing or decoding failed; `code` says why. */
export class StunError extends Error {
  override name = "StunError";
  readonly code: StunErrorCode;
  /** For `unknown_required`: the attribute types to list in a 420 answer. */
  readonly unknownAttributes: readonly number[];
  /** For `unknown_required`: the header, so a server can answer. */
  readonly header?: { method: number; cls: StunClass; transactionId: Uint8Array };

  constructor(
    code: StunErrorCode,
    message: string,
    extra: {
      unknownAttributes?: number[];
      header?: { method: number; cls: StunClass; transactionId: Uint8Array };
    } = {},
  ) {
    super(message);
    this.code = code;
    this.unknownAttributes = extra.unknownAttributes ?? [];
    this.header = extra.header;
  }
}

/** One attribute: its type and value (without padding). */
export interface StunAttribute {
  type: number;
  value: Uint8Array;
}

/** A parsed message. */
export interface StunMessage {
  method: number;
  cls: StunClass;
  /** 12 bytes (RFC 8489 §5). */
  transactionId: Uint8Array;
  /** In wire order; those after MESSAGE-INTEGRITY other than FINGERPRINT are dropped (§14.5). */
  attributes: StunAttribute[];
  /** The datagram, for MESSAGE-INTEGRITY checks. */
  raw: Uint8Array;
  /** Offset of the MESSAGE-INTEGRITY attribute in `raw`, if any. */
  integrityOffset?: number;
  /** True when a FINGERPRINT was present (it was verified by the parser). */
  hasFingerprint: boolean;
}

/** What a message is built from. */
export interface StunMessageInit {
  method: number;
  cls: StunClass;
  transactionId: Uint8Array;
  attributes?: StunAttribute[];
}

/** RFC 8489 §5: the 14-bit type interleaves method and class bits. */
export function messageType(method: number, cls: StunClass): number {
  return ((method & 0xf80) << 2) | ((method & 0x070) << 1) | (method & 0x00f) | cls;
}

function splitType(type: number): { method: number; cls: StunClass } {
  const cls = (type & 0x0110) as StunClass;
  const method = ((type & 0x3e00) >> 2) | ((type & 0x00e0) >> 1) | (type & 0x000f);
  return { method, cls };
}

/** 12 random bytes. */
export function newTransactionId(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(12));
}

let crcTable: Uint32Array | undefined;

/** CRC-32 (ISO-HDLC, polynomial 0xEDB88320 reflected), as FINGERPRINT uses. */
export function crc32(bytes: Uint8Array): number {
  if (crcTable === undefined) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/**
 * Cheap test used to tell STUN apart from other packets on a shared socket
 * (RFC 7983 §7): top two bits zero, the magic cookie, and a length that fits.
 */
export function isStun(bytes: Uint8Array): boolean {
  if (bytes.length < HEADER_LENGTH || (bytes[0] & 0xc0) !== 0) return false;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = view.getUint16(2);
  return view.getUint32(4) === MAGIC_COOKIE && (length & 3) === 0 &&
    HEADER_LENGTH + length === bytes.length;
}

/** Options for {@linkcode parseStunMessage}. */
export interface ParseOptions {
  /**
   * Comprehension-required attribute types the caller understands; others
   * make the parse fail with `unknown_required`.
   * @default {KNOWN_REQUIRED_ATTRIBUTES}
   */
  comprehended?: ReadonlySet<number>;
}

/**
 * Parses one datagram as a STUN message.
 *
 * @throws {StunError} for anything that is not a well-formed message.
 *
 * @example
 * ```ts
 * const message = parseStunMessage(datagram);
 * if (message.cls === StunClass.SUCCESS) {
 *   const mapped = getMappedAddress(message);
 * }
 * ```
 */
export function parseStunMessage(bytes: Uint8Array, options: ParseOptions = {}): StunMessage {
  const comprehended = options.comprehended ?? KNOWN_REQUIRED_ATTRIBUTES;
  if (bytes.length < HEADER_LENGTH) {
    throw new StunError(
      "not_stun",
      `Cannot parse STUN: ${bytes.length} bytes is shorter than a header`,
    );
  }
  if (bytes.length > MAX_MESSAGE_LENGTH) {
    throw new StunError("bad_length", `Cannot parse STUN: ${bytes.length} bytes is too long`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = view.getUint16(0);
  if ((type & 0xc000) !== 0) {
    throw new StunError("not_stun", "Cannot parse STUN: the first two bits must be zero");
  }
  if (view.getUint32(4) !== MAGIC_COOKIE) {
    throw new StunError("not_stun", "Cannot parse STUN: wrong magic cookie");
  }
  const length = view.getUint16(2);
  if ((length & 3) !== 0 || HEADER_LENGTH + length !== bytes.length) {
    throw new StunError(
      "bad_length",
      `Cannot parse STUN: header length ${length} does not match the ${bytes.length}-byte datagram`,
    );
  }
  const { method, cls } = splitType(type);
  const transactionId = bytes.slice(8, 20);
  const attributes: StunAttribute[] = [];
  const unknown: number[] = [];
  let integrityOffset: number | undefined;
  let hasFingerprint = false;
  let offset = HEADER_LENGTH;
  while (offset < bytes.length) {
    if (hasFingerprint) {
      throw new StunError(
        "bad_attribute",
        "Cannot parse STUN: FINGERPRINT must be the last attribute",
      );
    }
    if (offset + 4 > bytes.length) {
      throw new StunError("bad_attribute", "Cannot parse STUN: truncated attribute header");
    }
    const attrType = view.getUint16(offset);
    const attrLength = view.getUint16(offset + 2);
    const start = offset + 4;
    const padded = (attrLength + 3) & ~3;
    if (start + padded > bytes.length) {
      throw new StunError(
        "bad_attribute",
        `Cannot parse STUN: attribute 0x${
          attrType.toString(16)
        } of ${attrLength} bytes runs past the message`,
      );
    }
    const value = bytes.subarray(start, start + attrLength);
    if (attrType === Attr.FINGERPRINT) {
      if (attrLength !== 4) {
        throw new StunError("bad_attribute", "Cannot parse STUN: FINGERPRINT must be 4 bytes");
      }
      const expected = (crc32(bytes.subarray(0, offset)) ^ FINGERPRINT_XOR) >>> 0;
      if (view.getUint32(start) !== expected) {
        throw new StunError("bad_fingerprint", "Cannot parse STUN: FINGERPRINT does not match");
      }
      hasFingerprint = true;
      attributes.push({ type: attrType, value });
    } else if (integrityOffset === undefined) {
      if (attrType === Attr.MESSAGE_INTEGRITY) {
        if (attrLength !== INTEGRITY_LENGTH) {
          throw new StunError(
            "bad_attribute",
            "Cannot parse STUN: MESSAGE-INTEGRITY must be 20 bytes",
          );
        }
        integrityOffset = offset;
      } else if (attrType < 0x8000 && !comprehended.has(attrType)) {
        unknown.push(attrType);
      }
      attributes.push({ type: attrType, value });
    }
    offset = start + padded;
  }
  if (unknown.length > 0) {
    throw new StunError(
      "unknown_required",
      `Cannot parse STUN: unknown comprehension-required attributes ${
        unknown.map((t) => "0x" + t.toString(16).padStart(4, "0")).join(", ")
      }`,
      { unknownAttributes: unknown, header: { method, cls, transactionId } },
    );
  }
  return { method, cls, transactionId, attributes, raw: bytes, integrityOffset, hasFingerprint };
}

/** The first attribute of `type`, or undefined. */
export function getAttribute(message: StunMessage, type: number): Uint8Array | undefined {
  return message.attributes.find((a) => a.type === type)?.value;
}

// ---- encoding ---------------------------------------------------------------

/** Options for {@linkcode encodeStunMessage}. */
export interface EncodeOptions {
  /** Append a FINGERPRINT. @default {false} */
  fingerprint?: boolean;
  /** Byte used to pad attribute values (any value is legal). @default {0} */
  padByte?: number;
}

function attributesLength(attributes: StunAttribute[]): number {
  let total = 0;
  for (const a of attributes) total += 4 + ((a.value.length + 3) & ~3);
  return total;
}

function writeMessage(init: StunMessageInit, extra: number, padByte: number): Uint8Array {
  const attributes = init.attributes ?? [];
  if (init.transactionId.length !== 12) {
    throw new RangeError(
      `Cannot encode STUN: transaction id must be 12 bytes, got ${init.transactionId.length}`,
    );
  }
  const body = attributesLength(attributes);
  const bytes = new Uint8Array(HEADER_LENGTH + body + extra);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, messageType(init.method, init.cls));
  view.setUint16(2, body);
  view.setUint32(4, MAGIC_COOKIE);
  bytes.set(init.transactionId, 8);
  let offset = HEADER_LENGTH;
  for (const { type, value } of attributes) {
    if (value.length > 0xffff) {
      throw new RangeError(`Cannot encode STUN: attribute 0x${type.toString(16)} too long`);
    }
    view.setUint16(offset, type);
    view.setUint16(offset + 2, value.length);
    bytes.set(value, offset + 4);
    const padded = (value.length + 3) & ~3;
    bytes.fill(padByte, offset + 4 + value.length, offset + 4 + padded);
    offset += 4 + padded;
  }
  return bytes;
}

function appendFingerprint(bytes: Uint8Array, at: number): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  view.setUint16(2, at + 8 - HEADER_LENGTH);
  const crc = (crc32(bytes.subarray(0, at)) ^ FINGERPRINT_XOR) >>> 0;
  view.setUint16(at, Attr.FINGERPRINT);
  view.setUint16(at + 2, 4);
  view.setUint32(at + 4, crc);
}

/**
 * Encodes a message without MESSAGE-INTEGRITY.
 *
 * @example
 * ```ts
 * const request = encodeStunMessage({
 *   method: StunMethod.BINDING, cls: StunClass.REQUEST, transactionId: newTransactionId(),
 * }, { fingerprint: true });
 * ```
 */
export function encodeStunMessage(init: StunMessageInit, options: EncodeOptions = {}): Uint8Array {
  const extra = options.fingerprint ? 8 : 0;
  const bytes = writeMessage(init, extra, options.padByte ?? 0);
  if (options.fingerprint) appendFingerprint(bytes, bytes.length - 8);
  return bytes;
}

async function hmacSha1(key: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
  const cryptoKey = await crypto.subtle.importKey(
    "raw",
    key as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-1" },
    false,
    ["sign"],
  );
  return new Uint8Array(
    await crypto.subtle.sign("HMAC", cryptoKey, data as Uint8Array<ArrayBuffer>),
  );
}

/**
 * Encodes a message with MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) under
 * `key` (for short-term credentials, the password's UTF-8 bytes).
 */
export async function encodeStunMessageWithIntegrity(
  init: StunMessageInit,
  key: Uint8Array,
  options: EncodeOptions = {},
): Promise<Uint8Array> {
  const fingerprint = options.fingerprint ?? false;
  const bytes = writeMessage(init, 24 + (fingerprint ? 8 : 0), options.padByte ?? 0);
  const view = new DataView(bytes.buffer);
  const at = bytes.length - 24 - (fingerprint ? 8 : 0);
  // §14.5: the length covers MESSAGE-INTEGRITY but not what follows it.
  view.setUint16(2, at + 24 - HEADER_LENGTH);
  const mac = await hmacSha1(key, bytes.subarray(0, at));
  view.setUint16(at, Attr.MESSAGE_INTEGRITY);
  view.setUint16(at + 2, INTEGRITY_LENGTH);
  bytes.set(mac, at + 4);
  if (fingerprint) appendFingerprint(bytes, at + 24);
  return bytes;
}

/**
 * True when the message carries a MESSAGE-INTEGRITY that matches `key`;
 * false when it is absent or wrong.
 */
export async function verifyMessageIntegrity(
  message: StunMessage,
  key: Uint8Array,
): Promise<boolean> {
  const at = message.integrityOffset;
  if (at === undefined) return false;
  const covered = message.raw.slice(0, at);
  new DataView(covered.buffer).setUint16(2, at + 24 - HEADER_LENGTH);
  const mac = await hmacSha1(key, covered);
  const received = message.raw.subarray(at + 4, at + 24);
  let diff = 0;
  for (let i = 0; i < INTEGRITY_LENGTH; i++) diff |= mac[i] ^ received[i];
  return diff === 0;
}
