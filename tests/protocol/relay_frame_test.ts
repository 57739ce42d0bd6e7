import assert from "node:assert/strict";
import {
  encodeRelayFrame,
  MAX_RELAY_PACKET,
  parseRelayFrame,
  RelayFrameError,
} from "../../lib/protocol/relay_frame.ts";

Deno.test("relay frames round-trip and name their worker", () => {
  const packet = crypto.getRandomValues(new Uint8Array(1200));
  const frame = parseRelayFrame(encodeRelayFrame("worker-1.a_b", packet));
  assert.equal(frame.peerId, "worker-1.a_b");
  assert.deepEqual(frame.packet, packet);
  assert.equal(
    parseRelayFrame(encodeRelayFrame("w", new Uint8Array(MAX_RELAY_PACKET))).packet.length,
    MAX_RELAY_PACKET,
  );
});

Deno.test("parseRelayFrame() rejects every malformed frame with RelayFrameError", () => {
  const good = encodeRelayFrame("w1", new Uint8Array([1, 2, 3]));
  const bad: Uint8Array[] = [
    new Uint8Array([]),
    new Uint8Array([1, 2]),
    Uint8Array.from([9, ...good.subarray(1)]), // unknown kind
    Uint8Array.from([1, 0, 0x41, 1]), // empty id
    Uint8Array.from([1, 200, 0x41, 1]), // id longer than the frame
    Uint8Array.from([1, 2, 0x41, 0x20, 1]), // a space in the id
    encodeRelayFrame("w", new Uint8Array(0)).subarray(0, 2),
    Uint8Array.from([1, 1, 0x41, ...new Uint8Array(MAX_RELAY_PACKET + 1)]),
  ];
  for (const bytes of bad) assert.throws(() => parseRelayFrame(bytes), RelayFrameError);
  for (let i = 0; i < 2000; i++) {
    const junk = crypto.getRandomValues(new Uint8Array(Math.floor(Math.random() * 64)));
    try {
      parseRelayFrame(junk);
    } catch (error) {
      assert.ok(error instanceof RelayFrameError, String(error));
    }
  }
  assert.throws(() => encodeRelayFrame("bad id", new Uint8Array(1)), RelayFrameError);
  assert.throws(() => encodeRelayFrame("w", new Uint8Array(MAX_RELAY_PACKET + 1)), RelayFrameError);
});
