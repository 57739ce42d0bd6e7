import assert from "node:assert/strict";
import { coarseClock } from "../../lib/core/clock.ts";
import { FakeClock } from "../_fake_clock.ts";

Deno.test("coarseClock: timers fire in due order, never early, at most the resolution late, on one timer of the base", async () => {
  const base = new FakeClock(1000);
  const clock = coarseClock(base, 5);
  const fired: [string, number][] = [];
  const at = (name: string) => () => fired.push([name, base.now()]);
  clock.setTimeout(at("c"), 30);
  clock.setTimeout(at("a"), 3); // due 1003: fires at 1005
  clock.setTimeout(at("b"), 5);
  clock.setTimeout(at("b2"), 5); // same due time: in the order set
  const cancelled = clock.setTimeout(at("x"), 10);
  clock.clearTimeout(cancelled);
  assert.equal(base.pending, 1, "one timer of the base, however many are set");
  await base.tick(4);
  assert.deepEqual(fired, [], "nothing early");
  await base.tick(100);
  assert.deepEqual(fired, [["a", 1005], ["b", 1005], ["b2", 1005], ["c", 1030]]);
  assert.equal(base.pending, 0);
});

Deno.test("coarseClock: a timer set from a timer, and one that throws, leave the others on time", async () => {
  const base = new FakeClock(0);
  const clock = coarseClock(base, 5);
  const fired: number[] = [];
  const errors: unknown[] = [];
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    errors.push(e.error);
  };
  addEventListener("error", onError);
  try {
    clock.setTimeout(() => {
      fired.push(base.now());
      clock.setTimeout(() => fired.push(base.now()), 20);
    }, 10);
    clock.setTimeout(() => {
      throw new Error("boom");
    }, 10);
    clock.setTimeout(() => fired.push(base.now()), 15);
    await base.tick(50);
    assert.deepEqual(fired, [10, 15, 30]);
    assert.equal(errors.length, 1);
  } finally {
    removeEventListener("error", onError);
  }
});
