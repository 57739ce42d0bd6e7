/**
 * RESP2, the Redis serialization protocol (https://redis.io/docs/latest/develop/reference/protocol-spec/):
 * commands out as arrays of bulk strings, replies in as a stream the
 * {@linkcode RespParser} cuts into values. Pure: no I/O.
 *
 * @module
 */

/** An argument of a command: text (UTF-8), bytes, or a number. */
export type RedisArg = string | Uint8Array | number;

/** A decoded reply. Bulk strings stay bytes (Redis strings are binary). */
export type RespValue = string | number | Uint8Array | null | RespValue[] | RedisReplyError;

/** An error reply (`-ERR …`): a value, not thrown by the parser. */
export class RedisReplyError extends Error {
  override name = "RedisReplyError";
}

/** The stream is not RESP, or breaks a bound. */
export class RespProtocolError extends Error {
  override name = "RespProtocolError";
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CRLF = encoder.encode("\r\n");

/** Encodes one command as a RESP array of bulk strings. */
export function encodeCommand(args: readonly RedisArg[]): Uint8Array {
  const parts: Uint8Array[] = [encoder.encode(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = arg instanceof Uint8Array ? arg : encoder.encode(String(arg));
    parts.push(encoder.encode(`$${bytes.length}\r\n`), bytes, CRLF);
  }
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** A bulk string (or simple string) as text; anything else as it is. */
export function text(value: RespValue): string | null {
  if (value instanceof Uint8Array) return decoder.decode(value);
  if (typeof value === "string") return value;
  if (value === null) return null;
  throw new RespProtocolError(`Cannot read ${describe(value)} as text`);
}

function describe(value: RespValue): string {
  if (value instanceof RedisReplyError) return `error reply "${value.message}"`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  return typeof value;
}

/** Bounds a reply may not break (a server is trusted, a stream may still be junk). */
export interface RespLimits {
  /** Largest bulk string. @default {64 MiB} */
  maxBulkBytes?: number;
  /** Largest array (elements). @default {10,000,000} */
  maxArrayLength?: number;
  /** Longest line of a simple string, error or length. @default {64 KiB} */
  maxLineBytes?: number;
}

/**
 * Cuts a byte stream into replies: `push` what arrives, then take values
 * with `next` until it returns `undefined` (the rest has not arrived).
 *
 * @example
 * ```ts
 * const parser = new RespParser();
 * parser.push(new TextEncoder().encode("+OK\r\n:42\r\n"));
 * parser.next(); // "OK"
 * parser.next(); // 42
 * parser.next(); // undefined
 * ```
 */
export class RespParser {
  #buffer = new Uint8Array(0);
  #start = 0;
  #end = 0;
  #limits: Required<RespLimits>;

  constructor(limits: RespLimits = {}) {
    this.#limits = {
      maxBulkBytes: limits.maxBulkBytes ?? 64 * 1024 * 1024,
      maxArrayLength: limits.maxArrayLength ?? 10_000_000,
      maxLineBytes: limits.maxLineBytes ?? 64 * 1024,
    };
  }

  /** Bytes received and not yet taken. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  push(chunk: Uint8Array): void {
    const live = this.#end - this.#start;
    if (this.#end + chunk.length > this.#buffer.length) {
      if (live + chunk.length <= this.#buffer.length) {
        this.#buffer.copyWithin(0, this.#start, this.#end);
      } else {
        const grown = new Uint8Array(Math.max(live + chunk.length, this.#buffer.length * 2, 4096));
        grown.set(this.#buffer.subarray(this.#start, this.#end));
        this.#buffer = grown;
      }
      this.#start = 0;
      this.#end = live;
    }
    this.#buffer.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /**
   * The next complete reply, or `undefined` until more bytes arrive. What
   * is parsed is consumed, arrays included (a stack of open arrays), so a
   * large reply arriving in many chunks is read once.
   *
   * @throws {RespProtocolError} when the stream is not RESP or breaks a bound.
   */
  next(): RespValue | undefined {
    while (true) {
      const scalar = this.#scalar();
      if (scalar === undefined) return undefined;
      let value: RespValue;
      if ("array" in scalar) {
        if (scalar.array > 0) {
          if (this.#open.length >= 32) {
            throw new RespProtocolError("Cannot read replies nested deeper than 32");
          }
          this.#open.push({ items: [], remaining: scalar.array });
          continue;
        }
        value = scalar.array === -1 ? null : [];
      } else {
        value = scalar.value;
      }
      while (true) {
        const top = this.#open.at(-1);
        if (top === undefined) return value;
        top.items.push(value);
        if (--top.remaining > 0) break;
        this.#open.pop();
        value = top.items;
      }
    }
  }

  /** Arrays whose elements are still arriving, outermost first. */
  #open: { items: RespValue[]; remaining: number }[] = [];

  #consume(at: number): void {
    this.#start = at;
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }

  #line(at: number): { line: string; at: number } | undefined {
    const limit = Math.min(this.#end, at + this.#limits.maxLineBytes + 2);
    for (let i = at; i + 1 < limit; i++) {
      if (this.#buffer[i] === 0x0d && this.#buffer[i + 1] === 0x0a) {
        return { line: decoder.decode(this.#buffer.subarray(at, i)), at: i + 2 };
      }
    }
    if (this.#end - at > this.#limits.maxLineBytes + 2) {
      throw new RespProtocolError(`Cannot read a line longer than ${this.#limits.maxLineBytes}`);
    }
    return undefined;
  }

  #length(text: string, max: number, what: string): number {
    if (!/^-?\d{1,12}$/.test(text)) throw new RespProtocolError(`Cannot read ${what} "${text}"`);
    const n = Number(text);
    if (n < -1 || n > max) throw new RespProtocolError(`Cannot take ${what} ${n} (at most ${max})`);
    return n;
  }

  /** One value that is not an array, or an array's header; consumed only once whole. */
  #scalar(): { value: RespValue } | { array: number } | undefined {
    const at = this.#start;
    if (at >= this.#end) return undefined;
    const type = this.#buffer[at];
    const head = this.#line(at + 1);
    if (head === undefined) return undefined;
    let result: { value: RespValue } | { array: number };
    switch (type) {
      case 0x2b: // +
        result = { value: head.line };
        break;
      case 0x2d: // -
        result = { value: new RedisReplyError(head.line) };
        break;
      case 0x3a: // :
        if (!/^-?\d{1,19}$/.test(head.line)) {
          throw new RespProtocolError(`Cannot read integer "${head.line}"`);
        }
        result = { value: Number(head.line) };
        break;
      case 0x24: { // $
        const length = this.#length(head.line, this.#limits.maxBulkBytes, "bulk length");
        if (length === -1) {
          result = { value: null };
          break;
        }
        if (head.at + length + 2 > this.#end) return undefined;
        if (
          this.#buffer[head.at + length] !== 0x0d || this.#buffer[head.at + length + 1] !== 0x0a
        ) {
          throw new RespProtocolError("Cannot read bulk string: no CRLF after it");
        }
        const value = this.#buffer.slice(head.at, head.at + length);
        this.#consume(head.at + length + 2);
        return { value };
      }
      case 0x2a: // *
        result = { array: this.#length(head.line, this.#limits.maxArrayLength, "array length") };
        break;
      default:
        throw new RespProtocolError(`Cannot read reply type byte 0x${type.toString(16)}`);
    }
    this.#consume(head.at);
    return result;
  }
}
