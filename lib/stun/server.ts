/**
 * A STUN Binding server: a pure decision function ({@linkcode answerStun})
 * and a thin UDP layer ({@linkcode StunServer}) that carries it out.
 *
 * With an alternate address configured it serves RFC 5780 NAT behaviour
 * discovery from four sockets (two IPs × two ports): OTHER-ADDRESS,
 * RESPONSE-ORIGIN and CHANGE-REQUEST.
 *
 * It is no reflector: it answers only well-formed Binding requests, never
 * anything else, and its answer is a fixed, small size (no PADDING, no
 * RESPONSE-PORT: requests for either get a short 420).
 *
 * @module
 */

import { type Logger, silentLogger } from "../core/log.ts";
import {
  Attr,
  encodeStunMessage,
  getAttribute,
  isStun,
  parseStunMessage,
  type StunAttribute,
  StunClass,
  StunError,
  StunMethod,
} from "./codec.ts";
import {
  decodeChangeRequest,
  encodeAddress,
  encodeErrorCode,
  encodeText,
  encodeUnknownAttributes,
  encodeXorAddress,
  toTransportAddress,
  type TransportAddress,
} from "./attributes.ts";

/** Attributes a Binding request may carry that the server accepts. */
const SERVER_COMPREHENDS: ReadonlySet<number> = new Set([
  Attr.USERNAME, // ICE checks carry credentials; a NAT-discovery server ignores them
  Attr.MESSAGE_INTEGRITY,
  Attr.MESSAGE_INTEGRITY_SHA256,
  Attr.PRIORITY,
  Attr.USE_CANDIDATE,
  Attr.CHANGE_REQUEST,
]);

/** Why a datagram got no answer. */
export type DropReason = "not_stun" | "malformed" | "not_request" | "not_binding";

/** Which of the (up to) four sockets answers, relative to the one that received. */
export interface Change {
  ip: boolean;
  port: boolean;
}

/** What to do with one datagram. */
export type StunDecision =
  | { action: "drop"; reason: DropReason }
  | { action: "reply"; bytes: Uint8Array; change: Change };

/** Addresses for RFC 5780, relative to the receiving socket. */
export interface AlternateAddresses {
  /** The socket the answer comes from, for each change. */
  origin(change: Change): TransportAddress;
}

/** Options for {@linkcode answerStun}. */
export interface AnswerOptions {
  /** SOFTWARE attribute; empty to omit. @default {"holepunch"} */
  software?: string;
  /** Present when four sockets serve RFC 5780. */
  alternate?: AlternateAddresses;
}

const NO_CHANGE: Change = { ip: false, port: false };

let softwareCache: { text: string; bytes: Uint8Array } | undefined;

/** SOFTWARE is the same on every answer: encode it once. */
function softwareBytes(text: string): Uint8Array {
  if (softwareCache?.text !== text) softwareCache = { text, bytes: encodeText(text) };
  return softwareCache.bytes;
}

/**
 * Decides the answer to one datagram from `source`. Pure: no sockets.
 *
 * @example
 * ```ts
 * const decision = answerStun(datagram, { family: 4, ip: "192.0.2.9", port: 40000 });
 * if (decision.action === "reply") await socket.send(decision.bytes, to);
 * ```
 */
export function answerStun(
  datagram: Uint8Array,
  source: TransportAddress,
  options: AnswerOptions = {},
): StunDecision {
  const software = options.software ?? "holepunch";
  if (!isStun(datagram)) return { action: "drop", reason: "not_stun" };
  let request;
  try {
    request = parseStunMessage(datagram, { comprehended: SERVER_COMPREHENDS });
  } catch (error) {
    if (
      error instanceof StunError && error.code === "unknown_required" && error.header &&
      error.header.cls === StunClass.REQUEST && error.header.method === StunMethod.BINDING
    ) {
      return errorReply(error.header.transactionId, 420, "Unknown Attribute", software, [
        { type: Attr.UNKNOWN_ATTRIBUTES, value: encodeUnknownAttributes(error.unknownAttributes) },
      ]);
    }
    return { action: "drop", reason: "malformed" };
  }
  if (request.cls !== StunClass.REQUEST) return { action: "drop", reason: "not_request" };
  if (request.method !== StunMethod.BINDING) return { action: "drop", reason: "not_binding" };

  let change = NO_CHANGE;
  const changeValue = getAttribute(request, Attr.CHANGE_REQUEST);
  if (changeValue !== undefined) {
    let flags;
    try {
      flags = decodeChangeRequest(changeValue);
    } catch {
      return errorReply(request.transactionId, 400, "Bad Request", software);
    }
    change = { ip: flags.changeIp, port: flags.changePort };
    // RFC 5780 §6.1: a server without an alternate address treats a change
    // it cannot make as an attribute it does not understand.
    if ((change.ip || change.port) && options.alternate === undefined) {
      return errorReply(request.transactionId, 420, "Unknown Attribute", software, [
        { type: Attr.UNKNOWN_ATTRIBUTES, value: encodeUnknownAttributes([Attr.CHANGE_REQUEST]) },
      ]);
    }
  }

  const attributes: StunAttribute[] = [
    { type: Attr.XOR_MAPPED_ADDRESS, value: encodeXorAddress(source, request.transactionId) },
  ];
  if (options.alternate) {
    attributes.push(
      { type: Attr.RESPONSE_ORIGIN, value: encodeAddress(options.alternate.origin(change)) },
      {
        type: Attr.OTHER_ADDRESS,
        value: encodeAddress(options.alternate.origin({ ip: !change.ip, port: !change.port })),
      },
    );
  }
  if (software) attributes.push({ type: Attr.SOFTWARE, value: softwareBytes(software) });
  const bytes = encodeStunMessage({
    method: StunMethod.BINDING,
    cls: StunClass.SUCCESS,
    transactionId: request.transactionId,
    attributes,
  }, { fingerprint: true });
  return { action: "reply", bytes, change };
}

function errorReply(
  transactionId: Uint8Array,
  code: number,
  reason: string,
  software: string,
  extra: StunAttribute[] = [],
): StunDecision {
  const attributes: StunAttribute[] = [
    { type: Attr.ERROR_CODE, value: encodeErrorCode(code, reason) },
    ...extra,
  ];
  if (software) attributes.push({ type: Attr.SOFTWARE, value: softwareBytes(software) });
  const bytes = encodeStunMessage({
    method: StunMethod.BINDING,
    cls: StunClass.ERROR,
    transactionId,
    attributes,
  }, { fingerprint: true });
  return { action: "reply", bytes, change: NO_CHANGE };
}

// ---- UDP --------------------------------------------------------------------

/** Options for {@linkcode StunServer.listen}. */
export interface StunServerOptions {
  /** Address of the primary socket. @default {"0.0.0.0"} */
  hostname?: string;
  /** 0 picks a free port. @default {3478} */
  port?: number;
  /**
   * A second IP (and port) of this host for RFC 5780. Both `hostname` and
   * `alternate.hostname` must then be concrete addresses, not wildcards.
   */
  alternate?: { hostname: string; port?: number };
  /** SOFTWARE attribute of answers. @default {"holepunch"} */
  software?: string;
  /** Where the server logs. @default {silentLogger} */
  logger?: Logger;
}

/** Counters, for logs and the benchmark. */
export interface StunServerStats {
  /** Datagrams received. */
  received: number;
  /** Binding requests answered. */
  answered: number;
  /** Datagrams dropped, by reason. */
  dropped: Record<DropReason, number>;
  /** Answers the socket failed to send. */
  sendErrors: number;
}

type Socket = Deno.DatagramConn;

/** Concurrent receive loops per socket; measured in bench/stun_bench.ts. */
const RECEIVERS_PER_SOCKET = 4;

function addressOf(conn: Socket): TransportAddress {
  return toTransportAddress(conn.addr as Deno.NetAddr)!;
}

/**
 * A running STUN server.
 *
 * @example
 * ```ts
 * const server = await StunServer.listen({ hostname: "127.0.0.1", port: 0 });
 * console.log(server.addresses[0]);
 * await server.close();
 * ```
 */
export class StunServer {
  /** Socket addresses: [primary, then for RFC 5780: same IP alt port, alt IP, alt IP alt port]. */
  readonly addresses: TransportAddress[];
  /** Counters since start. */
  readonly stats: StunServerStats = {
    received: 0,
    answered: 0,
    dropped: { not_stun: 0, malformed: 0, not_request: 0, not_binding: 0 },
    sendErrors: 0,
  };
  /** grid[ipIndex][portIndex] */
  #grid: Socket[][];
  #software: string;
  #log: Logger;
  #loops: Promise<void>[] = [];
  #closed = false;

  private constructor(grid: Socket[][], software: string, logger: Logger) {
    this.#grid = grid;
    this.#software = software;
    this.#log = logger;
    this.addresses = grid.flat().map(addressOf);
    // Several receives in flight per socket keep the kernel queue draining
    // while one answer is being sent (each op is a round trip into Deno's runtime).
    grid.forEach((row, i) =>
      row.forEach((conn, p) => {
        for (let k = 0; k < RECEIVERS_PER_SOCKET; k++) this.#loops.push(this.#serve(conn, i, p));
      })
    );
  }

  /** Binds the socket(s) and starts answering. */
  static listen(options: StunServerOptions = {}): StunServer {
    const hostname = options.hostname ?? "0.0.0.0";
    const software = options.software ?? "holepunch";
    const logger = options.logger ?? silentLogger;
    const bind = (h: string, port: number): Socket =>
      Deno.listenDatagram({ transport: "udp", hostname: h, port });
    const opened: Socket[] = [];
    try {
      const primary = bind(hostname, options.port ?? 3478);
      opened.push(primary);
      if (options.alternate === undefined) return new StunServer([[primary]], software, logger);
      const port = (primary.addr as Deno.NetAddr).port;
      const second = bind(hostname, options.alternate.port ?? 0);
      opened.push(second);
      const altPort = (second.addr as Deno.NetAddr).port;
      const altA = bind(options.alternate.hostname, port);
      opened.push(altA);
      const altB = bind(options.alternate.hostname, altPort);
      opened.push(altB);
      return new StunServer([[primary, second], [altA, altB]], software, logger);
    } catch (error) {
      for (const conn of opened) conn.close();
      throw error;
    }
  }

  #alternate(i: number, p: number): AlternateAddresses | undefined {
    if (this.#grid.length < 2) return undefined;
    return {
      origin: (change) => addressOf(this.#grid[change.ip ? 1 - i : i][change.port ? 1 - p : p]),
    };
  }

  async #serve(conn: Socket, i: number, p: number): Promise<void> {
    const alternate = this.#alternate(i, p);
    while (!this.#closed) {
      let data: Uint8Array;
      let from: Deno.NetAddr;
      try {
        const [bytes, addr] = await conn.receive();
        data = bytes;
        from = addr as Deno.NetAddr;
      } catch (error) {
        if (this.#closed) return;
        // A UDP receive error (ICMP unreachable from an earlier send) is per packet.
        this.#log.debug("stun receive error", { error });
        continue;
      }
      this.stats.received++;
      const source = toTransportAddress(from);
      if (source === null) continue;
      const decision = answerStun(data, source, { software: this.#software, alternate });
      if (decision.action === "drop") {
        this.stats.dropped[decision.reason]++;
        continue;
      }
      const out = this.#grid[decision.change.ip ? 1 - i : i][decision.change.port ? 1 - p : p];
      try {
        await out.send(decision.bytes, {
          transport: "udp",
          hostname: from.hostname,
          port: from.port,
        });
        this.stats.answered++;
      } catch (error) {
        this.stats.sendErrors++;
        this.#log.debug("stun send error", { error, to: `${from.hostname}:${from.port}` });
      }
    }
  }

  /** Stops answering and closes every socket. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const conn of this.#grid.flat()) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await Promise.all(this.#loops);
  }
}
