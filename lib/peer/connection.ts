/**
 * Connections to peers, as applications see them: one authenticated,
 * encrypted QUIC connection per pair of workers, with reliable ordered
 * streams (web streams, with QUIC's flow control as backpressure) and
 * unreliable datagrams, over whichever path the link has.
 *
 * One connection per pair: when both workers dial at once, the dial of the
 * worker whose id sorts first wins, on both sides. The other side's dial is
 * refused before it completes ("duplicate"), and it waits for the winner.
 *
 * @module
 */

import { settleWithin } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import type { PathKind } from "../protocol/messages.ts";
import {
  type AuthenticatedConnection,
  type PeerTransport,
  TransportClose,
  TransportError,
} from "./transport.ts";

/**
 * The first byte of every stream says what it is for: the application's
 * own streams, or a TCP connection forwarded to one of the peer's ports.
 */
const STREAM_APP = 0x00;
const STREAM_FORWARD = 0x01;
/** The answer to a forward request: the first byte back. */
const FORWARD_OK = 0x00;
const FORWARD_REFUSED = 0x01;
/**
 * After our dial was refused because the peer is dialing us, how long to wait
 * for its connection before dialing again: its dial may have failed.
 */
const DUPLICATE_WAIT_MS = 3000;
/** Longest refusal reason sent back. */
const MAX_REASON = 200;

/** A forward was refused by the peer; `message` has its reason. */
export class ForwardRefusedError extends Error {
  /** Always `"ForwardRefusedError"`. */
  override name = "ForwardRefusedError";
}

/** A request from the peer to reach one of our TCP ports. */
export interface ForwardRequest {
  /** The peer that asks. */
  peerId: string;
  /** The port on our loopback it wants. */
  port: number;
  /** Accepts: the stream then carries the TCP connection's bytes. */
  accept(): Promise<PeerStream>;
  /** Refuses with a reason the peer sees (and logs). */
  refuse(reason: string): Promise<void>;
}

/**
 * Reads exactly `n` bytes from `reader`, after the bytes already `buffered`;
 * returns them and whatever else the last chunk held. Null at the end of the stream.
 */
async function readExactly(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  n: number,
  buffered: Uint8Array = new Uint8Array(0),
): Promise<{ head: Uint8Array; rest: Uint8Array } | null> {
  while (buffered.length < n) {
    const { value, done } = await reader.read();
    if (done) return null;
    const next = new Uint8Array(buffered.length + value.length);
    next.set(buffered);
    next.set(value, buffered.length);
    buffered = next;
  }
  return { head: buffered.subarray(0, n), rest: buffered.subarray(n) };
}

/** A stream of `rest` (when not empty), then of what `next` reads until it says null. */
function streamOf(
  rest: Uint8Array,
  next: () => Promise<Uint8Array | null>,
  cancel: (reason: unknown) => Promise<void>,
): ReadableStream<Uint8Array> {
  let first: Uint8Array | undefined = rest.length > 0 ? rest : undefined;
  return new ReadableStream<Uint8Array>({
    pull: async (controller) => {
      if (first) {
        controller.enqueue(first);
        first = undefined;
        return;
      }
      const chunk = await next();
      if (chunk === null) controller.close();
      else controller.enqueue(chunk);
    },
    cancel,
  }, { highWaterMark: 0 });
}

/**
 * `reader`'s stream again, with `rest` (bytes already read past a header)
 * in front. With nothing in front, the stream itself (the lock released):
 * a wrapper would cost every later chunk a second trip through a stream.
 */
function prepend(
  rest: Uint8Array,
  reader: ReadableStreamDefaultReader<Uint8Array>,
  stream: ReadableStream<Uint8Array>,
): ReadableStream<Uint8Array> {
  if (rest.length === 0) {
    reader.releaseLock();
    return stream;
  }
  return streamOf(rest, async () => {
    const { value, done } = await reader.read();
    return done ? null : value;
  }, (reason) => reader.cancel(reason));
}

/**
 * An application stream's bytes: read into one buffer of our own (a BYOB
 * read) and handed on as chunks of their own size, with `rest` in front.
 * Read plainly, Deno allocates 64 KiB for every chunk however small, and
 * many streams at once deliver small ones.
 */
function compact(
  rest: Uint8Array,
  reader: ReadableStreamDefaultReader<Uint8Array>,
  stream: ReadableStream<Uint8Array>,
): ReadableStream<Uint8Array> {
  reader.releaseLock();
  const byob = stream.getReader({ mode: "byob" });
  let scratch = new ArrayBuffer(64 * 1024);
  return streamOf(rest, async () => {
    const { value, done } = await byob.read(new Uint8Array(scratch));
    if (done || value === undefined) return null;
    scratch = value.buffer as ArrayBuffer;
    return value.slice();
  }, (reason) => byob.cancel(reason));
}

async function writeHeader(stream: Deno.QuicBidirectionalStream, header: Uint8Array) {
  const writer = stream.writable.getWriter();
  await writer.write(header);
  writer.releaseLock();
}

/** A reliable, ordered byte stream to a peer, both ways. */
export interface PeerStream {
  /** Bytes from the peer; ends when the peer closes its side. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the peer; `close()` ends our side (a half-close), writes wait while the peer is behind. */
  readonly writable: WritableStream<Uint8Array>;
}

/** The path a connection's packets take now, and its round trip. */
export interface PathInfo {
  /** Direct UDP or the rendezvous relay. */
  path: PathKind;
  /** Round trip of the direct path, if measured. */
  rttMs: number | null;
}

/** How a connection ended. */
export interface PeerCloseInfo {
  /** The transport's close code (see `TransportClose`), or the peer's. */
  code: number;
  /** Why, for a person. */
  reason: string;
}

/**
 * An authenticated, end-to-end encrypted connection to one peer.
 * Dispatches a `path` event (a `CustomEvent` of {@linkcode PathInfo}) when
 * its packets move between the direct path and the relay.
 */
export class PeerConnection extends EventTarget {
  /** The peer's worker id. */
  readonly peerId: string;
  /** Which side dialed. */
  readonly dialedBy: "us" | "peer";
  /**
   * Resolves when the connection is closed, by either side or by loss of
   * the peer; a close of ours carries the reason we gave.
   */
  readonly closed: Promise<PeerCloseInfo>;
  readonly #conn: Deno.QuicConn;
  /** What we closed it with (Deno reports an empty reason for a local close). */
  #ours?: PeerCloseInfo;
  readonly #incoming: ReadableStream<PeerStream>;
  readonly #pathOf: () => PathInfo;
  #lastPath: PathKind;

  /** @ignore Made by the worker; see `Worker.connect()`. */
  constructor(
    peerId: string,
    auth: AuthenticatedConnection,
    pathOf: () => PathInfo,
    onForward: (request: ForwardRequest) => void,
  ) {
    super();
    this.peerId = peerId;
    this.dialedBy = auth.dialedBy;
    this.#conn = auth.conn;
    this.#pathOf = pathOf;
    this.#lastPath = pathOf().path;
    // Sort the peer's streams by their first byte, as they come: ours to the
    // application (queued until it reads them; QUIC caps how many are open),
    // forward requests to the worker; anything else is reset.
    let queue!: ReadableStreamDefaultController<PeerStream>;
    this.#incoming = new ReadableStream<PeerStream>({ start: (c) => void (queue = c) });
    (async () => {
      const streams = auth.incoming.getReader();
      while (true) {
        const next = await streams.read().catch(() => ({ done: true as const, value: undefined }));
        if (next.done) break;
        this.#sort(next.value, onForward).then((sorted) => {
          try {
            if (sorted) queue.enqueue(sorted);
          } catch {
            // The application cancelled `incomingStreams`: the stream is dropped.
          }
        }, () => {});
      }
      try {
        queue.close();
      } catch {
        // Cancelled by the application.
      }
    })();
    this.closed = auth.conn.closed.then(
      (info) => this.#ours ?? { code: info.closeCode, reason: info.reason },
      (error) => ({ code: -1, reason: String((error as Error)?.message ?? error) }),
    );
  }

  /** The path packets take now. */
  get path(): PathKind {
    return this.#pathOf().path;
  }

  /** Round trip of the direct path in ms (0.1 ms steps), if measured (the relay's is not). */
  get rttMs(): number | null {
    const rtt = this.#pathOf().rttMs;
    return rtt === null ? null : Math.round(rtt * 10) / 10;
  }

  /**
   * Reads a stream's header: an application stream is returned (without the
   * header); a forward request goes to `onForward` (and undefined is returned).
   */
  async #sort(
    stream: Deno.QuicBidirectionalStream,
    onForward: (request: ForwardRequest) => void,
  ): Promise<PeerStream | undefined> {
    const reader = stream.readable.getReader();
    const first = await readExactly(reader, 1);
    if (first === null) return undefined;
    if (first.head[0] === STREAM_APP) {
      return { readable: compact(first.rest, reader, stream.readable), writable: stream.writable };
    }
    if (first.head[0] !== STREAM_FORWARD) {
      await reader.cancel().catch(() => {});
      await stream.writable.abort().catch(() => {});
      return undefined;
    }
    const header = await readExactly(reader, 2, first.rest);
    if (header === null) return undefined;
    const port = { port: (header.head[0] << 8) | header.head[1] };
    const rest = header.rest;
    let answered = false;
    onForward({
      peerId: this.peerId,
      port: port.port,
      accept: async () => {
        if (answered) throw new Error("Cannot answer a forward request twice");
        answered = true;
        await writeHeader(stream, new Uint8Array([FORWARD_OK]));
        return { readable: prepend(rest, reader, stream.readable), writable: stream.writable };
      },
      refuse: async (reason) => {
        if (answered) throw new Error("Cannot answer a forward request twice");
        answered = true;
        const text = new TextEncoder().encode(reason.slice(0, MAX_REASON));
        const answer = new Uint8Array(1 + text.length);
        answer[0] = FORWARD_REFUSED;
        answer.set(text, 1);
        const writer = stream.writable.getWriter();
        await writer.write(answer).catch(() => {});
        await writer.close().catch(() => {});
        await reader.cancel().catch(() => {});
      },
    });
    return undefined;
  }

  /** Opens a stream to the peer; it sees it in {@linkcode PeerConnection.incomingStreams}. */
  async openStream(): Promise<PeerStream> {
    const stream = await this.#conn.createBidirectionalStream({ waitUntilAvailable: true });
    await writeHeader(stream, new Uint8Array([STREAM_APP]));
    return stream;
  }

  /**
   * Opens a stream to TCP port `port` on the peer's loopback, if the peer
   * exposes it (`PEER_EXPOSE`).
   *
   * @throws {ForwardRefusedError} with the peer's reason when it does not
   */
  async openForward(port: number): Promise<PeerStream> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new RangeError(`Cannot forward to port ${port}: it must be 1-65535`);
    }
    const stream = await this.#conn.createBidirectionalStream({ waitUntilAvailable: true });
    await writeHeader(stream, new Uint8Array([STREAM_FORWARD, port >> 8, port & 0xff]));
    const reader = stream.readable.getReader();
    const answer = await readExactly(reader, 1);
    if (answer === null) throw new ForwardRefusedError(`${this.peerId} closed the stream`);
    if (answer.head[0] !== FORWARD_OK) {
      const decoder = new TextDecoder();
      let reason = decoder.decode(answer.rest, { stream: true });
      while (reason.length < MAX_REASON) {
        const next = await reader.read().catch(() => ({ done: true as const, value: undefined }));
        if (next.done) break;
        reason += decoder.decode(next.value, { stream: true });
      }
      throw new ForwardRefusedError(
        `${this.peerId} refused port ${port}: ${reason.slice(0, MAX_REASON)}`,
      );
    }
    return { readable: prepend(answer.rest, reader, stream.readable), writable: stream.writable };
  }

  /** Streams the peer opens, in order. Read it, or they wait (QUIC limits how many). */
  get incomingStreams(): ReadableStream<PeerStream> {
    return this.#incoming;
  }

  /** Largest datagram {@linkcode PeerConnection.sendDatagram} takes now. */
  get maxDatagramSize(): number {
    return this.#conn.maxDatagramSize;
  }

  /** Sends an unreliable datagram: it may be lost, duplicated never, reordered rarely. */
  async sendDatagram(data: Uint8Array): Promise<void> {
    await this.#conn.sendDatagram(data);
  }

  /** The next datagram from the peer. */
  async readDatagram(): Promise<Uint8Array> {
    return await this.#conn.readDatagram();
  }

  /** Closes the connection and every stream on it. */
  close(reason = ""): void {
    this.#ours ??= { code: TransportClose.NORMAL, reason };
    try {
      this.#conn.close({ closeCode: TransportClose.NORMAL, reason });
    } catch {
      // Already closed.
    }
  }

  /** @ignore Called by the worker when the link's path changes. */
  notePath(info: PathInfo): void {
    if (info.path === this.#lastPath) return; // a new RTT on the same path is no change
    this.#lastPath = info.path;
    const rttMs = info.rttMs === null ? null : Math.round(info.rttMs * 10) / 10;
    this.dispatchEvent(new CustomEvent<PathInfo>("path", { detail: { path: info.path, rttMs } }));
  }
}

/** Options for {@linkcode PeerConnections}. */
export interface PeerConnectionsOptions {
  /** This worker's id (the tie-break of simultaneous dials). */
  workerId: string;
  /** The transport to dial and accept on. */
  transport: PeerTransport;
  /**
   * Warms the connections' code up at start (`rehearsal.ts`); dials wait
   * for it, so they neither compete with it nor run cold. @default {none}
   */
  warmUp?: (transport: PeerTransport) => Promise<unknown>;
  /** Asks the rendezvous to introduce us (punching starts; the relay works meanwhile). */
  introduce(peerId: string): void;
  /** True once the rendezvous has told us the peer's key and certificate. */
  ready(peerId: string): boolean;
  /** The peer's path now. */
  pathOf(peerId: string): PathInfo;
  /** A peer connected to us (not called for connections we dialed). */
  onConnection?: (connection: PeerConnection) => void;
  /** A peer asks to reach one of our TCP ports. @default {refuses: "this worker exposes no ports"} */
  onForward?: (request: ForwardRequest) => void;
  /** Where connection events are logged. */
  logger: Logger;
}

/** Every connection of one worker, one per peer. */
export class PeerConnections {
  readonly #o: PeerConnectionsOptions;
  readonly #open = new Map<string, PeerConnection>();
  readonly #dialing = new Map<string, Promise<PeerConnection>>();
  /** Waiters for a peer's credentials, or for a connection the peer dials. */
  readonly #waiters = new Map<string, Set<() => void>>();
  #closed = false;
  /** Resolves once the warm-up is over, whether it went through or not. */
  readonly warmedUp: Promise<void>;
  #warm = false;

  /** @ignore Made by the worker. */
  constructor(options: PeerConnectionsOptions) {
    this.#o = options;
    this.warmedUp = (options.warmUp?.(options.transport) ?? Promise.resolve()).then(
      () => void (this.#warm = true),
      () => void (this.#warm = true),
    );
  }

  /** The open connection to `peerId`, if any. */
  get(peerId: string): PeerConnection | undefined {
    return this.#open.get(peerId);
  }

  /** Every open connection. */
  get all(): PeerConnection[] {
    return [...this.#open.values()];
  }

  #wake(peerId: string): void {
    const waiters = this.#waiters.get(peerId);
    this.#waiters.delete(peerId);
    for (const wake of waiters ?? []) wake();
  }

  /** Resolves when something about `peerId` changes, or after `ms`. */
  #change(peerId: string, ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      let set = this.#waiters.get(peerId);
      if (!set) this.#waiters.set(peerId, set = new Set());
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        set!.delete(done);
        resolve();
      };
      const onAbort = () => {
        done();
        reject(signal!.reason);
      };
      const timer = setTimeout(done, ms);
      set.add(done);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** @ignore Call when the rendezvous tells us something new about a peer. */
  peerChanged(peerId: string): void {
    this.#wake(peerId);
  }

  /**
   * @ignore Call when the rendezvous revoked `peerId`: its connection is
   * closed with `reason` (every stream on it ends), and anyone waiting to
   * reach it hears at once. Returns whether one was open.
   */
  drop(peerId: string, reason: string): boolean {
    const open = this.#open.get(peerId);
    this.#open.delete(peerId);
    open?.close(reason);
    this.#wake(peerId);
    if (open) this.#o.logger.warn("peer connection closed", { peer_id: peerId, reason });
    return open !== undefined;
  }

  /** @ignore Call when a peer's path changes. */
  pathChanged(peerId: string): void {
    this.#open.get(peerId)?.notePath(this.#o.pathOf(peerId));
  }

  /**
   * The connection to `peerId`: the open one, or a new one (asking the
   * rendezvous to introduce us first, so a direct path is punched while the
   * relay already carries the handshake).
   *
   * @throws {TransportError} when no connection comes up within `timeoutMs`
   */
  connect(
    peerId: string,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<PeerConnection> {
    if (this.#closed) return Promise.reject(new TransportError("Cannot connect: worker closed"));
    const open = this.#open.get(peerId);
    if (open) return Promise.resolve(open);
    let dialing = this.#dialing.get(peerId);
    if (!dialing) {
      dialing = this.#connect(peerId, options.timeoutMs ?? 30_000, options.signal);
      this.#dialing.set(peerId, dialing);
      const clear = () => {
        if (this.#dialing.get(peerId) === dialing) this.#dialing.delete(peerId);
      };
      dialing.then(clear, clear);
    }
    return dialing;
  }

  async #connect(peerId: string, timeoutMs: number, signal?: AbortSignal): Promise<PeerConnection> {
    const deadline = Date.now() + timeoutMs;
    const left = () => deadline - Date.now();
    this.#o.introduce(peerId);
    while (!this.#o.ready(peerId)) {
      if (left() <= 0) {
        throw new TransportError(`Cannot connect to ${peerId}: it published no key or certificate`);
      }
      await this.#change(peerId, left(), signal);
    }
    if (!this.#warm) await settleWithin(this.warmedUp, Math.max(0, left()));
    while (true) {
      const open = this.#open.get(peerId);
      if (open) return open;
      if (left() <= 0) throw new TransportError(`Cannot connect to ${peerId}: timed out`);
      try {
        const auth = await this.#o.transport.dial(peerId, Math.max(1, left()));
        return this.#adopt(peerId, auth);
      } catch (error) {
        // The peer dials us (its id sorts first): wait for that connection.
        if (!(error instanceof TransportError) || !/duplicate/.test(error.message)) throw error;
        // Its connection may be open already (it won the race): else wait for
        // it a while, then dial again (its own dial may have failed).
        if (!this.#open.has(peerId)) {
          await this.#change(peerId, Math.min(left(), DUPLICATE_WAIT_MS), signal);
        }
      }
    }
  }

  /**
   * @ignore
   * Whether to take a dial from `peerId` now: yes, unless we are dialing it
   * ourselves (or are connected) and our id sorts first.
   */
  accepts(peerId: string): boolean {
    const ours = this.#dialing.has(peerId) || this.#open.has(peerId);
    return !(ours && this.#o.workerId < peerId);
  }

  /** @ignore A peer dialed us and proved who it is (called by the transport). */
  incoming(peerId: string, auth: AuthenticatedConnection): void {
    if (this.#closed) {
      auth.conn.close({ closeCode: TransportClose.SHUTDOWN, reason: "worker shutting down" });
      return;
    }
    const connection = this.#adopt(peerId, auth);
    this.#o.onConnection?.(connection);
  }

  #adopt(peerId: string, auth: AuthenticatedConnection): PeerConnection {
    const connection = new PeerConnection(
      peerId,
      auth,
      () => this.#o.pathOf(peerId),
      this.#o.onForward ?? ((request) => void request.refuse("this worker exposes no ports")),
    );
    const previous = this.#open.get(peerId);
    this.#open.set(peerId, connection);
    if (previous) previous.close("replaced by a newer connection");
    this.#o.logger.info("peer connection open", {
      peer_id: peerId,
      dialed_by: auth.dialedBy,
      path: connection.path,
    });
    connection.closed.then((info) => {
      if (this.#open.get(peerId) === connection) this.#open.delete(peerId);
      this.#o.logger.info("peer connection closed", { peer_id: peerId, ...info });
    });
    this.#wake(peerId);
    return connection;
  }

  /** Closes every connection. */
  close(): void {
    this.#closed = true;
    for (const connection of this.#open.values()) connection.close("worker shutting down");
    for (const peerId of [...this.#waiters.keys()]) this.#wake(peerId);
  }
}
