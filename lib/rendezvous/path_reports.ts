/**
 * Which of this instance's sessions reported a path to which peer, so that
 * a peer leaving the fleet can be pruned from every record that names it
 * (the listing's `peer_paths` and the dashboard's path matrix stay true, and
 * a long-lived worker never runs into `MAX_PEER_PATHS` with departed peers).
 *
 * Pure bookkeeping: the server does the registry writes.
 *
 * @module
 */

/** Peer paths kept per worker in the listing (reports about more peers are ignored). */
export const MAX_PEER_PATHS = 256;

/** An index of reporters (sessions, any object) by the peers they reported. */
export class PathReports<S> {
  #byPeer = new Map<string, Set<S>>();
  #byReporter = new Map<S, Set<string>>();

  /** `reporter` holds an entry about `peerId` now. */
  reported(reporter: S, peerId: string): void {
    let reporters = this.#byPeer.get(peerId);
    if (!reporters) this.#byPeer.set(peerId, reporters = new Set());
    reporters.add(reporter);
    let peers = this.#byReporter.get(reporter);
    if (!peers) this.#byReporter.set(reporter, peers = new Set());
    peers.add(peerId);
  }

  /** `peerId` left the fleet: the reporters whose records name it (forgotten here). */
  left(peerId: string): S[] {
    const reporters = this.#byPeer.get(peerId);
    if (!reporters) return [];
    this.#byPeer.delete(peerId);
    for (const reporter of reporters) {
      const peers = this.#byReporter.get(reporter);
      peers?.delete(peerId);
      if (peers?.size === 0) this.#byReporter.delete(reporter);
    }
    return [...reporters];
  }

  /** `reporter`'s session ended: its record went with it. */
  forget(reporter: S): void {
    const peers = this.#byReporter.get(reporter);
    if (!peers) return;
    this.#byReporter.delete(reporter);
    for (const peerId of peers) {
      const reporters = this.#byPeer.get(peerId);
      reporters?.delete(reporter);
      if (reporters?.size === 0) this.#byPeer.delete(peerId);
    }
  }

  /** Peers with at least one reporter (for tests and stats). */
  get size(): number {
    return this.#byPeer.size;
  }
}
