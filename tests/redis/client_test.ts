/**
 * The RESP codec on its own, and the client against a real redis-server:
 * plain and TLS, AUTH with a password and with an ACL user, pipelining,
 * pub/sub, binary payloads, and coming back after the server restarts empty.
 */

import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import {
  parseRedisUrl,
  Redis,
  RedisConnection,
  RedisReplyError,
  RedisUnavailableError,
  text,
} from "../../lib/redis/client.ts";
import { encodeCommand, RespParser, RespProtocolError } from "../../lib/redis/resp.ts";
import { RedisServer, redisUnavailable } from "../_redis.ts";
import { requireOrSkip, within } from "../_helpers.ts";

const enc = new TextEncoder();
const skip = requireOrSkip(await redisUnavailable(), "Redis tests");

Deno.test("RESP: commands encode as arrays of bulk strings, bytes kept as they are", () => {
  const bytes = encodeCommand(["SET", "k", Uint8Array.of(0, 13, 10, 255), 42]);
  const expected = Uint8Array.of(
    ...enc.encode("*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n"),
    0,
    13,
    10,
    255,
    ...enc.encode("\r\n$2\r\n42\r\n"),
  );
  assert.deepEqual(bytes, expected);
});

Deno.test("RESP: every reply type, split at every byte, parses the same", () => {
  const stream = enc.encode(
    "+OK\r\n-ERR wrong\r\n:-7\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n*0\r\n*3\r\n:1\r\n*2\r\n$1\r\na\r\n+b\r\n$0\r\n\r\n",
  );
  const want = (values: unknown[]) => {
    assert.equal(values[0], "OK");
    assert.ok(values[1] instanceof RedisReplyError && values[1].message === "ERR wrong");
    assert.equal(values[2], -7);
    assert.equal(text(values[3] as Uint8Array), "he\r\nl");
    assert.deepEqual(values.slice(4, 7), [null, null, []]);
    const nested = values[7] as unknown[];
    assert.equal(nested[0], 1);
    assert.deepEqual((nested[1] as unknown[]).map((v) => text(v as string)), ["a", "b"]);
    assert.deepEqual(nested[2], new Uint8Array(0));
    assert.equal(values.length, 8);
  };
  for (let cut = 0; cut <= stream.length; cut++) {
    const parser = new RespParser();
    const values: unknown[] = [];
    for (const part of [stream.subarray(0, cut), stream.subarray(cut)]) {
      parser.push(part);
      let v;
      while ((v = parser.next()) !== undefined) values.push(v);
    }
    want(values);
    assert.equal(parser.buffered, 0);
  }
  // And one byte at a time.
  const parser = new RespParser();
  const values: unknown[] = [];
  for (const byte of stream) {
    parser.push(Uint8Array.of(byte));
    let v;
    while ((v = parser.next()) !== undefined) values.push(v);
  }
  want(values);
});

Deno.test("RESP: junk and oversized replies are refused, not buffered without bound", () => {
  const bad = [
    "?what\r\n",
    ":12a\r\n",
    "$abc\r\n",
    "$-2\r\n",
    "$3\r\nabcd\r\n",
    "*99999999999\r\n",
  ];
  for (const input of bad) {
    const parser = new RespParser();
    parser.push(enc.encode(input));
    assert.throws(() => parser.next(), RespProtocolError, input);
  }
  const small = new RespParser({ maxBulkBytes: 10, maxLineBytes: 16 });
  small.push(enc.encode("$11\r\n"));
  assert.throws(() => small.next(), RespProtocolError);
  const line = new RespParser({ maxLineBytes: 16 });
  line.push(enc.encode("+" + "x".repeat(40)));
  assert.throws(() => line.next(), RespProtocolError, "a line without an end, past the bound");
  const deep = new RespParser();
  deep.push(enc.encode("*1\r\n".repeat(40)));
  assert.throws(() => deep.next(), RespProtocolError);
});

Deno.test("parseRedisUrl: schemes, credentials, database; refusals name the problem", () => {
  assert.deepEqual(parseRedisUrl("redis://10.0.0.3"), {
    tls: false,
    hostname: "10.0.0.3",
    port: 6379,
    db: 0,
  });
  assert.deepEqual(parseRedisUrl("rediss://alice:p%40ss@redis.internal:6378/2"), {
    tls: true,
    hostname: "redis.internal",
    port: 6378,
    username: "alice",
    password: "p@ss",
    db: 2,
  });
  assert.equal(parseRedisUrl("redis://:secret@[::1]:7000").password, "secret");
  assert.equal(parseRedisUrl("redis://[::1]:7000").hostname, "::1");
  for (const bad of ["http://x", "redis://", "redis://h/16", "redis://h/x", "nonsense"]) {
    assert.throws(() => parseRedisUrl(bad), RangeError, bad);
  }
  assert.throws(
    () => parseRedisUrl("ftp://u:hunter2@h"),
    (e: Error) => !e.message.includes("hunter2"),
  );
});

Deno.test({
  name:
    "RedisConnection: AUTH (password and ACL user), pipelined commands in order, binary values, error replies",
  ignore: skip !== undefined,
  async fn() {
    const server = await RedisServer.start({
      password: "pw one",
      user: { name: "fleet", password: "pw-two" },
    });
    try {
      await assert.rejects(
        async () => {
          const c = await RedisConnection.open({ url: parseRedisUrl(server.url("none")) });
          try {
            await c.command(["GET", "x"]);
          } finally {
            c.close();
          }
        },
        (e: Error) => e instanceof RedisReplyError && /NOAUTH/.test(e.message),
      );
      await assert.rejects(
        () =>
          RedisConnection.open({
            url: parseRedisUrl(server.url("none").replace("//", "//:wrong@")),
          }),
        RedisReplyError,
      );
      for (const auth of ["password", "user"] as const) {
        const c = await RedisConnection.open({ url: parseRedisUrl(server.url(auth)) });
        try {
          // 2,000 commands issued in one turn: one write, replies in order.
          const replies = await Promise.all(
            Array.from(
              { length: 2000 },
              (_, i) => c.command(["INCR", `counter-${auth}`]).then(Number).then((n) => [i, n]),
            ),
          );
          assert.ok(replies.every(([i, n]) => n === i + 1));
          const binary = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 31) & 0xff);
          await c.command(["SET", "bin", binary]);
          assert.deepEqual(await c.command(["GET", "bin"]), binary);
          await assert.rejects(() => c.command(["HGET", "bin", "f"]), RedisReplyError);
          assert.equal(
            text(await c.command(["PING"])),
            "PONG",
            "the connection goes on after an error",
          );
        } finally {
          c.close();
        }
      }
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name:
    "RedisConnection over TLS (rediss://) trusts the CA given and refuses a server it cannot verify",
  ignore: skip !== undefined,
  async fn() {
    const server = await RedisServer.start({ tls: true, password: "tls-secret" });
    try {
      const c = await RedisConnection.open({
        url: parseRedisUrl(server.url("password")),
        caCerts: [server.caCert!],
      });
      try {
        await c.command(["SET", "over", "tls"]);
        assert.equal(text(await c.command(["GET", "over"])), "tls");
      } finally {
        c.close();
      }
      await assert.rejects(() =>
        RedisConnection.open({ url: parseRedisUrl(server.url("password")) })
      );
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name:
    "Redis: pub/sub across reconnects; commands fail at once while Redis is away; onUp after it restarts empty",
  ignore: skip !== undefined,
  async fn() {
    const server = await RedisServer.start();
    const lines: Record<string, unknown>[] = [];
    const ups: number[] = [];
    const downs: number[] = [];
    let upSignal = Promise.withResolvers<void>();
    const downSignal = Promise.withResolvers<void>();
    const received: string[] = [];
    let gotMessage = Promise.withResolvers<void>();
    const redis = new Redis({
      url: server.url(),
      logger: new Logger({ sink: (l) => lines.push(JSON.parse(l)), format: "json" }),
      pingMs: 200,
      onUp: () => {
        ups.push(Date.now());
        upSignal.resolve();
      },
      onDown: () => {
        downs.push(Date.now());
        downSignal.resolve();
      },
    });
    const publisher = await RedisConnection.open({ url: parseRedisUrl(server.url()) });
    try {
      await redis.subscribe("fleet", (payload) => {
        received.push(new TextDecoder().decode(payload));
        gotMessage.resolve();
      });
      redis.start();
      await within(upSignal.promise, 5000, "connected");
      assert.equal(await publisher.command(["PUBLISH", "fleet", "one"]), 1);
      await within(gotMessage.promise, 2000, "message one");
      assert.deepEqual(received, ["one"]);

      // Redis dies: the client notices, and fails commands at once meanwhile.
      upSignal = Promise.withResolvers();
      await server.stop();
      await within(downSignal.promise, 3000, "down noticed");
      assert.equal(redis.up, false);
      assert.throws(() => redis.command("PING"), RedisUnavailableError);

      // Back, empty: reconnected, subscription restored, onUp again.
      await server.restart();
      await within(upSignal.promise, 10_000, "reconnected");
      assert.equal(ups.length, 2);
      gotMessage = Promise.withResolvers();
      const again = await RedisConnection.open({ url: parseRedisUrl(server.url()) });
      try {
        assert.equal(await again.command(["PUBLISH", "fleet", "two"]), 1, "resubscribed");
      } finally {
        again.close();
      }
      await within(gotMessage.promise, 2000, "message two");
      assert.deepEqual(received, ["one", "two"]);
      assert.equal(text(await redis.command("PING")), "PONG");
      assert.ok(lines.some((l) => l.message === "redis connection lost"));
    } finally {
      publisher.close();
      await redis.close();
      await server.close();
    }
  },
});

Deno.test("Redis: a server that goes silent (a partition) is noticed: replies owed, nothing for two PING periods", async () => {
  // A "Redis" that accepts and reads, and never answers.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      held.push(conn);
      (async () => {
        const buffer = new Uint8Array(1024);
        while ((await conn.read(buffer).catch(() => null)) !== null) { /* swallow */ }
      })();
    }
  })();
  const up = Promise.withResolvers<void>();
  const down = Promise.withResolvers<Error | undefined>();
  const redis = new Redis({
    url: `redis://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    logger: new Logger({ sink: () => {} }),
    pingMs: 100,
    onUp: () => up.resolve(),
    onDown: (error) => down.resolve(error),
  });
  try {
    redis.start();
    await within(up.promise, 2000, "connected (no AUTH, nothing to wait for)");
    const error = await within(down.promise, 2000, "silence noticed");
    assert.match(String(error?.message), /sent nothing/);
  } finally {
    await redis.close();
    listener.close();
    for (const conn of held) conn.close();
    await accepting.catch(() => {});
  }
});
