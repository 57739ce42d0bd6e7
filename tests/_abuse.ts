/**
 * What the abuse tests and `deno task bench:abuse` measure of a rendezvous
 * under attack: its resident memory, and a healthy worker's echo round trips.
 */
import type { TestClient } from "./_helpers.ts";

/** The process's resident memory in MB (Linux). */
export async function rssMb(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

/** Samples the process's RSS every 100 ms until stopped; `stop` resolves with the peak (MB). */
export function peakRss(pid: number): { stop: () => Promise<number> } {
  let peak = 0;
  let running = true;
  const done = (async () => {
    while (running) {
      peak = Math.max(peak, await rssMb(pid).catch(() => 0));
      await new Promise((r) => setTimeout(r, 100));
    }
    return peak;
  })();
  return {
    stop: () => {
      running = false;
      return done;
    },
  };
}

/** A healthy worker's echoes: each answer's round trip (ms), those not answered within 5 s, and anything else it was sent. */
export interface Beats {
  rtts: number[];
  lost: number;
  others: number;
}

/** An echo from `client` every `everyMs` until stopped (the pace of a heartbeat, not a wait). */
export function heartbeat(client: TestClient, everyMs: number): { stop: () => Promise<Beats> } {
  const beats: Beats = { rtts: [], lost: 0, others: 0 };
  let running = true;
  const done = (async () => {
    for (let n = 0; running; n++) {
      const sent = performance.now();
      client.send({ type: "echo_request", payload: `beat ${n}` });
      try {
        let answer = await client.next(5000);
        while (answer.type !== "echo_response") {
          beats.others++;
          answer = await client.next(5000);
        }
        beats.rtts.push(performance.now() - sent);
      } catch {
        beats.lost++;
      }
      await new Promise((r) => setTimeout(r, everyMs));
    }
    return beats;
  })();
  return {
    stop: () => {
      running = false;
      return done;
    },
  };
}
