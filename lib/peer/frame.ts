/**
 * Frames between peers, on the direct UDP path and (base64) through the
 * relay alike. Every frame names its punch session and ends with an HMAC
 * (SHA-256, first 16 bytes) under the session's key, so a frame that was not
 * made by the introduced peer, or was changed, is dropped.
 *
 *   0  "HP" magic (0x48 0x50: the top two bits 01 tell it from STUN's 00)
 *   2  version (1)
 *   3  type: 1 probe, 2 ack, 3 data, 4 data-ack, 5 nominate (a probe that
 *      also says "use this path", as ICE's USE-CANDIDATE), 6 opened (sent
 *      through the relay: "my opening packets of this TTL are out"),
 *      7 reroll (through the relay: "a new round, from a fresh socket; here
 *      are its candidates")
 *   4  session id (8 bytes)
 *   12 probe/ack/nominate: nonce (8) + sender time (float64 ms, echoed by the ack)
 *      opened: TTL (1) + last stage (1, 0 or 1) + round (1; 0 from versions
 *        before rerolls) + zeros (5) + sender time (float64 ms)
 *      reroll: round (1, ≥ 1) + candidate count (1, ≤ 8) + candidates, each
 *        kind (1: 0 local, 1 public) + family (1: 4 or 6) + port (2) + address (4 or 16)
 *      data (a datagram): sequence (uint32) + payload; data-ack: cumulative
 *        sequence (uint32; answered for peers of versions that retransmitted)
 *   .. MAC (16)
 *
 * @module
 */

import { hex } from "../core/encoding.ts";

import { formatIp, parseIp } from "../protocol/ip.ts";
import type { Candidate } from "../protocol/messages.ts";

/** First bytes of every frame. */
export const FRAME_MAGIC = [0x48, 0x50] as const;
const VERSION = 1;
const HEADER = 12;
const MAC_LENGTH = 16;
/** Largest payload of one data frame (fits a 1280-byte IPv6 MTU with headers). */
export const MAX_FRAME_PAYLOAD = 1200;

/** Most candidates a `reroll` frame carries. */
export const MAX_REROLL_CANDIDATES = 8;

/** A decoded frame. */
export type Frame =
  | { type: "probe" | "ack" | "nominate"; sessionId: string; nonce: string; time: number }
  | {
    type: "opened";
    sessionId: string;
    ttl: number;
    last: boolean;
    /** The punch round (0: the introduction's, then one per reroll). */
    round: number;
    time: number;
  }
  | { type: "reroll"; sessionId: string; round: number; candidates: Candidate[] }
  | { type: "data"; sessionId: string; seq: number; payload: Uint8Array }
  | { type: "data_ack"; sessionId: string; seq: number };

const TYPE_CODE = {
  probe: 1,
  ack: 2,
  data: 3,
  data_ack: 4,
  nominate: 5,
  opened: 6,
  reroll: 7,
} as const;
const TYPE_NAME = [
  "",
  "probe",
  "ack",
  "data",
  "data_ack",
  "nominate",
  "opened",
  "reroll",
] as const;

/** The frame is not one of ours, was tampered with, or belongs to no session we know. */
export class FrameError extends Error {
  override name = "FrameError";
}

function unhex(text: string): Uint8Array {
  if (!/^[0-9a-f]*$/.test(text) || text.length % 2 !== 0) {
    throw new FrameError(`Cannot use "${text}" as hex`);
  }
  return Uint8Array.from(
    { length: text.length / 2 },
    (_, i) => parseInt(text.slice(i * 2, i * 2 + 2), 16),
  );
}

/** True when `bytes` starts like a peer frame (cheap; for demultiplexing). */
export function isPeerFrame(bytes: Uint8Array): boolean {
  return bytes.length >= HEADER + MAC_LENGTH && bytes[0] === FRAME_MAGIC[0] &&
    bytes[1] === FRAME_MAGIC[1] && bytes[2] === VERSION;
}

/** The session id a frame claims (hex), before any check; null when not a frame. */
export function frameSessionId(bytes: Uint8Array): string | null {
  return isPeerFrame(bytes) ? hex(bytes.subarray(4, 12)) : null;
}

/** 8 random bytes as hex: a probe nonce. */
export function newNonce(): string {
  return hex(crypto.getRandomValues(new Uint8Array(8)));
}

/** Imports a session key (base64 of 32 bytes, as `punch` carries it). */
export async function importSessionKey(base64: string): Promise<CryptoKey> {
  const raw = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  if (raw.length !== 32) throw new FrameError(`Cannot use a ${raw.length}-byte session key`);
  return await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
}

async function mac(key: CryptoKey, data: Uint8Array): Promise<Uint8Array> {
  const full = new Uint8Array(
    await crypto.subtle.sign("HMAC", key, data as Uint8Array<ArrayBuffer>),
  );
  return full.subarray(0, MAC_LENGTH);
}

/** Encodes and authenticates a frame. */
export async function sealFrame(frame: Frame, key: CryptoKey): Promise<Uint8Array> {
  let body: Uint8Array;
  switch (frame.type) {
    case "probe":
    case "ack":
    case "nominate":
      body = new Uint8Array(16);
      body.set(unhex(frame.nonce), 0);
      new DataView(body.buffer).setFloat64(8, frame.time);
      break;
    case "opened":
      body = new Uint8Array(16);
      body[0] = frame.ttl;
      body[1] = frame.last ? 1 : 0;
      body[2] = frame.round;
      new DataView(body.buffer).setFloat64(8, frame.time);
      break;
    case "reroll":
      body = encodeReroll(frame.round, frame.candidates);
      break;
    case "data":
      if (frame.payload.length > MAX_FRAME_PAYLOAD) {
        throw new RangeError(
          `Cannot send ${frame.payload.length} bytes in one frame (max ${MAX_FRAME_PAYLOAD})`,
        );
      }
      body = new Uint8Array(4 + frame.payload.length);
      new DataView(body.buffer).setUint32(0, frame.seq);
      body.set(frame.payload, 4);
      break;
    case "data_ack":
      body = new Uint8Array(4);
      new DataView(body.buffer).setUint32(0, frame.seq);
      break;
  }
  const out = new Uint8Array(HEADER + body.length + MAC_LENGTH);
  out[0] = FRAME_MAGIC[0];
  out[1] = FRAME_MAGIC[1];
  out[2] = VERSION;
  out[3] = TYPE_CODE[frame.type];
  out.set(unhex(frame.sessionId), 4);
  out.set(body, HEADER);
  out.set(await mac(key, out.subarray(0, HEADER + body.length)), HEADER + body.length);
  return out;
}

/**
 * Checks and decodes a frame.
 *
 * @throws {FrameError} when it is not a frame, its MAC is wrong, or its body
 * does not fit its type.
 */
export async function openFrame(bytes: Uint8Array, key: CryptoKey): Promise<Frame> {
  if (!isPeerFrame(bytes)) throw new FrameError("Cannot open frame: not a peer frame");
  const end = bytes.length - MAC_LENGTH;
  const expected = await mac(key, bytes.subarray(0, end));
  let diff = 0;
  for (let i = 0; i < MAC_LENGTH; i++) diff |= expected[i] ^ bytes[end + i];
  if (diff !== 0) throw new FrameError("Cannot open frame: bad MAC");
  const type = TYPE_NAME[bytes[3]];
  const sessionId = hex(bytes.subarray(4, 12));
  const body = bytes.subarray(HEADER, end);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  switch (type) {
    case "probe":
    case "ack":
    case "nominate":
      if (body.length !== 16) {
        throw new FrameError(`Cannot open ${type}: body is ${body.length} bytes`);
      }
      return { type, sessionId, nonce: hex(body.subarray(0, 8)), time: view.getFloat64(8) };
    case "opened":
      if (body.length !== 16 || body[0] === 0 || body[1] > 1) {
        throw new FrameError("Cannot open opened: bad body");
      }
      return {
        type,
        sessionId,
        ttl: body[0],
        last: body[1] === 1,
        round: body[2],
        time: view.getFloat64(8),
      };
    case "reroll":
      return { type, sessionId, ...decodeReroll(body) };
    case "data":
      if (body.length < 4) throw new FrameError("Cannot open data: no sequence number");
      return { type, sessionId, seq: view.getUint32(0), payload: body.slice(4) };
    case "data_ack":
      if (body.length !== 4) throw new FrameError("Cannot open data_ack: bad length");
      return { type, sessionId, seq: view.getUint32(0) };
    default:
      throw new FrameError(`Cannot open frame: unknown type ${bytes[3]}`);
  }
}

function encodeReroll(round: number, candidates: Candidate[]): Uint8Array {
  if (!Number.isInteger(round) || round < 1 || round > 255) {
    throw new RangeError(`Cannot send reroll round ${round}: 1 to 255`);
  }
  if (candidates.length > MAX_REROLL_CANDIDATES) {
    throw new RangeError(
      `Cannot send ${candidates.length} candidates: at most ${MAX_REROLL_CANDIDATES}`,
    );
  }
  const parts = candidates.map((c) => {
    const address = parseIp(c.ip)?.bytes;
    if (!address) throw new RangeError(`Cannot send candidate address "${c.ip}"`);
    const part = new Uint8Array(4 + address.length);
    part[0] = c.kind === "public" ? 1 : 0;
    part[1] = address.length === 4 ? 4 : 6;
    new DataView(part.buffer).setUint16(2, c.port);
    part.set(address, 4);
    return part;
  });
  const body = new Uint8Array(2 + parts.reduce((n, p) => n + p.length, 0));
  body[0] = round;
  body[1] = parts.length;
  let at = 2;
  for (const part of parts) {
    body.set(part, at);
    at += part.length;
  }
  return body;
}

function decodeReroll(body: Uint8Array): { round: number; candidates: Candidate[] } {
  if (body.length < 2 || body[0] === 0 || body[1] > MAX_REROLL_CANDIDATES) {
    throw new FrameError("Cannot open reroll: bad header");
  }
  const candidates: Candidate[] = [];
  let at = 2;
  for (let i = 0; i < body[1]; i++) {
    const [kind, family] = [body[at], body[at + 1]];
    const length = family === 4 ? 4 : family === 6 ? 16 : 0;
    if (kind > 1 || length === 0 || at + 4 + length > body.length) {
      throw new FrameError(`Cannot open reroll: bad candidate ${i}`);
    }
    const port = (body[at + 2] << 8) | body[at + 3];
    if (port === 0) throw new FrameError(`Cannot open reroll: candidate ${i} has port 0`);
    const ip = formatIp(body.subarray(at + 4, at + 4 + length));
    candidates.push({ ip, port, kind: kind === 1 ? "public" : "local" });
    at += 4 + length;
  }
  if (at !== body.length) throw new FrameError("Cannot open reroll: trailing bytes");
  return { round: body[0], candidates };
}

export { fromBase64, toBase64 } from "../core/encoding.ts";
