/**
 * A small Redis client over `Deno.connect` / `Deno.connectTls`: what the
 * rendezvous's fleet backend needs and nothing more. Commands are
 * pipelined (every command issued in one turn of the event loop goes out in
 * one write), a second connection carries pub/sub, and {@linkcode Redis}
 * reconnects both with backoff and restores the subscriptions.
 *
 * @module
 */

import { Backoff } from "../core/backoff.ts";
import { type Clock, delay, systemClock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import {
  encodeCommand,
  type RedisArg,
  RedisReplyError,
  RespParser,
  RespProtocolError,
  type RespValue,
  text,
} from "./resp.ts";

export { type RedisArg, RedisReplyError, type RespValue, text };

/** Where and how to connect, from a `redis://` or `rediss://` URL. */
export interface RedisUrl {
  tls: boolean;
  hostname: string;
  port: number;
  username?: string;
  password?: string;
  db: number;
}

/**
 * Parses `redis://[[user]:password@]host[:port][/db]` (`rediss://` for
 * TLS, as Memorystore's in-transit encryption uses).
 *
 * @throws {RangeError} naming what is wrong (never echoing the password).
 */
export function parseRedisUrl(text: string): RedisUrl {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new RangeError("Cannot read the Redis URL: expected redis://host:port or rediss://…");
  }
  if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
    throw new RangeError(`Cannot use Redis URL scheme "${url.protocol}": redis: or rediss:`);
  }
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  if (hostname === "") throw new RangeError("Cannot read the Redis URL: no host");
  const port = url.port === "" ? 6379 : Number(url.port);
  const dbText = url.pathname.replace(/^\//, "");
  const db = dbText === "" ? 0 : Number(dbText);
  if (!Number.isInteger(db) || db < 0 || db > 15 || !/^\d*$/.test(dbText)) {
    throw new RangeError(`Cannot use Redis database "${dbText}": 0 to 15`);
  }
  return {
    tls: url.protocol === "rediss:",
    hostname,
    port,
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    db,
  };
}

/** No connection to Redis now; the caller goes on without it. */
export class RedisUnavailableError extends Error {
  override name = "RedisUnavailableError";
}

/** Options for {@linkcode RedisConnection.open}. */
export interface RedisConnectionOptions {
  url: RedisUrl;
  /** PEM certificates to trust for `rediss://` (Memorystore's server CA). */
  caCerts?: string[];
  /** Connect, TLS and AUTH together must take at most this long. @default {5000} */
  timeoutMs?: number;
  clock?: Clock;
}

interface Pending {
  resolve: (value: RespValue) => void;
  reject: (error: Error) => void;
}

/**
 * One connection: commands in order, replies matched in order. In
 * subscriber mode, `message` pushes go to {@linkcode RedisConnection.onMessage}.
 */
export class RedisConnection {
  #conn: Deno.Conn;
  #parser = new RespParser();
  #pending: Pending[] = [];
  #out: Uint8Array[] = [];
  #writing = Promise.resolve();
  #flushQueued = false;
  #closed = Promise.withResolvers<Error | undefined>();
  #ended = false;
  /** Pub/sub messages, by channel. */
  onMessage?: (channel: string, payload: Uint8Array) => void;

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
    void this.#readLoop();
  }

  /**
   * Connects, authenticates (AUTH) and selects the database.
   *
   * @throws {Error} when the server cannot be reached, TLS fails, AUTH is
   * refused, or it all takes longer than `timeoutMs`.
   */
  static async open(options: RedisConnectionOptions): Promise<RedisConnection> {
    const { url } = options;
    const clock = options.clock ?? systemClock;
    const timeout = new AbortController();
    let conn: Deno.Conn | undefined;
    const work = (async () => {
      const tcp = await Deno.connect({ hostname: url.hostname, port: url.port });
      conn = tcp;
      tcp.setNoDelay(true); // pipelined small commands: no Nagle delays
      if (url.tls) {
        conn = await Deno.startTls(tcp, {
          hostname: url.hostname,
          ...(options.caCerts ? { caCerts: options.caCerts } : {}),
        });
      }
      const connection = new RedisConnection(conn);
      if (url.password !== undefined) {
        await connection.command(
          url.username ? ["AUTH", url.username, url.password] : ["AUTH", url.password],
        );
      }
      if (url.db !== 0) await connection.command(["SELECT", url.db]);
      return connection;
    })();
    const ms = options.timeoutMs ?? 5000;
    const timer = delay(ms, { signal: timeout.signal, clock }).then(
      () => {
        try {
          conn?.close();
        } catch { /* closed already */ }
        throw new Error(`Cannot connect to Redis at ${url.hostname}:${url.port} in ${ms} ms`);
      },
      () => undefined as never,
    );
    try {
      return await Promise.race([work, timer]);
    } catch (error) {
      work.then((c) => c.close(), () => {});
      throw error;
    } finally {
      timeout.abort();
    }
  }

  /** Resolves when the connection has ended, with the error that ended it if any. */
  get closed(): Promise<Error | undefined> {
    return this.#closed.promise;
  }

  /** When bytes last arrived (`performance.now()`), or when the connection opened. */
  lastReadAt = performance.now();

  /** Replies not yet received. */
  get inFlight(): number {
    return this.#pending.length;
  }

  /**
   * Sends one command; resolves with its reply.
   *
   * @throws {RedisReplyError} when Redis answers with an error.
   * @throws {RedisUnavailableError} when the connection has ended.
   */
  command(args: readonly RedisArg[]): Promise<RespValue> {
    if (this.#ended) return Promise.reject(new RedisUnavailableError("Redis connection closed"));
    const { promise, resolve, reject } = Promise.withResolvers<RespValue>();
    this.#pending.push({ resolve, reject });
    this.#out.push(encodeCommand(args));
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      queueMicrotask(() => this.#flush());
    }
    return promise;
  }

  #flush(): void {
    this.#flushQueued = false;
    const parts = this.#out.splice(0);
    if (parts.length === 0) return;
    let length = 0;
    for (const part of parts) length += part.length;
    const bytes = parts.length === 1 ? parts[0] : new Uint8Array(length);
    if (parts.length > 1) {
      let at = 0;
      for (const part of parts) {
        bytes.set(part, at);
        at += part.length;
      }
    }
    this.#writing = this.#writing.then(async () => {
      if (this.#ended) return;
      let at = 0;
      while (at < bytes.length) at += await this.#conn.write(bytes.subarray(at));
    }).catch((error) => this.#end(error));
  }

  async #readLoop(): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await this.#conn.read(buffer);
        if (n === null) return this.#end(new RedisUnavailableError("Redis closed the connection"));
        this.lastReadAt = performance.now();
        this.#parser.push(buffer.subarray(0, n));
        let value: RespValue | undefined;
        while ((value = this.#parser.next()) !== undefined) this.#dispatch(value);
      }
    } catch (error) {
      this.#end(error instanceof Error ? error : new Error(String(error)));
    }
  }

  #dispatch(value: RespValue): void {
    // A pub/sub message: ["message", channel, payload] (no command waits for it).
    if (this.onMessage && Array.isArray(value) && value.length === 3) {
      const [kind, channel, payload] = value;
      if (
        kind instanceof Uint8Array && text(kind) === "message" && channel instanceof Uint8Array &&
        payload instanceof Uint8Array
      ) {
        return this.onMessage(text(channel)!, payload);
      }
    }
    const pending = this.#pending.shift();
    if (!pending) throw new RespProtocolError("Cannot match a reply to any command");
    if (value instanceof RedisReplyError) pending.reject(value);
    else pending.resolve(value);
  }

  #end(error: Error | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    try {
      this.#conn.close();
    } catch { /* closed already */ }
    const reason = new RedisUnavailableError(
      `Redis connection ended${error ? `: ${error.message}` : ""}`,
    );
    for (const pending of this.#pending.splice(0)) pending.reject(reason);
    this.#closed.resolve(error);
  }

  /** Closes the connection; commands in flight fail with {@linkcode RedisUnavailableError}. */
  close(): void {
    this.#end(undefined);
  }
}

/** Options for {@linkcode Redis}. */
export interface RedisOptions {
  url: string | RedisUrl;
  caCerts?: string[];
  logger: Logger;
  /** A PING this often checks the command connection; unanswered in as long, it is dropped. @default {2000} */
  pingMs?: number;
  /** Reconnect delays. @default {new Backoff({ baseMs: 250, maxMs: 5000 })} */
  backoff?: Backoff;
  clock?: Clock;
  /** Both connections are up and every subscription restored. */
  onUp?: () => void;
  /** Redis went away; commands fail with {@linkcode RedisUnavailableError} until `onUp`. */
  onDown?: (error: Error | undefined) => void;
}

/**
 * A command connection and a subscriber connection that come back by
 * themselves: while Redis is away, commands fail at once (the caller keeps
 * going on its own state), and once it is back the subscriptions are
 * restored and `onUp` runs (the caller republishes what Redis may lack).
 *
 * @example
 * ```ts
 * const redis = new Redis({ url: "redis://127.0.0.1:6379", logger, onUp: () => {} });
 * redis.subscribe("news", (payload) => console.log(payload));
 * redis.start();
 * await redis.command("SET", "k", "v");
 * ```
 */
export class Redis {
  #o: RedisOptions;
  #url: RedisUrl;
  #clock: Clock;
  #commands?: RedisConnection;
  #subscriber?: RedisConnection;
  #handlers = new Map<string, (payload: Uint8Array) => void>();
  #stop = new AbortController();
  #running?: Promise<void>;

  constructor(options: RedisOptions) {
    this.#o = options;
    this.#url = typeof options.url === "string" ? parseRedisUrl(options.url) : options.url;
    this.#clock = options.clock ?? systemClock;
  }

  /** Whether commands can go out now. */
  get up(): boolean {
    return this.#commands !== undefined && this.#subscriber !== undefined;
  }

  /** Commands sent and not answered yet (0 while Redis is away). */
  get inFlight(): number {
    return this.#commands?.inFlight ?? 0;
  }

  /** Starts connecting (and reconnecting until `close`). */
  start(): void {
    this.#running ??= this.#run();
  }

  /**
   * Sends a command.
   *
   * @throws {RedisUnavailableError} at once while Redis is away.
   * @throws {RedisReplyError} when Redis answers with an error.
   */
  command(...args: RedisArg[]): Promise<RespValue> {
    const connection = this.#up();
    return connection.command(args);
  }

  #up(): RedisConnection {
    if (!this.#commands || !this.#subscriber) {
      throw new RedisUnavailableError("Redis is not connected");
    }
    return this.#commands;
  }

  /** Publishes `payload` on `channel`; resolves with how many subscribers got it. */
  async publish(channel: string, payload: RedisArg): Promise<number> {
    return Number(await this.command("PUBLISH", channel, payload));
  }

  /** Calls `handler` with each message on `channel`, across reconnects. */
  async subscribe(channel: string, handler: (payload: Uint8Array) => void): Promise<void> {
    this.#handlers.set(channel, handler);
    if (this.#subscriber) await this.#subscriber.command(["SUBSCRIBE", channel]);
  }

  async #connect(): Promise<[RedisConnection, RedisConnection]> {
    const options = { url: this.#url, caCerts: this.#o.caCerts, clock: this.#clock };
    const commands = await RedisConnection.open(options);
    let subscriber: RedisConnection;
    try {
      subscriber = await RedisConnection.open(options);
    } catch (error) {
      commands.close();
      throw error;
    }
    subscriber.onMessage = (channel, payload) => this.#handlers.get(channel)?.(payload);
    try {
      await Promise.all(
        [...this.#handlers.keys()].map((c) => subscriber.command(["SUBSCRIBE", c])),
      );
    } catch (error) {
      commands.close();
      subscriber.close();
      throw error;
    }
    return [commands, subscriber];
  }

  async #run(): Promise<void> {
    const backoff = this.#o.backoff ?? new Backoff({ baseMs: 250, maxMs: 5000 });
    const signal = this.#stop.signal;
    const where = `${this.#url.tls ? "rediss" : "redis"}://${this.#url.hostname}:${this.#url.port}`;
    while (!signal.aborted) {
      let pair: [RedisConnection, RedisConnection];
      try {
        pair = await this.#connect();
      } catch (error) {
        const wait = backoff.next();
        this.#o.logger.warn("redis unreachable", {
          redis: where,
          error: (error as Error).message,
          retry_in_ms: Math.round(wait),
        });
        await delay(wait, { signal, clock: this.#clock }).catch(() => {});
        continue;
      }
      if (signal.aborted) {
        pair.forEach((c) => c.close());
        return;
      }
      [this.#commands, this.#subscriber] = pair;
      backoff.reset();
      this.#o.logger.info("redis connected", { redis: where });
      this.#o.onUp?.();
      const ended = await Promise.race([
        pair[0].closed,
        pair[1].closed,
        // Both: a subscriber that went silent would lose messages unseen.
        this.#watch(pair[0], signal),
        this.#watch(pair[1], signal),
      ]);
      this.#commands = this.#subscriber = undefined;
      pair.forEach((c) => c.close());
      if (signal.aborted) return;
      this.#o.logger.warn("redis connection lost", { redis: where, error: ended?.message });
      this.#o.onDown?.(ended);
    }
  }

  /**
   * Watches the command connection: a PING when it is idle, and an error
   * once replies are owed and nothing has arrived for two periods. A busy
   * connection (replies streaming in behind a long pipeline) is alive.
   */
  async #watch(connection: RedisConnection, signal: AbortSignal): Promise<Error | undefined> {
    const every = this.#o.pingMs ?? 2000;
    while (!signal.aborted) {
      await delay(every, { signal, clock: this.#clock }).catch(() => {});
      if (signal.aborted) return undefined;
      const silentMs = performance.now() - connection.lastReadAt;
      if (connection.inFlight > 0 && silentMs > 2 * every) {
        return new Error(`Redis sent nothing for ${Math.round(silentMs)} ms with replies owed`);
      }
      if (connection.inFlight === 0) connection.command(["PING"]).catch(() => {});
    }
    return undefined;
  }

  /** Closes both connections and stops reconnecting. */
  async close(): Promise<void> {
    this.#stop.abort();
    this.#commands?.close();
    this.#subscriber?.close();
    await this.#running;
  }
}
