import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import { PeerTransport } from "../../lib/peer/transport.ts";

async function transport(logs: Record<string, unknown>[] = []) {
  const sent: string[] = [];
  const t = await PeerTransport.start({
    workerId: "w1",
    identity: await Identity.generate(),
    logger: new Logger({ sink: (l) => logs.push(JSON.parse(l)), format: "json" }),
    sendPacket: (peerId) => void sent.push(peerId),
    peer: (peerId) => peerId === "known" ? { key: null, transport: null } : undefined,
    onConnection: () => assert.fail("nobody dials"),
  });
  return { t, sent };
}

Deno.test("the warm-up dial goes through loopback only, and counts and sends nothing", async () => {
  const logs: Record<string, unknown>[] = [];
  const { t, sent } = await transport(logs);
  try {
    assert.equal(await t.warmedUp, true);
    assert.deepEqual(t.stats, {
      packetsSent: 0,
      bytesSent: 0,
      packetsReceived: 0,
      bytesReceived: 0,
    });
    assert.deepEqual(sent, [], "no packet left for a peer");
    assert.deepEqual(logs.filter((l) => l.severity !== "INFO" && l.severity !== "DEBUG"), []);
  } finally {
    await t.close();
  }
});

Deno.test("packets from strangers, empty ones and oversized ones never reach QUIC", async () => {
  const { t } = await transport();
  try {
    await t.warmedUp;
    assert.equal(t.receive("stranger", new Uint8Array(100)), undefined);
    assert.equal(t.receive("known", new Uint8Array(0)), undefined);
    assert.equal(t.receive("known", new Uint8Array(4096)), undefined);
    assert.equal(t.stats.packetsReceived, 0);
    // A peer the rendezvous named gets its packets handed on (QUIC drops garbage itself).
    await t.receive("known", new Uint8Array(100));
    assert.equal(t.stats.packetsReceived, 1);
  } finally {
    await t.close();
  }
});

Deno.test("closing during the warm-up is clean", async () => {
  const { t } = await transport();
  await t.close();
  assert.equal(typeof (await t.warmedUp), "boolean");
});
