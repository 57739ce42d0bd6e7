import assert from "node:assert/strict";
import { TokenBucket } from "../../lib/core/rate_limit.ts";

Deno.test("TokenBucket allows a burst, then the rate", () => {
  const bucket = new TokenBucket(10, 3, 0);
  assert.deepEqual([bucket.take(0), bucket.take(0), bucket.take(0), bucket.take(0)], [
    true,
    true,
    true,
    false,
  ]);
  assert.equal(bucket.take(50), false, "half a token after 50 ms");
  assert.equal(bucket.take(100), true, "one token after 100 ms at 10/s");
  assert.equal(bucket.take(100), false);
});

Deno.test("TokenBucket never holds more than its burst and ignores time going backwards", () => {
  const bucket = new TokenBucket(1000, 2, 0);
  assert.equal(bucket.take(1_000_000), true);
  assert.equal(bucket.take(1_000_000), true);
  assert.equal(bucket.take(1_000_000), false);
  assert.equal(bucket.take(0), false);
});

Deno.test("TokenBucket rejects a zero rate", () => {
  assert.throws(() => new TokenBucket(0, 1, 0), RangeError);
});
