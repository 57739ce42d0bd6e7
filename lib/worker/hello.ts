/**
 * Small hello messages between peers, for the demo and the NAT lab: each
 * carries its sender, a counter and the send time, so the receiver can log
 * the path it came on and how long it took (clocks of one machine).
 *
 * @module
 */

import type { PeerManager } from "../peer/manager.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Sends hello number `n` to `peerId`. */
export function sendHello(peers: PeerManager, peerId: string, from: string, n: number): void {
  const payload = encoder.encode(JSON.stringify({ hello: n, from, sent_at: Date.now() }));
  try {
    peers.send(peerId, payload);
  } catch {
    // Window full: the peer is far behind; skip this one.
  }
}

/** Sends a hello to every known peer every `intervalMs`; returns the interval id. */
export function startHello(
  peers: PeerManager,
  from: string,
  intervalMs: number,
): ReturnType<typeof setInterval> {
  let n = 0;
  return setInterval(() => {
    n++;
    for (const peer of peers.peers) sendHello(peers, peer.worker_id, from, n);
  }, intervalMs);
}

/** Fields for a log line about a received payload. */
export function describeHello(payload: Uint8Array): Record<string, unknown> {
  try {
    const value = JSON.parse(decoder.decode(payload));
    if (typeof value?.hello === "number" && typeof value.sent_at === "number") {
      return { hello: value.hello, latency_ms: Date.now() - value.sent_at, bytes: payload.length };
    }
  } catch {
    // Not a hello.
  }
  return { bytes: payload.length };
}
