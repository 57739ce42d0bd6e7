/**
 * The port-mapping client against a gateway on loopback (real UDP): maps
 * with NAT-PMP and PCP, reads refusals, gives up on silence after three
 * tries, and ignores what is not the answer — garbage, another nonce, a
 * stranger's datagram — without sending more for it.
 */
import assert from "node:assert/strict";
import { mapNatPmp, mapPcp, type PortMapCounts, PortMapError } from "../../lib/portmap/client.ts";
import { within } from "../_helpers.ts";
import { type Answer, gateway } from "./_gateway.ts";

const natPmp: Answer = (req) => {
  if (req[1] === 0) return [new Uint8Array([0, 128, 0, 0, 0, 0, 0, 9, 203, 0, 113, 7])];
  const reply = new Uint8Array(16);
  const view = new DataView(reply.buffer);
  reply.set([0, 129]);
  view.setUint32(4, 9);
  reply.set(req.subarray(4, 6), 8); // internal port
  view.setUint16(10, 50000);
  view.setUint32(12, 3600);
  return [new Uint8Array([1, 2, 3]), reply]; // garbage first, then the answer
};

function pcpAnswer(req: Uint8Array, result = 0, nonceFlip = false): Uint8Array {
  const reply = new Uint8Array(60);
  const view = new DataView(reply.buffer);
  reply[0] = 2;
  reply[1] = 0x81;
  reply[3] = result;
  view.setUint32(4, 7200);
  view.setUint32(8, 77);
  reply.set(req.subarray(24, 60), 24); // nonce, protocol, ports, suggested address
  if (nonceFlip) reply[24] ^= 0xff;
  view.setUint16(42, 40123);
  reply.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 4], 44);
  return reply;
}

Deno.test("port mapping: NAT-PMP maps (the address, then the port), garbage before the answer ignored", async () => {
  const gw = gateway(natPmp);
  const counts: PortMapCounts = { ignored: 0 };
  try {
    const mapping = await mapNatPmp({ gateway: "127.0.0.1", port: gw.port }, 40000, 3600, counts);
    assert.deepEqual(mapping, {
      protocol: "nat-pmp",
      externalIp: "203.0.113.7",
      externalPort: 50000,
      internalPort: 40000,
      lifetime: 3600,
      epoch: 9,
    });
    assert.equal(counts.ignored, 1, "the garbage");
    assert.equal(gw.requests.length, 2, "one try each: answered at once");
  } finally {
    await gw.close();
  }
});

Deno.test("port mapping: PCP maps; a wrong nonce is not the answer; a refusal says why", async () => {
  const gw = gateway((req) => [pcpAnswer(req, 0, true), pcpAnswer(req)]);
  const counts: PortMapCounts = { ignored: 0 };
  try {
    const mapping = await mapPcp(
      { gateway: "127.0.0.1", port: gw.port },
      "127.0.0.1",
      40000,
      7200,
      counts,
    );
    assert.equal(mapping.externalIp, "198.51.100.4");
    assert.equal(mapping.externalPort, 40123);
    assert.equal(mapping.protocol, "pcp");
    assert.equal(counts.ignored, 1, "the forged nonce");
  } finally {
    await gw.close();
  }
  const refusing = gateway((req) => [pcpAnswer(req, 2)]);
  try {
    await assert.rejects(
      () => mapPcp({ gateway: "127.0.0.1", port: refusing.port }, "127.0.0.1", 40000, 7200),
      (e) => e instanceof PortMapError && e.result === 2 && /not authorized/.test(e.message),
    );
  } finally {
    await refusing.close();
  }
});

Deno.test("port mapping: a silent gateway costs three tries and under two seconds; a stranger's answer is ignored", async () => {
  const gw = gateway(() => []);
  const stranger = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const counts: PortMapCounts = { ignored: 0 };
  try {
    const started = performance.now();
    const pending = mapPcp(
      { gateway: "127.0.0.1", port: gw.port, waitsMs: [100, 200, 400] },
      "127.0.0.1",
      40000,
      60,
      counts,
    );
    // Someone else answers, from another port: not the gateway.
    await within(gw.asked, 2000, "the first request");
    await stranger.send(pcpAnswer(gw.requests[0]), gw.senders[0]);
    await assert.rejects(
      () => pending,
      (e) => e instanceof PortMapError && /no answer/.test(e.message),
    );
    assert.equal(gw.requests.length, 3, "three tries, no more");
    assert.equal(counts.ignored, 1, "the stranger's well-formed answer");
    assert.ok(performance.now() - started < 2000);
  } finally {
    stranger.close();
    await gw.close();
  }
});
