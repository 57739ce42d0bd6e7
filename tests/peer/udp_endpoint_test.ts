import assert from "node:assert/strict";
import { requireOrSkip } from "../_helpers.ts";
import { UdpEndpoint } from "../../lib/peer/udp_endpoint.ts";

Deno.test("sendWithTtl sends from the endpoint's own port, and the endpoint keeps receiving", async () => {
  const endpoint = UdpEndpoint.bind({ hostname: "127.0.0.1" });
  const sink = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const sinkAddr = { ip: "127.0.0.1", port: (sink.addr as Deno.NetAddr).port };
  try {
    const frames: Uint8Array[] = [];
    const got = Promise.withResolvers<void>();
    endpoint.onOther = (bytes) => {
      frames.push(bytes);
      if (frames.length === 3) got.resolve();
    };
    // Several at once share one opener socket; each resolves true once sent.
    const sent = await Promise.all(
      [1, 2, 3].map((n) => endpoint.sendWithTtl(new Uint8Array([0x48, n]), sinkAddr, 3)),
    );
    assert.deepEqual(sent, [true, true, true]);
    const sources = new Set<number>();
    for (let i = 0; i < 3; i++) {
      const [, from] = await sink.receive();
      sources.add((from as Deno.NetAddr).port);
    }
    assert.deepEqual([...sources], [endpoint.local.port], "the same port: the same NAT mapping");
    // The opener is closed again: everything reaches the endpoint itself.
    for (let n = 0; n < 3; n++) {
      await sink.send(new Uint8Array([0x48, 0x50, n]), {
        transport: "udp",
        hostname: "127.0.0.1",
        port: endpoint.local.port,
      });
    }
    await got.promise;
    assert.equal(frames.length, 3);
  } finally {
    sink.close();
    await endpoint.close();
  }
});

Deno.test("sendWithTtl on a closed endpoint resolves false and throws nothing", async () => {
  const endpoint = UdpEndpoint.bind({ hostname: "127.0.0.1" });
  await endpoint.close();
  assert.equal(
    await endpoint.sendWithTtl(new Uint8Array([1]), { ip: "127.0.0.1", port: 9 }, 3),
    false,
  );
});

Deno.test("sendWithTtl on an IPv6 socket sends from its own port too", async () => {
  let endpoint: UdpEndpoint;
  let sink: Deno.DatagramConn;
  try {
    endpoint = UdpEndpoint.bind({ hostname: "::1" });
    sink = Deno.listenDatagram({ transport: "udp", hostname: "::1", port: 0 });
  } catch (error) {
    requireOrSkip(`IPv6 loopback unavailable here: ${(error as Error).message}`, "this test");
    return;
  }
  try {
    const port = (sink.addr as Deno.NetAddr).port;
    assert.equal(
      await endpoint.sendWithTtl(new Uint8Array([0x48, 1]), { ip: "::1", port }, 2),
      true,
    );
    const [, from] = await sink.receive();
    assert.equal((from as Deno.NetAddr).port, endpoint.local.port);
  } finally {
    sink.close();
    await endpoint.close();
  }
});
