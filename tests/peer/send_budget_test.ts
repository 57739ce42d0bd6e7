import assert from "node:assert/strict";
import { SEND_BUDGET, SendBudget } from "../../lib/peer/send_budget.ts";
import { FakeClock } from "../_fake_clock.ts";

Deno.test("SendBudget: an address that never answers gets a burst, then a few a minute", async () => {
  const clock = new FakeClock();
  const budget = new SendBudget(clock);
  let sent = 0;
  // An attacker re-aims us at a victim for ten minutes, as fast as it likes.
  for (let s = 0; s < 600; s++) {
    for (let i = 0; i < 1000; i++) if (budget.take("192.0.2.66")) sent++;
    await clock.tick(1000);
  }
  const allowed = SEND_BUDGET.burst + SEND_BUDGET.perMinute * 10;
  assert.ok(sent <= allowed + 1, `${sent} packets in 10 min (at most ${allowed})`);
  assert.ok(sent >= allowed - 2, `${sent}: the pace is kept, not stopped`);
  assert.equal(budget.dropped, 600_000 - sent);
});

Deno.test("SendBudget: an answer or a vouch lifts the limit for a while, then it applies again", async () => {
  const clock = new FakeClock();
  const budget = new SendBudget(clock, {
    burst: 2,
    perMinute: 1,
    trustMs: 10_000,
    maxAddresses: 8,
  });
  assert.deepEqual([budget.take("a"), budget.take("a"), budget.take("a")], [true, true, false]);
  budget.heard("a");
  for (let i = 0; i < 100; i++) assert.equal(budget.take("a"), true, "answered");
  budget.vouch("b");
  for (let i = 0; i < 100; i++) assert.equal(budget.take("b"), true, "vouched");
  await clock.tick(10_000);
  assert.equal(budget.take("b"), true, "the burst again");
  assert.equal(budget.take("b"), true);
  assert.equal(budget.take("b"), false, "trust ran out");
});

Deno.test("SendBudget remembers a bounded number of addresses", () => {
  const budget = new SendBudget(new FakeClock(), { ...SEND_BUDGET, maxAddresses: 16 });
  for (let i = 0; i < 1000; i++) budget.take(`10.0.${i >> 8}.${i & 255}`);
  // The first addresses were forgotten: a fresh burst (a bounded map, not a permanent allowance).
  assert.equal(budget.take("10.0.0.0"), true);
});
