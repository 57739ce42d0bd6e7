/**
 * What happens on a link, as events in order: for the logs, the metrics and
 * tests that assert the order of a punch.
 *
 * @module
 */

/** Why a round ended without a direct path. */
export type FailCause = "timeout" | "no_candidates" | "peer_rerolled" | "mapping_suspect";

/** What happened on a link. */
export type LinkEvent =
  | {
    type: "punch";
    session: string;
    role: string;
    candidates: number;
    strategy: string;
    /** 0 for the introduction's round, then one per reroll. */
    round: number;
  }
  | {
    type: "direct";
    to: string;
    via: number;
    rtt_ms: number | null;
    probes: number;
    /** Set when the peer nominated this path. */
    nominated?: boolean;
    /** The round that found it (0: the introduction's). */
    round?: number;
    /** Why the path moved from another direct one: a clearly faster check, or the old one went quiet. */
    moved?: "faster" | "roamed";
  }
  | {
    type: "punch_failed";
    probes: number;
    round: number;
    strategy: string;
    /** The round ran out, had nothing to check, the peer rerolled first, or another link's failure made us suspect our mapping. */
    cause: FailCause;
    /**
     * A first round from the main socket ran its course without a path (by
     * our timer or, about then, the peer's): that socket's mapping may have
     * moved, for other peers too (see {@linkcode PeerLink.suspectMapping}).
     */
    suspect: boolean;
  }
  /** A fresh socket is open and its candidates went to the peer; or the peer never answered. */
  | { type: "reroll"; round: number; via: number; candidates: number }
  | { type: "reroll_unanswered"; round: number }
  /** Full-TTL checks began: the peer's opening packets were out, or it never said so in time. */
  | { type: "checks"; after: "peer_opened" | "timeout" | "no_opening"; opened_ms: number | null }
  | { type: "path_lost"; to: string }
  | { type: "relay" }
  | { type: "first_relay" }
  | { type: "bad_introduction"; reason: string };
