/**
 * How a round punches, from both NATs and the peer's candidates: a pure
 * function, so the whole table can be tested without a socket.
 *
 * | situation                               | strategy     |
 * | --------------------------------------- | ------------ |
 * | either side without UDP                 | `relay-only` |
 * | both endpoint-dependent                 | `both-hard`: local candidates only |
 * | either side without NAT                 | `ice`        |
 * | we are endpoint-dependent, the peer not | `hard-side`: extra sockets (the pool's) |
 * | the peer is endpoint-dependent, we not  | `easy-side`: a spray at random ports |
 * | anything else                           | `ice`        |
 *
 * The hard side's sockets and the spray go only to a public candidate the
 * rendezvous vouches for (it sees the peer at that IP); without one, `ice`:
 * paced checks that stop when the address does not answer.
 *
 * A port mapping (PCP, NAT-PMP, UPnP) on either side's gateway makes that
 * side reachable from anywhere, whatever its NAT does to other flows: then
 * `ice`, its mapped candidate checked first — also between two
 * endpoint-dependent NATs, which nothing else opens.
 *
 * @module
 */

import type { Candidate, NatMapping } from "../protocol/messages.ts";

/** A round's way of punching. */
export type Strategy = "relay-only" | "both-hard" | "ice" | "hard-side" | "easy-side";

/** What a round does: its strategy, the candidates it checks, and the peer's public ones. */
export interface PunchPlan {
  strategy: Strategy;
  /** Checked one after another (the gateway-mapped first, then local, then public). */
  checks: Candidate[];
  /** The peer's vouched public candidates (the hard side's and the spray's target). */
  publics: Candidate[];
}

/**
 * The plan for a round between our NAT `own` and the peer's `peer`, to
 * `candidates`; `ownMapped`: our gateway mapped our socket (the peer checks
 * that address).
 */
export function planPunch(
  own: NatMapping | null,
  peer: NatMapping | null,
  candidates: readonly Candidate[],
  ownMapped = false,
): PunchPlan {
  const mapped = candidates.filter((c) => c.kind === "mapped");
  // Either side mapped: reachable from anywhere, so neither is hard.
  const anyMapped = ownMapped || mapped.length > 0;
  const ownHard = own === "endpoint-dependent" && !anyMapped;
  const peerHard = peer === "endpoint-dependent" && !anyMapped;
  const noUdp = own === "no-udp" || peer === "no-udp";
  const locals = candidates.filter((c) => c.kind === "local");
  const allPublics = candidates.filter((c) => c.kind === "public");
  const publics = allPublics.filter((c) => c.vouched !== false);
  // Two endpoint-dependent IPv4 NATs: only what they do not translate — the
  // locals, and an IPv6 endpoint STUN saw (a NAT66's, or a rewriting firewall's).
  const v6Publics = allPublics.filter((c) => c.ip.includes(":"));
  const checks = noUdp
    ? []
    : ownHard && peerHard
    ? [...locals, ...v6Publics]
    : [...mapped, ...locals, ...allPublics];
  // A side without NAT takes any packet: the other side's checks reach it
  // and its answers go back through whatever mapping they came from, so
  // plain checks do; extra sockets and a spray would only load it.
  const noNat = own === "no-nat" || peer === "no-nat";
  const strategy: Strategy = noUdp
    ? "relay-only"
    : ownHard && peerHard
    ? "both-hard"
    : noNat
    ? "ice"
    : ownHard && publics.length > 0
    ? "hard-side"
    : peerHard && publics.length > 0
    ? "easy-side"
    : "ice";
  return { strategy, checks, publics };
}
