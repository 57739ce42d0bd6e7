/**
 * The port mapper against gateways on loopback (real UDP): it probes PCP,
 * NAT-PMP and UPnP at once without mapping anything, maps with the one
 * that answered (PCP preferred), renews at half the lifetime with the same
 * PCP nonce, deletes at stop, starts over when the gateway changes, and
 * costs nothing but counters when the gateway refuses or is silent.
 */
import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { PortMapper } from "../../lib/portmap/mapper.ts";
import type { PortMapping } from "../../lib/portmap/client.ts";
import { FakeClock } from "../_fake_clock.ts";
import { waitFor, within } from "../_helpers.ts";
import { gateway as udpGateway } from "./_gateway.ts";

interface Request {
  version: number;
  op: number;
  lifetime: number;
  nonce?: string;
}

/**
 * A gateway on 127.0.0.1 speaking NAT-PMP (unless `natPmp` is false: then
 * silent), PCP (if `pcp`), refusing every mapping with `refuse`; its table
 * maps UDP port p to p + 1000.
 */
function gateway(o: { pcp?: boolean; natPmp?: boolean; refuse?: number } = {}) {
  const requests: Request[] = [];
  const table = new Map<number, number>();
  function answer(req: Uint8Array, view: DataView): Uint8Array | undefined {
    if (req[0] === 0) { // NAT-PMP
      if (o.natPmp === false) return undefined;
      const op = req[1];
      requests.push({ version: 0, op, lifetime: op === 0 ? 0 : view.getUint32(8) });
      if (op === 0) return new Uint8Array([0, 128, 0, 0, 0, 0, 0, 9, 203, 0, 113, 7]);
      const port = view.getUint16(4);
      const lifetime = view.getUint32(8);
      const out = new Uint8Array(16);
      const w = new DataView(out.buffer);
      out.set([0, 128 + op, 0, o.refuse ?? 0]);
      w.setUint32(4, 9);
      w.setUint16(8, port);
      w.setUint16(10, lifetime === 0 ? 0 : port + 1000);
      w.setUint32(12, lifetime);
      if (!o.refuse) lifetime === 0 ? table.delete(port) : table.set(port, port + 1000);
      return out;
    }
    if (req[0] !== 2 || o.natPmp === false) return undefined;
    if (!o.pcp) return new Uint8Array([0, 128 + req[1], 0, 1, 0, 0, 0, 9]); // NAT-PMP: unsupported version
    const op = req[1];
    const lifetime = view.getUint32(4);
    requests.push({
      version: 2,
      op,
      lifetime,
      nonce: op === 1 ? [...req.subarray(24, 36)].join(",") : undefined,
    });
    const out = new Uint8Array(op === 1 ? 60 : 24);
    out.set(req.subarray(0, out.length));
    const w = new DataView(out.buffer);
    out[1] = 0x80 | op;
    out[3] = op === 1 ? o.refuse ?? 0 : 0; // the probe is answered; mappings are refused
    w.setUint32(8, 9); // epoch
    if (op === 1) {
      const port = view.getUint16(40);
      w.setUint16(42, lifetime === 0 ? 0 : port + 1000);
      out.set([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 7], 44);
      if (!o.refuse) lifetime === 0 ? table.delete(port) : table.set(port, port + 1000);
    }
    return out;
  }
  const g = udpGateway((req) => {
    const reply = answer(req, new DataView(req.buffer, req.byteOffset, req.byteLength));
    return reply ? [reply] : [];
  });
  return {
    port: g.port,
    requests,
    table,
    close: () => g.close(),
  };
}

function mapper(port: number, o: Partial<ConstructorParameters<typeof PortMapper>[0]> = {}) {
  const logs: Record<string, unknown>[] = [];
  const mappings: (PortMapping | null)[] = [];
  const m = new PortMapper({
    internalPort: 41641,
    lifetimeSec: 120,
    findGateway: () => Promise.resolve({ gateway: "127.0.0.1", clientIp: "127.0.0.1" }),
    // UPnP's search goes to a port nobody listens on: silence.
    target: { port, waitsMs: [50, 100], searchTo: [{ hostname: "127.0.0.1", port: 9 }] },
    onMapping: (mapping) => mappings.push(mapping),
    logger: new Logger({ sink: (l) => logs.push(JSON.parse(l)), format: "json", level: "debug" }),
    ...o,
  });
  return { m, logs, mappings };
}

Deno.test("PortMapper: PCP and NAT-PMP both answer; PCP maps, probes map nothing, and stop deletes it", async () => {
  const gw = gateway({ pcp: true });
  const { m, mappings } = mapper(gw.port);
  try {
    const mapping = await within(m.start(), 5000, "a mapping");
    assert.equal(mapping?.protocol, "pcp");
    assert.equal(`${mapping?.externalIp}:${mapping?.externalPort}`, "203.0.113.7:42641");
    assert.deepEqual(mappings.map((x) => x?.protocol), ["pcp"]);
    await m.probed;
    assert.deepEqual(m.status.offered, { pcp: true, "nat-pmp": true, upnp: false });
    // The probes: a PCP ANNOUNCE and a NAT-PMP public-address request, then one MAP.
    assert.deepEqual(
      gw.requests.map((r) => `${r.version}/${r.op}/${r.lifetime}`).sort(),
      ["0/0/0", "2/0/0", "2/1/120"],
    );
    assert.deepEqual([...gw.table], [[41641, 42641]]);
  } finally {
    await m.stop();
    await gw.close();
  }
  assert.deepEqual([...gw.table], [], "deleted at stop");
  assert.equal(gw.requests.at(-1)?.lifetime, 0);
  assert.equal(gw.requests.at(-1)?.nonce, gw.requests.find((r) => r.op === 1)?.nonce, "same nonce");
  assert.equal(m.status.mapping, null);
});

Deno.test("PortMapper: a NAT-PMP-only gateway (PCP answered with 'unsupported version') maps with NAT-PMP", async () => {
  const gw = gateway({ pcp: false });
  const { m } = mapper(gw.port);
  try {
    const mapping = await within(m.start(), 5000, "a mapping");
    assert.equal(mapping?.protocol, "nat-pmp");
    assert.equal(mapping?.externalPort, 42641);
    await m.probed;
    assert.deepEqual(m.status.offered, { pcp: false, "nat-pmp": true, upnp: false });
    assert.ok(m.status.counts.ignored >= 1, "the version error was ignored, not taken");
  } finally {
    await m.stop();
    await gw.close();
  }
  assert.deepEqual([...gw.table], []);
});

Deno.test("PortMapper: renews at half the lifetime (same PCP nonce), and starts over at another gateway", async () => {
  const clock = new FakeClock(0);
  const gw = gateway({ pcp: true });
  const other = gateway({ pcp: false });
  let current = { gateway: "127.0.0.1", clientIp: "127.0.0.1" };
  const { m, mappings } = mapper(gw.port, { clock, findGateway: () => Promise.resolve(current) });
  try {
    await within(m.start(), 5000, "a mapping");
    const maps = () => gw.requests.filter((r) => r.op === 1);
    assert.equal(maps().length, 1);
    await clock.tick(59_000);
    assert.equal(maps().length, 1, "not before half the lifetime");
    await clock.tick(1_000);
    await waitFor(() => maps().length === 2, "the renewal", 3000, 5);
    assert.equal(maps()[1].nonce, maps()[0].nonce);
    assert.equal(m.status.counts.renewed, 1);
    assert.equal(mappings.length, 1, "a renewal to the same address is no news");
    // The gateway changes (here: the same host, but the renewal finds another address for us).
    current = { gateway: "127.0.0.1", clientIp: "127.0.0.2" };
    await clock.tick(60_000);
    await waitFor(() => mappings.length >= 3, "the mapping at the new gateway", 3000, 5);
    assert.deepEqual(mappings.map((x) => x?.protocol ?? null), ["pcp", null, "pcp"]);
    assert.equal(maps().filter((r) => r.lifetime === 0).length, 1, "the old mapping was deleted");
  } finally {
    await m.stop();
    await gw.close();
    await other.close();
  }
});

Deno.test("PortMapper: a refusing gateway and a silent one cost counters and log lines only; no gateway costs nothing", async () => {
  const refusing = gateway({ pcp: true, refuse: 2 });
  const a = mapper(refusing.port);
  try {
    assert.equal(await within(a.m.start(), 5000, "refusals"), null);
    assert.equal(a.m.status.counts.failed, 2, "PCP, then NAT-PMP refused");
    assert.ok(a.logs.some((l) => l.message === "port mapping refused"));
    assert.deepEqual(refusing.table.size, 0);
  } finally {
    await a.m.stop();
    await refusing.close();
  }
  const silent = gateway({ pcp: false, natPmp: false });
  const b = mapper(silent.port);
  try {
    assert.equal(await within(b.m.start(), 5000, "silence"), null);
    assert.deepEqual(b.m.status.offered, { pcp: false, "nat-pmp": false, upnp: false });
    assert.equal(silent.requests.length, 0);
  } finally {
    await b.m.stop();
    await silent.close();
  }
  const c = mapper(1, { findGateway: () => Promise.resolve(null) });
  assert.equal(await c.m.start(), null);
  assert.equal(c.m.status.gateway, null);
  await c.m.stop();
});

Deno.test("PortMapper.firstRound: after the mapping where the gateway answers; after the quiet time where it says nothing", async () => {
  const gw = gateway({ pcp: true });
  const answering = mapper(gw.port);
  try {
    void answering.m.start();
    await within(answering.m.firstRound(3000), 5000, "the first round");
    assert.equal(answering.m.status.mapping?.protocol, "pcp", "the mapping, not the quiet time");
  } finally {
    await answering.m.stop();
    await gw.close();
  }
  const silent = gateway({ pcp: false, natPmp: false });
  const quiet = mapper(silent.port, {
    target: {
      port: silent.port,
      waitsMs: [1000, 1000],
      searchTo: [{ hostname: "127.0.0.1", port: 9 }],
    },
  });
  try {
    void quiet.m.start();
    const started = performance.now();
    await within(quiet.m.firstRound(50), 5000, "the quiet time");
    const ms = performance.now() - started;
    assert.ok(ms < 900, `held ${ms} ms, not the whole round`);
    assert.equal(quiet.m.status.mapping, null);
  } finally {
    await quiet.m.stop();
    await silent.close();
  }
});
