import assert from "node:assert/strict";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { Logger } from "../../lib/core/log.ts";
import { forwardedClientIp } from "../../lib/rendezvous/server.ts";
import { MemoryRegistry } from "../../lib/rendezvous/registry.ts";
import { listWorkers, Proc, startRendezvous, TestClient, waitFor, within } from "../_helpers.ts";

Deno.test("rendezvous lists a registered worker with its observed address and reported IP", async () => {
  const rv = await startRendezvous();
  try {
    const client = await TestClient.connect(`${rv.ws}/ws/register/w1`);
    client.send({ type: "register_public_ip", ip: "203.0.113.9" });
    assert.deepEqual(await client.next(), { type: "public_ip_registered", ip: "203.0.113.9" });
    const listing = await listWorkers(rv.http);
    assert.equal(listing.connected_workers_count, 1);
    const entry = listing.workers.w1;
    assert.equal(entry.websocket_observed_ip, "127.0.0.1");
    assert.equal(typeof entry.websocket_observed_port, "number");
    assert.ok((entry.websocket_observed_port as number) > 0);
    assert.equal(entry.http_reported_public_ip, "203.0.113.9");
    assert.equal(entry.websocket_connected, true);
    assert.ok(!Number.isNaN(Date.parse(entry.connected_at as string)));
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous sends 'registered' with the observed address first", async () => {
  const rv = await startRendezvous();
  try {
    const client = new TestClient(`${rv.ws}/ws/register/w1`);
    const first = await client.next();
    assert.equal(first.type, "registered");
    assert.equal(first.worker_id, "w1");
    assert.equal(first.observed_ip, "127.0.0.1");
    assert.equal(first.protocol_version, 1);
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous answers echo_request with the seed's echo_response", async () => {
  const rv = await startRendezvous();
  try {
    const client = await TestClient.connect(`${rv.ws}/ws/register/w1`);
    client.send({ type: "echo_request", payload: { hello: ["world", 1] } });
    assert.deepEqual(await client.next(), {
      type: "echo_response",
      original_payload: { hello: ["world", 1] },
      processed_by_rendezvous: "Rendezvous processed echo for worker w1",
    });
    client.send({ type: "echo_request" });
    assert.equal((await client.next()).original_payload, "");
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous replaces a session when the same id connects again, and keeps the new one", async () => {
  const rv = await startRendezvous();
  try {
    const first = await TestClient.connect(`${rv.ws}/ws/register/dup`);
    first.send({ type: "register_public_ip", ip: "198.51.100.1" });
    await first.next();
    const second = await TestClient.connect(`${rv.ws}/ws/register/dup`);
    const closed = await within(first.closed, 5000, "old session close");
    assert.equal(closed.code, CloseCode.SESSION_REPLACED);
    assert.equal(closed.reason, "New connection from same worker ID");
    // The old session's close must not have removed the new registration.
    const listing = await listWorkers(rv.http);
    assert.equal(listing.connected_workers_count, 1);
    assert.equal(listing.workers.dup.http_reported_public_ip, null, "the new session starts fresh");
    second.send({ type: "echo_request", payload: 1 });
    assert.equal((await second.next()).type, "echo_response");
    await second.close();
    await waitFor(
      async () => (await listWorkers(rv.http)).connected_workers_count === 0,
      "removal",
    );
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous removes a worker when it disconnects", async () => {
  const rv = await startRendezvous();
  try {
    const a = await TestClient.connect(`${rv.ws}/ws/register/a`);
    const b = await TestClient.connect(`${rv.ws}/ws/register/b`);
    assert.equal((await listWorkers(rv.http)).connected_workers_count, 2);
    await a.close();
    const listing = await waitFor(async () => {
      const l = await listWorkers(rv.http);
      return l.connected_workers_count === 1 && l;
    }, "a's removal");
    assert.deepEqual(Object.keys(listing.workers), ["b"]);
    await b.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous drops a worker that stops answering pings", async () => {
  const rv = await startRendezvous({ idleTimeoutSec: 1 });
  try {
    const silent = await rawUpgrade(rv.port, "/ws/register/silent");
    const healthy = await TestClient.connect(`${rv.ws}/ws/register/healthy`);
    await waitFor(async () => (await listWorkers(rv.http)).workers.silent, "silent registered");
    const started = Date.now();
    await waitFor(
      async () => !(await listWorkers(rv.http)).workers.silent,
      "silent worker dropped",
      5000,
    );
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 3000, `dropped after ${elapsed} ms, bound is the 1 s idle timeout`);
    // The healthy client answers pings (Deno's client does) and stays.
    assert.ok((await listWorkers(rv.http)).workers.healthy);
    assert.equal(healthy.socket.readyState, WebSocket.OPEN);
    silent.close();
    await healthy.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous rejects bad handshakes before upgrading", async () => {
  const rv = await startRendezvous({ maxConnections: 1 });
  try {
    const upgrade = { upgrade: "websocket", connection: "Upgrade" };
    const status = async (path: string, headers: Record<string, string> = upgrade) => {
      const response = await fetch(`${rv.http}${path}`, { headers });
      const body = await response.json();
      assert.equal(typeof body.error, "string");
      return response.status;
    };
    assert.equal(await status(`/ws/register/${"x".repeat(129)}`), 400);
    assert.equal(await status("/ws/register/bad%20id"), 400);
    assert.equal(await status("/ws/register/%E0%A4%A"), 400);
    assert.equal(await status("/ws/register/a/b"), 400);
    assert.equal(await status("/ws/register/"), 400);
    assert.equal(await status("/ws/register/ok", {}), 426);
    // Over the cap.
    const held = await TestClient.connect(`${rv.ws}/ws/register/held`);
    assert.equal(await status("/ws/register/ok"), 503);
    const refused = new TestClient(`${rv.ws}/ws/register/another`);
    await assert.rejects(refused.opened);
    await held.close();
    assert.equal(await status("/nope", {}), 404);
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous requires the token for workers and the list when one is configured", async () => {
  const rv = await startRendezvous({ token: "s3cret" });
  try {
    const upgrade = { upgrade: "websocket", connection: "Upgrade" };
    for (const authorization of [undefined, "Bearer wrong", "Basic s3cret", "Bearer s3cre"]) {
      const headers: Record<string, string> = { ...upgrade };
      if (authorization) headers.authorization = authorization;
      const response = await fetch(`${rv.http}/ws/register/w1`, { headers });
      await response.body?.cancel();
      assert.equal(response.status, 401, String(authorization));
      assert.equal(response.headers.get("www-authenticate"), 'Bearer realm="holepunch"');
    }
    const list = await fetch(`${rv.http}/debug/list_workers`);
    await list.body?.cancel();
    assert.equal(list.status, 401);
    const auth = { authorization: "Bearer s3cret" };
    const client = await TestClient.connect(`${rv.ws}/ws/register/w1`, auth);
    assert.equal((await listWorkers(rv.http, auth)).connected_workers_count, 1);
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous without a token lets anyone register and list", async () => {
  const rv = await startRendezvous();
  try {
    const client = await TestClient.connect(`${rv.ws}/ws/register/w1`, {
      authorization: "Bearer ignored",
    });
    assert.equal((await listWorkers(rv.http)).connected_workers_count, 1);
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous ignores X-Forwarded-For unless told to trust the proxy", async () => {
  const headers = { "x-forwarded-for": "198.51.100.23" };
  const plain = await startRendezvous();
  try {
    const client = await TestClient.connect(`${plain.ws}/ws/register/w1`, headers);
    const entry = (await listWorkers(plain.http)).workers.w1;
    assert.equal(entry.websocket_observed_ip, "127.0.0.1");
    assert.notEqual(entry.websocket_observed_port, null);
    await client.close();
  } finally {
    await plain.close();
  }
  const trusting = await startRendezvous({ trustProxyHops: 1 });
  try {
    const client = await TestClient.connect(`${trusting.ws}/ws/register/w1`, {
      "x-forwarded-for": "6.6.6.6, 198.51.100.23",
    });
    const entry = (await listWorkers(trusting.http)).workers.w1;
    assert.equal(entry.websocket_observed_ip, "198.51.100.23", "right-most entry: the proxy's");
    assert.equal(entry.websocket_observed_port, null, "the proxy hides the port");
    await client.close();
  } finally {
    await trusting.close();
  }
});

Deno.test("forwardedClientIp() trusts exactly the configured number of hops", () => {
  assert.equal(forwardedClientIp("1.1.1.1, 2.2.2.2, 3.3.3.3", 1), "3.3.3.3");
  assert.equal(forwardedClientIp("1.1.1.1, 2.2.2.2, 3.3.3.3", 2), "2.2.2.2");
  assert.equal(forwardedClientIp("1.1.1.1", 2), null, "fewer entries than hops");
  assert.equal(forwardedClientIp(null, 1), null);
  assert.equal(forwardedClientIp("unknown", 1), null);
  assert.equal(forwardedClientIp("[2001:db8::1]:443", 1), "2001:db8::1");
  assert.equal(forwardedClientIp("192.0.2.1:5000", 1), "192.0.2.1");
  assert.equal(forwardedClientIp("::ffff:192.0.2.1", 1), "192.0.2.1");
  assert.equal(forwardedClientIp("1.1.1.1", 0), null);
});

Deno.test("rendezvous answers malformed messages with errors and the session goes on", async () => {
  const rv = await startRendezvous();
  try {
    const bad = await TestClient.connect(`${rv.ws}/ws/register/bad`);
    const good = await TestClient.connect(`${rv.ws}/ws/register/good`);
    const cases: [string, string][] = [
      ["{not json", "invalid_json"],
      ["[]", "invalid_message"],
      ['{"type":"nope"}', "unknown_type"],
      ['{"type":"register_public_ip","ip":12}', "invalid_message"],
      ['{"type":"register_public_ip","ip":"1.2.3.999"}', "invalid_ip"],
      ['{"type":"register_public_ip"}', "invalid_message"],
    ];
    for (const [text, code] of cases) {
      bad.send(text);
      const reply = await bad.next();
      assert.equal(reply.type, "error", text);
      assert.equal(reply.code, code, text);
      assert.equal(typeof reply.message, "string");
    }
    // A payload nested too deeply to re-encode is refused, not crashed on.
    bad.send(`{"type":"echo_request","payload":${"[".repeat(20_000)}${"]".repeat(20_000)}}`);
    const deep = await bad.next();
    assert.equal(deep.type, "error");
    // Still registered, still answering, nothing stored from the bad messages.
    bad.send({ type: "echo_request", payload: "still here" });
    assert.equal((await bad.next()).original_payload, "still here");
    const listing = await listWorkers(rv.http);
    assert.equal(listing.workers.bad.http_reported_public_ip, null);
    good.send({ type: "echo_request", payload: "fine" });
    assert.equal((await good.next()).original_payload, "fine");
    await bad.close();
    await good.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous closes binary, oversize and flooding sessions with defined codes, sparing others", async () => {
  const lines: string[] = [];
  const rv = await startRendezvous({
    maxMessageBytes: 1024,
    messageRatePerSec: 5,
    messageBurst: 10,
    logger: new Logger({ sink: (l) => lines.push(l) }),
  });
  try {
    const good = await TestClient.connect(`${rv.ws}/ws/register/good`);

    const binary = await TestClient.connect(`${rv.ws}/ws/register/binary`);
    binary.socket.send(new Uint8Array([1, 2, 3]));
    assert.equal((await within(binary.closed, 5000, "binary close")).code, 1003);

    const big = await TestClient.connect(`${rv.ws}/ws/register/big`);
    big.send({ type: "echo_request", payload: "é".repeat(600) }); // 1200+ UTF-8 bytes
    assert.equal((await within(big.closed, 5000, "oversize close")).code, 1009);

    // One message over the burst: the close frame reaches the client.
    const flood = await TestClient.connect(`${rv.ws}/ws/register/flood`);
    for (let i = 0; i < 11; i++) flood.send({ type: "echo_request", payload: i });
    assert.equal((await within(flood.closed, 5000, "flood close")).code, 1008);

    // A client that keeps sending after the close frame may only see the
    // reset (TCP drops unread data), but it is cut off all the same.
    const torrent = await TestClient.connect(`${rv.ws}/ws/register/torrent`);
    for (let i = 0; i < 500; i++) torrent.send({ type: "echo_request", payload: i });
    await within(torrent.closed, 5000, "torrent close");
    assert.ok(lines.some((l) => l.includes("exceeded the message rate") && l.includes("torrent")));

    await waitFor(async () => {
      const l = await listWorkers(rv.http);
      return l.connected_workers_count === 1 && l.workers.good;
    }, "only the good worker left");
    good.send({ type: "echo_request", payload: "ok" });
    assert.equal((await good.next()).original_payload, "ok");
    await good.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous serves /, /health and /ready through its lifecycle", async () => {
  const rv = await startRendezvous({ name: "holepunch-rendezvous", version: "9.9.9" });
  try {
    const root = await (await fetch(rv.http)).json();
    assert.match(root.message, /\/ws\/register\/\{worker_id\}/);
    assert.equal(root.name, "holepunch-rendezvous");
    assert.equal(root.version, "9.9.9");
    assert.deepEqual(await (await fetch(`${rv.http}/health`)).json(), { status: "ok" });
    const ready = await fetch(`${rv.http}/ready`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
    const post = await fetch(`${rv.http}/health`, { method: "POST" });
    await post.body?.cancel();
    assert.equal(post.status, 405);
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous close() gives notice, sends 1001 to every worker, then refuses with 503", async () => {
  const lines: string[] = [];
  const rv = await startRendezvous({ logger: new Logger({ sink: (l) => lines.push(l) }) });
  let closedServer = false;
  try {
    const a = await TestClient.connect(`${rv.ws}/ws/register/a`);
    const b = await TestClient.connect(`${rv.ws}/ws/register/b`);
    await rv.rendezvous.close(2000);
    const notice = { type: "going_away", reason: "rendezvous shutting down" };
    assert.deepEqual(await a.next(), notice);
    assert.deepEqual(await b.next(), notice);
    assert.equal((await within(a.closed, 2000, "a closed")).code, 1001);
    assert.equal((await within(b.closed, 2000, "b closed")).code, 1001);
    assert.equal(rv.rendezvous.state, "closed");
    assert.equal(rv.rendezvous.connectionCount, 0);
    const ready = await fetch(`${rv.http}/ready`);
    assert.equal(ready.status, 503);
    await ready.body?.cancel();
    const refused = await fetch(`${rv.http}/ws/register/c`, {
      headers: { upgrade: "websocket", connection: "Upgrade" },
    });
    assert.equal(refused.status, 503);
    await refused.body?.cancel();
    await rv.close(); // idempotent
    closedServer = true;
    assert.ok(lines.some((l) => JSON.parse(l).message === "worker de-registered"));
  } finally {
    if (!closedServer) await rv.close();
  }
});

Deno.test("rendezvous logs the seed's Part 3 events with totals", async () => {
  const lines: Record<string, unknown>[] = [];
  const rv = await startRendezvous({
    logger: new Logger({ sink: (l) => lines.push(JSON.parse(l)) }),
  });
  try {
    const client = await TestClient.connect(`${rv.ws}/ws/register/w1`);
    client.send({ type: "register_public_ip", ip: "203.0.113.5" });
    await client.next();
    await client.close();
    await waitFor(() => lines.some((l) => l.message === "worker de-registered"), "de-registered");
    const byMessage = (m: string) => lines.find((l) => l.message === m);
    assert.equal(byMessage("worker connecting")?.worker_id, "w1");
    assert.equal(byMessage("worker registered")?.total, 1);
    assert.equal(byMessage("worker reported public ip")?.http_reported_public_ip, "203.0.113.5");
    assert.equal(byMessage("worker disconnected")?.code, 1000);
    assert.equal(byMessage("worker de-registered")?.total, 0);
    assert.ok(lines.every((l) => l.severity && l.time), "every line has severity and time");
  } finally {
    await rv.close();
  }
});

/** Opens a WebSocket by hand and then never reads: a peer that went silent. */
async function rawUpgrade(port: number, path: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  await conn.write(
    new TextEncoder().encode(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    ),
  );
  const buffer = new Uint8Array(1024);
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const n = await conn.read(buffer);
    if (n === null) throw new Error("closed during handshake");
    head += new TextDecoder().decode(buffer.subarray(0, n));
  }
  assert.match(head, /^HTTP\/1.1 101/);
  return conn;
}

Deno.test("rendezvous stores and lists a worker's UDP endpoint beside the seed's fields", async () => {
  const rv = await startRendezvous();
  try {
    const client = await TestClient.connect(`${rv.ws}/ws/register/udp`);
    const seedOnly = await TestClient.connect(`${rv.ws}/ws/register/seedlike`);
    client.send({
      type: "register_udp_endpoint",
      public: { ip: "203.0.113.9", port: 40000 },
      local: [{ ip: "10.0.0.5", port: 40000 }],
      nat: { mapping: "endpoint-independent" },
    });
    assert.deepEqual(await client.next(), {
      type: "udp_endpoint_registered",
      public: { ip: "203.0.113.9", port: 40000 },
      mapping: "endpoint-independent",
    });
    client.send({
      type: "register_udp_endpoint",
      public: { ip: "x", port: 1 },
      nat: { mapping: "no-nat" },
    });
    assert.equal((await client.next()).code, "invalid_ip");
    const listing = await listWorkers(rv.http);
    const entry = listing.workers.udp;
    assert.deepEqual(entry.udp_endpoint?.public, { ip: "203.0.113.9", port: 40000 });
    assert.deepEqual(entry.udp_endpoint?.local, [{ ip: "10.0.0.5", port: 40000 }]);
    assert.equal(entry.udp_endpoint?.nat_mapping, "endpoint-independent");
    assert.equal(
      typeof entry.websocket_observed_port,
      "number",
      "the seed's fields are still there",
    );
    assert.equal(listing.workers.seedlike.udp_endpoint, null, "a seed worker never reports one");
    await client.close();
    await seedOnly.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous /debug/stats counts sessions and registrations, behind the token", async () => {
  const rv = await startRendezvous({ token: "t" });
  try {
    const auth = { authorization: "Bearer t" };
    const client = await TestClient.connect(`${rv.ws}/ws/register/w1`, auth);
    const stats = await (await fetch(`${rv.http}/debug/stats`, { headers: auth })).json();
    assert.equal(stats.state, "running");
    assert.equal(stats.sessions, 1);
    assert.equal(stats.registered, 1);
    assert.ok(stats.memory.rss > 0);
    const open = await fetch(`${rv.http}/debug/stats`);
    await open.body?.cancel();
    assert.equal(open.status, 401);
    await client.close();
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous streams a large listing as one valid JSON document", async () => {
  const registry = new MemoryRegistry();
  for (let i = 0; i < 2500; i++) {
    await registry.put({
      worker_id: `w${i}`,
      session_id: `s${i}`,
      observed_ip: "192.0.2.1",
      observed_port: i,
      http_reported_public_ip: null,
      connected_at: 0,
      udp_endpoint: null,
      group: "default",
      peer_paths: {},
      key: null,
      key_fingerprint: null,
      transport: null,
    });
  }
  const rv = await startRendezvous({ registry });
  try {
    const listing = await listWorkers(rv.http);
    assert.equal(listing.connected_workers_count, 2500);
    assert.equal(Object.keys(listing.workers).length, 2500);
    assert.equal(listing.workers.w2499.websocket_observed_port, 2499);
    assert.equal(listing.workers.w0.connected_at, "1970-01-01T00:00:00.000Z");
  } finally {
    await rv.close();
  }
});

Deno.test("rendezvous close() stays clean for workers that were sending when it began", async () => {
  // Deno's server drops a closing connection outright (no close frame, code
  // 0 on both sides) when a frame crosses its close frame. Workers that go
  // quiet on the notice all get the clean 1001, however busy they were. The
  // clients run in their own process, so their frames really cross.
  const rv = await startRendezvous({ messageRatePerSec: 100_000, messageBurst: 100_000 });
  const clients = Proc.deno(
    ["run", "--allow-net", "--allow-env", "tests/_busy_clients.ts", rv.ws, "40"],
    { HONOR_NOTICE: "1" },
  );
  try {
    await clients.waitForLog("streaming");
    await rv.rendezvous.close(3000);
    const status = await within(clients.status, 5000, "clients exit");
    assert.equal(status.code, 0, clients.dump());
    assert.deepEqual(JSON.parse(clients.stdout), Array(40).fill(1001));
  } finally {
    await clients.stop();
    await rv.close();
  }
});
