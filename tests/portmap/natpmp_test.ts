/** NAT-PMP's messages against RFC 6886's layouts (§3.2, §3.3), and answers that are not answers. */
import assert from "node:assert/strict";
import {
  encodeMapRequest,
  encodePublicAddressRequest,
  epochJumped,
  NATPMP_RESULTS,
  parseMapResponse,
  parsePublicAddressResponse,
} from "../../lib/portmap/natpmp.ts";

Deno.test("NAT-PMP requests: the public-address request is two bytes; a UDP mapping request is twelve (§3.3)", () => {
  assert.deepEqual([...encodePublicAddressRequest()], [0, 0]);
  assert.deepEqual(
    [...encodeMapRequest(40000, 40000, 7200)],
    // version 0, opcode 1 (UDP), reserved, internal port, suggested external port, lifetime
    [0, 1, 0, 0, 0x9c, 0x40, 0x9c, 0x40, 0, 0, 0x1c, 0x20],
  );
  // Lifetime 0 with the external port 0 deletes the mapping (§3.4).
  assert.deepEqual([...encodeMapRequest(40000, 0, 0)].slice(6), [0, 0, 0, 0, 0, 0]);
  assert.throws(() => encodeMapRequest(70000, 0, 60), RangeError);
  assert.throws(() => encodeMapRequest(1, -1, 60), RangeError);
  assert.throws(() => encodeMapRequest(1, 1, 2 ** 32), RangeError);
});

Deno.test("NAT-PMP answers: read as laid out; refusals keep their code; anything else is not an answer", () => {
  const address = new Uint8Array([0, 128, 0, 0, 0, 0, 0x0e, 0x10, 203, 0, 113, 7]);
  assert.deepEqual(parsePublicAddressResponse(address), {
    result: 0,
    epoch: 3600,
    ip: "203.0.113.7",
  });
  const mapped = new Uint8Array([
    0,
    129,
    0,
    0,
    0,
    0,
    0,
    60,
    0x9c,
    0x40,
    0xc3,
    0x50,
    0,
    0,
    0x1c,
    0x20,
  ]);
  assert.deepEqual(parseMapResponse(mapped), {
    result: 0,
    epoch: 60,
    internalPort: 40000,
    externalPort: 50000,
    lifetime: 7200,
  });
  const refused = new Uint8Array(16);
  refused.set([0, 129, 0, 2]);
  assert.equal(parseMapResponse(refused)?.result, 2);
  assert.equal(NATPMP_RESULTS[2], "not authorized or refused");
  for (
    const [what, bytes] of [
      ["truncated", mapped.subarray(0, 15)],
      ["oversized", new Uint8Array([...mapped, 0, 0, 0, 0])],
      ["PCP's version", new Uint8Array([2, ...mapped.subarray(1)])],
      ["a request, not an answer", new Uint8Array([0, 1, ...mapped.subarray(2)])],
      ["the answer to another opcode", new Uint8Array([0, 130, ...mapped.subarray(2)])],
    ] as const
  ) {
    assert.equal(parseMapResponse(bytes), undefined, what);
  }
  assert.equal(parsePublicAddressResponse(mapped), undefined, "a mapping answer is not an address");
  assert.equal(parsePublicAddressResponse(address.subarray(0, 11)), undefined, "truncated");
});

Deno.test("NAT-PMP epochs: a gateway whose epoch fell behind the time that passed lost its mappings (§3.6)", () => {
  const before = { epoch: 1000, at: 0 };
  assert.equal(epochJumped(before, { epoch: 1060, at: 60_000 }), false, "on time");
  assert.equal(epochJumped(before, { epoch: 1051, at: 60_000 }), false, "within 7/8 less 2 s");
  assert.equal(epochJumped(before, { epoch: 1050, at: 60_000 }), true, "behind: restarted");
  assert.equal(epochJumped(before, { epoch: 5, at: 60_000 }), true, "back to zero: rebooted");
  assert.equal(epochJumped(before, { epoch: 999, at: 0 }), false, "two answers at once");
});
