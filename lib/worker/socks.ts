/**
 * The SOCKS5 door (RFC 1928, `PEER_SOCKS`): CONNECT only, no
 * authentication, and the host name is a peer's worker id, so
 * `curl --socks5-hostname 127.0.0.1:1080 http://db-1:5432/` reaches port
 * 5432 on db-1's loopback over an encrypted stream. IP literals are refused:
 * there is no "anywhere" to go to. This module reads and answers the
 * handshake; `Forwarder` does the rest, as for `PEER_FORWARD`.
 *
 * @module
 */

/** SOCKS5 reply codes (RFC 1928 §6). */
export const SocksReply = {
  SUCCEEDED: 0x00,
  GENERAL_FAILURE: 0x01,
  NOT_ALLOWED: 0x02,
  HOST_UNREACHABLE: 0x04,
  CONNECTION_REFUSED: 0x05,
  COMMAND_NOT_SUPPORTED: 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
} as const;

/** How long a client has for its whole handshake. */
export const SOCKS_HANDSHAKE_MS = 10_000;

/** A handshake that cannot go on, and the reply it gets (none: close at once). */
export class SocksError extends Error {
  /** Always `"SocksError"`. */
  override name = "SocksError";
  /** The reply code to send before closing, if a request was read. */
  readonly reply: number | undefined;

  constructor(message: string, reply?: number) {
    super(message);
    this.reply = reply;
  }
}

/** Where a CONNECT goes: a peer's id and a port on its loopback. */
export interface SocksTarget {
  peerId: string;
  port: number;
}

/** Reads exactly `n` bytes from `conn` (a SocksError at EOF). */
async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const read = await conn.read(out.subarray(got));
    if (read === null) throw new SocksError("the client closed during the handshake");
    got += read;
  }
  return out;
}

/** The reply to a request: `code`, and an unspecified IPv4 bound address. */
export function socksReply(code: number): Uint8Array {
  return new Uint8Array([0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
}

/**
 * Reads a client's greeting and CONNECT request from `conn` and answers the
 * greeting (no authentication). Returns the target; the caller answers the
 * request with {@linkcode socksReply}.
 *
 * @throws {SocksError} for anything but SOCKS5 CONNECT to a host name that
 * is a worker id (with the reply to send, once the request was read)
 */
export async function readSocksRequest(conn: Deno.Conn): Promise<SocksTarget> {
  const [version, methods] = await readExactly(conn, 2);
  if (version !== 0x05) throw new SocksError(`not SOCKS5 (version ${version})`);
  const offered = await readExactly(conn, methods);
  if (!offered.includes(0x00)) {
    await conn.write(new Uint8Array([0x05, 0xff]));
    throw new SocksError("the client offers no method without authentication");
  }
  await conn.write(new Uint8Array([0x05, 0x00]));
  const [v, command, , type] = await readExactly(conn, 4);
  if (v !== 0x05) throw new SocksError(`not SOCKS5 (version ${v})`, SocksReply.GENERAL_FAILURE);
  // Read the address whatever it is, so the reply comes after the whole request.
  let host: string | undefined;
  if (type === 0x03) {
    const [length] = await readExactly(conn, 1);
    host = new TextDecoder().decode(await readExactly(conn, length));
  } else if (type === 0x01 || type === 0x04) {
    await readExactly(conn, type === 0x01 ? 4 : 16);
  } else {
    throw new SocksError(`unknown address type ${type}`, SocksReply.ADDRESS_TYPE_NOT_SUPPORTED);
  }
  const portBytes = await readExactly(conn, 2);
  const port = (portBytes[0] << 8) | portBytes[1];
  if (command !== 0x01) {
    throw new SocksError(
      `only CONNECT is supported (command ${command})`,
      SocksReply.COMMAND_NOT_SUPPORTED,
    );
  }
  if (host === undefined) {
    throw new SocksError(
      "an IP address is no peer: use the peer's id as the host name (--socks5-hostname)",
      SocksReply.ADDRESS_TYPE_NOT_SUPPORTED,
    );
  }
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(host)) {
    throw new SocksError(`"${host.slice(0, 64)}" is not a worker id`, SocksReply.HOST_UNREACHABLE);
  }
  if (port === 0) throw new SocksError("port 0", SocksReply.CONNECTION_REFUSED);
  return { peerId: host, port };
}

/**
 * `PEER_SOCKS`: `[HOST:]PORT` (port 0 picks a free one; the host defaults to 127.0.0.1, loopback
 * only unless given), or undefined when unset or `off`.
 *
 * @throws {Error} naming what is wrong
 */
export function parseSocks(
  text: string | undefined,
): { hostname: string; port: number } | undefined {
  if (text === undefined || text === "off") return undefined;
  const at = text.lastIndexOf(":");
  const hostname = at < 0 ? "127.0.0.1" : text.slice(0, at).replace(/^\[(.*)\]$/, "$1");
  const port = Number(at < 0 ? text : text.slice(at + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535 || hostname === "") {
    throw new Error(`"${text}" is not [HOST:]PORT, e.g. 127.0.0.1:1080`);
  }
  return { hostname, port };
}
