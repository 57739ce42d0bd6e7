import assert from "node:assert/strict";
import { isValidWorkerId, ProtocolError } from "../../lib/protocol/messages.ts";
import { encodeMessage, parseClientMessage, parseServerMessage } from "../../lib/protocol/parse.ts";

Deno.test("parseClientMessage() reads the seed's register_public_ip and normalizes the IP", () => {
  assert.deepEqual(parseClientMessage('{"type":"register_public_ip","ip":"192.0.2.7"}'), {
    type: "register_public_ip",
    ip: "192.0.2.7",
  });
  assert.deepEqual(
    parseClientMessage('{"type":"register_public_ip","ip":" 2001:DB8::1\\n","extra":1}'),
    { type: "register_public_ip", ip: "2001:db8::1" },
  );
});

Deno.test("parseClientMessage() reads echo_request with any payload, defaulting to the seed's empty string", () => {
  assert.deepEqual(parseClientMessage('{"type":"echo_request","payload":{"a":[1]}}'), {
    type: "echo_request",
    payload: { a: [1] },
  });
  assert.deepEqual(parseClientMessage('{"type":"echo_request"}'), {
    type: "echo_request",
    payload: "",
  });
});

Deno.test("parseClientMessage() rejects malformed input with a typed error and a code", () => {
  const cases: [string, string][] = [
    ["not json", "invalid_json"],
    ["", "invalid_json"],
    ["[1,2]", "invalid_message"],
    ["null", "invalid_message"],
    ['"register_public_ip"', "invalid_message"],
    ["{}", "invalid_message"],
    ['{"type":5}', "invalid_message"],
    ['{"type":"launch_missiles"}', "unknown_type"],
    ['{"type":"register_public_ip"}', "invalid_message"],
    ['{"type":"register_public_ip","ip":7}', "invalid_message"],
    ['{"type":"register_public_ip","ip":""}', "invalid_ip"],
    ['{"type":"register_public_ip","ip":"example.com"}', "invalid_ip"],
    ['{"type":"register_public_ip","ip":"999.1.1.1"}', "invalid_ip"],
  ];
  for (const [text, code] of cases) {
    assert.throws(
      () => parseClientMessage(text),
      (error: unknown) => error instanceof ProtocolError && error.code === code,
      `${text} -> ${code}`,
    );
  }
});

Deno.test("parseClientMessage() error messages say what was wrong and what was seen", () => {
  assert.throws(
    () => parseClientMessage('{"type":"register_public_ip","ip":"x"}'),
    {
      message:
        'Cannot parse "register_public_ip": "ip" must be an IPv4 or IPv6 address: current value is "x"',
    },
  );
  const long = "y".repeat(500);
  try {
    parseClientMessage(JSON.stringify({ type: long }));
    assert.fail("should throw");
  } catch (error) {
    assert.ok((error as Error).message.length < 200, "long values are truncated");
  }
});

Deno.test("parseServerMessage() reads every server message and tolerates extra fields", () => {
  assert.deepEqual(
    parseServerMessage(
      '{"type":"registered","worker_id":"w","observed_ip":"192.0.2.1","observed_port":null,"protocol_version":1,"x":0}',
    ),
    {
      type: "registered",
      worker_id: "w",
      observed_ip: "192.0.2.1",
      observed_port: null,
      protocol_version: 1,
    },
  );
  assert.deepEqual(parseServerMessage('{"type":"public_ip_registered","ip":"::1"}'), {
    type: "public_ip_registered",
    ip: "::1",
  });
  // The seed's rendezvous answers echo with exactly these fields.
  assert.deepEqual(
    parseServerMessage(
      '{"type":"echo_response","original_payload":{"heartbeat":3},"processed_by_rendezvous":"ok"}',
    ),
    { type: "echo_response", original_payload: { heartbeat: 3 }, processed_by_rendezvous: "ok" },
  );
  assert.deepEqual(
    parseServerMessage('{"type":"going_away","reason":"rendezvous shutting down"}'),
    {
      type: "going_away",
      reason: "rendezvous shutting down",
    },
  );
  assert.deepEqual(parseServerMessage('{"type":"going_away"}'), { type: "going_away", reason: "" });
  assert.deepEqual(parseServerMessage('{"type":"error","code":"new_code","message":"m"}'), {
    type: "error",
    code: "new_code",
    message: "m",
  });
});

Deno.test("parseServerMessage() rejects unknown types and bad fields", () => {
  assert.throws(() => parseServerMessage('{"type":"from_the_future"}'), { code: "unknown_type" });
  assert.throws(
    () => parseServerMessage('{"type":"registered","worker_id":"w","observed_port":70000}'),
    { code: "invalid_message" },
  );
  assert.throws(() => parseServerMessage('{"type":"error"}'), { code: "invalid_message" });
});

Deno.test("parseClientMessage() never throws anything but ProtocolError on random input", () => {
  const samples = [
    '{"type":"register_public_ip","ip":"1.2.3.4"}',
    '{"type":"echo_request","payload":[1,{"a":"b"}]}',
  ];
  for (let i = 0; i < 5000; i++) {
    const base = samples[i % samples.length];
    const chars = [...base];
    const edits = 1 + (i % 4);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(Math.random() * chars.length);
      const op = Math.random();
      if (op < 0.4) chars.splice(at, 1);
      else if (op < 0.8) chars[at] = String.fromCharCode(Math.floor(Math.random() * 128));
      else chars.splice(at, 0, String.fromCharCode(Math.floor(Math.random() * 0xffff)));
    }
    const text = chars.join("");
    try {
      const message = parseClientMessage(text);
      assert.ok(message.type === "register_public_ip" || message.type === "echo_request");
    } catch (error) {
      assert.ok(error instanceof ProtocolError, `${JSON.stringify(text)} threw ${error}`);
    }
  }
});

Deno.test("isValidWorkerId() allows 1-128 characters of [A-Za-z0-9._-]", () => {
  for (const id of ["a", "A.b_c-9", crypto.randomUUID(), "x".repeat(128)]) {
    assert.ok(isValidWorkerId(id), id);
  }
  for (const id of ["", "x".repeat(129), "a b", "a/b", "a%20", "é", "a\n"]) {
    assert.ok(!isValidWorkerId(id), JSON.stringify(id));
  }
});

Deno.test("encodeMessage() writes JSON the parsers read back", () => {
  const text = encodeMessage({ type: "register_public_ip", ip: "192.0.2.9" });
  assert.deepEqual(parseClientMessage(text), { type: "register_public_ip", ip: "192.0.2.9" });
});

Deno.test("parseClientMessage() reads register_udp_endpoint and normalizes its addresses", () => {
  const message = parseClientMessage(JSON.stringify({
    type: "register_udp_endpoint",
    public: { ip: "203.0.113.9", port: 40000 },
    local: [{ ip: "10.0.0.5", port: 40000 }, { ip: "2001:DB8::5", port: 40000 }],
    nat: { mapping: "endpoint-independent", servers_answered: 2 },
  }));
  assert.deepEqual(message, {
    type: "register_udp_endpoint",
    public: { ip: "203.0.113.9", port: 40000 },
    local: [{ ip: "10.0.0.5", port: 40000 }, { ip: "2001:db8::5", port: 40000 }],
    nat: { mapping: "endpoint-independent" },
    rtt_ms: null,
  });
  assert.deepEqual(
    parseClientMessage(
      '{"type":"register_udp_endpoint","public":null,"nat":{"mapping":"no-udp"},"rtt_ms":12.34}',
    ),
    {
      type: "register_udp_endpoint",
      public: null,
      local: [],
      nat: { mapping: "no-udp" },
      rtt_ms: 12.3,
    },
  );
});

Deno.test("parseClientMessage() rejects malformed register_udp_endpoint", () => {
  const ok = {
    type: "register_udp_endpoint",
    public: { ip: "203.0.113.9", port: 40000 },
    local: [],
    nat: { mapping: "no-nat" },
  };
  const cases: [Record<string, unknown>, string][] = [
    [{ ...ok, public: "203.0.113.9:40000" }, "invalid_message"],
    [{ ...ok, public: { ip: "nope", port: 1 } }, "invalid_ip"],
    [{ ...ok, public: { ip: "1.2.3.4", port: 0 } }, "invalid_message"],
    [{ ...ok, public: { ip: "1.2.3.4", port: 70000 } }, "invalid_message"],
    [{ ...ok, local: "x" }, "invalid_message"],
    [{ ...ok, local: Array(17).fill({ ip: "10.0.0.1", port: 1 }) }, "invalid_message"],
    [{ ...ok, local: [{ ip: "10.0.0.1" }] }, "invalid_message"],
    [{ ...ok, nat: { mapping: "cone" } }, "invalid_message"],
    [{ ...ok, nat: undefined }, "invalid_message"],
  ];
  for (const [message, code] of cases) {
    assert.throws(
      () => parseClientMessage(JSON.stringify(message)),
      { code },
      JSON.stringify(message),
    );
  }
});

Deno.test("parseServerMessage() accepts a punch only with a 32-byte key and a 16-hex session id", () => {
  const punch = (fields: Record<string, unknown>) =>
    JSON.stringify({
      type: "punch",
      peer_id: "b",
      session_id: "00000000000000a1",
      key: btoa(String.fromCharCode(...new Uint8Array(32).fill(7))),
      candidates: [{ ip: "192.0.2.1", port: 4000, kind: "local" }],
      role: "responder",
      delay_ms: 120,
      ...fields,
    });
  const ok = parseServerMessage(punch({}));
  assert.equal(ok.type, "punch");
  assert.equal(ok.type === "punch" && ok.delay_ms, 120);
  for (
    const bad of [
      { key: "A".repeat(44) }, // 33 bytes once decoded
      { key: "A".repeat(42) + "==" }, // 31 bytes
      { key: btoa("short") },
      { key: 42 },
      { session_id: "00000000000000A1" },
      { session_id: "a1" },
    ]
  ) {
    assert.throws(() => parseServerMessage(punch(bad)), ProtocolError, JSON.stringify(bad));
  }
});

Deno.test("prove_key and challenge parse only in their exact forms", () => {
  const signature = "A".repeat(86);
  assert.deepEqual(parseClientMessage(JSON.stringify({ type: "prove_key", signature })), {
    type: "prove_key",
    signature,
  });
  for (const bad of ["A".repeat(85), "A".repeat(87), `${"A".repeat(84)}==`, "+".repeat(86), 7]) {
    assert.throws(
      () => parseClientMessage(JSON.stringify({ type: "prove_key", signature: bad })),
      ProtocolError,
    );
  }
  const nonce = "n".repeat(43);
  assert.deepEqual(parseServerMessage(JSON.stringify({ type: "challenge", nonce })), {
    type: "challenge",
    nonce,
  });
  for (const bad of ["short", "x".repeat(129), "has space in it ok", null]) {
    assert.throws(
      () => parseServerMessage(JSON.stringify({ type: "challenge", nonce: bad })),
      ProtocolError,
    );
  }
});

Deno.test("peer infos carry a well-formed key, or null (an older rendezvous sends none)", () => {
  const key = "k".repeat(43);
  const peer = { worker_id: "a", public: null, local: [], nat_mapping: null };
  const read = (extra: Record<string, unknown>) =>
    (parseServerMessage(JSON.stringify({ type: "peer_joined", peer: { ...peer, ...extra } })) as {
      peer: { key: string | null };
    }).peer.key;
  assert.equal(read({ key }), key);
  assert.equal(read({}), null);
  assert.equal(read({ key: "not a key" }), null);
});

Deno.test("peer_left carries reason revoked; an unknown reason is read as none", () => {
  assert.deepEqual(parseServerMessage('{"type":"peer_left","peer_id":"w2","reason":"revoked"}'), {
    type: "peer_left",
    peer_id: "w2",
    reason: "revoked",
  });
  for (const reason of ['"moved"', "7", "null"]) {
    assert.deepEqual(
      parseServerMessage(`{"type":"peer_left","peer_id":"w2","reason":${reason}}`),
      { type: "peer_left", peer_id: "w2" },
    );
  }
  assert.throws(() => parseServerMessage('{"type":"peer_left","peer_id":"a b"}'), ProtocolError);
});

Deno.test("port mappings on the wire: a worker's report is checked, a peer's read leniently, a punch's mapped candidate kept as such", () => {
  const mapped = { ip: "203.0.113.7", port: 41641, protocol: "nat-pmp", lifetime_sec: 7200 };
  const report = {
    type: "register_udp_endpoint",
    public: { ip: "203.0.113.7", port: 5000 },
    local: [],
    nat: { mapping: "endpoint-dependent" },
  };
  assert.deepEqual(
    parseClientMessage(JSON.stringify({ ...report, mapped })),
    { ...report, mapped, rtt_ms: null },
  );
  assert.equal(
    (parseClientMessage(JSON.stringify({ ...report, mapped: null })) as { mapped: unknown }).mapped,
    null,
  );
  assert.equal("mapped" in parseClientMessage(JSON.stringify(report)), false, "older workers");
  for (
    const bad of [
      { ...mapped, protocol: "igd" },
      { ...mapped, lifetime_sec: -1 },
      { ...mapped, lifetime_sec: 1e9 },
      { ...mapped, port: 0 },
      { ...mapped, ip: "not an ip" },
      "203.0.113.7:41641",
    ]
  ) {
    assert.throws(
      () => parseClientMessage(JSON.stringify({ ...report, mapped: bad })),
      ProtocolError,
      JSON.stringify(bad),
    );
  }
  // A peer's mapping that does not parse is none (a newer rendezvous may say more).
  const peer = {
    worker_id: "w2",
    public: null,
    local: [],
    nat_mapping: "endpoint-dependent",
    key: null,
    transport: null,
  };
  const peers = (m: unknown) =>
    (parseServerMessage(JSON.stringify({ type: "peers", peers: [{ ...peer, mapped: m }] })) as {
      peers: { mapped: unknown }[];
    }).peers[0].mapped;
  assert.deepEqual(peers(mapped), mapped);
  assert.equal(peers({ ...mapped, protocol: "x" }), null);
  assert.equal(peers(undefined), null);
  const punch = parseServerMessage(JSON.stringify({
    type: "punch",
    peer_id: "w2",
    session_id: "00000000000000a1",
    key: "A".repeat(43) + "=",
    candidates: [
      ...Array.from({ length: 16 }, (_, i) => ({ ip: `10.0.0.${i + 1}`, port: 1, kind: "local" })),
      { ip: "203.0.113.7", port: 5000, kind: "public", vouched: true },
      { ip: "2001:db8::7", port: 5001, kind: "public", vouched: false },
      { ip: "203.0.113.7", port: 41641, kind: "mapped", vouched: true },
      { ip: "203.0.113.8", port: 1, kind: "strange" },
    ],
    peer_nat: "endpoint-dependent",
    own_nat: "endpoint-independent",
    role: "initiator",
    delay_ms: 0,
  })) as { candidates: { kind: string; port: number }[] };
  assert.equal(
    punch.candidates.length,
    19,
    "16 locals, the public ones (IPv4, IPv6) and the mapped one; the 20th is dropped",
  );
  assert.deepEqual(punch.candidates.at(-1), {
    ip: "203.0.113.7",
    port: 41641,
    kind: "mapped",
    vouched: true,
  });
});

Deno.test("public6 on the wire: an IPv6 endpoint only, null or absent", () => {
  const report = {
    type: "register_udp_endpoint",
    public: { ip: "203.0.113.7", port: 5000 },
    local: [],
    nat: { mapping: "endpoint-independent" },
  };
  assert.deepEqual(
    (parseClientMessage(JSON.stringify({ ...report, public6: { ip: "2001:db8::9", port: 7 } })) as {
      public6: unknown;
    }).public6,
    { ip: "2001:db8::9", port: 7 },
  );
  assert.equal(
    (parseClientMessage(JSON.stringify({ ...report, public6: null })) as { public6: unknown })
      .public6,
    null,
  );
  assert.equal("public6" in parseClientMessage(JSON.stringify(report)), false);
  for (const bad of [{ ip: "203.0.113.9", port: 7 }, { ip: "2001:db8::9", port: 0 }, "x"]) {
    assert.throws(
      () => parseClientMessage(JSON.stringify({ ...report, public6: bad })),
      ProtocolError,
      JSON.stringify(bad),
    );
  }
});
