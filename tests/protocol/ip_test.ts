import assert from "node:assert/strict";
import { addressScope, formatIp, isIp, normalizeIp, parseIp } from "../../lib/protocol/ip.ts";

Deno.test("parseIp() accepts IPv4 dotted quads", () => {
  assert.deepEqual(parseIp("192.0.2.1"), { family: 4, bytes: new Uint8Array([192, 0, 2, 1]) });
  assert.deepEqual(parseIp("0.0.0.0")?.bytes, new Uint8Array([0, 0, 0, 0]));
  assert.deepEqual(parseIp("255.255.255.255")?.bytes, new Uint8Array([255, 255, 255, 255]));
});

Deno.test("parseIp() accepts the IPv6 text forms of RFC 4291", () => {
  const cases: [string, number[]][] = [
    ["::", new Array(16).fill(0)],
    ["::1", [...new Array(15).fill(0), 1]],
    ["2001:db8::1", [0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1]],
    ["2001:DB8:0:0:8:800:200C:417A", [
      0x20,
      0x01,
      0x0d,
      0xb8,
      0,
      0,
      0,
      0,
      0,
      8,
      0x08,
      0,
      0x20,
      0x0c,
      0x41,
      0x7a,
    ]],
    ["ff01::", [0xff, 0x01, ...new Array(14).fill(0)]],
    ["::ffff:192.0.2.1", [...new Array(10).fill(0), 0xff, 0xff, 192, 0, 2, 1]],
    ["1:2:3:4:5:6:1.2.3.4", [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 1, 2, 3, 4]],
  ];
  for (const [text, bytes] of cases) {
    const parsed = parseIp(text);
    assert.equal(parsed?.family, 6, text);
    assert.deepEqual(parsed?.bytes, new Uint8Array(bytes), text);
  }
});

Deno.test("parseIp() rejects everything that is not exactly an address", () => {
  const bad = [
    "",
    " ",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "01.2.3.4",
    "1.2.3.4 ",
    "1.2.3.-4",
    "1.2.3.4:80",
    "example.com",
    "localhost",
    ":::",
    "1::2::3",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7::8",
    "12345::",
    "g::1",
    "fe80::1%eth0",
    "[::1]",
    "::1.2.3",
    "1.2.3.4::",
    "::ffff:256.0.0.1",
    "a".repeat(100),
  ];
  for (const text of bad) assert.equal(parseIp(text), null, JSON.stringify(text));
  assert.equal(isIp("nope"), false);
  assert.equal(parseIp(42 as unknown as string), null);
});

Deno.test("formatIp() writes IPv6 in the canonical form of RFC 5952", () => {
  const cases: [string, string][] = [
    ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], // first of two equal runs
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // one zero group stays
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"], // longest run wins
    ["0:0:0:0:0:0:0:0", "::"],
    ["1:0:0:0:0:0:0:0", "1::"],
    ["::ffff:c000:201", "::ffff:192.0.2.1"],
    ["2001:DB8::ABCD", "2001:db8::abcd"],
  ];
  for (const [input, expected] of cases) {
    assert.equal(formatIp(parseIp(input)!.bytes), expected, input);
  }
  assert.throws(() => formatIp(new Uint8Array(5)), RangeError);
});

Deno.test("normalizeIp() unmaps IPv4-mapped addresses and round-trips the rest", () => {
  assert.equal(normalizeIp("::ffff:192.0.2.1"), "192.0.2.1");
  assert.equal(normalizeIp("192.0.2.1"), "192.0.2.1");
  assert.equal(normalizeIp("2001:DB8::1"), "2001:db8::1");
  assert.equal(normalizeIp("bogus"), null);
});

Deno.test("formatIp() and parseIp() round-trip random addresses", () => {
  for (let i = 0; i < 2000; i++) {
    const bytes = crypto.getRandomValues(new Uint8Array(i % 2 ? 4 : 16));
    // Zero some groups so "::" shortening is exercised.
    if (bytes.length === 16) { for (let j = 0; j < 16; j++) if (Math.random() < 0.4) bytes[j] = 0; }
    const text = formatIp(bytes);
    assert.deepEqual(parseIp(text)?.bytes, bytes, text);
  }
});

Deno.test("addressScope() knows the special-purpose ranges a worker must not be aimed at", () => {
  const cases: [string, string][] = [
    ["0.0.0.0", "unspecified"],
    ["::", "unspecified"],
    ["127.0.0.1", "loopback"],
    ["127.200.0.9", "loopback"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.1", "loopback"],
    ["169.254.169.254", "metadata"],
    ["fd00:ec2::254", "metadata"],
    ["169.254.1.1", "link-local"],
    ["fe80::1", "link-local"],
    ["224.0.0.1", "multicast"],
    ["239.255.255.250", "multicast"],
    ["ff02::1", "multicast"],
    ["255.255.255.255", "broadcast"],
    ["0.1.2.3", "invalid"],
    ["240.0.0.1", "invalid"],
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["172.32.0.1", "global"],
    ["192.168.1.1", "private"],
    ["fd12::1", "private"],
    ["100.64.0.1", "shared"],
    ["100.127.255.255", "shared"],
    ["100.128.0.1", "global"],
    ["203.0.113.9", "global"],
    ["2001:db8::1", "global"],
    ["::ffff:8.8.8.8", "global"],
    ["example.com", "invalid"],
  ];
  for (const [ip, scope] of cases) assert.equal(addressScope(ip), scope, ip);
});
