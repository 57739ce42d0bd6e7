import assert from "node:assert/strict";
import { Backoff } from "../../lib/core/backoff.ts";
import { ReconnectPolicy } from "../../lib/worker/reconnect_policy.ts";

const policy = () =>
  new ReconnectPolicy({
    backoff: new Backoff({ baseMs: 100, maxMs: 30_000, random: () => 0.5 }),
    random: () => 0.5,
  });
const refused = { opened: false, code: 1006, durationMs: 0 };

Deno.test("ReconnectPolicy backs off exponentially with full jitter when connections fail", () => {
  const p = policy();
  assert.deepEqual([0, 1, 2, 3].map(() => p.next(refused, 0)), [50, 100, 200, 400]);
});

Deno.test("ReconnectPolicy comes back at once after 1001, then retries within 1 s windows for the grace period", () => {
  const p = policy();
  assert.equal(p.next({ opened: true, code: 1001, durationMs: 60_000 }, 0), 0);
  // The new server is not listening yet: short windows, not growing ones.
  assert.deepEqual([1, 2, 3, 4, 5].map((s) => p.next(refused, s * 1000)), [
    500,
    500,
    500,
    500,
    500,
  ]);
  // After the 10 s grace, the exponential backoff takes over.
  assert.equal(p.next(refused, 10_001), 50);
  assert.equal(p.next(refused, 10_100), 100);
});

Deno.test("ReconnectPolicy never reconnects at once twice in a row", () => {
  const p = policy();
  const goingAway = { opened: true, code: 1001, durationMs: 5 };
  assert.equal(p.next(goingAway, 0), 0);
  assert.equal(p.next(goingAway, 10), 500);
  assert.equal(p.next(goingAway, 20), 0, "after a delayed attempt, at once again");
});

Deno.test("ReconnectPolicy resets the backoff after a stable session", () => {
  const p = policy();
  for (let i = 0; i < 5; i++) p.next(refused, 0);
  assert.equal(p.next({ opened: true, code: 1008, durationMs: 10_000 }, 0), 50);
});

Deno.test("ReconnectPolicy treats 1012 like 1001, and other codes as failures", () => {
  const p = policy();
  assert.equal(p.next({ opened: true, code: 1012, durationMs: 1 }, 0), 0);
  const q = policy();
  assert.equal(q.next({ opened: true, code: 4000, durationMs: 1 }, 0), 50);
  assert.equal(q.next({ opened: true, code: 1008, durationMs: 1 }, 0), 100);
});

Deno.test("ReconnectPolicy, after a healthy session drops abnormally (a crashed rendezvous): short jittered windows first, never at once, then backoff", () => {
  for (const code of [1006, 0, 1011]) {
    const p = policy();
    for (let i = 0; i < 5; i++) p.next(refused, 0); // an earlier bad patch: the backoff had grown
    assert.equal(p.next({ opened: true, code, durationMs: 60_000 }, 0), 500, `code ${code}`);
    assert.deepEqual([1, 2, 3, 9].map((s) => p.next(refused, s * 1000)), [500, 500, 500, 500]);
    assert.equal(p.next(refused, 10_001), 50, "after the grace, the (reset) backoff");
  }
  // Spread, not a herd: the first retry is uniform over the window.
  const spread = new Set(
    [0, 0.25, 0.5, 0.99].map((r) =>
      new ReconnectPolicy({ random: () => r }).next({
        opened: true,
        code: 1006,
        durationMs: 60_000,
      }, 0)
    ),
  );
  assert.deepEqual([...spread], [0, 250, 500, 990]);
});

Deno.test("ReconnectPolicy: a short session that drops, or a deliberate close, gets the backoff, not the windows", () => {
  const short = policy();
  assert.equal(short.next({ opened: true, code: 1006, durationMs: 2_000 }, 0), 50);
  assert.equal(short.next(refused, 1000), 100);
  for (const code of [4000, 1008, 4003]) {
    const p = policy();
    assert.equal(p.next({ opened: true, code, durationMs: 60_000 }, 0), 50, `code ${code}`);
  }
});

Deno.test("ReconnectPolicy: a revoked worker (4009) waits half to all of the longest wait, every time", () => {
  for (const [r, wait] of [[0, 15_000], [0.5, 22_500], [0.99, 29_850]] as const) {
    const p = new ReconnectPolicy({ random: () => r });
    assert.equal(p.next({ opened: true, code: 4009, durationMs: 60_000 }, 0), wait);
    assert.equal(p.next({ opened: true, code: 4009, durationMs: 0 }, 1000), wait);
  }
});
