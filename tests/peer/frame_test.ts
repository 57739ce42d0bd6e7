import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
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

Deno.test("an opened frame carries its TTL stage, whether it is the last, and its round; a bad body is refused", async () => {
  const key = await importSessionKey(btoa(String.fromCharCode(...new Uint8Array(32).fill(7))));
  const frame = {
    type: "opened",
    sessionId: "00000000000000a1",
    ttl: 3,
    last: true,
    round: 2,
    time: 42,
  } as const;
  const sealed = await sealFrame(frame, key);
  assert.deepEqual(await openFrame(sealed, key), frame);
  assert.equal(sealed[12 + 2], 2, "the round sits where versions before rerolls sent a zero");
  // TTL 0 is no stage: refused even under a good MAC.
  const bad = await sealFrame({ ...frame, ttl: 0 }, key);
  await assert.rejects(() => openFrame(bad, key), FrameError);
});

Deno.test("a reroll frame carries its round and IPv4/IPv6 candidates; bad bodies are refused under a good MAC", async () => {
  const key = await importSessionKey(btoa(String.fromCharCode(...new Uint8Array(32).fill(9))));
  const frame: Extract<Frame, { type: "reroll" }> = {
    type: "reroll",
    sessionId: "00000000000000b2",
    round: 1,
    candidates: [
      { ip: "198.51.100.7", port: 40123, kind: "public" },
      { ip: "10.0.0.2", port: 51000, kind: "local" },
      { ip: "2001:db8:1::2", port: 51000, kind: "local" },
    ],
  };
  assert.deepEqual(await openFrame(await sealFrame(frame, key), key), frame);
  assert.deepEqual(
    await openFrame(await sealFrame({ ...frame, candidates: [] }, key), key),
    { ...frame, candidates: [] },
  );
  // The sender refuses what it cannot encode.
  await assert.rejects(() => sealFrame({ ...frame, round: 0 }, key), RangeError);
  await assert.rejects(
    () => sealFrame({ ...frame, candidates: Array(9).fill(frame.candidates[0]) }, key),
    RangeError,
  );
  await assert.rejects(
    () => sealFrame({ ...frame, candidates: [{ ip: "example.com", port: 1, kind: "local" }] }, key),
    RangeError,
  );
  // A peer's bytes are checked after the MAC: each bad body, re-MACed, is refused.
  const good = await sealFrame(frame, key);
  const body = good.subarray(12, good.length - 16);
  const bodies: [string, Uint8Array][] = [
    ["round 0", Uint8Array.of(0, ...body.subarray(1))],
    ["too many candidates", Uint8Array.of(1, 9, ...body.subarray(2))],
    ["a count beyond the bytes", Uint8Array.of(1, 4, ...body.subarray(2))],
    ["trailing bytes", Uint8Array.of(...body, 0)],
    ["a family that is neither 4 nor 6", Uint8Array.of(1, 1, 1, 5, 0, 80, 1, 2, 3, 4)],
    ["a kind that is neither", Uint8Array.of(1, 1, 2, 4, 0, 80, 1, 2, 3, 4)],
    ["port 0", Uint8Array.of(1, 1, 1, 4, 0, 0, 1, 2, 3, 4)],
    ["a truncated address", Uint8Array.of(1, 1, 1, 6, 0, 80, 1, 2, 3, 4)],
  ];
  for (const [what, bad] of bodies) {
    const bytes = new Uint8Array(12 + bad.length + 16);
    bytes.set(good.subarray(0, 12));
    bytes.set(bad, 12);
    const mac = createHmac("sha256", new Uint8Array(32).fill(9))
      .update(bytes.subarray(0, 12 + bad.length)).digest().subarray(0, 16);
    bytes.set(mac, 12 + bad.length);
    await assert.rejects(() => openFrame(bytes, key), FrameError, what);
  }
});
