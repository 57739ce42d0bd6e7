/**
 * The ground the PeerLink tests run two links on: a fake clock, a switch for
 * UDP, and the deliveries in flight (WebCrypto is real and asynchronous, so
 * after each clock step the pending work is let finish before judging).
 */

import { FakeClock } from "./_fake_clock.ts";

export class LinkSim {
  clock = new FakeClock(0);
  /** False: every UDP packet is lost. */
  udpUp = true;
  /** Deliveries started and not finished. */
  pending: Promise<unknown>[] = [];

  /** Lets every pending delivery (and the sends it causes) finish. */
  async settle(): Promise<void> {
    for (let idle = 0; idle < 3;) {
      const batch = this.pending.splice(0);
      await Promise.all(batch);
      // WebCrypto resolves off the microtask queue: give it a turn.
      await new Promise((r) => setTimeout(r, 0));
      idle = batch.length === 0 && this.pending.length === 0 ? idle + 1 : 0;
    }
  }

  /** Moves the clock by `ms` in steps of `step`, settling after each. */
  async tick(ms: number, step = 10): Promise<void> {
    for (let t = 0; t < ms; t += step) {
      await this.clock.tick(Math.min(step, ms - t));
      await this.settle();
    }
  }
}
