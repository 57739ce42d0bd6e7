import assert from "node:assert/strict";
import { Backoff } from "../../lib/core/backoff.ts";
import {
  type ClientEvent,
  RendezvousClient,
  type RendezvousClientOptions,
  type WebSocketLike,
} from "../../lib/worker/client.ts";
import { FakeClock, flush } from "../_fake_clock.ts";
import { Logger } from "../../lib/core/log.ts";
import {
  Identity,
  newNonce,
  registrationPayload,
  verifySignature,
} from "../../lib/protocol/identity.ts";

/** A WebSocket the test plays the server for. */
class FakeSocket extends EventTarget implements WebSocketLike {
  readyState: number = WebSocket.CONNECTING;
  readonly sent: Record<string, unknown>[] = [];
  closedWith?: { code?: number; reason?: string };
  #sending?: PromiseWithResolvers<void>;
  constructor(readonly url: string, readonly headers: Record<string, string>) {
    super();
  }
  send(data: string): void {
    if (this.readyState !== WebSocket.OPEN) throw new Error("not open");
    this.sent.push(JSON.parse(data));
    this.#sending?.resolve();
  }
  /** Resolves at the next `send` (for answers that take real async work). */
  nextSend(): Promise<void> {
    this.#sending = Promise.withResolvers<void>();
    return this.#sending.promise;
  }
  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = WebSocket.CLOSING;
  }
  // Server side:
  open(): void {
    this.readyState = WebSocket.OPEN;
    this.dispatchEvent(new Event("open"));
  }
  receive(message: unknown): void {
    this.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(message) }));
  }
  serverClose(code: number, reason = ""): void {
    this.readyState = WebSocket.CLOSED;
    this.dispatchEvent(new CloseEvent("close", { code, reason }));
  }
}

function setup(options: Partial<RendezvousClientOptions> = {}) {
  const clock = new FakeClock();
  const sockets: FakeSocket[] = [];
  const events: ClientEvent[] = [];
  const client = new RendezvousClient({
    url: new URL("ws://rv.test/ws/register/w1"),
    workerId: "w1",
    pingIntervalMs: 1000,
    pingTimeoutMs: 500,
    stableSessionMs: 10_000,
    backoff: new Backoff({ baseMs: 100, maxMs: 1000, random: () => 0.5 }),
    random: () => 0.5,
    clock,
    openSocket: (url, headers) => {
      const socket = new FakeSocket(url, headers);
      sockets.push(socket);
      return socket;
    },
    onEvent: (e) => events.push(e),
    ...options,
  });
  const controller = new AbortController();
  const done = client.run(controller.signal);
  const last = () => sockets[sockets.length - 1];
  const types = () => events.map((e) => e.type);
  return { clock, sockets, events, client, controller, done, last, types };
}

async function stop(t: ReturnType<typeof setup>): Promise<void> {
  t.controller.abort();
  await flush();
  if (t.last().readyState !== WebSocket.CLOSED) t.last().serverClose(1000);
  await t.done;
}

Deno.test("RendezvousClient registers, reports the looked-up IP and reports events in order", async () => {
  const t = setup({ lookupPublicIp: () => Promise.resolve("203.0.113.7"), token: "tok" });
  await flush();
  assert.equal(t.sockets.length, 1);
  assert.equal(t.last().url, "ws://rv.test/ws/register/w1");
  assert.equal(t.last().headers.authorization, "Bearer tok");
  t.last().open();
  t.last().receive({
    type: "registered",
    worker_id: "w1",
    observed_ip: "198.51.100.2",
    observed_port: 4000,
  });
  await flush();
  assert.deepEqual(t.last().sent, [{ type: "register_public_ip", ip: "203.0.113.7" }]);
  assert.deepEqual(t.types(), ["connecting", "connected", "registered", "public_ip_reported"]);
  const snapshot = t.client.snapshot();
  assert.equal(snapshot.status, "connected");
  assert.equal(snapshot.observed_ip, "198.51.100.2");
  assert.equal(snapshot.http_reported_public_ip, "203.0.113.7");
  await stop(t);
  assert.deepEqual(t.sockets[0].closedWith, { code: 1000, reason: "worker shutting down" });
  assert.equal(t.types().at(-1), "stopped");
});

Deno.test("RendezvousClient carries on without a public IP when the lookup fails", async () => {
  const t = setup({ lookupPublicIp: () => Promise.reject(new Error("no route")) });
  await flush();
  t.last().open();
  await flush();
  assert.deepEqual(t.last().sent, []);
  assert.deepEqual(t.events.find((e) => e.type === "public_ip_failed"), {
    type: "public_ip_failed",
    error: "no route",
  });
  assert.equal(t.client.status, "connected");
  await stop(t);
});

Deno.test("RendezvousClient heartbeats with echo_request and stays while answered", async () => {
  const t = setup();
  await flush();
  t.last().open();
  for (let beat = 1; beat <= 3; beat++) {
    await t.clock.tick(1000);
    assert.deepEqual(t.last().sent.at(-1), { type: "echo_request", payload: { heartbeat: beat } });
    t.last().receive({
      type: "echo_response",
      original_payload: { heartbeat: beat },
      processed_by_rendezvous: "x",
    });
  }
  await t.clock.tick(400);
  assert.equal(t.sockets.length, 1, "no reconnect while heartbeats are answered");
  await stop(t);
});

Deno.test("RendezvousClient abandons a silent connection after the ping timeout and reconnects with backoff", async () => {
  const t = setup();
  await flush();
  t.last().open();
  await t.clock.tick(1000); // heartbeat sent
  await t.clock.tick(499);
  assert.equal(t.sockets.length, 1);
  await t.clock.tick(1); // timeout reached, no close event ever arrives
  assert.deepEqual(t.sockets[0].closedWith?.code, 4001);
  assert.deepEqual(t.types().slice(-3), [
    "heartbeat_timeout",
    "disconnected",
    "reconnect_scheduled",
  ]);
  const scheduled = t.events.at(-1) as { delay_ms: number };
  assert.equal(scheduled.delay_ms, 50, "first backoff window 100 ms, jitter 0.5");
  await t.clock.tick(49);
  assert.equal(t.sockets.length, 1);
  await t.clock.tick(1);
  assert.equal(t.sockets.length, 2, "reconnected after the backoff");
  t.last().open();
  await stop(t);
});

Deno.test("RendezvousClient gives a handshake that never completes the ping timeout", async () => {
  const t = setup();
  await flush();
  await t.clock.tick(500);
  assert.equal(t.sockets[0].closedWith?.code, 4001);
  assert.deepEqual(
    t.events.find((e) => e.type === "disconnected"),
    { type: "disconnected", code: 4001, reason: "no heartbeat answer in time", opened: false },
  );
  await t.clock.tick(50);
  assert.equal(t.sockets.length, 2);
  t.last().open();
  await stop(t);
});

Deno.test("RendezvousClient reconnects at once after 1001, but not twice in a row", async () => {
  const t = setup();
  await flush();
  t.last().open();
  t.last().serverClose(1001, "rendezvous shutting down");
  await flush();
  assert.equal((t.events.at(-1) as { delay_ms: number }).delay_ms, 0);
  await t.clock.tick(0);
  assert.equal(t.sockets.length, 2, "immediate reconnect");
  t.last().open();
  t.last().serverClose(1012);
  await flush();
  assert.equal(
    (t.events.at(-1) as { delay_ms: number }).delay_ms,
    500,
    "the second waits within the restart window (1 s, jitter 0.5)",
  );
  await t.clock.tick(500);
  t.last().open();
  await stop(t);
});

Deno.test("RendezvousClient goes quiet on going_away, waits for the close, then reconnects at once", async () => {
  const t = setup();
  await flush();
  t.last().open();
  t.last().receive({ type: "registered", worker_id: "w1", observed_ip: "127.0.0.1" });
  await t.clock.tick(1000);
  const beats = () => t.last().sent.filter((m) => m.type === "echo_request").length;
  assert.equal(beats(), 1, "heartbeat running");
  t.last().receive({ type: "going_away", reason: "rendezvous shutting down" });
  const sentBefore = t.last().sent.length;
  assert.equal(t.client.send({ type: "relay", to: "peer", data: "AA==" }), false, "nothing sent");
  await t.clock.tick(400); // inside the 500 ms heartbeat bound: no heartbeat, no abandon
  assert.equal(t.last().sent.length, sentBefore);
  t.last().serverClose(1001, "rendezvous shutting down");
  await flush();
  assert.equal((t.events.at(-1) as { delay_ms: number }).delay_ms, 0, "reconnects at once");
  await t.clock.tick(0);
  assert.equal(t.sockets.length, 2);
  t.last().open();
  t.last().receive({ type: "registered", worker_id: "w1", observed_ip: "127.0.0.1" });
  assert.equal(
    t.client.send({ type: "relay", to: "peer", data: "AA==" }),
    true,
    "new session sends",
  );
  await stop(t);
});

Deno.test("RendezvousClient gives up on a socket that gave notice but never closed", async () => {
  const t = setup();
  await flush();
  t.last().open();
  t.last().receive({ type: "going_away", reason: "rendezvous shutting down" });
  await t.clock.tick(500);
  assert.ok(t.types().includes("heartbeat_timeout"));
  await flush();
  const delay = (t.events.at(-1) as { delay_ms: number }).delay_ms;
  await t.clock.tick(delay);
  assert.equal(t.sockets.length, 2, "a new connection");
  await stop(t);
});

Deno.test("RendezvousClient widens the backoff while the rendezvous is down and resets after a stable session", async () => {
  const t = setup();
  const delays = () =>
    t.events.filter((e) => e.type === "reconnect_scheduled").map((e) =>
      (e as { delay_ms: number }).delay_ms
    );
  await flush();
  for (let i = 0; i < 5; i++) {
    t.last().serverClose(1006); // refused before open
    await flush();
    await t.clock.tick(delays().at(-1)!);
  }
  assert.deepEqual(delays(), [50, 100, 200, 400, 500]);
  t.last().open();
  for (let i = 0; i < 10; i++) {
    await t.clock.tick(1000);
    t.last().receive({ type: "echo_response", original_payload: null });
  }
  // Closed on purpose (1008): the backoff, reset by the 10 s session. (Dropped
  // abnormally instead, it would retry within the crash windows: see
  // reconnect_policy_test.ts.)
  t.last().serverClose(1008);
  await flush();
  assert.equal(delays().at(-1), 50, "a 10 s session reset the backoff");
  await t.clock.tick(50);
  t.last().open();
  await stop(t);
});

Deno.test("RendezvousClient retries within the crash windows after a healthy session drops (a crashed rendezvous)", async () => {
  const t = setup();
  const delays = () =>
    t.events.filter((e) => e.type === "reconnect_scheduled").map((e) =>
      (e as { delay_ms: number }).delay_ms
    );
  await flush();
  t.last().open();
  for (let i = 0; i < 10; i++) {
    await t.clock.tick(1000);
    t.last().receive({ type: "echo_response", original_payload: null });
  }
  t.last().serverClose(1006);
  await flush();
  // Not at once (no herd), within the 1 s window; refused retries stay in it.
  for (let i = 0; i < 3; i++) {
    const wait = delays().at(-1)!;
    assert.ok(wait > 0 && wait < 1000, `attempt ${i}: ${wait} ms`);
    await t.clock.tick(wait);
    t.last().serverClose(1006); // still down
    await flush();
  }
  await stop(t);
});

Deno.test("RendezvousClient stops promptly even when the close handshake never finishes", async () => {
  const t = setup();
  await flush();
  t.last().open();
  t.controller.abort();
  await flush();
  assert.equal(t.last().closedWith?.code, 1000);
  await t.clock.tick(500); // min(pingTimeout, 2 s)
  await t.done;
  assert.equal(t.client.status, "stopped");
});

Deno.test("RendezvousClient ignores unknown and malformed server messages", async () => {
  const t = setup();
  await flush();
  t.last().open();
  t.last().receive({ type: "peer_joined", from: "the future" });
  t.last().dispatchEvent(new MessageEvent("message", { data: "{{{" }));
  t.last().receive({ type: "error", code: "invalid_ip", message: "nope" });
  await flush();
  assert.equal(t.client.status, "connected");
  await stop(t);
});

Deno.test("RendezvousClient with a key dials with ?key= and answers the challenge with a valid proof", async () => {
  const identity = await Identity.generate();
  const t = setup({ identity });
  await flush();
  const url = new URL(t.last().url);
  assert.equal(url.searchParams.get("key"), identity.publicKey);
  t.last().open();
  const nonce = newNonce();
  // Signing is real WebCrypto work: wait for the answer itself.
  const answered = t.last().nextSend();
  t.last().receive({ type: "challenge", nonce });
  await answered;
  const [proof] = t.last().sent as { type: string; signature: string }[];
  assert.equal(proof.type, "prove_key");
  const payload = registrationPayload("rv.test", "w1", nonce);
  assert.equal(await verifySignature(identity.publicKey, payload, proof.signature), true);
  await stop(t);
});

Deno.test("RendezvousClient logs why the rendezvous refused its key and keeps retrying", async () => {
  const lines: Record<string, unknown>[] = [];
  const t = setup({
    identity: await Identity.generate(),
    logger: new Logger({ sink: (l) => lines.push(JSON.parse(l)) }),
  });
  await flush();
  t.last().open();
  t.last().serverClose(4003, "worker id is bound to another key");
  await flush();
  assert.ok(lines.some((l) => String(l.message).includes("its id is bound to another key")));
  const scheduled = t.events.at(-1);
  assert.equal(scheduled?.type, "reconnect_scheduled");
  await t.clock.tick((scheduled as { delay_ms: number }).delay_ms);
  assert.equal(t.sockets.length, 2);
  await stop(t);
});
