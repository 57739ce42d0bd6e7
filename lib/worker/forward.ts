/**
 * TCP forwarding over peer connections, for applications in any language:
 * `PEER_FORWARD` listens on local ports and carries each TCP connection to
 * a port on a peer's loopback; `PEER_EXPOSE` names the local ports peers may
 * reach. Each TCP connection is one encrypted stream; half-close (FIN) and
 * backpressure (QUIC flow control) are kept end to end.
 *
 * @module
 */

import type { Logger } from "../core/log.ts";
import type { ForwardRequest, PeerConnection, PeerStream } from "../peer/connection.ts";
import { ForwardRefusedError } from "../peer/connection.ts";
import {
  readSocksRequest,
  SOCKS_HANDSHAKE_MS,
  SocksError,
  SocksReply,
  socksReply,
  type SocksTarget,
} from "./socks.ts";

/** One `PEER_FORWARD` entry: `[HOST:]PORT:PEER:PORT`. */
export interface ForwardSpec {
  /** Where the local listener binds. */
  hostname: string;
  /** The local port. */
  port: number;
  /** The peer's worker id. */
  peerId: string;
  /** The port on the peer's loopback. */
  peerPort: number;
}

/** Counters of one forward or exposed port, for `GET /`. */
export interface ForwardStats {
  /** TCP connections carried. */
  connections: number;
  /** Connections open now. */
  open: number;
  /** Connections refused (peer unreachable, port not exposed, target down). */
  refused: number;
  /** Bytes from the local side to the peer. */
  bytes_out: number;
  /** Bytes from the peer to the local side. */
  bytes_in: number;
}

const newStats = (): ForwardStats => ({
  connections: 0,
  open: 0,
  refused: 0,
  bytes_out: 0,
  bytes_in: 0,
});

/**
 * Copies a peer stream into a TCP connection, counting bytes, and
 * half-closes the socket at the end. A QUIC stream is read into one buffer
 * of our own (a BYOB read): read as a plain stream, Deno allocates 64 KiB
 * for every chunk, however small (many streams at once deliver small ones).
 */
async function pumpToTcp(
  from: ReadableStream<Uint8Array>,
  tcp: Deno.TcpConn,
  count: (n: number) => void,
): Promise<void> {
  const write = async (chunk: Uint8Array) => {
    count(chunk.length);
    let written = 0;
    while (written < chunk.length) written += await tcp.write(chunk.subarray(written));
  };
  let byob: ReadableStreamBYOBReader | undefined;
  try {
    byob = from.getReader({ mode: "byob" });
  } catch {
    byob = undefined; // Not a byte stream (a header's leftovers in front): read it plainly.
  }
  if (byob) {
    let buffer = new ArrayBuffer(64 * 1024);
    while (true) {
      const { value, done } = await byob.read(new Uint8Array(buffer));
      if (done || value === undefined) break;
      await write(value);
      buffer = value.buffer as ArrayBuffer;
    }
  } else {
    for await (const chunk of from) await write(chunk);
  }
  await tcp.closeWrite().catch(() => {});
}

/**
 * Splices a TCP connection and a peer stream both ways. Each direction ends
 * with a half-close (TCP `shutdown(SHUT_WR)` or a QUIC FIN), so protocols
 * that read to EOF keep working; the socket closes when both are done.
 */
export async function splice(
  tcp: Deno.TcpConn,
  stream: PeerStream,
  stats: ForwardStats,
): Promise<void> {
  // Read the socket by hand: its `readable` closes the whole socket at EOF,
  // which would cut the other direction short (no half-close).
  const out = (async () => {
    const writer = stream.writable.getWriter();
    const buffer = new Uint8Array(64 * 1024);
    while (true) {
      const n = await tcp.read(buffer);
      if (n === null) break;
      stats.bytes_out += n;
      await writer.write(buffer.slice(0, n));
    }
    await writer.close();
  })().catch(() => {});
  const back = pumpToTcp(stream.readable, tcp, (n) => stats.bytes_in += n).catch(() => {});
  await Promise.all([out, back]);
  try {
    tcp.close();
  } catch {
    // Already closed.
  }
}

/**
 * Parses `PEER_FORWARD`: comma-separated `[HOST:]PORT:PEER:PORT`.
 *
 * @throws {Error} naming the entry at fault
 */
export function parseForwards(text: string): ForwardSpec[] {
  const specs: ForwardSpec[] = [];
  for (const entry of text.split(",").map((e) => e.trim()).filter((e) => e !== "")) {
    const parts = entry.split(":");
    const [hostname, port, peerId, peerPort] = parts.length === 3
      ? ["127.0.0.1", ...parts]
      : parts.length === 4
      ? parts
      : [];
    const local = Number(port);
    const remote = Number(peerPort);
    if (
      hostname === undefined || !Number.isInteger(local) || local < 1 || local > 65535 ||
      !Number.isInteger(remote) || remote < 1 || remote > 65535 ||
      !/^[A-Za-z0-9._-]{1,128}$/.test(peerId ?? "") || hostname === ""
    ) {
      throw new Error(
        `"${entry}" is not [HOST:]PORT:PEER:PORT (ports 1-65535, a worker id), e.g. 15432:db-1:5432`,
      );
    }
    if (specs.some((s) => s.port === local && s.hostname === hostname)) {
      throw new Error(`"${entry}": port ${local} is forwarded twice`);
    }
    specs.push({ hostname, port: local, peerId: peerId!, peerPort: remote });
  }
  return specs;
}

/** One `PEER_EXPOSE` entry: a local port, and who may reach it. */
export interface ExposeSpec {
  /** The local TCP port. */
  port: number;
  /** Globs over peer ids (`*`, `?`); null: any authenticated peer of the group. */
  allow: string[] | null;
}

/** A glob over worker ids (`*` any run, `?` one character) as a whole-string pattern. */
function globPattern(glob: string): RegExp {
  const body = glob.replace(/[.]/g, "\\.").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${body}$`);
}

/** Whether `peerId` may reach the port `spec` exposes. */
export function allowedBy(spec: ExposeSpec, peerId: string): boolean {
  return spec.allow === null || spec.allow.some((glob) => globPattern(glob).test(peerId));
}

/**
 * Parses `PEER_EXPOSE`: comma-separated local TCP ports, each with an
 * optional `@` and `|`-separated globs over the peer ids that may reach it
 * (`5432@db-client-*|report-1,8080`).
 *
 * @throws {Error} naming the entry at fault
 */
export function parseExposes(text: string): ExposeSpec[] {
  const specs = new Map<number, ExposeSpec>();
  for (const entry of text.split(",").map((e) => e.trim()).filter((e) => e !== "")) {
    const at = entry.indexOf("@");
    const port = Number(at < 0 ? entry : entry.slice(0, at));
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new Error(`"${entry}" is not a TCP port (1-65535), optionally @PEER|PEER…`);
    }
    let allow: string[] | null = null;
    if (at >= 0) {
      allow = entry.slice(at + 1).split("|").map((g) => g.trim());
      const bad = allow.find((g) => !/^[A-Za-z0-9._*?-]{1,128}$/.test(g));
      if (bad !== undefined) {
        throw new Error(
          `"${entry}": "${bad}" is not a peer id or a glob over ids ([A-Za-z0-9._-], * and ?)`,
        );
      }
    }
    const before = specs.get(port);
    if (before && JSON.stringify(before.allow) !== JSON.stringify(allow)) {
      throw new Error(`"${entry}": port ${port} is exposed twice, to different peers`);
    }
    specs.set(port, { port, allow });
  }
  return [...specs.values()];
}

/** Options for {@linkcode Forwarder}. */
export interface ForwarderOptions {
  /** Local listeners and where they lead. */
  forwards: readonly ForwardSpec[];
  /** Local ports peers may reach, and who. */
  exposes: readonly ExposeSpec[];
  /** Gets (or makes) the connection to a peer, waiting at most `timeoutMs`. */
  connect(peerId: string, timeoutMs: number): Promise<PeerConnection>;
  /** How long a local connection waits for an unreachable peer. */
  waitMs: number;
  /** `PEER_SOCKS`: where the SOCKS5 door listens, if anywhere. */
  socks?: { hostname: string; port: number };
  /** Whether the rendezvous knows `peerId` (a SOCKS request for a stranger is refused at once). */
  knows?(peerId: string): Promise<boolean>;
  /** Where forwarding logs. */
  logger: Logger;
}

/** A worker's TCP forwards and exposed ports. */
export class Forwarder {
  readonly #o: ForwarderOptions;
  readonly #listeners: Deno.TcpListener[] = [];
  readonly #forwardStats = new Map<string, ForwardStats>();
  readonly #exposeStats = new Map<number, ForwardStats>();
  readonly #exposes = new Map<number, ExposeSpec>();
  readonly #open = new Set<Deno.TcpConn>();
  readonly #loops: Promise<void>[] = [];
  #closed = false;

  /**
   * Binds every forward's listener.
   *
   * @throws {Deno.errors.AddrInUse} (or another bind error) naming nothing else bound
   */
  constructor(options: ForwarderOptions) {
    this.#o = options;
    for (const spec of options.exposes) {
      this.#exposeStats.set(spec.port, newStats());
      this.#exposes.set(spec.port, spec);
    }
    try {
      for (const spec of options.forwards) {
        const listener = Deno.listen({ hostname: spec.hostname, port: spec.port });
        this.#listeners.push(listener);
        const stats = newStats();
        this.#forwardStats.set(
          `${spec.hostname}:${spec.port}:${spec.peerId}:${spec.peerPort}`,
          stats,
        );
        options.logger.info("forward listening", { ...spec, peer_id: spec.peerId });
        this.#loops.push(this.#accept(listener, (tcp) => this.#forward(tcp, spec, stats)));
      }
      if (options.socks) {
        const { hostname, port } = options.socks;
        const listener = Deno.listen({ hostname, port });
        this.#listeners.push(listener);
        const stats = newStats();
        const bound = (listener.addr as Deno.NetAddr).port;
        this.#forwardStats.set(`socks:${hostname}:${bound}`, stats);
        options.logger.info("socks listening", { hostname, port: bound });
        this.#loops.push(this.#accept(listener, (tcp) => this.#socks(tcp, stats)));
      }
    } catch (error) {
      for (const listener of this.#listeners) listener.close();
      throw error;
    }
  }

  /** Hands each connection `listener` accepts to `handle`, until the forwarder closes. */
  async #accept(listener: Deno.TcpListener, handle: (tcp: Deno.TcpConn) => Promise<void>) {
    while (!this.#closed) {
      let tcp: Deno.TcpConn;
      try {
        tcp = await listener.accept();
      } catch {
        if (this.#closed) return;
        continue;
      }
      void handle(tcp);
    }
  }

  async #forward(tcp: Deno.TcpConn, spec: ForwardSpec, stats: ForwardStats): Promise<void> {
    const log = this.#o.logger;
    const fields = { peer_id: spec.peerId, port: spec.port, peer_port: spec.peerPort };
    this.#open.add(tcp);
    stats.connections++;
    try {
      let stream: PeerStream;
      try {
        tcp.setNoDelay(true);
        const connection = await this.#o.connect(spec.peerId, this.#o.waitMs);
        stream = await connection.openForward(spec.peerPort);
      } catch (error) {
        stats.refused++;
        const why = error instanceof ForwardRefusedError
          ? error.message
          : `${spec.peerId} is not reachable within ${this.#o.waitMs} ms: ${
            (error as Error).message
          }`;
        log.warn("forward refused", { ...fields, reason: why });
        return;
      }
      stats.open++;
      await splice(tcp, stream, stats);
      stats.open--;
    } finally {
      this.#open.delete(tcp);
      try {
        tcp.close();
      } catch {
        // Closed by the splice.
      }
    }
  }

  /** One SOCKS5 client: its CONNECT becomes a stream to the peer's port, as a forward. */
  async #socks(tcp: Deno.TcpConn, stats: ForwardStats): Promise<void> {
    const log = this.#o.logger;
    this.#open.add(tcp);
    stats.connections++;
    const refuse = async (code: number, reason: string, fields = {}) => {
      stats.refused++;
      await tcp.write(socksReply(code)).catch(() => {});
      log.warn("socks request refused", { ...fields, reason });
    };
    try {
      let target: SocksTarget;
      const slow = setTimeout(() => tcp.close(), SOCKS_HANDSHAKE_MS);
      try {
        tcp.setNoDelay(true);
        target = await readSocksRequest(tcp);
      } catch (error) {
        const reply = error instanceof SocksError ? error.reply : undefined;
        if (reply !== undefined) await refuse(reply, (error as Error).message);
        else {
          stats.refused++;
          log.warn("socks handshake failed", { reason: (error as Error).message });
        }
        return;
      } finally {
        clearTimeout(slow);
      }
      const fields = { peer_id: target.peerId, peer_port: target.port };
      if (this.#o.knows && !(await this.#o.knows(target.peerId))) {
        return await refuse(SocksReply.HOST_UNREACHABLE, "no such peer in the group", fields);
      }
      let stream: PeerStream;
      try {
        const connection = await this.#o.connect(target.peerId, this.#o.waitMs);
        stream = await connection.openForward(target.port);
      } catch (error) {
        return error instanceof ForwardRefusedError
          ? await refuse(
            / is not allowed to reach /.test(error.message)
              ? SocksReply.NOT_ALLOWED
              : SocksReply.CONNECTION_REFUSED,
            error.message,
            fields,
          )
          : await refuse(
            SocksReply.HOST_UNREACHABLE,
            `not reachable within ${this.#o.waitMs} ms: ${(error as Error).message}`,
            fields,
          );
      }
      await tcp.write(socksReply(SocksReply.SUCCEEDED));
      stats.open++;
      await splice(tcp, stream, stats);
      stats.open--;
    } catch {
      // The client went away.
    } finally {
      this.#open.delete(tcp);
      try {
        tcp.close();
      } catch {
        // Closed by the splice.
      }
    }
  }

  /** Handles a peer's request for one of our ports. */
  async handle(request: ForwardRequest): Promise<void> {
    const log = this.#o.logger;
    const fields = { peer_id: request.peerId, port: request.port };
    const stats = this.#exposeStats.get(request.port);
    if (stats === undefined) {
      log.warn("forward request refused: port not exposed", fields);
      await request.refuse(`port ${request.port} is not exposed (PEER_EXPOSE)`);
      return;
    }
    const spec = this.#exposes.get(request.port)!;
    if (!allowedBy(spec, request.peerId)) {
      stats.refused++;
      log.warn("forward request refused: not allowed", { ...fields, allow: spec.allow });
      await request.refuse(
        `${request.peerId} is not allowed to reach port ${request.port} (PEER_EXPOSE allows ${
          spec.allow!.join("|")
        })`,
      );
      return;
    }
    stats.connections++;
    let tcp: Deno.TcpConn;
    try {
      tcp = await Deno.connect({ hostname: "127.0.0.1", port: request.port });
    } catch (error) {
      stats.refused++;
      log.warn("forward request refused: target unreachable", {
        ...fields,
        error: (error as Error).message,
      });
      await request.refuse(`nothing listens on port ${request.port}`);
      return;
    }
    this.#open.add(tcp);
    stats.open++;
    try {
      tcp.setNoDelay(true);
      await splice(tcp, await request.accept(), stats);
    } catch (error) {
      // The peer's stream went away before we could answer: nothing to carry.
      log.info("forward request ended early", { ...fields, error: (error as Error).message });
    } finally {
      stats.open--;
      this.#open.delete(tcp);
      try {
        tcp.close();
      } catch {
        // Closed by the splice.
      }
    }
  }

  /** Counters for `GET /`: forwards by `host:port:peer:port`, exposed ports by number. */
  snapshot(): { forwards: Record<string, ForwardStats>; exposes: Record<string, ForwardStats> } {
    return {
      forwards: Object.fromEntries([...this.#forwardStats].map(([k, v]) => [k, { ...v }])),
      exposes: Object.fromEntries([...this.#exposeStats].map(([k, v]) => [String(k), { ...v }])),
    };
  }

  /** Stops listening and closes every forwarded connection. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const listener of this.#listeners) {
      try {
        listener.close();
      } catch {
        // Already closed.
      }
    }
    for (const tcp of this.#open) {
      try {
        tcp.close();
      } catch {
        // Already closed.
      }
    }
    await Promise.all(this.#loops);
  }
}
