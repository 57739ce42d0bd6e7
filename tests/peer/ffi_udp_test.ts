/**
 * The FFI sockets against the real kernel: batches both ways, sender
 * addresses, headroom, TTL, many sockets on one wait, and closing.
 */
import assert from "node:assert/strict";
import { FfiUdp, ffiUnavailable } from "../../lib/peer/ffi_udp.ts";
import { requireOrSkip, within } from "../_helpers.ts";

const skip = requireOrSkip(ffiUnavailable(), "FFI socket tests");

Deno.test({
  name: "FfiUdp: 1,000 datagrams each way in batches, in order, with their senders; TTL; closing",
  ignore: skip !== undefined,
  async fn() {
    const hub = FfiUdp.open();
    if (!(hub instanceof FfiUdp)) throw new Error(hub.reason);
    try {
      const a = hub.bind("127.0.0.1", 0);
      const b = hub.bind("127.0.0.1", 0, { headroom: 1 });
      const got: number[] = [];
      const all = Promise.withResolvers<void>();
      b.onPacket = (bytes, from) => {
        assert.deepEqual(from, { family: 4, ip: "127.0.0.1", port: a.port });
        bytes[0] = 0x51; // the headroom is ours to write
        got.push(new DataView(bytes.buffer, bytes.byteOffset + 1).getUint32(0));
        assert.equal(bytes.length, 1 + 1200);
        if (got.length === 1000) all.resolve();
      };
      const packet = new Uint8Array(1200);
      for (let i = 0; i < 1000; i++) {
        new DataView(packet.buffer).setUint32(0, i);
        assert.ok(a.send(packet, "127.0.0.1", b.port));
        if (i % 100 === 99) await new Promise((r) => setTimeout(r, 0)); // the receive buffer is finite
      }
      await within(all.promise, 5000, "1,000 datagrams");
      assert.deepEqual(got, Array.from({ length: 1000 }, (_, i) => i));
      assert.equal(a.counts.sent, 1000);
      assert.equal(b.counts.received, 1000);
      // An opening packet (TTL 2) still arrives on loopback; refusals are false, not throws.
      const one = Promise.withResolvers<number>();
      b.onPacket = (bytes) => one.resolve(bytes.length);
      assert.ok(a.sendWithTtl(new Uint8Array(5), "127.0.0.1", b.port, 2));
      assert.equal(await within(one.promise, 5000, "the TTL packet"), 6);
      assert.equal(a.send(new Uint8Array(5000), "127.0.0.1", b.port), false, "too large");
      // A datagram larger than a slot (from a socket that is not ours) is dropped, not cut.
      const plain = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
      const after = Promise.withResolvers<number>();
      b.onPacket = (bytes) => after.resolve(bytes.length);
      const to = { transport: "udp", hostname: "127.0.0.1", port: b.port } as const;
      await plain.send(new Uint8Array(3000), to);
      await plain.send(new Uint8Array(9), to);
      assert.equal(await within(after.promise, 5000, "the datagram after"), 10);
      assert.equal(b.counts.truncated, 1);
      plain.close();
      assert.equal(a.send(new Uint8Array(5), "::1", b.port), false, "IPv4 only");
      assert.throws(() => hub.bind("127.0.0.1", b.port), /in use/);
      assert.equal(hub.size, 2);
      b.close();
      b.close();
      assert.equal(hub.size, 1);
      assert.equal(b.send(packet, "127.0.0.1", a.port), false, "closed");
    } finally {
      await hub.close();
    }
  },
});

Deno.test({
  name: "FfiUdp: 200 sockets share one wait; a busy one does not starve the others",
  ignore: skip !== undefined,
  async fn() {
    const hub = FfiUdp.open();
    if (!(hub instanceof FfiUdp)) throw new Error(hub.reason);
    try {
      const sender = hub.bind("127.0.0.1", 0);
      const sockets = Array.from({ length: 200 }, () => hub.bind("127.0.0.1", 0));
      const heard = new Set<number>();
      const all = Promise.withResolvers<void>();
      sockets.forEach((s, i) =>
        s.onPacket = () => {
          heard.add(i);
          if (heard.size === sockets.length) all.resolve();
        }
      );
      for (let n = 0; n < 3000; n++) sender.send(new Uint8Array(100), "127.0.0.1", sockets[0].port);
      for (const s of sockets) sender.send(new Uint8Array(100), "127.0.0.1", s.port);
      await within(all.promise, 5000, "every socket's datagram");
    } finally {
      await hub.close();
    }
  },
});

Deno.test({
  name: "FfiUdp: 1,000 sockets that each sent and received hold no buffers of their own",
  ignore: skip !== undefined,
  async fn() {
    const hub = FfiUdp.open();
    if (!(hub instanceof FfiUdp)) throw new Error(hub.reason);
    try {
      const before = Deno.memoryUsage().external;
      const echo = hub.bind("127.0.0.1", 0);
      echo.onPacket = (bytes, from) => echo.send(bytes, from.ip, from.port);
      const sockets = Array.from({ length: 1000 }, () => hub.bind("127.0.0.1", 0, { headroom: 1 }));
      let answered = 0;
      const all = Promise.withResolvers<void>();
      for (const s of sockets) {
        s.onPacket = () => {
          if (++answered === sockets.length) all.resolve();
        };
      }
      for (let i = 0; i < sockets.length; i++) {
        sockets[i].send(new Uint8Array(1200), "127.0.0.1", echo.port);
        if (i % 100 === 99) await new Promise((r) => setTimeout(r, 0));
      }
      await within(all.promise, 10_000, "every echo");
      const grown = Deno.memoryUsage().external - before;
      // Buffers of their own would be ~270 KB a socket (270 MB); shared, a few hundred KB in all.
      assert.ok(grown < 20 * 1024 * 1024, `external memory grew ${grown} bytes`);
    } finally {
      await hub.close();
    }
  },
});

Deno.test({
  name:
    "FfiUdp: datagrams sent as GSO messages arrive one by one with their own sizes, with or without GSO",
  ignore: skip !== undefined,
  async fn() {
    for (const gso of [true, false]) {
      const hub = FfiUdp.open({ gso });
      if (!(hub instanceof FfiUdp)) throw new Error(hub.reason);
      try {
        const a = hub.bind("127.0.0.1", 0);
        const b = hub.bind("127.0.0.1", 0);
        const c = hub.bind("127.0.0.1", 0);
        // Runs of equal sizes with a shorter last one, two destinations interleaved.
        const sizes = [1452, 1452, 1452, 700, 1452, 1200, 1200, 1200, 1200, 30, 30, 2048];
        const got: Record<number, number[]> = { [b.port]: [], [c.port]: [] };
        const all = Promise.withResolvers<void>();
        let count = 0;
        const take = (port: number) => (bytes: Uint8Array) => {
          got[port].push(bytes.length);
          assert.ok(bytes.every((x) => x === (bytes.length & 0xff)), "each datagram's own bytes");
          if (++count === sizes.length * 2) all.resolve();
        };
        b.onPacket = take(b.port);
        c.onPacket = take(c.port);
        for (const size of sizes) {
          a.send(new Uint8Array(size).fill(size & 0xff), "127.0.0.1", b.port);
        }
        for (const size of sizes) {
          a.send(new Uint8Array(size).fill(size & 0xff), "127.0.0.1", c.port);
        }
        await within(all.promise, 5000, `every datagram (gso ${gso})`);
        assert.deepEqual(got[b.port], sizes, `gso ${gso}`);
        assert.deepEqual(got[c.port], sizes, `gso ${gso}`);
        assert.equal(a.counts.sent, sizes.length * 2);
      } finally {
        await hub.close();
      }
    }
  },
});

Deno.test({
  name: "FfiUdp: GSO is tried on loopback first, and used only where it cuts messages as asked",
  ignore: skip !== undefined,
  async fn() {
    const on = FfiUdp.open();
    const off = FfiUdp.open({ gso: false });
    if (!(on instanceof FfiUdp) || !(off instanceof FfiUdp)) throw new Error("cannot open");
    try {
      assert.equal(on.gso, true, "this kernel cuts GSO messages");
      assert.equal(off.gso, false);
      assert.equal(on.size, 0, "the probe's sockets are closed");
    } finally {
      await on.close();
      await off.close();
    }
  },
});
