/**
 * A registrant that names someone else's address as its UDP endpoint (and
 * claims a hard NAT, and asks to be introduced over and over) gets at most a
 * small, paced number of a real worker's packets sent there: the address is
 * not vouched for (the rendezvous sees the registrant elsewhere), so there is
 * no spray, the checks to an address that never answers are paced by the
 * worker's budget, and the introductions back off.
 */
import assert from "node:assert/strict";
import { victimAttack } from "../_abuse.ts";

Deno.test("a registrant aiming a worker's probes at a victim gets a small, paced number there", async () => {
  const r = await victimAttack(20);
  console.log(
    `the victim got ${r.received} packets in ${r.seconds} s (at most ${r.allowed.toFixed(0)}); ` +
      `${r.strategies.length} punch rounds started`,
  );
  assert.ok(r.received > 0, "checks were sent: paced, not silenced");
  assert.ok(r.received <= r.allowed + 1, `${r.received} packets`);
  assert.ok(r.strategies.every((s) => s === "ice"), "no spray, no hard side");
});
