/**
 * The worker's `/metrics` on its health port: valid for `promtool check
 * metrics`, and moved by a connection's bytes over the relay.
 */

import assert from "node:assert/strict";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { startWorker, type Worker } from "../../lib/worker/worker.ts";
import type { PeerConnection } from "../../lib/peer/connection.ts";
import { requireOrSkip, startRendezvous, type TestRendezvous } from "../_helpers.ts";
import { promtoolCheck, promtoolUnavailable, sample } from "../_promtool.ts";

const skip = requireOrSkip(await promtoolUnavailable(), "promtool checks");

function worker(rv: TestRendezvous, id: string, onConnection?: (c: PeerConnection) => void) {
  return startWorker(
    loadWorkerConfig({
      RENDEZVOUS_SERVICE_URL: rv.http,
      WORKER_ID: id,
      IP_ECHO_URL: "off",
      STUN_SERVERS: "off",
      PORT: "0",
      HOST: "127.0.0.1",
    }),
    onConnection ? { onConnection } : {},
  );
}

Deno.test("worker /metrics: paths, transport bytes per path and forwards, valid for promtool", async () => {
  const rv = await startRendezvous();
  const accepted = Promise.withResolvers<PeerConnection>();
  const workers: Worker[] = [];
  try {
    const a = await worker(rv, "ma");
    const b = await worker(rv, "mb", (c) => accepted.resolve(c));
    workers.push(a, b);
    const connection = await a.connect("mb");
    const incoming = await accepted.promise;
    const stream = await connection.openStream();
    const writer = stream.writable.getWriter();
    await writer.write(new Uint8Array(100_000));
    await writer.close();
    const reader = incoming.incomingStreams.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    assert.equal((await new Response(value!.readable).arrayBuffer()).byteLength, 100_000);

    const addr = (await a.healthAddr)!;
    const response = await fetch(`http://127.0.0.1:${addr.port}/metrics`);
    assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const text = await response.text();
    assert.equal(sample(text, "holepunch_worker_rendezvous_connected"), 1);
    assert.equal(sample(text, 'holepunch_worker_peers{path="relay"}'), 1);
    assert.ok(
      sample(text, 'holepunch_worker_transport_bytes_total{path="relay",direction="sent"}')! >
        100_000,
      "the stream went over the relay",
    );
    assert.ok(
      sample(text, 'holepunch_worker_transport_bytes_total{path="relay",direction="received"}')! >
        0,
    );
    assert.equal(
      sample(text, 'holepunch_worker_transport_bytes_total{path="direct",direction="sent"}'),
      0,
    );
    // The connection proved the peer's stand-in; no bound held anything back.
    assert.equal(sample(text, 'holepunch_worker_stand_ins{state="proven"}'), 1);
    assert.equal(sample(text, 'holepunch_worker_stand_ins{state="unproven"}'), 0);
    assert.equal(sample(text, 'holepunch_worker_limited_total{limit="transport_packets"}'), 0);
    assert.equal(sample(text, "holepunch_worker_extra_sockets"), 0);
    if (!skip) assert.equal(await promtoolCheck(text), "", "promtool check metrics");
  } finally {
    for (const w of workers) await w.close();
    await rv.close();
  }
});
