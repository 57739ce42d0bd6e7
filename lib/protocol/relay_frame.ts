/**
 * Binary relay frames: transport packets our workers send each other
 * through the rendezvous when no direct path exists (or not yet). The seed's
 * JSON text protocol is untouched; only binary WebSocket frames use this.
 *
 *   0  kind (0x01: a transport packet)
 *   1  length of the worker id that follows (1–128)
 *   2  worker id (ASCII, [A-Za-z0-9._-]): the destination when a worker
 *      sends, the source when the rendezvous delivers
 *   .. payload: one transport packet, at most {@linkcode MAX_RELAY_PACKET} bytes
 *
 * @module
 */

import { isValidWorkerId } from "./messages.ts";

/** The frame carries one transport (QUIC) packet. */
export const RELAY_TRANSPORT = 0x01;
/** Largest packet a relay frame carries: a UDP payload on any path we use. */
export const MAX_RELAY_PACKET = 2048;

/** A binary relay frame that is not well-formed. */
export class RelayFrameError extends Error {
  /** Always `"RelayFrameError"`. */
  override name = "RelayFrameError";
}

/** A parsed relay frame; `packet` is a view into the input. */
export interface RelayFrame {
  /** The destination (from a worker) or the source (from the rendezvous). */
  peerId: string;
  /** The transport packet. */
  packet: Uint8Array;
}

/**
 * Encodes a relay frame for `peerId` carrying `packet`.
 *
 * @throws {RelayFrameError} when the id is invalid or the packet too large
 */
export function encodeRelayFrame(peerId: string, packet: Uint8Array): Uint8Array<ArrayBuffer> {
  if (!isValidWorkerId(peerId)) {
    throw new RelayFrameError(`Cannot relay to "${peerId}": bad worker id`);
  }
  if (packet.length > MAX_RELAY_PACKET) {
    throw new RelayFrameError(
      `Cannot relay ${packet.length} bytes: a packet is at most ${MAX_RELAY_PACKET}`,
    );
  }
  const out = new Uint8Array(2 + peerId.length + packet.length);
  out[0] = RELAY_TRANSPORT;
  out[1] = peerId.length;
  for (let i = 0; i < peerId.length; i++) out[2 + i] = peerId.charCodeAt(i);
  out.set(packet, 2 + peerId.length);
  return out;
}

/**
 * Parses a relay frame.
 *
 * @throws {RelayFrameError} naming what is wrong
 */
export function parseRelayFrame(bytes: Uint8Array): RelayFrame {
  if (bytes.length < 3) throw new RelayFrameError("Cannot parse relay frame: too short");
  if (bytes[0] !== RELAY_TRANSPORT) {
    throw new RelayFrameError(`Cannot parse relay frame: unknown kind ${bytes[0]}`);
  }
  const length = bytes[1];
  if (length < 1 || length > 128 || bytes.length < 2 + length) {
    throw new RelayFrameError(`Cannot parse relay frame: bad id length ${length}`);
  }
  const packet = bytes.subarray(2 + length);
  if (packet.length > MAX_RELAY_PACKET) {
    throw new RelayFrameError(
      `Cannot parse relay frame: ${packet.length} bytes of packet, at most ${MAX_RELAY_PACKET}`,
    );
  }
  const peerId = String.fromCharCode(...bytes.subarray(2, 2 + length));
  if (!isValidWorkerId(peerId)) {
    throw new RelayFrameError("Cannot parse relay frame: bad worker id");
  }
  return { peerId, packet };
}

/**
 * Rewrites a worker's frame (addressed to its destination) into the frame
 * the destination gets (naming the source), reusing the packet bytes.
 */
export function readdressRelayFrame(frame: RelayFrame, from: string): Uint8Array<ArrayBuffer> {
  return encodeRelayFrame(from, frame.packet);
}
