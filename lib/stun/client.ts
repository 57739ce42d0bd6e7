/**
 * STUN Binding client with RFC 8489 §6.2.1 retransmission, over any socket
 * the caller owns (the worker's one UDP socket): the caller feeds it received
 * STUN datagrams through {@linkcode StunClient.handle}.
 *
 * @module
 */

import { hex } from "../core/encoding.ts";

import { type Clock, systemClock, type TimerId } from "../core/clock.ts";
import { parseIp } from "../protocol/ip.ts";
import {
  Attr,
  encodeStunMessage,
  getAttribute,
  newTransactionId,
  parseStunMessage,
  type StunAttribute,
  StunClass,
  StunError,
  StunMethod,
} from "./codec.ts";
import {
  decodeAddress,
  decodeErrorCode,
  decodeText,
  encodeChangeRequest,
  encodeText,
  getMappedAddress,
  type TransportAddress,
} from "./attributes.ts";

/** RFC 8489 §6.2.1 defaults. */
export const STUN_DEFAULTS = {
  /** Initial retransmission timeout. */
  rtoMs: 500,
  /** Requests sent in all (Rc). */
  maxSends: 7,
  /** After the last request, wait this many initial RTOs (Rm). */
  finalWaitFactor: 16,
} as const;

/** The server did not answer within the retransmission schedule. */
export class StunTimeoutError extends Error {
  override name = "StunTimeoutError";
}

/** The server answered with an error response. */
export class StunErrorResponse extends Error {
  override name = "StunErrorResponse";
  constructor(readonly code: number, readonly reason: string, readonly server: TransportAddress) {
    super(`STUN server ${formatAddress(server)} answered ${code} ${reason}`);
  }
}

/** A server given by name (`stun.l.google.com:19302`) or address. */
export interface StunServerSpec {
  host: string;
  port: number;
}

/** What a Binding transaction learned. */
export interface BindingResult {
  /** The server address the request went to. */
  server: TransportAddress;
  /** Our address as the server saw it (XOR-MAPPED-ADDRESS). */
  mapped: TransportAddress;
  /** RFC 5780: where the answer came from, and the server's other address. */
  responseOrigin?: TransportAddress;
  otherAddress?: TransportAddress;
  software?: string;
  /** From the first send to the answer (includes retransmissions). */
  rttMs: number;
}

/** Resolves a host name to addresses of one family. */
export type Resolver = (host: string, family: 4 | 6) => Promise<string[]>;

/** Options for {@linkcode StunClient}. */
export interface StunClientOptions {
  /** @default {500} */
  rtoMs?: number;
  /** @default {7} */
  maxSends?: number;
  /** @default {16} */
  finalWaitFactor?: number;
  /** Address family of the socket; only servers of this family are used. @default {4} */
  family?: 4 | 6;
  /** SOFTWARE sent with requests; empty to omit. @default {""} */
  software?: string;
  /** @default {Deno.resolveDns} */
  resolve?: Resolver;
  /** @default {systemClock} */
  clock?: Clock;
}

/** `a.b.c.d:port` or `[v6]:port`. */
export function formatAddress(address: { ip: string; port: number }): string {
  return address.ip.includes(":")
    ? `[${address.ip}]:${address.port}`
    : `${address.ip}:${address.port}`;
}

/**
 * Parses `host[:port]`, `[v6][:port]` (default port 3478, RFC 8489 §18.6).
 *
 * @throws {RangeError} with the offending text.
 */
export function parseServerSpec(text: string): StunServerSpec {
  const trimmed = text.trim().replace(/^stun:/i, "");
  let host: string;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(trimmed);
  if (bracketed) {
    host = bracketed[1];
    portText = bracketed[2];
    if (parseIp(host)?.family !== 6) {
      throw new RangeError(`Cannot read STUN server "${text}": expected [IPv6]:port`);
    }
  } else if ((trimmed.match(/:/g) ?? []).length > 1) {
    host = trimmed; // a bare IPv6 address, or nothing valid
    if (parseIp(host) === null) {
      throw new RangeError(`Cannot read STUN server "${text}": expected host:port`);
    }
  } else {
    [host, portText] = trimmed.split(":");
  }
  const port = portText === undefined ? 3478 : Number(portText);
  const validHost = parseIp(host ?? "") !== null ||
    /^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host ?? "");
  if (!validHost || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new RangeError(`Cannot read STUN server "${text}": expected host:port`);
  }
  return { host, port };
}

const systemResolver: Resolver = async (host, family) =>
  await Deno.resolveDns(host, family === 4 ? "A" : "AAAA");

interface Pending {
  resolve: (result: BindingResult) => void;
  reject: (error: Error) => void;
  server: TransportAddress;
  startedAt: number;
}

const key = hex;

/**
 * Sends Binding requests and matches answers by transaction id.
 *
 * @example
 * ```ts
 * const udp = UdpEndpoint.bind();
 * const client = new StunClient((bytes, to) => udp.send(bytes, to));
 * udp.onStun = (bytes, from) => client.handle(bytes, from);
 * const { mapped } = await client.binding("stun.l.google.com:19302");
 * ```
 */
export class StunClient {
  #send: (bytes: Uint8Array, to: TransportAddress) => Promise<void>;
  #o: Required<StunClientOptions>;
  #pending = new Map<string, Pending>();

  constructor(
    send: (bytes: Uint8Array, to: TransportAddress) => Promise<void>,
    options: StunClientOptions = {},
  ) {
    this.#send = send;
    this.#o = {
      rtoMs: options.rtoMs ?? STUN_DEFAULTS.rtoMs,
      maxSends: options.maxSends ?? STUN_DEFAULTS.maxSends,
      finalWaitFactor: options.finalWaitFactor ?? STUN_DEFAULTS.finalWaitFactor,
      family: options.family ?? 4,
      software: options.software ?? "",
      resolve: options.resolve ?? systemResolver,
      clock: options.clock ?? systemClock,
    };
  }

  /** Transactions in flight. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Feeds a received STUN datagram. Returns true when it answered one of our
   * transactions; anything else (strays, late duplicates, junk) is ignored.
   */
  handle(bytes: Uint8Array, from: TransportAddress): boolean {
    let message;
    try {
      message = parseStunMessage(bytes);
    } catch {
      return false;
    }
    if (message.method !== StunMethod.BINDING) return false;
    if (message.cls !== StunClass.SUCCESS && message.cls !== StunClass.ERROR) return false;
    const pending = this.#pending.get(key(message.transactionId));
    if (pending === undefined) return false;
    if (message.cls === StunClass.ERROR) {
      const value = getAttribute(message, Attr.ERROR_CODE);
      let code = 0;
      let reason = "malformed error response";
      try {
        if (value) ({ code, reason } = decodeErrorCode(value));
      } catch {
        // Keep the generic reason.
      }
      pending.reject(new StunErrorResponse(code, reason, pending.server));
      return true;
    }
    try {
      const mapped = getMappedAddress(message);
      if (mapped === undefined) {
        throw new StunError("bad_value", "Cannot use STUN response: it has no mapped address");
      }
      const origin = getAttribute(message, Attr.RESPONSE_ORIGIN);
      const other = getAttribute(message, Attr.OTHER_ADDRESS);
      const software = getAttribute(message, Attr.SOFTWARE);
      pending.resolve({
        server: pending.server,
        mapped,
        responseOrigin: origin ? decodeAddress(origin, "RESPONSE-ORIGIN") : from,
        otherAddress: other ? decodeAddress(other, "OTHER-ADDRESS") : undefined,
        software: software ? decodeText(software) : undefined,
        rttMs: this.#o.clock.now() - pending.startedAt,
      });
    } catch (error) {
      pending.reject(error as Error);
    }
    return true;
  }

  /** Resolves `spec` to one address of the socket's family. */
  async resolveServer(spec: string | StunServerSpec): Promise<TransportAddress> {
    const { host, port } = typeof spec === "string" ? parseServerSpec(spec) : spec;
    const family = this.#o.family;
    const literal = parseIp(host);
    if (literal) {
      if (literal.family !== family) {
        throw new RangeError(`Cannot use STUN server ${host}: this socket is IPv${family}`);
      }
      return { family, ip: host, port };
    }
    if (host === "localhost") return { family, ip: family === 4 ? "127.0.0.1" : "::1", port };
    const addresses = await this.#o.resolve(host, family);
    if (addresses.length === 0) {
      throw new Error(`Cannot resolve STUN server ${host}: no IPv${family} address`);
    }
    return { family, ip: addresses[0], port };
  }

  /**
   * One Binding transaction with retransmissions. Rejects with
   * {@linkcode StunTimeoutError} when the schedule runs out,
   * {@linkcode StunErrorResponse} on an error answer, or `signal.reason`.
   */
  async binding(
    spec: string | StunServerSpec | TransportAddress,
    options: { signal?: AbortSignal; changeIp?: boolean; changePort?: boolean } = {},
  ): Promise<BindingResult> {
    const server = typeof spec === "object" && "ip" in spec ? spec : await this.resolveServer(spec);
    const { signal } = options;
    signal?.throwIfAborted();
    const transactionId = newTransactionId();
    const attributes: StunAttribute[] = [];
    if (options.changeIp || options.changePort) {
      attributes.push({
        type: Attr.CHANGE_REQUEST,
        value: encodeChangeRequest({
          changeIp: options.changeIp ?? false,
          changePort: options.changePort ?? false,
        }),
      });
    }
    if (this.#o.software) {
      attributes.push({ type: Attr.SOFTWARE, value: encodeText(this.#o.software) });
    }
    const request = encodeStunMessage({
      method: StunMethod.BINDING,
      cls: StunClass.REQUEST,
      transactionId,
      attributes,
    }, { fingerprint: true });

    const { clock } = this.#o;
    const id = key(transactionId);
    return await new Promise<BindingResult>((resolve, reject) => {
      let timer: TimerId | undefined;
      let sends = 0;
      let interval = this.#o.rtoMs;
      const done = () => {
        clock.clearTimeout(timer);
        this.#pending.delete(id);
        signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        done();
        reject(signal!.reason);
      };
      const transmit = () => {
        sends++;
        // A send error (no route yet) is a lost packet: the schedule retries.
        this.#send(request, server).catch(() => {});
        if (sends < this.#o.maxSends) {
          timer = clock.setTimeout(transmit, interval);
          interval *= 2;
        } else {
          timer = clock.setTimeout(() => {
            done();
            reject(
              new StunTimeoutError(
                `STUN server ${formatAddress(server)} did not answer ${sends} requests`,
              ),
            );
          }, this.#o.rtoMs * this.#o.finalWaitFactor);
        }
      };
      this.#pending.set(id, {
        server,
        startedAt: clock.now(),
        resolve: (r) => {
          done();
          resolve(r);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      transmit();
    });
  }
}
