import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { allowedBy, parseExposes, parseForwards } from "../../lib/worker/forward.ts";
import { startWorker } from "../../lib/worker/worker.ts";
import { startRendezvous, within } from "../_helpers.ts";

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function readToEnd(conn: Deno.TcpConn): Promise<Uint8Array<ArrayBuffer>> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(65536);
  let total = 0;
  while (true) {
    const n = await conn.read(buffer);
    if (n === null) break;
    chunks.push(buffer.slice(0, n));
    total += n;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** A TCP service that reads to EOF (the client's half-close), then answers with the SHA-256 of what it read. */
function hashService() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const done = (async () => {
    for await (const conn of listener) {
      (async () => {
        const data = await readToEnd(conn);
        await conn.write(new TextEncoder().encode(`${data.length} ${await hex(data)}`));
        conn.close();
      })();
    }
  })().catch(() => {});
  return { port: (listener.addr as Deno.NetAddr).port, close: () => (listener.close(), done) };
}

Deno.test("parseForwards() and parseExposes() read the documented forms and name bad entries", () => {
  assert.deepEqual(parseForwards("15432:db-1:5432, 0.0.0.0:18080:web-2:8080"), [
    { hostname: "127.0.0.1", port: 15432, peerId: "db-1", peerPort: 5432 },
    { hostname: "0.0.0.0", port: 18080, peerId: "web-2", peerPort: 8080 },
  ]);
  assert.deepEqual(parseExposes("8080, 5432,8080"), [
    { port: 8080, allow: null },
    { port: 5432, allow: null },
  ]);
  assert.deepEqual(parseExposes("5432@db-client-*|report-1,8080"), [
    { port: 5432, allow: ["db-client-*", "report-1"] },
    { port: 8080, allow: null },
  ]);
  assert.throws(() => parseExposes("5432@a b"), /not a peer id or a glob/);
  assert.throws(() => parseExposes("5432@a,5432@b"), /exposed twice, to different peers/);
  const spec = parseExposes("1@db-?|x.y")[0];
  assert.deepEqual(
    ["db-1", "db-12", "x.y", "xzy", "db-"].map((id) => allowedBy(spec, id)),
    [true, false, true, false, false],
  );
  for (const bad of ["15432:db-1", "0:db:1", "1:db:70000", "1:bad id:2", "1:a:2,1:b:3"]) {
    assert.throws(() => parseForwards(bad), Error, bad);
  }
  assert.throws(() => parseExposes("http"), /not a TCP port/);
  assert.throws(() => loadWorkerConfig({ RENDEZVOUS_SERVICE_URL: "http://x", PEER_FORWARD: "x" }), {
    variable: "PEER_FORWARD",
  });
});

Deno.test("PEER_FORWARD carries a TCP connection to a PEER_EXPOSE port: bytes intact, half-close kept, refusals explained", async () => {
  const rv = await startRendezvous();
  const service = hashService();
  const forwardPort = freePort();
  const refusedPort = freePort();
  const nobodyPort = freePort();
  const logs: Record<string, unknown>[] = [];
  const logger = new Logger({ sink: (l) => logs.push(JSON.parse(l)) });
  const base = {
    RENDEZVOUS_SERVICE_URL: rv.http,
    IP_ECHO_URL: "off",
    STUN_SERVERS: "off",
  };
  const b = await startWorker(
    loadWorkerConfig({ ...base, WORKER_ID: "b", PEER_EXPOSE: String(service.port) }),
    { health: false, logger },
  );
  const a = await startWorker(
    loadWorkerConfig({
      ...base,
      WORKER_ID: "a",
      PEER_FORWARD: `${forwardPort}:b:${service.port},${refusedPort}:b:${
        service.port + 1
      },${nobodyPort}:nobody:80`,
      PEER_FORWARD_WAIT_SEC: "0.3",
    }),
    { health: false, logger },
  );
  try {
    const data = crypto.getRandomValues(new Uint8Array(60_000));
    const payload = new Uint8Array(5 * data.length);
    for (let i = 0; i < 5; i++) payload.set(data, i * data.length);
    const client = await Deno.connect({ hostname: "127.0.0.1", port: forwardPort });
    let written = 0;
    while (written < payload.length) written += await client.write(payload.subarray(written));
    await client.closeWrite(); // the service answers only after our EOF
    const answer = new TextDecoder().decode(
      await within(readToEnd(client), 20_000, "the answer").catch((e) => {
        console.error(logs.map((l) => JSON.stringify(l)).join("\n"));
        throw e;
      }),
    );
    client.close();
    assert.equal(answer, `${payload.length} ${await hex(payload)}`);

    for (const port of [refusedPort, nobodyPort]) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      assert.equal((await within(readToEnd(conn), 10_000, "the refusal")).length, 0);
      conn.close();
    }
    const refusals = logs.filter((l) => l.message === "forward refused").map((l) =>
      String(l.reason)
    );
    assert.ok(
      refusals.some((r) => /refused port \d+: port \d+ is not exposed/.test(r)),
      refusals.join("\n"),
    );
    assert.ok(
      refusals.some((r) => /nobody is not reachable within 300 ms/.test(r)),
      refusals.join("\n"),
    );
    assert.ok(logs.some((l) => l.message === "forward request refused: port not exposed"));

    const status = a.status();
    const forward = status.forwards[`127.0.0.1:${forwardPort}:b:${service.port}`];
    assert.equal(forward.connections, 1);
    assert.equal(forward.bytes_out, payload.length);
    assert.equal(forward.bytes_in, answer.length);
    const exposed = b.status().exposes[String(service.port)];
    assert.equal(exposed.connections, 1);
    assert.equal(exposed.bytes_in, payload.length);
  } finally {
    await a.close();
    await b.close();
    await service.close();
    await rv.close();
  }
});
