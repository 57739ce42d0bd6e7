/**
 * Batched UDP sockets through Deno's FFI, on Linux: sockets the worker
 * opens itself (IPv4), read with `recvmmsg` and written with `sendmmsg`,
 * dozens of datagrams a system call, where Deno's own sockets take one op
 * and one system call per datagram (`deno task bench:udp`: 2.6–4.8 µs a
 * forwarded packet against 13.4–14.3). One `epoll_wait`, on a helper thread
 * (a non-blocking FFI call), waits for every socket at once; the main
 * thread then drains the ready ones without blocking. Sends are queued and
 * go out together at the end of the current task (or when a batch fills).
 *
 * Needs `--allow-ffi`; {@linkcode FfiUdp.open} says why it cannot be used
 * anywhere else (not Linux, no permission, no C library), and the worker
 * keeps Deno's own sockets there.
 *
 * @module
 */

import {
  AF_INET,
  CMSG_LEN,
  CMSG_SPACE,
  DRAINS_PER_WAKE,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_EVENT,
  EPOLLIN,
  FFI_BATCH,
  type FfiAddress,
  GSO_MAX_BYTES,
  int32,
  IOVEC,
  IP_TTL,
  IPPROTO_IP,
  ipv4,
  type Libc,
  LIBC_PATHS,
  libcPath,
  MMSGHDR,
  MSG_DONTWAIT,
  MSG_TRUNC,
  pointer,
  SLOT,
  Slots,
  SO_RCVBUF,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SO_SNDBUF,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOCKADDR_IN,
  SOL_SOCKET,
  SOL_UDP,
  SYMBOLS,
  UDP_SEGMENT,
} from "./ffi_libc.ts";

export { FFI_BATCH, type FfiAddress, ffiUnavailable, Slots } from "./ffi_libc.ts";

/**
 * One FFI socket (IPv4). What it receives goes to {@linkcode FfiUdpSocket.onPacket};
 * what it sends is queued and written in batches.
 */
export class FfiUdpSocket {
  readonly fd: number;
  /** The address it is bound to. */
  readonly ip: string;
  readonly port: number;
  /**
   * Each datagram received: `bytes` starts `headroom` bytes before the
   * datagram (those bytes are the caller's to fill), and is valid only
   * during the call; `from` says who sent it (one object per sender, kept).
   */
  onPacket: (bytes: Uint8Array, from: FfiAddress) => void = () => {};
  /** Datagrams received, sent, refused by the kernel on sending, and dropped as too large. */
  readonly counts = { received: 0, sent: 0, sendErrors: 0, truncated: 0 };
  #hub: FfiUdp;
  #headroom: number;
  #closed = false;
  #lastIp = "";
  #lastAddress = -1;
  /** Sender addresses seen, by ip·port number: no string made per datagram. */
  #from = new Map<number, FfiAddress>();

  /** @ignore Made by {@linkcode FfiUdp.bind}. */
  constructor(hub: FfiUdp, fd: number, ip: string, port: number, headroom: number) {
    this.#hub = hub;
    this.fd = fd;
    this.ip = ip;
    this.port = port;
    this.#headroom = headroom;
  }

  /** @ignore Reads what is waiting, up to a few batches; called by the hub. */
  drain(libc: Libc): void {
    // Receive slots are the hub's, shared: a datagram lives only during its handler.
    const slots = this.#hub.receiveSlots(this.#headroom);
    for (let round = 0; round < DRAINS_PER_WAKE && !this.#closed; round++) {
      for (let k = 0; k < FFI_BATCH; k++) slots.h.setUint32(k * MMSGHDR + 8, SOCKADDR_IN, true);
      const n = libc.recvmmsg(this.fd, slots.headers, FFI_BATCH, MSG_DONTWAIT, null);
      if (n <= 0) return;
      this.counts.received += n;
      for (let k = 0; k < n && !this.#closed; k++) {
        const length = slots.h.getUint32(k * MMSGHDR + 56, true);
        // Larger than a slot: cut short by the kernel, so not the datagram that was sent.
        if (slots.h.getInt32(k * MMSGHDR + 48, true) & MSG_TRUNC) {
          this.counts.truncated++;
          continue;
        }
        const at = k * SOCKADDR_IN;
        const key = slots.n.getUint32(at + 4, false) * 65536 + slots.n.getUint16(at + 2, false);
        let from = this.#from.get(key);
        if (!from) {
          if (this.#from.size > 4096) this.#from.clear();
          const a = slots.names;
          const ip = `${a[at + 4]}.${a[at + 5]}.${a[at + 6]}.${a[at + 7]}`;
          from = { family: 4, ip, port: key % 65536 };
          this.#from.set(key, from);
        }
        const start = k * SLOT;
        try {
          this.onPacket(slots.data.subarray(start, start + slots.headroom + length), from);
        } catch {
          // A handler's bug must not stop the socket.
        }
      }
      if (n < FFI_BATCH) return;
    }
  }

  /** Queues `bytes` for `ip:port`; false when it cannot be sent (too large, not IPv4, closed). */
  send(bytes: Uint8Array, ip: string, port: number): boolean {
    // Most datagrams go where the last one went: its address is not parsed again.
    const address = ip === this.#lastIp ? this.#lastAddress : ipv4(ip);
    this.#lastIp = ip;
    this.#lastAddress = address;
    if (this.#closed || address < 0 || bytes.length > SLOT) return false;
    this.#hub.stage(this, bytes, address, port);
    return true;
  }

  /** @ignore `n` datagrams went, or one was refused (`n` 0). */
  sent(n: number): void {
    if (n > 0) this.counts.sent += n;
    else this.counts.sendErrors++;
  }

  /**
   * Sends `bytes` now with IP TTL `ttl` (an opening packet of a punch),
   * after whatever is queued; the socket's TTL is restored after it.
   */
  sendWithTtl(bytes: Uint8Array, ip: string, port: number, ttl: number): boolean {
    const libc = this.#hub.libc;
    this.#hub.flush();
    if (libc.setsockopt(this.fd, IPPROTO_IP, IP_TTL, int32(ttl), 4) !== 0) return false;
    const sent = this.send(bytes, ip, port);
    this.#hub.flush();
    // -1: back to the route's default (ip_default_ttl), whatever it is.
    libc.setsockopt(this.fd, IPPROTO_IP, IP_TTL, int32(-1), 4);
    return sent;
  }

  /** Whether it is closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the socket; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#hub.flush();
    this.#closed = true;
    this.#hub.forget(this);
  }
}

/**
 * The process's FFI sockets and the one helper-thread wait that serves
 * them all. Open it with {@linkcode FfiUdp.open}.
 */
export class FfiUdp {
  /** @ignore The C library's functions. */
  readonly libc: Libc;
  #library: Deno.DynamicLibrary<typeof SYMBOLS>;
  #epoll: number;
  #wake: number;
  #sockets = new Map<number, FfiUdpSocket>();
  /** Receive slots by headroom, shared by every socket (drained one at a time). */
  #receive = new Map<number, Slots>();
  /** Datagrams queued to send, from any socket, and which socket each is from. */
  #out = new Slots(0);
  #stagedBy: (FfiUdpSocket | undefined)[] = new Array(FFI_BATCH);
  #lengths = new Int32Array(FFI_BATCH);
  /** Datagrams in each GSO message of a flush. */
  #groups = new Int32Array(FFI_BATCH);
  #staged = 0;
  /** Whether to try UDP GSO (until the kernel refuses it once). */
  #gso: boolean;
  /** The GSO messages: headers and their control messages. */
  #gsoSlots = (() => {
    const headers = new Uint8Array(FFI_BATCH * MMSGHDR);
    const control = new Uint8Array(FFI_BATCH * CMSG_SPACE);
    return {
      headers,
      control,
      h: new DataView(headers.buffer),
      c: new DataView(control.buffer),
    };
  })();
  #namesAt = pointer(this.#out.names);
  #iovAt = pointer(this.#out.iov);
  #controlAt = pointer(this.#gsoSlots.control);
  #flushing = false;
  #closed = false;
  #events = new Uint8Array(FFI_BATCH * EPOLL_EVENT);
  #loop: Promise<void>;

  private constructor(library: Deno.DynamicLibrary<typeof SYMBOLS>, gso: boolean) {
    this.#gso = gso;
    this.#library = library;
    this.libc = library.symbols;
    this.#epoll = this.libc.epoll_create1(SOCK_CLOEXEC);
    this.#wake = this.libc.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.#epoll < 0 || this.#wake < 0) throw new Error("epoll or eventfd unavailable");
    this.#watch(this.#wake);
    // A kernel (or a sandbox's network stack) may refuse GSO, or worse ignore
    // it and send one large datagram: tried once on loopback before it is used.
    if (this.#gso) this.#gso = this.#gsoWorks();
    this.#loop = this.#run();
  }

  /** Whether UDP GSO is in use (false where the kernel does not cut messages as asked). */
  get gso(): boolean {
    return this.#gso;
  }

  /** Two datagrams sent as one GSO message must arrive as those two. */
  #gsoWorks(): boolean {
    let a: FfiUdpSocket | undefined;
    let b: FfiUdpSocket | undefined;
    try {
      a = this.bind("127.0.0.1", 0);
      b = this.bind("127.0.0.1", 0);
      const got: number[] = [];
      b.onPacket = (bytes) => got.push(bytes.length);
      const probe = new Uint8Array(100);
      a.send(probe, "127.0.0.1", b.port);
      a.send(probe.subarray(0, 60), "127.0.0.1", b.port);
      this.flush();
      b.drain(this.libc);
      return this.#gso && got.length === 2 && got[0] === 100 && got[1] === 60;
    } catch {
      return false;
    } finally {
      a?.close();
      b?.close();
    }
  }

  /**
   * The FFI sockets, or why they cannot be had (`reason`): not Linux, no
   * `--allow-ffi`, or no C library to open. `gso`: send runs of datagrams
   * as UDP GSO messages where the kernel takes them (default true).
   */
  static open(options: { gso?: boolean } = {}): FfiUdp | { reason: string } {
    const found = libcPath();
    if ("reason" in found) return found;
    let last = "";
    for (const path of LIBC_PATHS.slice(LIBC_PATHS.indexOf(found.path))) {
      try {
        return new FfiUdp(Deno.dlopen(path, SYMBOLS), options.gso ?? true);
      } catch (error) {
        last = (error as Error).message;
      }
    }
    return { reason: `cannot open the C library: ${last}` };
  }

  #watch(fd: number): void {
    const event = new Uint8Array(EPOLL_EVENT);
    const view = new DataView(event.buffer);
    view.setUint32(0, EPOLLIN, true);
    view.setInt32(Deno.build.arch === "x86_64" ? 4 : 8, fd, true);
    if (this.libc.epoll_ctl(this.#epoll, EPOLL_CTL_ADD, fd, event) !== 0) {
      throw new Error(`cannot watch descriptor ${fd}`);
    }
  }

  /**
   * Binds an IPv4 socket on `ip:port` (0: any free port); `reusePort`
   * lets other sockets of this user share the port. `headroom` bytes are
   * left free before each received datagram.
   *
   * @throws {Error} when it cannot be bound (the port taken, say)
   */
  bind(
    ip: string,
    port: number,
    options: { reusePort?: boolean; headroom?: number } = {},
  ): FfiUdpSocket {
    const address = ipv4(ip);
    if (address < 0) throw new Error(`Cannot bind an FFI socket to ${ip}: IPv4 only`);
    const libc = this.libc;
    const fd = libc.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new Error("Cannot open a UDP socket");
    const name = new Uint8Array(SOCKADDR_IN);
    const view = new DataView(name.buffer);
    view.setUint16(0, AF_INET, true);
    view.setUint16(2, port, false);
    view.setUint32(4, address, false);
    if (options.reusePort) {
      libc.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, int32(1), 4);
      libc.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, int32(1), 4);
    }
    libc.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, int32(4 << 20), 4);
    libc.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, int32(4 << 20), 4);
    if (libc.bind(fd, name, SOCKADDR_IN) !== 0) {
      libc.close(fd);
      throw new Error(
        `Cannot bind a UDP socket to ${ip}:${port}: the address is in use or not ours`,
      );
    }
    const length = int32(SOCKADDR_IN);
    libc.getsockname(fd, name, length);
    const socket = new FfiUdpSocket(this, fd, ip, view.getUint16(2, false), options.headroom ?? 0);
    this.#sockets.set(fd, socket);
    this.#watch(fd);
    return socket;
  }

  /** @ignore The shared receive slots for sockets with `headroom`. */
  receiveSlots(headroom: number): Slots {
    let slots = this.#receive.get(headroom);
    if (!slots) this.#receive.set(headroom, slots = new Slots(headroom));
    return slots;
  }

  /** @ignore Queues `bytes` from `socket` to `address:port`; written at the end of this task. */
  stage(socket: FfiUdpSocket, bytes: Uint8Array, address: number, port: number): void {
    const out = this.#out;
    const k = this.#staged++;
    this.#stagedBy[k] = socket;
    this.#lengths[k] = bytes.length;
    out.data.set(bytes, k * SLOT);
    out.i.setBigUint64(k * IOVEC + 8, BigInt(bytes.length), true);
    const at = k * SOCKADDR_IN;
    out.n.setUint16(at, AF_INET, true);
    out.n.setUint16(at + 2, port, false);
    out.n.setUint32(at + 4, address, false);
    if (this.#staged === FFI_BATCH) this.flush();
    else if (this.#staged === 1 && !this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => {
        this.#flushing = false;
        this.flush();
      });
    }
  }

  /**
   * Writes what is queued: one `sendmmsg` per run of datagrams from the same
   * socket (in order), more if the kernel takes part of one.
   */
  flush(): void {
    const out = this.#out;
    const by = this.#stagedBy;
    let k = 0;
    while (k < this.#staged) {
      const socket = by[k]!;
      let end = k + 1;
      while (end < this.#staged && by[end] === socket) end++;
      if (this.#gso && !socket.closed && end - k > 1 && this.#sendSegmented(socket, k, end)) {
        k = end;
        continue;
      }
      while (k < end) {
        if (socket.closed) {
          k = end;
          break;
        }
        const n = this.libc.sendmmsg(socket.fd, out.headers.subarray(k * MMSGHDR), end - k, 0);
        socket.sent(n);
        // A refusal (no route, buffer full) loses that datagram; the rest go on.
        k += n > 0 ? n : 1;
      }
    }
    by.fill(undefined, 0, this.#staged);
    this.#staged = 0;
  }

  /**
   * Sends datagrams `from`–`to` of one socket as UDP GSO messages: each run
   * of equal-sized datagrams to one address is one message (`UDP_SEGMENT`),
   * which the kernel carries through its stack once. False when the kernel
   * refused GSO (it is not tried again; the plain path sends them).
   */
  #sendSegmented(socket: FfiUdpSocket, from: number, to: number): boolean {
    const out = this.#out;
    const g = this.#gsoSlots;
    let m = 0;
    const groups = this.#groups;
    for (let i = from; i < to;) {
      const size = this.#lengths[i];
      const at = i * SOCKADDR_IN;
      const ip = out.n.getUint32(at + 4), port = out.n.getUint16(at + 2);
      const most = Math.min(FFI_BATCH, Math.floor(GSO_MAX_BYTES / size));
      let j = i + 1;
      while (
        j < to && j - i < most && out.n.getUint32(j * SOCKADDR_IN + 4) === ip &&
        out.n.getUint16(j * SOCKADDR_IN + 2) === port && this.#lengths[j] <= size
      ) {
        j++;
        if (this.#lengths[j - 1] < size) break; // the last of a run may be shorter
      }
      const h = m * MMSGHDR;
      g.h.setBigUint64(h, this.#namesAt + BigInt(at), true);
      g.h.setUint32(h + 8, SOCKADDR_IN, true);
      g.h.setBigUint64(h + 16, this.#iovAt + BigInt(i * IOVEC), true);
      g.h.setBigUint64(h + 24, BigInt(j - i), true);
      if (j - i > 1) {
        const c = m * CMSG_SPACE;
        g.c.setBigUint64(c, BigInt(CMSG_LEN), true);
        g.c.setInt32(c + 8, SOL_UDP, true);
        g.c.setInt32(c + 12, UDP_SEGMENT, true);
        g.c.setUint16(c + 16, size, true);
        g.h.setBigUint64(h + 32, this.#controlAt + BigInt(c), true);
        g.h.setBigUint64(h + 40, BigInt(CMSG_SPACE), true);
      } else {
        g.h.setBigUint64(h + 32, 0n, true);
        g.h.setBigUint64(h + 40, 0n, true);
      }
      groups[m] = j - i;
      m++;
      i = j;
    }
    let done = 0;
    while (done < m && !socket.closed) {
      const n = this.libc.sendmmsg(socket.fd, g.headers.subarray(done * MMSGHDR), m - done, 0);
      if (n <= 0) {
        if (done === 0 && groups[0] > 1) {
          this.#gso = false; // no GSO here: the plain path takes them all
          return false;
        }
        socket.sent(0);
        done++;
        continue;
      }
      for (let x = done; x < done + n; x++) socket.sent(groups[x]);
      done += n;
    }
    return true;
  }

  /** @ignore A socket closed: unwatched and its descriptor closed. */
  forget(socket: FfiUdpSocket): void {
    if (!this.#sockets.delete(socket.fd)) return;
    this.libc.epoll_ctl(this.#epoll, EPOLL_CTL_DEL, socket.fd, new Uint8Array(EPOLL_EVENT));
    this.libc.close(socket.fd);
  }

  /** Sockets open now. */
  get size(): number {
    return this.#sockets.size;
  }

  async #run(): Promise<void> {
    const fdAt = Deno.build.arch === "x86_64" ? 4 : 8;
    const view = new DataView(this.#events.buffer);
    const scratch = new Uint8Array(8);
    while (!this.#closed) {
      const n = await this.libc.epoll_wait(this.#epoll, this.#events, FFI_BATCH, -1);
      if (this.#closed) break;
      for (let k = 0; k < n; k++) {
        const fd = view.getInt32(k * EPOLL_EVENT + fdAt, true);
        if (fd === this.#wake) {
          this.libc.read(this.#wake, scratch, 8n);
          continue;
        }
        this.#sockets.get(fd)?.drain(this.libc);
      }
      // What the handlers queued goes now, before the next wait.
      this.flush();
    }
  }

  /** Closes every socket and ends the wait. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const socket of [...this.#sockets.values()]) socket.close();
    const one = new Uint8Array(8);
    one[0] = 1;
    this.libc.write(this.#wake, one, 8n);
    await this.#loop;
    this.libc.close(this.#wake);
    this.libc.close(this.#epoll);
    this.#library.close();
  }
}
