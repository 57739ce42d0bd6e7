/**
 * A real worker process: a TCP connection to its `PEER_FORWARD` port in the
 * first milliseconds after the port opens (before the rest of the worker
 * exists) waits and is carried, as docs/transport.md promises, never refused.
 */

import assert from "node:assert/strict";
import { spawnRendezvous, spawnWorker, waitFor, within } from "../_helpers.ts";
import { freeTcpPort } from "../_redis.ts";

/** A TCP service that answers "pong <what it read>" once the client half-closes. */
function pongService() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const done = (async () => {
    for await (const conn of listener) {
      (async () => {
        const text = new TextDecoder().decode(await readAll(conn));
        await conn.write(new TextEncoder().encode(`pong ${text}`));
        conn.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  return { port: (listener.addr as Deno.NetAddr).port, close: () => (listener.close(), done) };
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(4096);
  while (true) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) out.set(c, (at += c.length) - c.length);
  return out;
}

/** Connects as soon as the port accepts: one attempt after another, no pause, until `deadline`. */
async function connectAsSoonAsOpen(port: number, deadline: number): Promise<Deno.TcpConn> {
  while (true) {
    try {
      return await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (error) {
      if (!(error instanceof Deno.errors.ConnectionRefused) || Date.now() > deadline) throw error;
    }
  }
}

Deno.test("a connection to a PEER_FORWARD port the moment it opens waits for the worker and is carried", async () => {
  const rv = await spawnRendezvous();
  const service = pongService();
  const exposer = spawnWorker(rv.http, {
    WORKER_ID: "start-b",
    PEER_EXPOSE: String(service.port),
    PEER_HELLO_SEC: "0",
  });
  const forwardPort = freeTcpPort();
  let forwarder: ReturnType<typeof spawnWorker> | undefined;
  try {
    await exposer.waitForLog("registered with rendezvous");
    forwarder = spawnWorker(rv.http, {
      WORKER_ID: "start-a",
      PEER_FORWARD: `${forwardPort}:start-b:${service.port}`,
      PEER_HELLO_SEC: "0",
    });
    const conn = await connectAsSoonAsOpen(forwardPort, Date.now() + 20_000);
    const connectedAt = Date.now();
    await conn.write(new TextEncoder().encode("first"));
    await conn.closeWrite();
    const answer = new TextDecoder().decode(await within(readAll(conn), 15_000, "the answer"));
    conn.close();
    assert.equal(
      answer,
      "pong first",
      `refused instead of carried:\n${
        forwarder.lines.filter((l) => l.message === "forward refused").map((l) => l.reason)
      }`,
    );
    console.log(`first forwarded answer ${Date.now() - connectedAt} ms after the port opened`);
    await waitFor(
      () => forwarder!.lines.some((l) => l.message === "registered with rendezvous"),
      "registered",
    );
    assert.ok(!forwarder.lines.some((l) => l.message === "forward refused"));
  } finally {
    await forwarder?.stop("SIGTERM");
    await exposer.stop("SIGTERM");
    await rv.proc.stop("SIGTERM");
    await service.close();
  }
});
