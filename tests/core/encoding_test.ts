import assert from "node:assert/strict";
import {
  decodeBase64Url,
  fromBase64,
  hex,
  randomHex,
  toBase64,
  toBase64Url,
} from "../../lib/core/encoding.ts";

Deno.test("hex() and randomHex() write lower-case pairs", () => {
  assert.equal(hex(new Uint8Array([0, 1, 0xab, 0xff])), "0001abff");
  assert.equal(hex(new Uint8Array()), "");
  assert.match(randomHex(6), /^[0-9a-f]{12}$/);
  assert.notEqual(randomHex(8), randomHex(8));
});

Deno.test("base64 and base64url round-trip every byte, RFC 4648 vectors included", () => {
  const text = new TextEncoder();
  for (const [plain, b64] of [["", ""], ["f", "Zg=="], ["fo", "Zm8="], ["foobar", "Zm9vYmFy"]]) {
    assert.equal(toBase64(text.encode(plain)), b64);
    assert.deepEqual(fromBase64(b64), text.encode(plain));
  }
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.deepEqual(fromBase64(toBase64(all)), all);
  const url = toBase64Url(all);
  assert.match(url, /^[A-Za-z0-9_-]+$/, "no padding, no + or /");
  assert.deepEqual(decodeBase64Url(url), all);
  assert.deepEqual(decodeBase64Url(url + "="), all.subarray(0, 256), "padding is optional");
  const big = Uint8Array.from({ length: 100_000 }, (_, i) => (i * 7919) & 0xff); // past one 32 KiB chunk
  assert.deepEqual(fromBase64(toBase64(big)), big);
});

Deno.test("decodeBase64Url() says undefined for what is not base64url", () => {
  for (const junk of ["a+b", "a/b", "abc=d", "a b", "====", "A"]) {
    assert.equal(decodeBase64Url(junk), undefined, junk);
  }
});
