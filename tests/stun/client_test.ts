import assert from "node:assert/strict";
import { Attr, encodeStunMessage, parseStunMessage, StunClass } from "../../lib/stun/codec.ts";
import {
  encodeErrorCode,
  encodeXorAddress,
  type TransportAddress,
} from "../../lib/stun/attributes.ts";
import {
  parseServerSpec,
  StunClient,
  StunErrorResponse,
  StunTimeoutError,
} from "../../lib/stun/client.ts";
import { FakeClock, flush } from "../_fake_clock.ts";

const SERVER: TransportAddress = { family: 4, ip: "192.0.2.10", port: 3478 };
const ME: TransportAddress = { family: 4, ip: "203.0.113.5", port: 51000 };

function setup(options: ConstructorParameters<typeof StunClient>[1] = {}) {
  const clock = new FakeClock(0);
  const sent: { at: number; bytes: Uint8Array; to: TransportAddress }[] = [];
  const client = new StunClient((bytes, to) => {
    sent.push({ at: clock.now(), bytes, to });
    return Promise.resolve();
  }, { clock, ...options });
  return { clock, sent, client };
}

function answer(request: Uint8Array, mapped = ME, cls: StunClass = StunClass.SUCCESS): Uint8Array {
  const { transactionId } = parseStunMessage(request);
  const attributes = cls === StunClass.SUCCESS
    ? [{ type: Attr.XOR_MAPPED_ADDRESS, value: encodeXorAddress(mapped, transactionId) }]
    : [{ type: Attr.ERROR_CODE, value: encodeErrorCode(500, "Server Error") }];
  return encodeStunMessage({ method: 1, cls, transactionId, attributes }, { fingerprint: true });
}

Deno.test("StunClient retransmits on RFC 8489's schedule and times out after Rm·RTO", async () => {
  const t = setup();
  const result = t.client.binding(SERVER);
  let error: unknown;
  result.catch((e) => error = e);
  await t.clock.tick(39_499);
  assert.deepEqual(t.sent.map((s) => s.at), [0, 500, 1500, 3500, 7500, 15500, 31500]);
  assert.equal(error, undefined);
  await t.clock.tick(1);
  assert.ok((error as unknown) instanceof StunTimeoutError, String(error));
  assert.equal(t.client.pending, 0);
  // Every retransmission is the same request (same transaction id).
  assert.ok(t.sent.every((s) => s.bytes.every((b, i) => b === t.sent[0].bytes[i])));
});

Deno.test("StunClient schedule is configurable (short in tests)", async () => {
  const t = setup({ rtoMs: 10, maxSends: 3, finalWaitFactor: 2 });
  const result = t.client.binding(SERVER);
  result.catch(() => {});
  await t.clock.tick(50);
  assert.deepEqual(t.sent.map((s) => s.at), [0, 10, 30]);
  await assert.rejects(result, StunTimeoutError);
});

Deno.test("StunClient matches the answer by transaction id and ignores strays", async () => {
  const t = setup();
  const result = t.client.binding(SERVER);
  await flush();
  const request = t.sent[0].bytes;
  // A stray answer to someone else's transaction, junk, and a request are ignored.
  assert.equal(
    t.client.handle(
      answer(encodeStunMessage({ method: 1, cls: 0, transactionId: new Uint8Array(12) })),
      SERVER,
    ),
    false,
  );
  assert.equal(t.client.handle(new Uint8Array(20), SERVER), false);
  assert.equal(t.client.handle(request, SERVER), false);
  await t.clock.tick(600);
  assert.equal(t.sent.length, 2, "still retransmitting");
  assert.equal(t.client.handle(answer(request), SERVER), true);
  const r = await result;
  assert.deepEqual(r.mapped, ME);
  assert.deepEqual(r.server, SERVER);
  assert.equal(r.rttMs, 600);
  assert.equal(t.client.pending, 0);
  assert.equal(t.client.handle(answer(request), SERVER), false, "a late duplicate is a stray");
  await t.clock.tick(100_000);
  assert.equal(t.sent.length, 2, "no more sends after the answer");
});

Deno.test("StunClient reports an error response", async () => {
  const t = setup();
  const result = t.client.binding(SERVER);
  await flush();
  t.client.handle(answer(t.sent[0].bytes, ME, StunClass.ERROR), SERVER);
  await assert.rejects(result, (e: unknown) => e instanceof StunErrorResponse && e.code === 500);
});

Deno.test("StunClient stops at once when aborted", async () => {
  const t = setup();
  const controller = new AbortController();
  const result = t.client.binding(SERVER, { signal: controller.signal });
  await flush();
  controller.abort(new Error("stop"));
  await assert.rejects(result, { message: "stop" });
  await t.clock.tick(100_000);
  assert.equal(t.sent.length, 1);
  assert.equal(t.clock.pending, 0);
});

Deno.test("StunClient resolves host names through its resolver, for its family only", async () => {
  const asked: string[] = [];
  const t = setup({
    resolve: (host, family) => {
      asked.push(`${host}/${family}`);
      return Promise.resolve(host === "stun.example" ? ["192.0.2.77"] : []);
    },
  });
  assert.deepEqual(await t.client.resolveServer("stun.example:19302"), {
    family: 4,
    ip: "192.0.2.77",
    port: 19302,
  });
  assert.deepEqual(await t.client.resolveServer("localhost"), {
    family: 4,
    ip: "127.0.0.1",
    port: 3478,
  });
  await assert.rejects(t.client.resolveServer("nothing.example"), /no IPv4 address/);
  await assert.rejects(t.client.resolveServer("[2001:db8::1]:3478"), /IPv4/);
  assert.deepEqual(asked, ["stun.example/4", "nothing.example/4"]);
});

Deno.test("parseServerSpec() reads host:port forms", () => {
  assert.deepEqual(parseServerSpec("stun.l.google.com:19302"), {
    host: "stun.l.google.com",
    port: 19302,
  });
  assert.deepEqual(parseServerSpec("stun.cloudflare.com"), {
    host: "stun.cloudflare.com",
    port: 3478,
  });
  assert.deepEqual(parseServerSpec("[2001:db8::1]:3479"), { host: "2001:db8::1", port: 3479 });
  assert.deepEqual(parseServerSpec("stun:127.0.0.1:1"), { host: "127.0.0.1", port: 1 });
  for (
    const bad of ["", ":1", "host:0", "host:99999", "host:x", "a b:1", "a:b:c", "-x:1", "[nope]:1"]
  ) {
    assert.throws(() => parseServerSpec(bad), RangeError, bad);
  }
});
