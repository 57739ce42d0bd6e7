/**
 * Every timing and bound of punching and path upkeep, with the reason and
 * the lab figure behind each value.
 *
 * @module
 */

/**
 * The TTLs of a punch's opening stages: 2 (past the first router, our NAT)
 * up to `max` (past a carrier NAT behind it, with 3).
 */
export function openingLadder(max: number): number[] {
  const top = Math.max(1, Math.min(255, Math.floor(max)));
  return Array.from({ length: Math.max(1, top - 1) }, (_, i) => Math.min(top, i + 2));
}

/** Every timing and bound of the link, with the reason for each. */
export const LINK_TIMING = {
  /**
   * Opening packets (low TTL, see `PeerLinkDeps.sendOpening`) go first;
   * each side says so through the relay (`opened`) once its own are out,
   * and full-TTL checks and sprays toward a peer wait for its `opened`, so
   * they reach its NAT only after its mapping toward us exists, whatever
   * the load or the timing error between the two. A peer that sends no
   * `opened` (an older version) is probed after this long anyway.
   */
  openedWaitMs: 2000,
  /** RFC 8445 §14.2's Ta: one check every 50 ms. */
  probeIntervalMs: 50,
  /** 10 s of checks per punch. */
  maxProbes: 200,
  /** After the first working path, listen this long for a faster one. */
  settleMs: 300,
  /**
   * A round whose time is up while the peer's checks are reaching one of its
   * sockets (in the last this long) gets this long once more: our answers
   * are on their way, and on a loaded machine a round trip can pass 250 ms.
   * Without it the hard side closed the very socket the easy side had just
   * found, and the easy side held a dead path (seen in the lab under load).
   */
  answerGraceMs: 1000,
  /**
   * Sockets the endpoint-dependent side opens for a round, as the
   * worker-wide pool allows (`EXTRA_SOCKETS`: a round waiting for some
   * takes them as they free, each hard round). The easy side's 5,000-probe
   * spray then misses 120 of them with odds e^-9.3 (0.01 %), and its first
   * hit comes after ~540 probes (1.1 s) on average.
   */
  hardSockets: 128,
  /** Each hard-side socket probes once per round... */
  hardRoundMs: 1000,
  /** ...for this many rounds. */
  hardRounds: 15,
  /** The easy side sprays one random-port probe this often... */
  sprayIntervalMs: 2,
  /**
   * ...at most this many (10 s; each is a conntrack entry in our NAT, so the
   * count stays bounded however fast). Every 5 ms put the p95 to direct at
   * 5.1–5.4 s in the lab; every 3 ms, 3.0–3.6 s; every 2 ms, see docs/performance.md.
   */
  sprayMax: 5000,
  /** Ports a NAT may pick (Linux: 1024–65535). */
  sprayPortMin: 1024,
  /** Keepalive on the direct path: well under Cloud NAT's 30 s UDP timeout. */
  keepaliveMs: 5000,
  /** A keepalive unanswered this long means the path is gone. */
  lostAfterMs: 3000,
  /**
   * A direct path that answers stays, whatever address the peer's frames
   * come from (it may send by another of its working paths: those frames
   * are taken all the same). Only a path unheard this long — a keepalive
   * round and its grace, as long as losing it takes — lets an authenticated
   * frame from elsewhere move it (the peer's NAT rebound). Two hosts with
   * several working addresses flapped between them every few seconds, and
   * a QUIC handshake took 13.9 s, when any such frame moved the path.
   */
  roamQuietMs: 8000,
  /**
   * Rounds after the introduction's, each between fresh sockets (hyperdht
   * rerolls up to 3 times too); then the introduction is asked for again.
   */
  rerolls: 3,
  /**
   * While a reroll remains, a round of plain checks gives up this long after
   * it began (EIM ↔ EIM: p95 0.3 s in the lab, so a tenth of these rerolls
   * would be needless)...
   */
  rerollIceMs: 3000,
  /**
   * ...and a birthday round (one side endpoint-dependent: p95 3.0 s, the
   * slowest 3.7 s in the lab) this long. Shorter moves a pair whose
   * mapping moved sooner, and rerolls more pairs that were about to succeed.
   */
  rerollBirthdayMs: 5000,
  /** The peer's `reroll` must come this long after ours, else the link stays on the relay. */
  rerollWaitMs: 3000,
  /** After a failed punch or a lost path, ask for a new introduction this often. */
  upgradeRetryMs: 30_000,
  /** Retransmission timeout on the direct path: at least this, else 2×RTT. */
  rtoMinMs: 200,
  /** The relay is a TCP stream; resend only after long silence (or a path change). */
  relayRtoMs: 3000,
} as const;
