import assert from "node:assert/strict";
import {
  Attr,
  crc32,
  encodeStunMessage,
  encodeStunMessageWithIntegrity,
  getAttribute,
  isStun,
  messageType,
  newTransactionId,
  parseStunMessage,
  StunClass,
  StunError,
  StunMethod,
  verifyMessageIntegrity,
} from "../../lib/stun/codec.ts";
import {
  decodeAddress,
  decodeChangeRequest,
  decodeErrorCode,
  decodeText,
  decodeUnknownAttributes,
  decodeXorAddress,
  encodeAddress,
  encodeChangeRequest,
  encodeErrorCode,
  encodeText,
  encodeUnknownAttributes,
  encodeXorAddress,
  getMappedAddress,
} from "../../lib/stun/attributes.ts";

/** Hex as RFC 5769 prints it (spaces and line breaks) to bytes. */
function hex(text: string): Uint8Array {
  const digits = text.replace(/[^0-9a-f]/gi, "");
  return Uint8Array.from(
    { length: digits.length / 2 },
    (_, i) => parseInt(digits.slice(i * 2, i * 2 + 2), 16),
  );
}

// RFC 5769 §2.1–2.3 test vectors, byte for byte.
const PASSWORD = new TextEncoder().encode("VOkJxbRl1RmTxUk/WvJxBt");
const TXID = hex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae");
const SAMPLE_REQUEST = hex(`
  00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
  00 24 00 04 6e 00 01 ff
  80 29 00 08 93 2f f9 b1 51 26 3b 36
  00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
  00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
  80 28 00 04 e5 7a 3b cf`);
const SAMPLE_IPV4_RESPONSE = hex(`
  01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
  00 20 00 08 00 01 a1 47 e1 12 a6 43
  00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
  80 28 00 04 c0 7d 4c 96`);
const SAMPLE_IPV6_RESPONSE = hex(`
  01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
  00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
  00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
  80 28 00 04 c8 fb 0b 4c`);

Deno.test("crc32() matches the published check value", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
});

Deno.test("messageType() interleaves method and class bits (RFC 8489 §5)", () => {
  assert.equal(messageType(StunMethod.BINDING, StunClass.REQUEST), 0x0001);
  assert.equal(messageType(StunMethod.BINDING, StunClass.INDICATION), 0x0011);
  assert.equal(messageType(StunMethod.BINDING, StunClass.SUCCESS), 0x0101);
  assert.equal(messageType(StunMethod.BINDING, StunClass.ERROR), 0x0111);
  assert.equal(messageType(0x003, StunClass.SUCCESS), 0x0103);
  assert.equal(messageType(0xfff, StunClass.REQUEST), 0x3eef);
});

Deno.test("RFC 5769 §2.1 sample request parses, its fingerprint and integrity check", async () => {
  assert.equal(SAMPLE_REQUEST.length, 108);
  const m = parseStunMessage(SAMPLE_REQUEST);
  assert.equal(m.method, StunMethod.BINDING);
  assert.equal(m.cls, StunClass.REQUEST);
  assert.deepEqual(m.transactionId, TXID);
  assert.equal(m.hasFingerprint, true);
  assert.equal(decodeText(getAttribute(m, Attr.SOFTWARE)!), "STUN test client");
  assert.equal(decodeText(getAttribute(m, Attr.USERNAME)!), "evtj:h6vY");
  assert.deepEqual(getAttribute(m, Attr.PRIORITY), hex("6e 00 01 ff"));
  assert.deepEqual(getAttribute(m, Attr.ICE_CONTROLLED), hex("93 2f f9 b1 51 26 3b 36"));
  assert.equal(await verifyMessageIntegrity(m, PASSWORD), true);
  assert.equal(await verifyMessageIntegrity(m, new TextEncoder().encode("wrong")), false);
});

Deno.test("RFC 5769 §2.2 and §2.3 sample responses decode to the documented addresses", async () => {
  for (
    const [bytes, family, ip] of [
      [SAMPLE_IPV4_RESPONSE, 4, "192.0.2.1"],
      [SAMPLE_IPV6_RESPONSE, 6, "2001:db8:1234:5678:11:2233:4455:6677"],
    ] as const
  ) {
    const m = parseStunMessage(bytes);
    assert.equal(m.cls, StunClass.SUCCESS);
    assert.equal(decodeText(getAttribute(m, Attr.SOFTWARE)!), "test vector");
    assert.deepEqual(getMappedAddress(m), { family, ip, port: 32853 });
    assert.equal(await verifyMessageIntegrity(m, PASSWORD), true, ip);
  }
});

Deno.test("the encoder reproduces the RFC 5769 vectors byte for byte", async () => {
  // The RFC pads with spaces; padding may be any value, so the encoder takes the byte.
  const request = await encodeStunMessageWithIntegrity(
    {
      method: StunMethod.BINDING,
      cls: StunClass.REQUEST,
      transactionId: TXID,
      attributes: [
        { type: Attr.SOFTWARE, value: encodeText("STUN test client") },
        { type: Attr.PRIORITY, value: hex("6e 00 01 ff") },
        { type: Attr.ICE_CONTROLLED, value: hex("93 2f f9 b1 51 26 3b 36") },
        { type: Attr.USERNAME, value: encodeText("evtj:h6vY") },
      ],
    },
    PASSWORD,
    { fingerprint: true, padByte: 0x20 },
  );
  assert.deepEqual(request, SAMPLE_REQUEST);
  for (
    const [bytes, family, ip] of [
      [SAMPLE_IPV4_RESPONSE, 4, "192.0.2.1"],
      [SAMPLE_IPV6_RESPONSE, 6, "2001:db8:1234:5678:11:2233:4455:6677"],
    ] as const
  ) {
    const response = await encodeStunMessageWithIntegrity(
      {
        method: StunMethod.BINDING,
        cls: StunClass.SUCCESS,
        transactionId: TXID,
        attributes: [
          { type: Attr.SOFTWARE, value: encodeText("test vector") },
          {
            type: Attr.XOR_MAPPED_ADDRESS,
            value: encodeXorAddress({ family, ip, port: 32853 }, TXID),
          },
        ],
      },
      PASSWORD,
      { fingerprint: true, padByte: 0x20 },
    );
    assert.deepEqual(response, bytes, ip);
  }
});

Deno.test("encode → parse round-trips messages and every attribute codec", () => {
  const txid = newTransactionId();
  const bytes = encodeStunMessage({
    method: StunMethod.BINDING,
    cls: StunClass.ERROR,
    transactionId: txid,
    attributes: [
      { type: Attr.ERROR_CODE, value: encodeErrorCode(420, "Unknown Attribute") },
      { type: Attr.UNKNOWN_ATTRIBUTES, value: encodeUnknownAttributes([0x0027, 0x0026]) },
      {
        type: Attr.OTHER_ADDRESS,
        value: encodeAddress({ family: 4, ip: "198.51.100.2", port: 3479 }),
      },
      {
        type: Attr.RESPONSE_ORIGIN,
        value: encodeAddress({ family: 6, ip: "2001:db8::2", port: 3478 }),
      },
      {
        type: Attr.CHANGE_REQUEST,
        value: encodeChangeRequest({ changeIp: true, changePort: false }),
      },
      { type: Attr.SOFTWARE, value: encodeText("holepunch") },
    ],
  }, { fingerprint: true });
  assert.ok(isStun(bytes));
  const m = parseStunMessage(bytes);
  assert.equal(m.cls, StunClass.ERROR);
  assert.deepEqual(m.transactionId, txid);
  assert.deepEqual(decodeErrorCode(getAttribute(m, Attr.ERROR_CODE)!), {
    code: 420,
    reason: "Unknown Attribute",
  });
  assert.deepEqual(decodeUnknownAttributes(getAttribute(m, Attr.UNKNOWN_ATTRIBUTES)!), [
    0x27,
    0x26,
  ]);
  assert.deepEqual(decodeAddress(getAttribute(m, Attr.OTHER_ADDRESS)!), {
    family: 4,
    ip: "198.51.100.2",
    port: 3479,
  });
  assert.deepEqual(decodeAddress(getAttribute(m, Attr.RESPONSE_ORIGIN)!).ip, "2001:db8::2");
  assert.deepEqual(decodeChangeRequest(getAttribute(m, Attr.CHANGE_REQUEST)!), {
    changeIp: true,
    changePort: false,
  });
  const xor = encodeXorAddress({ family: 6, ip: "::1", port: 1 }, txid);
  assert.deepEqual(decodeXorAddress(xor, txid), { family: 6, ip: "::1", port: 1 });
});

Deno.test("getMappedAddress() reads the 0x8020 variant and plain MAPPED-ADDRESS", () => {
  const txid = newTransactionId();
  const addr = { family: 4 as const, ip: "203.0.113.4", port: 5000 };
  for (
    const [type, value] of [
      [Attr.XOR_MAPPED_ADDRESS_OLD, encodeXorAddress(addr, txid)],
      [Attr.MAPPED_ADDRESS, encodeAddress(addr)],
    ] as const
  ) {
    const m = parseStunMessage(encodeStunMessage({
      method: StunMethod.BINDING,
      cls: StunClass.SUCCESS,
      transactionId: txid,
      attributes: [{ type, value }],
    }));
    assert.deepEqual(getMappedAddress(m), addr);
  }
});

Deno.test("parseStunMessage() rejects malformed datagrams with a typed error", () => {
  const valid = SAMPLE_IPV4_RESPONSE;
  const mutate = (f: (b: Uint8Array) => void) => {
    const b = valid.slice();
    f(b);
    return b;
  };
  const cases: [string, Uint8Array, string][] = [
    ["empty", new Uint8Array(0), "not_stun"],
    ["short", valid.slice(0, 19), "not_stun"],
    ["top bits", mutate((b) => b[0] |= 0x80), "not_stun"],
    ["cookie", mutate((b) => b[4] ^= 1), "not_stun"],
    ["length not a multiple of 4", mutate((b) => b[3] = 0x3d), "bad_length"],
    ["length past datagram", mutate((b) => b[3] = 0x40), "bad_length"],
    ["datagram past length", new Uint8Array([...valid, 0, 0, 0, 0]), "bad_length"],
    ["attribute past message", mutate((b) => b[23] = 0x40), "bad_attribute"],
    ["fingerprint wrong", mutate((b) => b[30] ^= 1), "bad_fingerprint"],
    [
      "truncated",
      (() => {
        const b = valid.slice(0, 24 + 12);
        new DataView(b.buffer).setUint16(2, 16);
        b[22] = 0;
        b[23] = 0x20; // SOFTWARE claims 32 bytes
        return b;
      })(),
      "bad_attribute",
    ],
    ["too long", new Uint8Array(2000), "bad_length"],
  ];
  for (const [name, bytes, code] of cases) {
    assert.throws(
      () => parseStunMessage(bytes),
      (e: unknown) => e instanceof StunError && e.code === code,
      name,
    );
  }
});

Deno.test("parseStunMessage() refuses unknown comprehension-required attributes and names them", () => {
  const txid = newTransactionId();
  const bytes = encodeStunMessage({
    method: StunMethod.BINDING,
    cls: StunClass.REQUEST,
    transactionId: txid,
    attributes: [
      { type: 0x7fff, value: new Uint8Array(4) },
      { type: 0xc001, value: new Uint8Array(3) }, // optional: ignored
      { type: Attr.RESPONSE_PORT, value: new Uint8Array(4) },
    ],
  });
  try {
    parseStunMessage(bytes, { comprehended: new Set([Attr.USERNAME]) });
    assert.fail("should throw");
  } catch (e) {
    assert.ok(e instanceof StunError);
    assert.equal(e.code, "unknown_required");
    assert.deepEqual(e.unknownAttributes, [0x7fff, Attr.RESPONSE_PORT]);
    assert.deepEqual(e.header?.transactionId, txid);
  }
  // With the default set, RESPONSE-PORT is known; 0x7fff still is not.
  assert.throws(() => parseStunMessage(bytes), { code: "unknown_required" });
});

Deno.test("attribute decoders reject malformed values", () => {
  const txid = newTransactionId();
  const bad: [() => unknown, string][] = [
    [() => decodeAddress(new Uint8Array(3)), "short"],
    [() => decodeAddress(new Uint8Array([0, 3, 0, 1, 1, 2, 3, 4])), "family"],
    [() => decodeAddress(new Uint8Array([0, 1, 0, 1, 1, 2, 3])), "v4 length"],
    [() => decodeXorAddress(new Uint8Array([0, 2, 0, 1, 1, 2, 3, 4]), txid), "v6 length"],
    [() => decodeErrorCode(new Uint8Array([0, 0, 2, 0])), "class 2"],
    [() => decodeErrorCode(new Uint8Array([0, 0, 4, 100])), "number 100"],
    [() => decodeUnknownAttributes(new Uint8Array(3)), "odd"],
    [() => decodeChangeRequest(new Uint8Array(2)), "change length"],
  ];
  for (const [f, name] of bad) {
    assert.throws(f, (e: unknown) => e instanceof StunError && e.code === "bad_value", name);
  }
  assert.throws(() => encodeErrorCode(200, "x"), RangeError);
  assert.throws(() => encodeAddress({ family: 4, ip: "::1", port: 1 }), RangeError);
});

Deno.test("the parser survives thousands of random and mutated datagrams, throwing only StunError", () => {
  const seeds = [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE];
  let parsed = 0;
  let rejected = 0;
  const check = (bytes: Uint8Array) => {
    try {
      const m = parseStunMessage(bytes);
      // A whole message: every attribute lies inside the datagram.
      for (const a of m.attributes) {
        assert.ok(a.value.byteOffset + a.value.length <= m.raw.byteOffset + m.raw.length);
      }
      try {
        getMappedAddress(m);
      } catch (e) {
        assert.ok(e instanceof StunError, String(e));
      }
      parsed++;
    } catch (e) {
      assert.ok(e instanceof StunError, `threw ${e}`);
      rejected++;
    }
  };
  for (let i = 0; i < 5000; i++) {
    // Random bytes, sometimes with a valid-looking header.
    const random = crypto.getRandomValues(new Uint8Array(20 + Math.floor(Math.random() * 80)));
    if (i % 2 === 0) {
      const view = new DataView(random.buffer);
      random[0] &= 0x3f;
      view.setUint32(4, 0x2112a442);
      view.setUint16(2, (random.length - 20) & ~3);
    }
    check(random.subarray(0, 20 + (new DataView(random.buffer).getUint16(2) & 0x7f)));
    // Mutations of the vectors: flipped bits, truncations, changed lengths.
    const seed = seeds[i % seeds.length].slice();
    const flips = 1 + (i % 3);
    for (let f = 0; f < flips; f++) seed[Math.floor(Math.random() * seed.length)] ^= 1 << (i % 8);
    check(seed);
    check(seed.subarray(0, Math.floor(Math.random() * seed.length)));
  }
  assert.ok(parsed > 0 && rejected > 0, `parsed ${parsed}, rejected ${rejected}`);
});

Deno.test("isStun() tells STUN apart from other packets on a shared socket", () => {
  assert.ok(isStun(SAMPLE_REQUEST));
  assert.ok(!isStun(new TextEncoder().encode("HPNCH probe packet with some length!")));
  assert.ok(!isStun(SAMPLE_REQUEST.subarray(0, 100)));
});
