/**
 * Test helpers: real servers on port 0, real WebSocket clients with a message
 * queue, subprocesses whose JSON log lines can be awaited, and waiting on a
 * condition with a deadline instead of sleeping.
 */

import { ipEchoHandler } from "../lib/rendezvous/ip_echo.ts";
import type { WorkerListing } from "../lib/protocol/messages.ts";
import { Rendezvous, type RendezvousOptions } from "../lib/rendezvous/server.ts";

export const ROOT = new URL("../", import.meta.url);
export const DENO = Deno.execPath();

/** Rejects with a message naming `what` when `promise` takes longer than `ms`. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` until it returns a value other than undefined/false, for
 * state that offers no event (another process's registry, over HTTP).
 */
export async function waitFor<T>(
  check: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  what: string,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value !== undefined && value !== null && value !== false) return value as T;
    } catch (error) {
      lastError = error;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`, { cause: lastError });
}

/** A rendezvous served on 127.0.0.1 port 0. */
export interface TestRendezvous {
  rendezvous: Rendezvous;
  port: number;
  http: string;
  ws: string;
  close(): Promise<void>;
}

export async function startRendezvous(options: RendezvousOptions = {}): Promise<TestRendezvous> {
  const rendezvous = new Rendezvous(options);
  const listening = Promise.withResolvers<number>();
  const server = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    onListen: ({ port }) => {
      rendezvous.markReady();
      listening.resolve(port);
    },
  }, rendezvous.handler);
  const port = await listening.promise;
  return {
    rendezvous,
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}`,
    async close() {
      await rendezvous.close(2000);
      await server.shutdown();
    },
  };
}

/** A WebSocket client whose messages and close can be awaited in order. */
export class TestClient {
  readonly socket: WebSocket;
  readonly opened: Promise<void>;
  readonly closed: Promise<CloseEvent>;
  #queue: unknown[] = [];
  #waiters: ((value: unknown) => void)[] = [];

  constructor(url: string, headers: Record<string, string> = {}) {
    this.socket = new WebSocket(url, { headers });
    const opened = Promise.withResolvers<void>();
    const closed = Promise.withResolvers<CloseEvent>();
    this.opened = opened.promise;
    this.closed = closed.promise;
    this.socket.onopen = () => opened.resolve();
    this.socket.onerror = (e) => opened.reject(new Error((e as ErrorEvent).message));
    this.socket.onclose = (e) => {
      opened.reject(new Error(`closed before open: ${e.code}`));
      closed.resolve(e);
    };
    this.opened.catch(() => {});
    this.socket.onmessage = (e) => {
      const value = typeof e.data === "string" ? JSON.parse(e.data) : e.data;
      const waiter = this.#waiters.shift();
      if (waiter) waiter(value);
      else this.#queue.push(value);
    };
  }

  /** Opens and waits for the server's `registered` message. */
  static async connect(
    url: string,
    headers: Record<string, string> = {},
  ): Promise<TestClient> {
    const client = new TestClient(url, headers);
    await within(client.opened, 5000, `open ${url}`);
    const first = await client.next() as { type: string };
    if (first.type !== "registered") throw new Error(`expected registered, got ${first.type}`);
    return client;
  }

  /** The next message (parsed JSON). */
  next(timeoutMs = 5000): Promise<Record<string, unknown>> {
    if (this.#queue.length > 0) {
      return Promise.resolve(this.#queue.shift() as Record<string, unknown>);
    }
    const { promise, resolve } = Promise.withResolvers<unknown>();
    this.#waiters.push(resolve);
    return within(promise as Promise<Record<string, unknown>>, timeoutMs, "a message");
  }

  send(message: unknown): void {
    this.socket.send(typeof message === "string" ? message : JSON.stringify(message));
  }

  /** Closes (if open) and waits for the close event. */
  async close(): Promise<CloseEvent> {
    if (
      this.socket.readyState === WebSocket.OPEN || this.socket.readyState === WebSocket.CONNECTING
    ) {
      this.socket.close(1000);
    }
    return await within(this.closed, 5000, "close");
  }
}

export async function listWorkers(
  base: string,
  headers: Record<string, string> = {},
): Promise<WorkerListing> {
  const response = await fetch(`${base}/debug/list_workers`, { headers });
  if (!response.ok) {
    await response.body?.cancel();
    throw new Error(`list_workers answered ${response.status}`);
  }
  return await response.json();
}

/**
 * Why `command args` cannot run here — not installed, or failing — naming
 * the Debian package to install; undefined when it runs.
 */
export async function toolMissing(
  command: string,
  args: string[],
  debianPackage: string,
): Promise<string | undefined> {
  try {
    const { success } = await new Deno.Command(command, { args, stdout: "null", stderr: "null" })
      .output();
    return success ? undefined : `${command} does not run`;
  } catch {
    return `${command} is not installed (Debian: apt-get install ${debianPackage})`;
  }
}

/**
 * For a test file that needs something (`why` says what is missing): under
 * `HOLEPUNCH_REQUIRE_ALL` (CI) a missing piece fails the file; elsewhere the
 * tests are skipped with the reason printed. Returns `why`, for `ignore`.
 */
export function requireOrSkip(why: string | undefined, what: string): string | undefined {
  if (why && Deno.env.get("HOLEPUNCH_REQUIRE_ALL")) throw new Error(`${what} cannot run: ${why}`);
  if (why) console.log(`${what} skipped: ${why}`);
  return why;
}

/** One structured log line from a subprocess. */
export type LogLine = Record<string, unknown> & { message: string; severity: string };

/**
 * A subprocess whose stderr is read as JSON log lines (plain lines are kept
 * as `{message: line}`) and whose stdout is collected.
 */
export class Proc {
  readonly child: Deno.ChildProcess;
  readonly lines: LogLine[] = [];
  stdout = "";
  readonly status: Promise<Deno.CommandStatus>;
  #listeners = new Set<() => void>();
  #readers: Promise<void>[] = [];

  constructor(command: string, args: string[], env: Record<string, string>, cwd?: string) {
    this.child = new Deno.Command(command, {
      args,
      env: { LOG_FORMAT: "json", NO_COLOR: "1", ...env },
      cwd: cwd ?? ROOT.pathname,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#readers.push(this.#read(this.child.stderr, (line) => {
      let parsed: LogLine;
      try {
        const value = JSON.parse(line);
        parsed = typeof value === "object" && value !== null && "message" in value
          ? value
          : { message: line, severity: "RAW" };
      } catch {
        parsed = { message: line, severity: "RAW" };
      }
      this.lines.push(parsed);
    }));
    this.#readers.push(this.#read(this.child.stdout, (line) => {
      this.stdout += line + "\n";
    }));
    this.status = this.child.status.then(async (status) => {
      await Promise.all(this.#readers);
      return status;
    });
  }

  /** Deno run of a file in this repo with the given permissions. */
  static deno(args: string[], env: Record<string, string> = {}): Proc {
    return new Proc(DENO, args, env);
  }

  async #read(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
    let buffer = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      let index;
      while ((index = buffer.indexOf("\n")) >= 0) {
        onLine(buffer.slice(0, index));
        buffer = buffer.slice(index + 1);
      }
      for (const listener of this.#listeners) listener();
    }
    if (buffer) onLine(buffer);
    for (const listener of this.#listeners) listener();
  }

  /** Waits for a stderr line matching `where` (any message), for tools that do not log JSON. */
  waitForLine(where: (line: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    const find = () => this.lines.find(where);
    const found = find();
    if (found) return Promise.resolve(found);
    const { promise, resolve } = Promise.withResolvers<LogLine>();
    const listener = () => {
      const line = find();
      if (line) resolve(line);
    };
    this.#listeners.add(listener);
    return within(promise, timeoutMs, "a line").finally(() => this.#listeners.delete(listener));
  }

  /** Waits for a log line with `message` (and matching `where`), after index `from`. */
  waitForLog(
    message: string,
    where: (line: LogLine) => boolean = () => true,
    timeoutMs = 10_000,
    from = 0,
  ): Promise<LogLine> {
    const find = () => this.lines.slice(from).find((l) => l.message === message && where(l));
    const found = find();
    if (found) return Promise.resolve(found);
    const { promise, resolve } = Promise.withResolvers<LogLine>();
    const listener = () => {
      const line = find();
      if (line) {
        this.#listeners.delete(listener);
        resolve(line);
      }
    };
    this.#listeners.add(listener);
    return within(promise, timeoutMs, `log "${message}"`).catch((error) => {
      // The process's last lines say why it never came.
      const tail = this.lines.slice(-30).map((l) => JSON.stringify(l)).join("\n    ");
      throw new Error(`${(error as Error).message}; last lines:\n    ${tail}`, { cause: error });
    }).finally(() => this.#listeners.delete(listener));
  }

  /** Waits until stdout matches `pattern`; fails early if the process exits first. */
  waitForStdout(pattern: RegExp, timeoutMs = 10_000): Promise<void> {
    if (pattern.test(this.stdout)) return Promise.resolve();
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const listener = () => {
      if (pattern.test(this.stdout)) resolve();
    };
    this.#listeners.add(listener);
    this.status.then(() => {
      if (pattern.test(this.stdout)) resolve();
      else reject(new Error(`exited before printing ${pattern}:\n${this.stdout}\n${this.dump()}`));
    });
    return within(promise, timeoutMs, `stdout ${pattern}`)
      .finally(() => this.#listeners.delete(listener));
  }

  /** Every stderr line, for failure messages. */
  dump(): string {
    return this.lines.map((l) => JSON.stringify(l)).join("\n");
  }

  signal(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch {
      // Already exited.
    }
  }

  /** Kills the process (if still running) and waits for it and its pipes. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<Deno.CommandStatus> {
    this.signal(signal);
    return await this.status;
  }
}

/** Starts `rendezvous.ts` on port 0 (or `port`) and waits until it listens. */
export async function spawnRendezvous(
  env: Record<string, string> = {},
): Promise<{ proc: Proc; port: number; http: string }> {
  const proc = Proc.deno(["run", "--allow-net", "--allow-env", "rendezvous.ts"], {
    PORT: "0",
    HOST: "127.0.0.1",
    ...env,
  });
  const line = await proc.waitForLog("rendezvous listening").catch(async (error) => {
    await proc.stop();
    throw new Error(`rendezvous did not start:\n${proc.dump()}`, { cause: error });
  });
  const port = line.port as number;
  return { proc, port, http: `http://127.0.0.1:${port}` };
}

/** `rendezvous.ts` allowed to read and write `dir` only (its state files), with `env`. */
export function rendezvousIn(dir: string, env: Record<string, string>): Proc {
  return Proc.deno(
    [
      "run",
      "--allow-net",
      "--allow-env",
      `--allow-read=${dir}`,
      `--allow-write=${dir}`,
      "rendezvous.ts",
    ],
    { HOST: "127.0.0.1", ...env },
  );
}

/** Starts `worker.ts` against `rendezvousUrl` (without `--allow-ffi` when `ffi` is false). */
export function spawnWorker(
  rendezvousUrl: string,
  env: Record<string, string> = {},
  options: { ffi?: boolean } = {},
): Proc {
  return Proc.deno([
    "run",
    "--allow-net",
    "--allow-env",
    "--allow-sys=networkInterfaces",
    "--allow-read",
    "--allow-write",
    ...(options.ffi === false ? [] : ["--allow-ffi"]),
    "worker.ts",
  ], {
    RENDEZVOUS_SERVICE_URL: rendezvousUrl,
    PORT: "0",
    HOST: "127.0.0.1",
    IP_ECHO_URL: "off",
    // Tests never reach public STUN servers; those that need STUN pass local ones.
    STUN_SERVERS: "off",
    // Tests that use `deno task ctl` give a directory of their own.
    CONTROL_DIR: "off",
    // Tests never ask this machine's gateway for a mapping; the port-mapping lab asks its own.
    PORT_MAPPING: "off",
    ...env,
  });
}

/** A local stand-in for api.ipify.org answering with `answer` (default: the caller's IP). */
export async function startIpEcho(
  answer: (
    req: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => Response | Promise<Response> = ipEchoHandler,
): Promise<{ url: string; close: () => Promise<void>; hits: () => number }> {
  let hits = 0;
  const listening = Promise.withResolvers<number>();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen: ({ port }) => listening.resolve(port) },
    (req, info) => {
      hits++;
      return answer(req, info);
    },
  );
  const port = await listening.promise;
  return { url: `http://127.0.0.1:${port}/`, close: () => server.shutdown(), hits: () => hits };
}

/**
 * A TCP relay to `targetPort` that can turn every connection it holds into a
 * black hole: sockets stay open, bytes vanish, as when a NAT or load balancer
 * silently forgets a flow.
 */
export function startTcpProxy(targetPort: number): {
  port: number;
  blackholeExisting: () => void;
  close: () => Promise<void>;
} {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<{ a: Deno.Conn; b: Deno.Conn; dead: boolean }>();
  const tasks: Promise<void>[] = [];
  const pump = async (from: Deno.Conn, to: Deno.Conn, pair: { dead: boolean }) => {
    const buffer = new Uint8Array(16 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) break;
        if (!pair.dead) await to.write(buffer.subarray(0, n));
      }
    } catch {
      // Closed.
    }
    try {
      if (!pair.dead) await to.closeWrite();
    } catch {
      // Already closed.
    }
  };
  const accepting = (async () => {
    try {
      for await (const a of listener) {
        const b = await Deno.connect({ hostname: "127.0.0.1", port: targetPort }).catch(() => null);
        if (b === null) {
          a.close();
          continue;
        }
        const pair = { a, b, dead: false };
        conns.add(pair);
        tasks.push(pump(a, b, pair), pump(b, a, pair));
      }
    } catch {
      // Listener closed.
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    blackholeExisting: () => {
      for (const pair of conns) pair.dead = true;
    },
    async close() {
      listener.close();
      await accepting;
      for (const { a, b } of conns) {
        for (const c of [a, b]) {
          try {
            c.close();
          } catch {
            // Already closed.
          }
        }
      }
      await Promise.all(tasks);
    },
  };
}
