import assert from "node:assert/strict";
import { EarlyPackets } from "../../lib/peer/early_packets.ts";

Deno.test("EarlyPackets: copies, a few per peer, the newest peers only, for one probe timeout", () => {
  let now = 0;
  const early = new EarlyPackets({ perPeer: 2, peers: 3, ms: 1000 }, () => now);
  const packet = new Uint8Array([1, 2, 3]);
  assert.ok(early.hold("a", packet));
  packet[0] = 9; // the caller reuses its buffer
  assert.ok(early.hold("a", packet));
  assert.ok(!early.hold("a", packet), "two per peer");
  assert.deepEqual(early.take("a").map((p) => [...p]), [[1, 2, 3], [9, 2, 3]]);
  assert.deepEqual(early.take("a"), [], "taken once");
  for (const id of ["b", "c", "d", "e"]) early.hold(id, packet);
  assert.equal(early.size, 3);
  assert.deepEqual(early.take("b"), [], "the oldest peer made way");
  assert.equal(early.take("e").length, 1);
  now = 1001;
  assert.deepEqual(early.take("c"), [], "older than a probe timeout: QUIC has sent it again");
  assert.ok(early.hold("d", packet), "a stale entry starts afresh");
  assert.equal(early.take("d").length, 1);
  assert.deepEqual(early.counts, { held: 7, dropped: 2 });
});
