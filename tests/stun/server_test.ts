import assert from "node:assert/strict";
import {
  Attr,
  encodeStunMessage,
  getAttribute,
  newTransactionId,
  parseStunMessage,
  type StunAttribute,
  StunClass,
} from "../../lib/stun/codec.ts";
import {
  decodeErrorCode,
  decodeUnknownAttributes,
  encodeChangeRequest,
  getMappedAddress,
  type TransportAddress,
} from "../../lib/stun/attributes.ts";
import { StunClient } from "../../lib/stun/client.ts";
import { answerStun, StunServer } from "../../lib/stun/server.ts";
import { UdpEndpoint } from "../../lib/peer/udp_endpoint.ts";

const SOURCE: TransportAddress = { family: 4, ip: "198.51.100.7", port: 40000 };

function request(attributes: StunAttribute[] = [], cls: StunClass = StunClass.REQUEST, method = 1) {
  return encodeStunMessage({ method, cls, transactionId: newTransactionId(), attributes });
}

Deno.test("answerStun() answers a Binding request with XOR-MAPPED-ADDRESS, SOFTWARE and FINGERPRINT", () => {
  const req = request();
  const decision = answerStun(req, SOURCE);
  assert.equal(decision.action, "reply");
  if (decision.action !== "reply") return;
  const res = parseStunMessage(decision.bytes);
  assert.equal(res.cls, StunClass.SUCCESS);
  assert.deepEqual(res.transactionId, req.slice(8, 20));
  assert.deepEqual(getMappedAddress(res), SOURCE);
  assert.ok(getAttribute(res, Attr.SOFTWARE));
  assert.ok(res.hasFingerprint);
  assert.ok(decision.bytes.length <= 100, `response is ${decision.bytes.length} bytes`);
});

Deno.test("answerStun() answers IPv6 sources", () => {
  const decision = answerStun(request(), { family: 6, ip: "2001:db8::9", port: 1 });
  assert.equal(decision.action, "reply");
  if (decision.action === "reply") {
    assert.deepEqual(getMappedAddress(parseStunMessage(decision.bytes))?.ip, "2001:db8::9");
  }
});

Deno.test("answerStun() never answers what is not a well-formed Binding request", () => {
  const txid = newTransactionId();
  const success = encodeStunMessage({ method: 1, cls: StunClass.SUCCESS, transactionId: txid });
  const bad = request();
  bad[bad.length - 1] ^= 0xff; // breaks nothing structural: no attributes, so...
  const withBadFingerprint = encodeStunMessage({
    method: 1,
    cls: StunClass.REQUEST,
    transactionId: txid,
  }, { fingerprint: true });
  withBadFingerprint[withBadFingerprint.length - 1] ^= 1;
  const cases: [Uint8Array, string][] = [
    [new Uint8Array(0), "not_stun"],
    [new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n    "), "not_stun"],
    [new Uint8Array(20), "not_stun"],
    [withBadFingerprint, "malformed"],
    [success, "not_request"],
    [request([], StunClass.INDICATION), "not_request"],
    [request([], StunClass.ERROR), "not_request"],
    [request([], StunClass.REQUEST, 0x003), "not_binding"],
  ];
  for (const [bytes, reason] of cases) {
    assert.deepEqual(answerStun(bytes, SOURCE), { action: "drop", reason }, reason);
  }
});

Deno.test("answerStun() answers 420 for attributes it will not honour (PADDING, RESPONSE-PORT, unknown)", () => {
  for (const type of [Attr.PADDING, Attr.RESPONSE_PORT, 0x7abc]) {
    const decision = answerStun(request([{ type, value: new Uint8Array(4) }]), SOURCE);
    assert.equal(decision.action, "reply");
    if (decision.action !== "reply") continue;
    const res = parseStunMessage(decision.bytes);
    assert.equal(res.cls, StunClass.ERROR);
    assert.equal(decodeErrorCode(getAttribute(res, Attr.ERROR_CODE)!).code, 420);
    assert.deepEqual(decodeUnknownAttributes(getAttribute(res, Attr.UNKNOWN_ATTRIBUTES)!), [type]);
    assert.ok(decision.bytes.length <= 100);
  }
});

Deno.test("answerStun() without an alternate address refuses CHANGE-REQUEST changes with 420", () => {
  const change = (changeIp: boolean, changePort: boolean) =>
    request([{ type: Attr.CHANGE_REQUEST, value: encodeChangeRequest({ changeIp, changePort }) }]);
  const none = answerStun(change(false, false), SOURCE);
  assert.equal(none.action === "reply" && parseStunMessage(none.bytes).cls, StunClass.SUCCESS);
  const port = answerStun(change(false, true), SOURCE);
  assert.equal(port.action === "reply" && parseStunMessage(port.bytes).cls, StunClass.ERROR);
});

Deno.test("answerStun() ignores ICE credentials and answers the check", () => {
  const decision = answerStun(
    request([
      { type: Attr.USERNAME, value: new TextEncoder().encode("a:b") },
      { type: Attr.PRIORITY, value: new Uint8Array(4) },
    ]),
    SOURCE,
  );
  assert.equal(decision.action, "reply");
});

Deno.test("StunServer answers a real client over UDP and counts what it drops", async () => {
  const server = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const udp = UdpEndpoint.bind({ hostname: "127.0.0.1" });
  const client = new StunClient((b, to) => udp.send(b, to), { rtoMs: 50 });
  udp.onStun = (b, from) => client.handle(b, from);
  try {
    const result = await client.binding(server.addresses[0]);
    assert.deepEqual(result.mapped, udp.local);
    assert.equal(result.software, "holepunch");
    // Junk and non-requests get nothing back, and are counted.
    await udp.send(new TextEncoder().encode("junk"), server.addresses[0]);
    await udp.send(request([], StunClass.INDICATION), server.addresses[0]);
    const again = await client.binding(server.addresses[0]);
    assert.deepEqual(again.mapped, udp.local);
    assert.equal(server.stats.answered, 2);
    assert.equal(server.stats.dropped.not_stun, 1);
    assert.equal(server.stats.dropped.not_request, 1);
  } finally {
    await udp.close();
    await server.close();
  }
});

Deno.test("StunServer with an alternate address serves RFC 5780 from four sockets", async () => {
  const server = StunServer.listen({
    hostname: "127.0.0.1",
    port: 0,
    alternate: { hostname: "127.0.0.2", port: 0 },
  });
  const udp = UdpEndpoint.bind({ hostname: "127.0.0.1" });
  const client = new StunClient((b, to) => udp.send(b, to), { rtoMs: 50 });
  udp.onStun = (b, from) => client.handle(b, from);
  try {
    const [primary, altPort, altIp, altBoth] = server.addresses;
    assert.equal(altIp.ip, "127.0.0.2");
    const plain = await client.binding(primary);
    assert.deepEqual(plain.responseOrigin, primary);
    assert.deepEqual(plain.otherAddress, altBoth);
    const changed = await client.binding(primary, { changeIp: true, changePort: true });
    assert.deepEqual(changed.responseOrigin, altBoth, "answered from the other IP and port");
    assert.deepEqual(changed.mapped, udp.local);
    const portOnly = await client.binding(primary, { changePort: true });
    assert.deepEqual(portOnly.responseOrigin, altPort);
    const fromAlt = await client.binding(altIp, { changeIp: true });
    assert.deepEqual(
      fromAlt.responseOrigin,
      primary,
      "changes are relative to the receiving socket",
    );
  } finally {
    await udp.close();
    await server.close();
  }
});

Deno.test("StunServer and StunClient work over IPv6", async () => {
  let server: StunServer;
  try {
    server = StunServer.listen({ hostname: "::1", port: 0 });
  } catch (error) {
    console.log(`IPv6 loopback unavailable here (${(error as Error).message}); skipping`);
    return;
  }
  const udp = UdpEndpoint.bind({ hostname: "::1" });
  const client = new StunClient((b, to) => udp.send(b, to), { rtoMs: 50, family: 6 });
  udp.onStun = (b, from) => client.handle(b, from);
  try {
    assert.equal(udp.local.family, 6);
    const result = await client.binding(`[::1]:${server.addresses[0].port}`);
    assert.deepEqual(result.mapped, { family: 6, ip: "::1", port: udp.local.port });
  } finally {
    await udp.close();
    await server.close();
  }
});
