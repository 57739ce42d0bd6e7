/**
 * The C library as the batched sockets (`ffi_udp.ts`) use it: where it
 * is, the functions opened from it (`socket`, `bind`, `setsockopt`,
 * `recvmmsg`, `sendmmsg`, `epoll_*`, `eventfd`, `read`, `write`, `close`),
 * the constants and structure sizes of 64-bit Linux, and the message slots
 * those calls read and write.
 *
 * @module
 */

export const AF_INET = 2;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_REUSEPORT = 15;
export const IPPROTO_IP = 0;
export const IP_TTL = 2;
export const MSG_DONTWAIT = 0x40;
export const MSG_TRUNC = 0x20;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 1;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
/** struct mmsghdr on 64-bit Linux: msghdr (56 bytes) and msg_len, padded to 64. */
export const MMSGHDR = 64;
export const IOVEC = 16;
export const SOCKADDR_IN = 16;
/** struct epoll_event is packed on x86_64 (12 bytes), aligned elsewhere (16). */
export const EPOLL_EVENT = Deno.build.arch === "x86_64" ? 12 : 16;
export const SOL_UDP = 17;
export const UDP_SEGMENT = 103;
/** struct cmsghdr (16 bytes) and a u16: its length, and the space it takes aligned. */
export const CMSG_LEN = 18;
export const CMSG_SPACE = 24;
/** A GSO message's payload stays under a UDP datagram's limit. */
export const GSO_MAX_BYTES = 65_000;
/** Datagrams per system call, each way. */
export const FFI_BATCH = 64;
/** Largest datagram taken (QUIC's packets and our frames stay far below). */
export const SLOT = 2048;
/** Batches drained from one socket per wake-up, so one busy socket cannot starve the rest. */
export const DRAINS_PER_WAKE = 4;

export const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: {
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
} as const;

export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/**
 * Where the C library may be: Debian's and Ubuntu's multiarch paths (the
 * `denoland/deno` images), then the dynamic loader's own search.
 */
export const LIBC_PATHS = [
  `/lib/${Deno.build.arch}-linux-gnu/libc.so.6`,
  `/usr/lib/${Deno.build.arch}-linux-gnu/libc.so.6`,
  "/lib64/libc.so.6",
  "libc.so.6",
];

/** The C library path FFI may open here, or why none (not Linux, no `--allow-ffi`). */
export function libcPath(): { path: string } | { reason: string } {
  if (Deno.build.os !== "linux") return { reason: `not Linux (${Deno.build.os})` };
  if (Deno.build.arch !== "x86_64" && Deno.build.arch !== "aarch64") {
    return { reason: `no batched UDP on ${Deno.build.arch}` };
  }
  for (const path of LIBC_PATHS) {
    try {
      if (Deno.permissions.querySync({ name: "ffi", path }).state === "granted") return { path };
    } catch {
      // A path the permission system cannot read: the next.
    }
  }
  return { reason: "no --allow-ffi" };
}

/** Why FFI sockets cannot be used here, or undefined when they may be. */
export function ffiUnavailable(): string | undefined {
  const found = libcPath();
  return "reason" in found ? found.reason : undefined;
}

export function pointer(bytes: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes as Uint8Array<ArrayBuffer>)));
}

export function int32(value: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setInt32(0, value, true);
  return bytes;
}

/** IPv4 dotted text as a u32, or -1. */
export function ipv4(ip: string): number {
  const parts = ip.split(".");
  if (parts.length !== 4) return -1;
  let value = 0;
  for (const part of parts) {
    const octet = Number(part);
    if (!/^\d{1,3}$/.test(part) || octet > 255) return -1;
    value = value * 256 + octet;
  }
  return value;
}

/** Who sent a datagram (the shape of `TransportAddress`, IPv4). */
export interface FfiAddress {
  readonly family: 4;
  readonly ip: string;
  readonly port: number;
}

/**
 * @ignore A batch of message slots (headers, iovecs, addresses, data):
 * the hub's shared receive batches and its one send batch.
 */
export class Slots {
  readonly headers: Uint8Array<ArrayBuffer> = new Uint8Array(FFI_BATCH * MMSGHDR);
  readonly data: Uint8Array<ArrayBuffer> = new Uint8Array(FFI_BATCH * SLOT);
  readonly names: Uint8Array<ArrayBuffer> = new Uint8Array(FFI_BATCH * SOCKADDR_IN);
  readonly iov: Uint8Array<ArrayBuffer> = new Uint8Array(FFI_BATCH * IOVEC);
  readonly h: DataView = new DataView(this.headers.buffer);
  readonly i: DataView = new DataView(this.iov.buffer);
  readonly n: DataView = new DataView(this.names.buffer);

  /** `headroom` bytes are kept free before each datagram (for an envelope byte). */
  constructor(readonly headroom: number) {
    const data = pointer(this.data), iov = pointer(this.iov), names = pointer(this.names);
    for (let k = 0; k < FFI_BATCH; k++) {
      this.i.setBigUint64(k * IOVEC, data + BigInt(k * SLOT + headroom), true);
      this.i.setBigUint64(k * IOVEC + 8, BigInt(SLOT - headroom), true);
      const at = k * MMSGHDR;
      this.h.setBigUint64(at, names + BigInt(k * SOCKADDR_IN), true);
      this.h.setUint32(at + 8, SOCKADDR_IN, true);
      this.h.setBigUint64(at + 16, iov + BigInt(k * IOVEC), true);
      this.h.setBigUint64(at + 24, 1n, true);
    }
  }
}
