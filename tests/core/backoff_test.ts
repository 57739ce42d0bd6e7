import assert from "node:assert/strict";
import { Backoff } from "../../lib/core/backoff.ts";

Deno.test("Backoff.next() doubles the window up to the cap, with full jitter", () => {
  const top = new Backoff({ baseMs: 100, maxMs: 1000, random: () => 0.999999 });
  assert.deepEqual(
    Array.from({ length: 6 }, () => top.next()),
    [99, 199, 399, 799, 999, 999],
  );
  const bottom = new Backoff({ baseMs: 100, maxMs: 1000, random: () => 0 });
  assert.deepEqual(Array.from({ length: 3 }, () => bottom.next()), [0, 0, 0]);
});

Deno.test("Backoff.reset() starts again from the first window", () => {
  const backoff = new Backoff({ baseMs: 100, maxMs: 1000, random: () => 0.5 });
  backoff.next();
  backoff.next();
  assert.equal(backoff.attempt, 2);
  backoff.reset();
  assert.equal(backoff.attempt, 0);
  assert.equal(backoff.next(), 50);
});

Deno.test("Backoff stays finite after a very long outage", () => {
  const backoff = new Backoff({ baseMs: 500, maxMs: 30_000, random: () => 0.5 });
  for (let i = 0; i < 10_000; i++) backoff.next();
  assert.equal(backoff.next(), 15_000);
});

Deno.test("Backoff spreads delays over the window (full jitter, not equal jitter)", () => {
  const backoff = new Backoff({ baseMs: 1000, maxMs: 1000 });
  const delays = Array.from({ length: 2000 }, () => backoff.next());
  assert.ok(delays.every((d) => d >= 0 && d < 1000));
  assert.ok(delays.some((d) => d < 100), "some delays fall in the first tenth");
  assert.ok(delays.some((d) => d > 900), "some delays fall in the last tenth");
});

Deno.test("Backoff rejects nonsensical windows", () => {
  assert.throws(() => new Backoff({ baseMs: 0 }), RangeError);
  assert.throws(() => new Backoff({ baseMs: 100, maxMs: 50 }), RangeError);
});
