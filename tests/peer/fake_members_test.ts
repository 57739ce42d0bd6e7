/**
 * 500 fake group members against a real worker process behind an
 * endpoint-dependent NAT: each asks for an introduction, so the worker runs
 * a hard-side round toward it, and relays a real QUIC Initial, so the worker
 * would hold a stand-in and a handshake for it (`tests/_abuse.ts`). The
 * worker's descriptors and memory stay bounded — the rounds share one pool
 * of extra sockets, unproven stand-ins are few and short-lived — and all of
 * it is given back when the members leave.
 */
import assert from "node:assert/strict";
import { fakeMembersAttack } from "../_abuse.ts";

Deno.test({
  name:
    "500 fake members asking for introductions and relaying QUIC Initials hold at most 200 of a hard-side worker's descriptors and 100 MB, and give them back",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const r = await fakeMembersAttack(500);
    console.log(
      `${r.rounds} hard-side rounds (${r.failed} ran their course); fds ${r.before.fds} → peak ${r.peak.fds}; RSS ${
        r.before.rss.toFixed(0)
      } → peak ${r.peak.rss.toFixed(0)} MB; limits ${JSON.stringify(r.limits)}; given back in ${
        r.givenBackMs.toFixed(0)
      } ms`,
    );
    assert.ok(r.peak.fds <= 200, `peak ${r.peak.fds} descriptors`);
    assert.ok(
      r.peak.rss - r.before.rss <= 100,
      `RSS grew ${(r.peak.rss - r.before.rss).toFixed(0)} MB`,
    );
    // The bounds were what held: the members' packets were refused, not ignored by chance.
    assert.ok(r.limits.transport_packets_refused > 0, "no packet was refused");
    // They never said `opened` (they do not punch): no hard-side round held a socket for them.
    assert.equal(r.limits.extra_sockets, 0);
    assert.ok(r.limits.stand_ins_unproven <= 32);
  },
});
