import assert from "node:assert/strict";
import {
  type Frame,
  FrameError,
  frameSessionId,
  fromBase64,
  importSessionKey,
  isPeerFrame,
  MAX_FRAME_PAYLOAD,
  openFrame,
  sealFrame,
  toBase64,
} from "../../lib/peer/frame.ts";
import { isStun } from "../../lib/stun/codec.ts";

const KEY = toBase64(new Uint8Array(32).fill(7));
const OTHER = toBase64(new Uint8Array(32).fill(8));
const SESSION = "0123456789abcdef";

Deno.test("sealFrame() and openFrame() round-trip every frame type", async () => {
  const key = await importSessionKey(KEY);
  const frames: Frame[] = [
    { type: "probe", sessionId: SESSION, nonce: "00112233445566ff", time: 1234.5 },
    { type: "ack", sessionId: SESSION, nonce: "00112233445566ff", time: 1234.5 },
    { type: "data", sessionId: SESSION, seq: 42, payload: new TextEncoder().encode("hello") },
    { type: "data", sessionId: SESSION, seq: 0, payload: new Uint8Array(0) },
    { type: "data_ack", sessionId: SESSION, seq: 43 },
  ];
  for (const frame of frames) {
    const bytes = await sealFrame(frame, key);
    assert.ok(isPeerFrame(bytes));
    assert.ok(!isStun(bytes), "a peer frame is never taken for STUN");
    assert.equal(frameSessionId(bytes), SESSION);
    assert.deepEqual(await openFrame(bytes, key), frame);
  }
});

Deno.test("openFrame() drops frames with another key, a changed byte, or junk", async () => {
  const key = await importSessionKey(KEY);
  const other = await importSessionKey(OTHER);
  const bytes = await sealFrame({
    type: "data",
    sessionId: SESSION,
    seq: 1,
    payload: new Uint8Array([1, 2, 3]),
  }, key);
  await assert.rejects(openFrame(bytes, other), FrameError);
  for (let i = 0; i < bytes.length; i++) {
    const changed = bytes.slice();
    changed[i] ^= 0x01;
    await assert.rejects(openFrame(changed, key), FrameError, `byte ${i}`);
  }
  await assert.rejects(openFrame(new Uint8Array(10), key), FrameError);
  await assert.rejects(openFrame(crypto.getRandomValues(new Uint8Array(64)), key), FrameError);
  assert.equal(frameSessionId(new Uint8Array(5)), null);
});

Deno.test("sealFrame() refuses oversize payloads; importSessionKey() refuses short keys", async () => {
  const key = await importSessionKey(KEY);
  await assert.rejects(
    sealFrame({
      type: "data",
      sessionId: SESSION,
      seq: 1,
      payload: new Uint8Array(MAX_FRAME_PAYLOAD + 1),
    }, key),
    RangeError,
  );
  await assert.rejects(importSessionKey(toBase64(new Uint8Array(16))), FrameError);
});

Deno.test("toBase64() and fromBase64() round-trip bytes", () => {
  const bytes = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 7919) & 0xff);
  assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
});

Deno.test("an opened frame carries its TTL stage and whether it is the last; a bad body is refused", async () => {
  const key = await importSessionKey(btoa(String.fromCharCode(...new Uint8Array(32).fill(7))));
  const frame = {
    type: "opened",
    sessionId: "00000000000000a1",
    ttl: 3,
    last: true,
    time: 42,
  } as const;
  assert.deepEqual(await openFrame(await sealFrame(frame, key), key), frame);
  // TTL 0 is no stage: refused even under a good MAC.
  const bad = await sealFrame({ ...frame, ttl: 0 }, key);
  await assert.rejects(() => openFrame(bad, key), FrameError);
});
