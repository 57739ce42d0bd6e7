import assert from "node:assert/strict";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { startWorker, type Worker } from "../../lib/worker/worker.ts";
import type { PeerConnection } from "../../lib/peer/connection.ts";
import { StunServer } from "../../lib/stun/server.ts";
import { formatAddress } from "../../lib/stun/client.ts";
import { startRendezvous, type TestRendezvous, within } from "../_helpers.ts";

async function pair(rv: TestRendezvous, env: Record<string, string> = {}) {
  const accepted = Promise.withResolvers<PeerConnection>();
  const make = (id: string) =>
    startWorker(
      loadWorkerConfig({
        RENDEZVOUS_SERVICE_URL: rv.http,
        WORKER_ID: id,
        IP_ECHO_URL: "off",
        STUN_SERVERS: "off",
        UDP_HOST: "127.0.0.1",
        ...env,
      }),
      { health: false, onConnection: (c) => accepted.resolve(c) },
    );
  const a = await make("a");
  const b = await make("b");
  return { a, b, accepted: accepted.promise };
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of stream) {
    chunks.push(chunk);
    total += chunk.length;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** Sends `size` random bytes on a new stream from `from` and returns what `to` received. */
async function transfer(from: PeerConnection, to: PeerConnection, size: number) {
  const data = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)));
  const stream = await from.openStream();
  const writing = (async () => {
    const writer = stream.writable.getWriter();
    for (let sent = 0; sent < size; sent += data.length) {
      await writer.write(data.subarray(0, Math.min(data.length, size - sent)));
    }
    await writer.close();
  })();
  const reader = to.incomingStreams.getReader();
  const { value: incoming } = await reader.read();
  reader.releaseLock();
  const received = await readAll(incoming!.readable);
  await writing;
  return { data, received };
}

async function closeAll(rv: TestRendezvous, ...workers: Worker[]) {
  for (const w of workers) await w.close();
  await rv.close();
}

Deno.test("two workers connect over the relay: an authenticated stream moves bytes intact", async () => {
  const rv = await startRendezvous();
  const { a, b, accepted } = await pair(rv);
  try {
    const ab = await within(a.connect("b"), 15_000, "a → b");
    const ba = await within(accepted, 15_000, "b accepts");
    assert.equal(ab.peerId, "b");
    assert.equal(ba.peerId, "a");
    assert.equal(ab.dialedBy, "us");
    assert.equal(ba.dialedBy, "peer");
    assert.equal(ab.path, "relay");
    const size = 3 * 1024 * 1024 + 17;
    const { data, received } = await transfer(ab, ba, size);
    assert.equal(received.length, size);
    for (let i = 0; i < size; i += data.length) {
      assert.deepEqual(
        received.subarray(i, Math.min(size, i + data.length)),
        data.subarray(0, Math.min(data.length, size - i)),
      );
    }
    // connect() from the other side returns the same connection.
    assert.equal(await b.connect("a"), ba);
  } finally {
    await closeAll(rv, a, b);
  }
});

Deno.test("two workers connect directly once punched, and datagrams flow", async () => {
  const rv = await startRendezvous();
  const stunA = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const stunB = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const servers = [stunA, stunB].map((s) => formatAddress(s.addresses[0])).join(",");
  const { a, b, accepted } = await pair(rv, { STUN_SERVERS: servers });
  try {
    const ab = await within(a.connect("b"), 15_000, "a → b");
    const ba = await within(accepted, 15_000, "b accepts");
    const direct = Promise.withResolvers<void>();
    ab.addEventListener("path", (e) => {
      if ((e as CustomEvent).detail.path === "direct") direct.resolve();
    });
    if (ab.path === "relay") await within(direct.promise, 10_000, "the direct path");
    const { received } = await transfer(ab, ba, 1024 * 1024);
    assert.equal(received.length, 1024 * 1024);
    await ab.sendDatagram(new TextEncoder().encode("ping"));
    assert.equal(
      new TextDecoder().decode(await within(ba.readDatagram(), 5000, "datagram")),
      "ping",
    );
  } finally {
    await closeAll(rv, a, b);
    await stunA.close();
    await stunB.close();
  }
});
