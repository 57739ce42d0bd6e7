/**
 * Batched UDP on Linux through Deno's FFI (`Deno.dlopen` on the C
 * library): a socket the process opens itself, `recvmmsg` and `sendmmsg`
 * over buffers made once. A prototype for issue 21's evaluation
 * (`udp_batch_bench.ts`), not used by the workers.
 *
 * @module
 */

const AF_INET = 2;
const SOCK_DGRAM = 2;
const MSG_WAITFORONE = 0x10000;
const MSG_DONTWAIT = 0x40;
const MMSGHDR = 64; // struct mmsghdr on x86_64: msghdr (56) + msg_len (4) + padding
const IOVEC = 16;
const SOCKADDR_IN = 16;

const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
  recvmmsgBlocking: {
    name: "recvmmsg",
    parameters: ["i32", "buffer", "u32", "i32", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
});

function sockaddr(ip: string, port: number): Uint8Array<ArrayBuffer> {
  const a = new Uint8Array(SOCKADDR_IN);
  const v = new DataView(a.buffer);
  v.setUint16(0, AF_INET, true);
  v.setUint16(2, port, false);
  ip.split(".").forEach((octet, i) => (a[4 + i] = Number(octet)));
  return a;
}

/** A batch of `count` message slots of `size` bytes each, with their iovecs and addresses. */
class Batch {
  readonly headers: Uint8Array<ArrayBuffer>;
  readonly data: Uint8Array<ArrayBuffer>;
  readonly names: Uint8Array<ArrayBuffer>;
  readonly #iov: Uint8Array<ArrayBuffer>;
  readonly #hv: DataView;
  readonly #iv: DataView;
  constructor(readonly count: number, readonly size: number) {
    this.headers = new Uint8Array(count * MMSGHDR);
    this.data = new Uint8Array(count * size);
    this.names = new Uint8Array(count * SOCKADDR_IN);
    this.#iov = new Uint8Array(count * IOVEC);
    this.#hv = new DataView(this.headers.buffer);
    this.#iv = new DataView(this.#iov.buffer);
    const base = Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.data)) as bigint;
    const iovBase = Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#iov)) as bigint;
    const nameBase = Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.names)) as bigint;
    for (let i = 0; i < count; i++) {
      this.#iv.setBigUint64(i * IOVEC, base + BigInt(i * size), true);
      this.#iv.setBigUint64(i * IOVEC + 8, BigInt(size), true);
      const h = i * MMSGHDR;
      this.#hv.setBigUint64(h, nameBase + BigInt(i * SOCKADDR_IN), true); // msg_name
      this.#hv.setUint32(h + 8, SOCKADDR_IN, true); // msg_namelen
      this.#hv.setBigUint64(h + 16, iovBase + BigInt(i * IOVEC), true); // msg_iov
      this.#hv.setBigUint64(h + 24, 1n, true); // msg_iovlen
    }
  }
  /** Before a receive: every slot takes `size` bytes and any address. */
  resetForReceive(n = this.count): void {
    for (let i = 0; i < n; i++) {
      this.#iv.setBigUint64(i * IOVEC + 8, BigInt(this.size), true);
      this.#hv.setUint32(i * MMSGHDR + 8, SOCKADDR_IN, true);
    }
  }
  /** Received length of slot `i`. */
  length(i: number): number {
    return this.#hv.getUint32(i * MMSGHDR + 56, true);
  }
  /** Slot `i` is to carry `length` bytes to `addr`. */
  setSend(i: number, length: number, addr: Uint8Array): void {
    this.#iv.setBigUint64(i * IOVEC + 8, BigInt(length), true);
    this.names.set(addr, i * SOCKADDR_IN);
    this.#hv.setUint32(i * MMSGHDR + 8, SOCKADDR_IN, true);
  }
  slot(i: number): Uint8Array<ArrayBuffer> {
    return this.data.subarray(i * this.size, (i + 1) * this.size);
  }
}

/** A UDP socket opened through FFI, bound on `ip` (port 0: any). */
export class FfiUdp {
  readonly fd: number;
  readonly port: number;
  constructor(ip = "127.0.0.1", port = 0, bufferBytes = 4 << 20) {
    this.fd = libc.symbols.socket(AF_INET, SOCK_DGRAM, 0);
    if (this.fd < 0) throw new Error("socket() failed");
    const size = new Uint8Array(4);
    new DataView(size.buffer).setInt32(0, bufferBytes, true);
    libc.symbols.setsockopt(this.fd, 1, 8, size, 4); // SOL_SOCKET, SO_RCVBUF
    libc.symbols.setsockopt(this.fd, 1, 7, size, 4); // SO_SNDBUF
    if (libc.symbols.bind(this.fd, sockaddr(ip, port), SOCKADDR_IN) !== 0) {
      throw new Error("bind() failed");
    }
    const name = new Uint8Array(SOCKADDR_IN);
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, SOCKADDR_IN, true);
    libc.symbols.getsockname(this.fd, name, len);
    this.port = new DataView(name.buffer).getUint16(2, false);
  }
  static batch(count: number, size: number): Batch {
    return new Batch(count, size);
  }
  static address(ip: string, port: number): Uint8Array<ArrayBuffer> {
    return sockaddr(ip, port);
  }
  /** Waits (on a helper thread) for at least one datagram, then takes what is there. */
  receive(batch: Batch): Promise<number> {
    batch.resetForReceive();
    return libc.symbols.recvmmsgBlocking(this.fd, batch.headers, batch.count, MSG_WAITFORONE, null);
  }
  /** Takes what is there without waiting (0 when nothing). */
  receiveNow(batch: Batch): number {
    batch.resetForReceive();
    const n = libc.symbols.recvmmsg(this.fd, batch.headers, batch.count, MSG_DONTWAIT, null);
    return n < 0 ? 0 : n;
  }
  /** Sends the first `n` slots of `batch` in one call; returns how many went. */
  send(batch: Batch, n: number): number {
    return libc.symbols.sendmmsg(this.fd, batch.headers, n, 0);
  }
  close(): void {
    libc.symbols.close(this.fd);
  }
}
