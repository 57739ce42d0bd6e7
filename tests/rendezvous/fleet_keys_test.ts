/**
 * The fleet's key-binding scripts against a real redis-server: only the
 * session that holds a binding starts its hold when it ends.
 */
import assert from "node:assert/strict";
import { parseRedisUrl, RedisConnection, text } from "../../lib/redis/client.ts";
import { CLAIM_KEY, RELEASE_KEY } from "../../lib/rendezvous/fleet_wire.ts";
import { requireOrSkip } from "../_helpers.ts";
import { RedisServer, redisUnavailable } from "../_redis.ts";

const skip = requireOrSkip(await redisUnavailable(), "fleet key-binding script tests");

Deno.test({
  name:
    "fleet key bindings: a late cleanup of a replaced session starts no hold under the session that holds the id",
  ignore: skip !== undefined,
  async fn() {
    const server = await RedisServer.start();
    const redis = await RedisConnection.open({ url: parseRedisUrl(server.url()) });
    const key = "holepunch:key:w1";
    const claim = async (k: string, session: string, now: number) => {
      const bound = await redis.command([
        "EVAL",
        CLAIM_KEY,
        "1",
        key,
        k,
        String(now),
        "3000",
        session,
      ]);
      return bound === null ? "ok" : text(bound);
    };
    const release = (k: string, session: string, now: number) =>
      redis.command(["EVAL", RELEASE_KEY, "1", key, k, String(now), "3000", session]);
    try {
      assert.equal(await claim("K1", "s1", 0), "ok");
      assert.equal(await claim("K1", "s2", 10), "ok", "the worker reconnected: s2 holds the id");
      assert.equal(await release("K1", "s1", 20), 0, "s1's late cleanup changes nothing");
      assert.equal(await redis.command(["PTTL", key]), -1, "no countdown under s2");
      assert.equal(await claim("K2", "x", 5000), "K1", "another key is still refused");
      assert.equal(await release("K1", "s2", 6000), 1, "the holder's end starts the hold");
      const ttl = await redis.command(["PTTL", key]) as number;
      assert.ok(ttl > 0 && ttl <= 3000, `PTTL ${ttl}`);
      // A binding written before holders were recorded is released by any session of its key.
      await redis.command(["SET", key, JSON.stringify({ k: "K3" })]);
      assert.equal(await release("K3", "old", 7000), 1);
    } finally {
      redis.close();
      await server.stop();
    }
  },
});
