/**
 * A WebSocket client (RFC 6455) over `Deno.connect` with `TCP_NODELAY`.
 *
 * Deno's built-in `WebSocket` client leaves Nagle's algorithm on (measured
 * here: two frames written back to back reach the server 40–44 ms apart,
 * the classic Nagle and delayed-ACK stall; the server side, `Deno.serve`,
 * has no such delay). For the worker's rendezvous session that stall sat on
 * every relayed packet burst and every introduction. This client is the
 * small part of RFC 6455 a client needs (handshake, masking, fragments,
 * ping/pong, the close handshake), with the same event surface as
 * `WebSocket` (`open`, `message`, `error`, `close`), and binary messages as
 * `ArrayBuffer`.
 *
 * @module
 */

/** RFC 6455 §1.3: the GUID the server appends to our key. */
const ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** Largest HTTP response head accepted during the handshake. */
const MAX_HEAD = 16 * 1024;
/** How long the closing handshake may take before the socket is just closed. */
const CLOSE_TIMEOUT_MS = 5000;

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const OP_CONTINUATION = 0x0;
const OP_TEXT = 0x1;
const OP_BINARY = 0x2;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;
const OP_PONG = 0xa;

const encoder = new TextEncoder();

/** Options for {@linkcode connectWebSocket}. */
export interface WebSocketClientOptions {
  /** Largest message accepted from the server; larger closes with 1009. @default {16777216} */
  maxMessageBytes?: number;
}

/** A protocol violation by the server, with the close code to send. */
class WebSocketProtocolError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await conn.write(bytes.subarray(written));
}

/** A client frame: FIN set, masked (RFC 6455 §5.3). */
function encodeFrame(opcode: number, payload: Uint8Array): Uint8Array<ArrayBuffer> {
  const length = payload.length;
  const extended = length < 126 ? 0 : length < 65536 ? 2 : 8;
  const frame = new Uint8Array(2 + extended + 4 + length);
  frame[0] = 0x80 | opcode;
  if (extended === 0) frame[1] = 0x80 | length;
  else if (extended === 2) {
    frame[1] = 0x80 | 126;
    frame[2] = length >> 8;
    frame[3] = length & 0xff;
  } else {
    frame[1] = 0x80 | 127;
    new DataView(frame.buffer).setBigUint64(2, BigInt(length));
  }
  const maskAt = 2 + extended;
  const mask = crypto.getRandomValues(frame.subarray(maskAt, maskAt + 4));
  const body = maskAt + 4;
  for (let i = 0; i < length; i++) frame[body + i] = payload[i] ^ mask[i & 3];
  return frame;
}

function closePayload(code: number | undefined, reason: string | undefined): Uint8Array {
  if (code === undefined) return new Uint8Array(0);
  const text = encoder.encode(reason ?? "").subarray(0, 123);
  const payload = new Uint8Array(2 + text.length);
  payload[0] = code >> 8;
  payload[1] = code & 0xff;
  payload.set(text, 2);
  return payload;
}

async function expectedAccept(key: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-1", encoder.encode(key + ACCEPT_GUID));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/**
 * A WebSocket connection made by {@linkcode connectWebSocket}. The event
 * surface and `readyState` values are the standard `WebSocket`'s.
 */
export class TcpWebSocket extends EventTarget {
  /** `WebSocket.CONNECTING` … `WebSocket.CLOSED`. */
  readyState: number = CONNECTING;
  /** The URL it connects to. */
  readonly url: string;
  /** Binary messages arrive as `ArrayBuffer`. */
  readonly binaryType = "arraybuffer";
  #conn?: Deno.Conn;
  #writing: Promise<void> = Promise.resolve();
  #buffered = 0;
  #closeSent = false;
  #closeTimer?: ReturnType<typeof setTimeout>;
  #closeEvent?: { code: number; reason: string; wasClean: boolean };
  #maxMessage: number;

  /** Use {@linkcode connectWebSocket}. */
  constructor(url: string, headers: Record<string, string>, options: WebSocketClientOptions = {}) {
    super();
    this.url = url;
    this.#maxMessage = options.maxMessageBytes ?? 16 * 1024 * 1024;
    void this.#run(new URL(url), headers);
  }

  /** Bytes handed to `send` that are not written to the socket yet. */
  get bufferedAmount(): number {
    return this.#buffered;
  }

  async #run(url: URL, headers: Record<string, string>): Promise<void> {
    let leftover: Uint8Array;
    try {
      leftover = await this.#handshake(url, headers);
    } catch (error) {
      this.#fail(1006, (error as Error).message);
      return;
    }
    if (this.readyState !== CONNECTING) {
      // Closed while connecting: the socket came too late to be used.
      this.#conn?.close();
      return;
    }
    this.readyState = OPEN;
    this.dispatchEvent(new Event("open"));
    try {
      await this.#readFrames(leftover);
    } catch (error) {
      if (error instanceof WebSocketProtocolError) {
        this.#sendClose(error.code, error.message);
        this.#fail(error.code, error.message);
      } else {
        this.#fail(1006, (error as Error).message);
      }
    }
  }

  async #handshake(url: URL, headers: Record<string, string>): Promise<Uint8Array> {
    const secure = url.protocol === "wss:" || url.protocol === "https:";
    if (!secure && url.protocol !== "ws:" && url.protocol !== "http:") {
      throw new Error(`Cannot connect to ${url.protocol} URLs: use ws: or wss:`);
    }
    const hostname = url.hostname.replace(/^\[|\]$/g, "");
    const port = Number(url.port || (secure ? 443 : 80));
    const tcp = await Deno.connect({ hostname, port });
    tcp.setNoDelay(true);
    const conn: Deno.Conn = secure ? await Deno.startTls(tcp, { hostname }) : tcp;
    this.#conn = conn;
    if (this.readyState !== CONNECTING) {
      conn.close();
      throw new Error("closed while connecting");
    }
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    const lines = [
      `GET ${url.pathname || "/"}${url.search} HTTP/1.1`,
      `Host: ${url.host}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${key}`,
      "Sec-WebSocket-Version: 13",
      ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
    ];
    await writeAll(conn, encoder.encode(lines.join("\r\n") + "\r\n\r\n"));
    let buffered = new Uint8Array(0);
    let end = -1;
    const chunk = new Uint8Array(4096);
    while (end < 0) {
      const n = await conn.read(chunk);
      if (n === null) throw new Error("the server closed the connection during the handshake");
      const next = new Uint8Array(buffered.length + n);
      next.set(buffered);
      next.set(chunk.subarray(0, n), buffered.length);
      buffered = next;
      for (let i = Math.max(0, buffered.length - n - 3); i + 3 < buffered.length; i++) {
        if (
          buffered[i] === 13 && buffered[i + 1] === 10 && buffered[i + 2] === 13 &&
          buffered[i + 3] === 10
        ) {
          end = i;
          break;
        }
      }
      if (end < 0 && buffered.length > MAX_HEAD) throw new Error("handshake response too large");
    }
    const head = new TextDecoder().decode(buffered.subarray(0, end)).split("\r\n");
    const status = /^HTTP\/1\.1 (\d{3})/.exec(head[0]);
    if (!status || status[1] !== "101") {
      throw new Error(`the server refused the upgrade: ${head[0]}`);
    }
    const fields = new Map(
      head.slice(1).map((line) => {
        const at = line.indexOf(":");
        return [line.slice(0, at).trim().toLowerCase(), line.slice(at + 1).trim()] as const;
      }),
    );
    if (fields.get("upgrade")?.toLowerCase() !== "websocket") {
      throw new Error("the server did not upgrade to websocket");
    }
    if (fields.get("sec-websocket-accept") !== await expectedAccept(key)) {
      throw new Error("the server's Sec-WebSocket-Accept does not match our key");
    }
    return buffered.subarray(end + 4);
  }

  async #readFrames(initial: Uint8Array): Promise<void> {
    const conn = this.#conn!;
    let buffer = new Uint8Array(Math.max(65536, initial.length));
    buffer.set(initial);
    let start = 0;
    let end = initial.length;
    let message: Uint8Array[] = [];
    let messageOpcode = 0;
    let messageLength = 0;
    const decoder = new TextDecoder("utf-8", { fatal: true });
    while (true) {
      // Parse every complete frame in the buffer.
      while (end - start >= 2) {
        const b0 = buffer[start];
        const b1 = buffer[start + 1];
        const fin = (b0 & 0x80) !== 0;
        const opcode = b0 & 0x0f;
        if ((b0 & 0x70) !== 0) throw new WebSocketProtocolError(1002, "reserved bits set");
        if (b1 & 0x80) throw new WebSocketProtocolError(1002, "the server masked a frame");
        let length = b1 & 0x7f;
        let at = start + 2;
        if (length === 126) {
          if (end - at < 2) break;
          length = (buffer[at] << 8) | buffer[at + 1];
          at += 2;
        } else if (length === 127) {
          if (end - at < 8) break;
          const big = new DataView(buffer.buffer, buffer.byteOffset + at, 8).getBigUint64(0);
          if (big > BigInt(this.#maxMessage)) {
            throw new WebSocketProtocolError(1009, "message too big");
          }
          length = Number(big);
          at += 8;
        }
        if (opcode >= 0x8 && (!fin || length > 125)) {
          throw new WebSocketProtocolError(1002, "bad control frame");
        }
        if (messageLength + length > this.#maxMessage) {
          throw new WebSocketProtocolError(1009, "message too big");
        }
        if (end - at < length) {
          // Make room for the whole frame, then read more.
          if (at - start + length > buffer.length - start) {
            const bigger = new Uint8Array(Math.max(buffer.length * 2, at - start + length));
            bigger.set(buffer.subarray(start, end));
            end -= start;
            start = 0;
            buffer = bigger;
          }
          break;
        }
        const payload = buffer.slice(at, at + length);
        start = at + length;
        if (opcode === OP_PING) {
          this.#write(encodeFrame(OP_PONG, payload));
        } else if (opcode === OP_PONG) {
          // Unsolicited pongs are allowed and ignored.
        } else if (opcode === OP_CLOSE) {
          const code = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
          const reason = payload.length > 2 ? new TextDecoder().decode(payload.subarray(2)) : "";
          if (!this.#closeSent) this.#sendClose(payload.length >= 2 ? code : undefined, reason);
          this.#finish(code, reason, true);
          return;
        } else {
          if (opcode === OP_CONTINUATION ? messageOpcode === 0 : messageOpcode !== 0) {
            throw new WebSocketProtocolError(1002, "unexpected continuation");
          }
          if (opcode !== OP_CONTINUATION && opcode !== OP_TEXT && opcode !== OP_BINARY) {
            throw new WebSocketProtocolError(1002, `unknown opcode ${opcode}`);
          }
          if (opcode !== OP_CONTINUATION) messageOpcode = opcode;
          message.push(payload);
          messageLength += payload.length;
          if (fin) {
            const whole = message.length === 1 ? message[0] : new Uint8Array(messageLength);
            if (message.length > 1) {
              let offset = 0;
              for (const part of message) {
                whole.set(part, offset);
                offset += part.length;
              }
            }
            let data: string | ArrayBuffer;
            if (messageOpcode === OP_TEXT) {
              try {
                data = decoder.decode(whole);
              } catch {
                throw new WebSocketProtocolError(1007, "text message is not UTF-8");
              }
            } else {
              data = (whole.buffer as ArrayBuffer).slice(
                whole.byteOffset,
                whole.byteOffset + whole.length,
              );
            }
            message = [];
            messageOpcode = 0;
            messageLength = 0;
            if (this.readyState === OPEN) this.dispatchEvent(new MessageEvent("message", { data }));
          }
        }
      }
      if (start === end) start = end = 0;
      else if (start > buffer.length / 2) {
        buffer.copyWithin(0, start, end);
        end -= start;
        start = 0;
      }
      const n = await conn.read(buffer.subarray(end));
      if (n === null) {
        this.#finish(1006, "", false);
        return;
      }
      end += n;
    }
  }

  #write(frame: Uint8Array): void {
    const conn = this.#conn;
    if (!conn) return;
    this.#buffered += frame.length;
    this.#writing = this.#writing.then(
      () => writeAll(conn, frame),
    ).catch(() => {}).finally(() => {
      this.#buffered -= frame.length;
    });
  }

  /** Sends a text (string) or binary message. */
  send(data: string | Uint8Array): void {
    if (this.readyState === CONNECTING) {
      throw new DOMException("Cannot send before the connection is open", "InvalidStateError");
    }
    if (this.readyState !== OPEN) return;
    this.#write(
      typeof data === "string"
        ? encodeFrame(OP_TEXT, encoder.encode(data))
        : encodeFrame(OP_BINARY, data),
    );
  }

  #sendClose(code: number | undefined, reason: string | undefined): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    this.#write(encodeFrame(OP_CLOSE, closePayload(code, reason)));
  }

  /** Starts the closing handshake; `close` fires when it ends (or after 5 s). */
  close(code?: number, reason?: string): void {
    if (this.readyState === CLOSING || this.readyState === CLOSED) return;
    if (this.readyState === CONNECTING) {
      this.readyState = CLOSING;
      this.#fail(1006, "closed before the connection opened");
      return;
    }
    this.readyState = CLOSING;
    this.#sendClose(code, reason);
    this.#closeTimer = setTimeout(
      () => this.#finish(1006, "close timed out", false),
      CLOSE_TIMEOUT_MS,
    );
  }

  #fail(code: number, message: string): void {
    if (this.readyState === CLOSED) return;
    this.dispatchEvent(new ErrorEvent("error", { message }));
    this.#finish(code, "", false);
  }

  #finish(code: number, reason: string, wasClean: boolean): void {
    if (this.#closeEvent) return;
    this.#closeEvent = { code, reason, wasClean };
    clearTimeout(this.#closeTimer);
    this.readyState = CLOSED;
    const conn = this.#conn;
    // Let the close frame (ours or the echo) leave before the socket goes.
    this.#writing.finally(() => {
      try {
        conn?.close();
      } catch {
        // Already closed.
      }
    });
    this.dispatchEvent(new CloseEvent("close", { code, reason, wasClean }));
  }
}

/**
 * Opens a WebSocket to `url` (`ws:` or `wss:`) with `headers` on the
 * handshake, over a TCP connection with Nagle's algorithm off.
 *
 * @example
 * ```ts
 * import { connectWebSocket } from "./websocket_client.ts";
 *
 * const socket = connectWebSocket("ws://localhost:8080/ws/register/w1", {});
 * socket.addEventListener("open", () => socket.send("hello"));
 * ```
 */
export function connectWebSocket(
  url: string,
  headers: Record<string, string>,
  options: WebSocketClientOptions = {},
): TcpWebSocket {
  return new TcpWebSocket(url, headers, options);
}
