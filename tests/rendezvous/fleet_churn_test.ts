/**
 * The fleet under churn, with real rendezvous processes over a real
 * redis-server: a worker that re-registers on another instance a few
 * milliseconds after its first session leaves no ghost anywhere, and a
 * killed instance's key bindings start their `KEY_HOLD_SEC` countdown when
 * it is reaped.
 */

import assert from "node:assert/strict";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import { parseRedisUrl, RedisConnection, type RespValue, text } from "../../lib/redis/client.ts";
import { listWorkers, requireOrSkip, TestClient, waitFor, within } from "../_helpers.ts";
import { fleetUnavailable, keyedAt, TestFleet, until } from "../_fleet.ts";

const skip = requireOrSkip(await fleetUnavailable(), "fleet churn tests");

/** Runs `work` over `items`, `width` at a time. */
async function inBatches<T>(items: T[], width: number, work: (item: T) => Promise<void>) {
  for (let i = 0; i < items.length; i += width) {
    await Promise.all(items.slice(i, i + width).map(work));
  }
}

/** What Redis holds of the fleet's workers: the hash and every instance's set. */
async function redisWorkers(redis: RedisConnection): Promise<{ hash: number; sets: number }> {
  const hash = await redis.command(["HLEN", "holepunch:workers"]) as number;
  const keys = (await redis.command(["KEYS", "holepunch:inst:*"]) as RespValue[]).map((k) =>
    text(k)!
  );
  let sets = 0;
  for (const key of keys) sets += await redis.command(["SCARD", key]) as number;
  return { hash, sets };
}

Deno.test({
  name:
    "fleet churn: an id that re-registers on another instance within milliseconds leaves no ghost when both sessions end",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    const [one, two] = fleet.instances;
    const redis = await RedisConnection.open({ url: parseRedisUrl(fleet.redis.url()) });
    const at = (r: { port: number }, id: string) => `ws://127.0.0.1:${r.port}/ws/register/${id}`;
    try {
      const ids = Array.from({ length: 200 }, (_, i) => `ghost-${i}`);
      await inBatches(ids, 20, async (id) => {
        // A reconnect that lands on the other instance right after the first registered.
        const first = await TestClient.connect(at(one, id));
        const second = await TestClient.connect(at(two, id));
        assert.equal(
          (await within(first.closed, 5000, "first session replaced")).code,
          CloseCode.SESSION_REPLACED,
        );
        await second.close();
      });
      const counts = async () => {
        const [a, b] = await Promise.all([listWorkers(one.http), listWorkers(two.http)]);
        return { one: a.connected_workers_count, two: b.connected_workers_count };
      };
      // Correct instances settle in well under a second; a ghost stays for ever.
      await waitFor(
        async () => {
          const listed = await counts();
          const stored = await redisWorkers(redis);
          return listed.one + listed.two + stored.hash + stored.sets === 0;
        },
        "every instance and Redis to hold no worker",
        10_000,
        100,
      ).catch(async (error) => {
        const left = await listWorkers(one.http);
        throw new Error(
          `ghosts: ${JSON.stringify(await counts())} listed, Redis ${
            JSON.stringify(await redisWorkers(redis))
          } (${Object.keys(left.workers).slice(0, 10).join(", ")}…)`,
          { cause: error },
        );
      });
    } finally {
      redis.close();
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet churn: a killed instance's key bindings are held KEY_HOLD_SEC from its reaping, then free",
  ignore: skip !== undefined,
  async fn() {
    const holdMs = 3000;
    const fleet = await TestFleet.start(2, { KEY_HOLD_SEC: String(holdMs / 1000) });
    const [survivor, victim] = fleet.instances;
    const redis = await RedisConnection.open({ url: parseRedisUrl(fleet.redis.url()) });
    const clients: TestClient[] = [];
    try {
      const identities = await Promise.all(Array.from({ length: 100 }, () => Identity.generate()));
      await inBatches([...identities.keys()], 20, async (i) => {
        const client = await keyedAt(victim.port, `keyed-${i}`, identities[i]);
        await until(client, (m) => m.type === "registered", "registered");
        clients.push(client);
      });
      await waitFor(
        async () => (await listWorkers(survivor.http)).connected_workers_count === 100,
        "the survivor to list all 100",
      );
      await victim.proc.stop("SIGKILL");
      // Reaped after FLEET_TTL_SEC (2 s) and a heartbeat.
      await waitFor(
        async () => (await listWorkers(survivor.http)).connected_workers_count === 0,
        "the victim's workers to be reaped",
        10_000,
        50,
      );
      const ttls = await Promise.all(
        identities.map((_, i) =>
          redis.command(["PTTL", `holepunch:key:keyed-${i}`]) as Promise<number>
        ),
      );
      // -1: no expiry (bound for ever); -2: gone already (never held).
      const forever = ttls.filter((t) => t === -1).length;
      assert.equal(forever, 0, `${forever} of 100 bindings never expire`);
      assert.ok(
        ttls.every((t) => t > 0 && t <= holdMs),
        `every binding counts down from the reaping: ${ttls.slice(0, 5).join(", ")}…`,
      );
      // Within the hold, another key is refused; once it ran out, another key may take the id.
      const other = await Identity.generate();
      const refused = await keyedAt(survivor.port, "keyed-0", other);
      assert.equal((await within(refused.closed, 5000, "refusal")).code, CloseCode.KEY_REFUSED);
      const taken = await waitFor(
        async () => {
          const client = await keyedAt(survivor.port, "keyed-0", other);
          const first = await Promise.race([client.next(5000), client.closed]);
          if ((first as { type?: string }).type === "registered") return client;
          await client.close().catch(() => {});
          return undefined;
        },
        "another key to take the id once the hold ran out",
        holdMs + 5000,
        250,
      );
      await taken.close();
    } finally {
      redis.close();
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet churn: a peer on another instance that leaves is pruned from the path reports every instance lists",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    const [one, two] = fleet.instances;
    const at = (r: { port: number }, id: string) => `ws://127.0.0.1:${r.port}/ws/register/${id}`;
    const reporter = await TestClient.connect(at(one, "reporter"));
    const peer = await TestClient.connect(at(two, "far"));
    try {
      await waitFor(async () => "far" in (await listWorkers(one.http)).workers, "far listed");
      reporter.send({ type: "path_update", peer_id: "far", path: "direct", rtt_ms: 3 });
      for (const r of [one, two]) {
        await waitFor(
          async () => (await listWorkers(r.http)).workers.reporter?.peer_paths.far,
          "the path listed on both instances",
        );
      }
      await peer.close();
      for (const r of [one, two]) {
        await waitFor(
          async () => {
            const workers = (await listWorkers(r.http)).workers;
            return !("far" in workers) &&
              Object.keys(workers.reporter?.peer_paths ?? { x: 1 }).length === 0;
          },
          "the departed peer pruned from the listing on both instances",
        );
      }
    } finally {
      await reporter.close().catch(() => {});
      await peer.close().catch(() => {});
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet churn: a keyed worker that leaves while Redis is unreachable has its binding count down once Redis answers again",
  ignore: skip !== undefined,
  async fn() {
    const holdMs = 3000;
    const fleet = await TestFleet.start(1, { KEY_HOLD_SEC: String(holdMs / 1000) });
    const [only] = fleet.instances;
    const redis = await RedisConnection.open({ url: parseRedisUrl(fleet.redis.url()) });
    const info = text(await redis.command(["INFO", "server"]))!;
    const pid = Number(/process_id:(\d+)/.exec(info)![1]);
    const ready = async () => (await (await fetch(`${only.http}/ready`)).json()).status;
    let stopped = false;
    try {
      const client = await keyedAt(only.port, "paused", await Identity.generate());
      await until(client, (m) => m.type === "registered", "registered");
      // Redis stops answering (its data kept), the worker leaves, Redis answers again.
      Deno.kill(pid, "SIGSTOP");
      stopped = true;
      await waitFor(async () => (await ready()) === "degraded", "/ready to say degraded");
      await client.close();
      Deno.kill(pid, "SIGCONT");
      stopped = false;
      await waitFor(async () => (await ready()) === "ready", "/ready again", 15_000);
      const ttl = await waitFor(async () => {
        const t = await redis.command(["PTTL", "holepunch:key:paused"]) as number;
        return t !== -1 && t;
      }, "the binding to count down");
      assert.ok(ttl > 0 && ttl <= holdMs, `PTTL ${ttl}`);
    } finally {
      if (stopped) Deno.kill(pid, "SIGCONT");
      redis.close();
      await fleet.close();
    }
  },
});

Deno.test({
  name:
    "fleet churn: after Redis comes back empty, a connected worker's key still binds its id fleet-wide",
  ignore: skip !== undefined,
  async fn() {
    const fleet = await TestFleet.start(2);
    const [one, two] = fleet.instances;
    const ready = async (http: string) => (await (await fetch(`${http}/ready`)).json()).status;
    const owner = await keyedAt(one.port, "kept", await Identity.generate());
    try {
      await until(owner, (m) => m.type === "registered", "registered");
      await fleet.redis.stop();
      await fleet.redis.restart(); // empty
      for (const r of [one, two]) {
        await waitFor(async () => (await ready(r.http)) === "ready", "ready again", 15_000);
      }
      const thief = await keyedAt(two.port, "kept", await Identity.generate());
      assert.equal((await within(thief.closed, 5000, "refusal")).code, CloseCode.KEY_REFUSED);
      owner.send({ type: "echo_request", payload: "still mine" });
      assert.equal(
        (await until(owner, (m) => m.type === "echo_response", "echo")).original_payload,
        "still mine",
      );
    } finally {
      await owner.close().catch(() => {});
      await fleet.close();
    }
  },
});
