/**
 * A fleet on one machine: a real redis-server, N rendezvous processes
 * sharing it (`REDIS_URL`), and haproxy in front as Cloud Run's stand-in
 * (round robin, WebSocket-aware, `X-Forwarded-For` added, instances out of
 * rotation while `/ready` fails).
 */

import assert from "node:assert/strict";
import type { Identity } from "../lib/protocol/identity.ts";
import { Proc, spawnRendezvous, TestClient, toolMissing, waitFor, within } from "./_helpers.ts";
import { freeTcpPort, RedisServer, redisUnavailable } from "./_redis.ts";

/** Why a fleet cannot run here, or undefined. */
export async function fleetUnavailable(): Promise<string | undefined> {
  return await redisUnavailable() ?? await toolMissing("haproxy", ["-v"], "haproxy");
}

export interface FleetInstance {
  proc: Proc;
  port: number;
  http: string;
}

/** A running fleet. */
export class TestFleet {
  readonly redis: RedisServer;
  readonly instances: FleetInstance[];
  readonly front: { port: number; http: string; ws: string };
  #haproxy: Proc;
  #dir: string;
  #env: Record<string, string>;

  private constructor(
    redis: RedisServer,
    instances: FleetInstance[],
    haproxy: Proc,
    port: number,
    dir: string,
    env: Record<string, string>,
  ) {
    this.redis = redis;
    this.instances = instances;
    this.#haproxy = haproxy;
    this.front = { port, http: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}` };
    this.#dir = dir;
    this.#env = env;
  }

  /** Environment of every instance. */
  static env(redis: RedisServer, extra: Record<string, string> = {}): Record<string, string> {
    return { REDIS_URL: redis.url(), FLEET_TTL_SEC: "2", TRUST_PROXY: "true", ...extra };
  }

  static async start(count = 3, extra: Record<string, string> = {}): Promise<TestFleet> {
    const redis = await RedisServer.start();
    const env = TestFleet.env(redis, extra);
    const instances: FleetInstance[] = [];
    const dir = await Deno.makeTempDir({ prefix: "holepunch-fleet-" });
    try {
      for (let i = 0; i < count; i++) instances.push(await spawnRendezvous(env));
      const port = freeTcpPort();
      const config = [
        "global",
        "  maxconn 9000", // two fds each, under the 20k open-files limit
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 120s",
        "  timeout server 120s",
        "  timeout tunnel 1h",
        "  option forwardfor",
        "  option redispatch",
        "  retries 3",
        "frontend front",
        `  bind 127.0.0.1:${port}`,
        "  default_backend rendezvous",
        "backend rendezvous",
        "  balance roundrobin",
        "  option httpchk GET /ready",
        "  http-check expect status 200",
        ...instances.map((r, i) =>
          `  server r${i} 127.0.0.1:${r.port} check inter 250ms fall 1 rise 1`
        ),
        "",
      ].join("\n");
      await Deno.writeTextFile(`${dir}/haproxy.cfg`, config);
      const haproxy = new Proc("haproxy", ["-db", "-f", `${dir}/haproxy.cfg`], {});
      const fleet = new TestFleet(redis, instances, haproxy, port, dir, env);
      await fleet.#waitForFront();
      return fleet;
    } catch (error) {
      for (const r of instances) await r.proc.stop();
      await redis.close();
      throw error;
    }
  }

  async #waitForFront(): Promise<void> {
    let up = false;
    const exited = this.#haproxy.status.then(() => {
      if (!up) throw new Error(`haproxy exited:\n${this.#haproxy.stdout}\n${this.#haproxy.dump()}`);
    });
    exited.catch(() => {}); // judged below, while it matters
    const answered = waitFor(
      () => fetch(`${this.front.http}/health`).then(async (r) => (await r.body?.cancel(), r.ok)),
      "haproxy to answer",
      10_000,
      50,
    );
    await Promise.race([answered, exited]);
    up = true;
  }

  /** Starts one more instance (not behind haproxy), as a replacement would be. */
  async spawnInstance(): Promise<FleetInstance> {
    const instance = await spawnRendezvous(this.#env);
    this.instances.push(instance);
    return instance;
  }

  async close(): Promise<void> {
    await this.#haproxy.stop("SIGTERM");
    await Promise.all(this.instances.map((r) => r.proc.stop()));
    await this.redis.close();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

export type Message = Record<string, unknown>;

/** Reads messages until one matches (others are skipped). */
export async function until(
  client: TestClient,
  match: (m: Message) => boolean,
  what: string,
  timeoutMs = 5000,
): Promise<Message> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms`);
    const message = await client.next(left).catch(() => {
      throw new Error(`no ${what} within ${timeoutMs} ms`);
    });
    if (match(message)) return message;
  }
}

/** Opens a keyed session at `port` and answers its challenge with `identity`. */
export async function keyedAt(
  port: number,
  id: string,
  identity: Identity,
  headers: Record<string, string> = {},
): Promise<TestClient> {
  const client = new TestClient(
    `ws://127.0.0.1:${port}/ws/register/${id}?key=${identity.publicKey}`,
    headers,
  );
  await within(client.opened, 5000, "open");
  const challenge = await client.next();
  assert.equal(challenge.type, "challenge");
  const signature = await identity.proveRegistration(
    `127.0.0.1:${port}`,
    id,
    challenge.nonce as string,
  );
  client.send({ type: "prove_key", signature });
  return client;
}
