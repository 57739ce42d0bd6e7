/** PCP MAP messages against RFC 6887's layouts (§7.1, §11.1), and hostile answers. */
import assert from "node:assert/strict";
import {
  encodeMapRequest,
  isAnnounce,
  parseMapResponse,
  PCP_MAP_BYTES,
  PCP_RESULTS,
} from "../../lib/portmap/pcp.ts";

const nonce = Uint8Array.from({ length: 12 }, (_, i) => i + 1);

/** The answer a gateway would send to `request`, with `edit` applied. */
function answer(edit: (bytes: Uint8Array, view: DataView) => void = () => {}): Uint8Array {
  const bytes = new Uint8Array(PCP_MAP_BYTES);
  const view = new DataView(bytes.buffer);
  bytes[0] = 2;
  bytes[1] = 0x81; // R = 1, MAP
  bytes[3] = 0; // success
  view.setUint32(4, 7200); // lifetime
  view.setUint32(8, 12345); // epoch
  bytes.set(nonce, 24);
  bytes[36] = 17;
  view.setUint16(40, 40000);
  view.setUint16(42, 50000);
  bytes.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 9], 44);
  edit(bytes, view);
  return bytes;
}

Deno.test("PCP MAP request: 60 bytes laid out as §7.1 and §11.1 say, IPv4 as IPv4-mapped IPv6", () => {
  const bytes = encodeMapRequest({
    nonce,
    clientIp: "192.168.1.20",
    internalPort: 40000,
    lifetime: 7200,
  });
  assert.equal(bytes.length, 60);
  assert.deepEqual([...bytes.subarray(0, 8)], [2, 1, 0, 0, 0, 0, 0x1c, 0x20]);
  assert.deepEqual([...bytes.subarray(8, 24)], [
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0xff,
    0xff,
    192,
    168,
    1,
    20,
  ]);
  assert.deepEqual([...bytes.subarray(24, 36)], [...nonce]);
  assert.deepEqual([...bytes.subarray(36, 40)], [17, 0, 0, 0], "UDP, reserved");
  assert.deepEqual([...bytes.subarray(40, 44)], [0x9c, 0x40, 0, 0], "internal port, any external");
  // No suggestion: the IPv4 "any" address, mapped (§11.1).
  assert.deepEqual([...bytes.subarray(44, 60)], [
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0xff,
    0xff,
    0,
    0,
    0,
    0,
  ]);
  const v6 = encodeMapRequest({ nonce, clientIp: "2001:db8::5", internalPort: 1, lifetime: 0 });
  assert.deepEqual([...v6.subarray(44, 60)], new Array(16).fill(0), "IPv6 any: ::");
  assert.throws(
    () =>
      encodeMapRequest({
        nonce: nonce.subarray(1),
        clientIp: "10.0.0.1",
        internalPort: 1,
        lifetime: 1,
      }),
    /nonce/,
  );
  assert.throws(
    () => encodeMapRequest({ nonce, clientIp: "nope", internalPort: 1, lifetime: 1 }),
    /not an IP/,
  );
  assert.throws(
    () => encodeMapRequest({ nonce, clientIp: "10.0.0.1", internalPort: 0, lifetime: 1 }),
    /all ports/,
  );
});

Deno.test("PCP MAP answers: read as laid out; options skipped; refusals keep their code", () => {
  const request = { nonce, internalPort: 40000 };
  assert.deepEqual(parseMapResponse(answer(), request), {
    result: 0,
    lifetime: 7200,
    epoch: 12345,
    internalPort: 40000,
    externalPort: 50000,
    externalIp: "203.0.113.9",
  });
  const withOption = new Uint8Array(PCP_MAP_BYTES + 8);
  withOption.set(answer());
  assert.equal(parseMapResponse(withOption, request)?.externalPort, 50000);
  const refused = parseMapResponse(answer((b) => b[3] = 2), request);
  assert.equal(refused?.result, 2);
  assert.equal(PCP_RESULTS[refused!.result], "not authorized");
  const v6 = answer((b) => b.set([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 44));
  assert.equal(parseMapResponse(v6, request)?.externalIp, "2001:db8::1");
});

Deno.test("PCP: hostile answers — truncated, oversized, another version, a request, another nonce, protocol or port — are dropped", () => {
  const request = { nonce, internalPort: 40000 };
  for (
    const [what, bytes] of [
      ["truncated", answer().subarray(0, 59)],
      ["not a multiple of 4", new Uint8Array([...answer(), 0])],
      ["oversized", new Uint8Array(1104)],
      ["NAT-PMP's version", answer((b) => b[0] = 0)],
      ["a request", answer((b) => b[1] = 0x01)],
      ["another opcode", answer((b) => b[1] = 0x82)],
      ["another nonce", answer((b) => b[30] ^= 1)],
      ["TCP", answer((b) => b[36] = 6)],
      ["another internal port", answer((_, v) => v.setUint16(40, 40001))],
    ] as const
  ) {
    assert.equal(parseMapResponse(bytes, request), undefined, what);
  }
  assert.ok(isAnnounce(answer((b) => b[1] = 0x80)));
  assert.ok(!isAnnounce(answer()));
  assert.ok(!isAnnounce(new Uint8Array(8)));
});
