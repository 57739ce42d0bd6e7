/**
 * A WebSocket client over a bare TCP connection that reads only when asked:
 * the attacker that never reads what the server sends. It writes masked
 * text frames (RFC 6455 §5.2) after its handshake; the kernel's buffers fill
 * and the server's send buffer grows, as with a real client that stalls.
 */

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A client whose socket the test drives by hand. */
export class RawWebSocket {
  readonly conn: Deno.TcpConn;
  /** True once a write failed: the server closed the connection. */
  broken = false;

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  /** Connects to `port` on loopback and upgrades at `path`; reads only the 101 answer. */
  static async open(port: number, path: string): Promise<RawWebSocket> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
    await conn.write(encoder.encode(
      `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    ));
    // Read the answer byte by byte, so nothing after it is consumed.
    let head = "";
    const one = new Uint8Array(1);
    while (!head.endsWith("\r\n\r\n")) {
      const n = await conn.read(one);
      if (n === null) throw new Error(`closed during the handshake: ${head}`);
      head += decoder.decode(one);
      if (head.length > 4096) throw new Error("handshake answer too long");
    }
    if (!head.startsWith("HTTP/1.1 101")) {
      conn.close();
      throw new Error(`not upgraded: ${head.split("\r\n")[0]}`);
    }
    return new RawWebSocket(conn);
  }

  /** Writes one masked text frame; false (and `broken`) once the server is gone. */
  async sendText(text: string): Promise<boolean> {
    if (this.broken) return false;
    const payload = encoder.encode(text);
    const n = payload.length;
    const header = n < 126 ? 2 : n < 65536 ? 4 : 10;
    const frame = new Uint8Array(header + 4 + n);
    frame[0] = 0x81; // FIN, text
    if (n < 126) frame[1] = 0x80 | n;
    else if (n < 65536) {
      frame[1] = 0x80 | 126;
      new DataView(frame.buffer).setUint16(2, n);
    } else {
      frame[1] = 0x80 | 127;
      new DataView(frame.buffer).setBigUint64(2, BigInt(n));
    }
    const mask = crypto.getRandomValues(new Uint8Array(4));
    frame.set(mask, header);
    for (let i = 0; i < n; i++) frame[header + 4 + i] = payload[i] ^ mask[i & 3];
    try {
      let written = 0;
      while (written < frame.length) written += await this.conn.write(frame.subarray(written));
      return true;
    } catch {
      this.broken = true;
      return false;
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}
