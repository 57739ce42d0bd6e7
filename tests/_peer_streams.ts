/** Moving bytes over peer connections in tests: a transfer and its check. */
import assert from "node:assert/strict";
import type { PeerConnection } from "../lib/peer/connection.ts";

/** Everything `stream` carries, to its end. */
export async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(
    await new Response(stream as ReadableStream<Uint8Array<ArrayBuffer>>).arrayBuffer(),
  );
}

/**
 * Sends `size` bytes (a random 64 KiB block, repeated) on a new stream from
 * `from`; returns the block and what `to` received on the stream it accepted.
 */
export async function transfer(from: PeerConnection, to: PeerConnection, size: number) {
  const data = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)));
  const stream = await from.openStream();
  const writing = (async () => {
    const writer = stream.writable.getWriter();
    for (let sent = 0; sent < size; sent += data.length) {
      await writer.write(data.subarray(0, Math.min(data.length, size - sent)));
    }
    await writer.close();
  })();
  const reader = to.incomingStreams.getReader();
  const { value: incoming } = await reader.read();
  reader.releaseLock();
  const received = await readAll(incoming!.readable);
  await writing;
  return { data, received };
}

/** `received` is `size` bytes of `data` repeated, byte for byte. */
export function assertIntact(
  data: Uint8Array,
  received: Uint8Array,
  size: number,
  what = "",
): void {
  assert.equal(received.length, size, what);
  for (let i = 0; i < size; i += data.length) {
    assert.deepEqual(
      received.subarray(i, Math.min(size, i + data.length)),
      data.subarray(0, Math.min(data.length, size - i)),
      what,
    );
  }
}
