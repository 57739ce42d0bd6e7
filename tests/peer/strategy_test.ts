import assert from "node:assert/strict";
import { planPunch, type Strategy } from "../../lib/peer/strategy.ts";
import type { Candidate, NatMapping } from "../../lib/protocol/messages.ts";

const local: Candidate = { ip: "192.168.1.2", port: 4000, kind: "local" };
const pub: Candidate = { ip: "203.0.113.9", port: 40000, kind: "public" };
/** A public candidate at an IP the rendezvous does not see the peer at (someone else's?). */
const unvouched: Candidate = { ...pub, vouched: false };
const vouched: Candidate = { ...pub, vouched: true };

Deno.test("planPunch() picks the strategy from both NATs and the candidates, the whole table", () => {
  const EIM = "endpoint-independent";
  const EDM = "endpoint-dependent";
  const table: [NatMapping | null, NatMapping | null, Candidate[], Strategy, Candidate[]][] = [
    // own, peer, candidates → strategy, checks
    [EIM, EIM, [local, pub], "ice", [local, pub]],
    [EDM, EIM, [local, pub], "hard-side", [local, pub]],
    [EIM, EDM, [local, pub], "easy-side", [local, pub]],
    [EDM, EDM, [local, pub], "both-hard", [local]],
    [EDM, EIM, [local], "ice", [local]], // no public candidate to open sockets toward
    [EIM, EDM, [local], "ice", [local]], // nor to spray at
    ["no-nat", EDM, [pub], "ice", [pub]], // a host without NAT takes any packet
    [EDM, "no-nat", [pub], "ice", [pub]],
    ["no-udp", EIM, [local, pub], "relay-only", []],
    [EIM, "no-udp", [local, pub], "relay-only", []],
    [null, null, [pub], "ice", [pub]], // unknown NATs: plain checks
    [EIM, EIM, [pub, local], "ice", [local, pub]], // local candidates first
    // Only a vouched public address gets the hard side's sockets or a spray; others are checked.
    [EDM, EIM, [local, vouched], "hard-side", [local, vouched]],
    [EIM, EDM, [local, vouched], "easy-side", [local, vouched]],
    [EDM, EIM, [local, unvouched], "ice", [local, unvouched]],
    [EIM, EDM, [local, unvouched], "ice", [local, unvouched]],
  ];
  for (const [own, peer, candidates, strategy, checks] of table) {
    const plan = planPunch(own, peer, candidates);
    assert.equal(plan.strategy, strategy, `${own} ↔ ${peer} (${candidates.length} candidates)`);
    assert.deepEqual(plan.checks, checks, `${own} ↔ ${peer} checks`);
    assert.deepEqual(
      plan.publics,
      candidates.filter((c) => c.kind === "public" && c.vouched !== false),
    );
  }
});

Deno.test("planPunch(): a gateway's port mapping on either side means plain checks, the mapped candidate first — also between two endpoint-dependent NATs", () => {
  const EIM = "endpoint-independent";
  const EDM = "endpoint-dependent";
  const mapped: Candidate = { ip: "203.0.113.9", port: 41641, kind: "mapped", vouched: true };
  const table: [NatMapping, NatMapping, Candidate[], boolean, Strategy, Candidate[]][] = [
    // own, peer, candidates, own mapped → strategy, checks
    [EDM, EDM, [local, vouched, mapped], false, "ice", [mapped, local, vouched]], // the peer maps
    [EDM, EDM, [local, vouched], true, "ice", [local, vouched]], // we map: the peer checks us
    [EIM, EDM, [local, vouched, mapped], false, "ice", [mapped, local, vouched]], // no spray
    [EDM, EIM, [local, vouched], true, "ice", [local, vouched]], // no extra sockets
    [EIM, EIM, [local, vouched, mapped], false, "ice", [mapped, local, vouched]],
    ["no-udp", EDM, [mapped], false, "relay-only", []],
    [EDM, EDM, [local, vouched], false, "both-hard", [local]], // nobody maps: as before
  ];
  for (const [own, peer, candidates, ownMapped, strategy, checks] of table) {
    const plan = planPunch(own, peer, candidates, ownMapped);
    const what = `${own} ↔ ${peer}, own mapped ${ownMapped}, ${candidates.length} candidates`;
    assert.equal(plan.strategy, strategy, what);
    assert.deepEqual(plan.checks, checks, what);
  }
});

Deno.test("planPunch(): between two endpoint-dependent IPv4 NATs, an IPv6 endpoint STUN saw is checked beside the locals", () => {
  const v6: Candidate = { ip: "2001:db8:1::2", port: 6000, kind: "public", vouched: false };
  const plan = planPunch("endpoint-dependent", "endpoint-dependent", [local, vouched, v6]);
  assert.equal(plan.strategy, "both-hard");
  assert.deepEqual(plan.checks, [local, v6]);
});
