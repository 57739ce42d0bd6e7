/**
 * Port mapping in the NAT lab: two hosts behind endpoint-dependent NATs
 * (a new port per destination, filtering), over IPv4 only — a pair no
 * punching opens, relayed until now. One router runs miniupnpd: its worker
 * maps its socket with PCP, the rendezvous offers the mapping to the peer
 * as a candidate, and the pair goes direct on its first introduction. On
 * SIGTERM the worker deletes its mapping before it exits. netcheck behind
 * each router says what the gateway offers.
 */
import assert from "node:assert/strict";
import { requireOrSkip, waitFor } from "../_helpers.ts";
import { hearsDirect, pairDirect } from "../_punch_lab.ts";
import {
  type LabHost,
  miniupnpdMappings,
  NetLab,
  netlabUnavailable,
  portMappingUnavailable,
  PUBLIC_IP,
} from "../_netlab.ts";

const skip = requireOrSkip(
  await netlabUnavailable() ?? await portMappingUnavailable(),
  "port-mapping NAT lab tests",
);

/** A lab worker's `GET /` (its health port), asked with curl inside its host's namespace. */
async function workerStatus(host: LabHost, port: number) {
  const out = await new Deno.Command("ip", {
    args: ["netns", "exec", host.ns, "curl", "-sf", `http://127.0.0.1:${port}/`],
    stdout: "piped",
  }).output();
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

Deno.test({
  name:
    "NAT lab: endpoint-dependent ↔ endpoint-dependent over IPv4 goes direct on the first introduction when one router maps (PCP); SIGTERM deletes the mapping",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    try {
      const [mapped] = await lab.addNatted("edm", 1, { portMapping: true });
      const [plain] = await lab.addNatted("edm", 1);
      const rendezvous = await lab.startServices();
      // netcheck behind each router: what the gateway offers (nothing is mapped).
      const netcheck = async (ns: string) => {
        const proc = lab.deno(ns, ["task", "netcheck", "--json", "--stun", `${PUBLIC_IP}:3478`]);
        assert.equal((await proc.status).code, 0, proc.dump());
        return JSON.parse(proc.stdout);
      };
      const [withMapping, without] = [await netcheck(mapped.ns), await netcheck(plain.ns)];
      assert.deepEqual(withMapping.port_mapping.offered, {
        pcp: true,
        "nat-pmp": true,
        upnp: true,
      });
      assert.equal(withMapping.port_mapping.externalIp, mapped.publicIp);
      assert.equal(withMapping.double_nat, false);
      assert.deepEqual(without.port_mapping.offered, { pcp: false, "nat-pmp": false, upnp: false });
      const env = { PEER_AUTOCONNECT: "true", PEER_HELLO_SEC: "0.5" };
      const a = lab.worker(mapped, "mapped-1", env);
      const b = lab.worker(plain, "edm-2", env);
      const log = await a.waitForLog("port mapped", () => true, 20_000);
      assert.equal(log.protocol, "pcp");
      assert.equal(log.external, `${mapped.publicIp}:${String(log.external).split(":")[1]}`);
      // The worker's GET / says so (asked with curl inside the host's namespace).
      const health = await a.waitForLog("health server listening", () => true, 20_000);
      const status = async () => (await workerStatus(mapped, Number(health.port))).port_mapping;
      // STUN's endpoint and the mapping each come in their own time.
      let portMapping = await status();
      await waitFor(
        async () => (portMapping = await status()).double_nat !== null,
        "GET / to know the mapping and STUN's address",
        10_000,
        100,
      );
      assert.equal(portMapping.mapping.protocol, "pcp");
      assert.equal(portMapping.mapping.externalIp, mapped.publicIp);
      assert.equal(portMapping.double_nat, false, "STUN sees the mapped address");
      assert.equal(portMapping.mapping.nonce, undefined, "no nonce shown");
      await rendezvous.waitForLog(
        "worker reported udp endpoint",
        (l) => l.worker_id === "mapped-1" && l.udp_mapped !== null,
        20_000,
      );
      // Both ways direct (the hellos arrive over the direct path), on the first introduction.
      const outcome = await waitFor(
        () => pairDirect(a, b, ["mapped-1", "edm-2"]),
        "mapped-1 ↔ edm-2 direct both ways",
        20_000,
        100,
      );
      console.log(`direct ${outcome.ms} ms after the punch, introduction ${outcome.attempts}`);
      assert.equal(outcome.attempts, 1, "direct on the first introduction");
      const rules = () => miniupnpdMappings(mapped.router!);
      assert.equal((await rules()).length, 1, "one mapping on the router");
      const stoppedAt = Date.now();
      a.signal("SIGTERM");
      await a.status;
      assert.deepEqual(await rules(), [], "no mapping left once the worker stopped");
      console.log(`mapping deleted; the worker exited ${Date.now() - stoppedAt} ms after SIGTERM`);
      assert.ok(Date.now() - stoppedAt < 5000);
    } finally {
      await lab.destroy();
    }
  },
});

Deno.test({
  name:
    "NAT lab: every pair with a mapping side is direct on its first introduction — PCP, NAT-PMP-only and UPnP-only routers beside plain endpoint-dependent and endpoint-independent ones",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    try {
      const hosts = {
        "map-all": (await lab.addNatted("edm", 1, { portMapping: true }))[0],
        "map-upnp": (await lab.addNatted("edm", 1, { portMapping: "upnp" }))[0],
        "map-pmp": (await lab.addNatted("edm", 1, { portMapping: "nat-pmp" }))[0],
        "plain-edm": (await lab.addNatted("edm", 1))[0],
        "plain-eim": (await lab.addNatted("eim", 1))[0],
      };
      await lab.startServices();
      const env = { PEER_AUTOCONNECT: "true", PEER_HELLO_SEC: "0.5" };
      const procs = Object.fromEntries(
        Object.entries(hosts).map(([id, host]) => [id, lab.worker(host, id, env)]),
      );
      const ids = Object.keys(hosts);
      // How each mapping side mapped: the preferred protocol its router speaks.
      const mappedBy: Record<string, string> = {};
      for (const id of ["map-all", "map-upnp", "map-pmp"]) {
        mappedBy[id] = String(
          (await procs[id].waitForLog("port mapped", () => true, 20_000)).protocol,
        );
      }
      assert.deepEqual(mappedBy, { "map-all": "pcp", "map-upnp": "upnp", "map-pmp": "pcp" });
      const pairs = ids.flatMap((a) => ids.filter((b) => a < b).map((b) => [a, b] as const));
      const outcome = ([a, b]: readonly [string, string]) => pairDirect(procs[a], procs[b], [a, b]);
      await waitFor(
        () => pairs.every((pair) => outcome(pair)),
        "every pair direct both ways",
        30_000,
        250,
      ).catch(() => {});
      const rows: string[] = [];
      const mappedPairMs: number[] = [];
      for (const [a, b] of pairs) {
        const direct = outcome([a, b]);
        const mapping = a.startsWith("map") || b.startsWith("map");
        if (mapping && direct) mappedPairMs.push(direct.ms);
        rows.push(
          `${a} ↔ ${b}: ${
            direct ? `direct in ${direct.ms} ms, introduction ${direct.attempts}` : "not direct"
          }${mapping ? ", a side maps" : ""}`,
        );
        assert.ok(direct, `${a} ↔ ${b} not direct both ways:\n${rows.join("\n")}`);
        if (mapping) assert.equal(direct.attempts, 1, `${a} ↔ ${b}: not on the first introduction`);
      }
      mappedPairMs.sort((x, y) => x - y);
      const p95 = mappedPairMs[Math.ceil(0.95 * mappedPairMs.length) - 1];
      console.log(rows.join("\n"));
      console.log(`pairs with a mapping side: ${mappedPairMs.length}, p95 to direct ${p95} ms`);
      assert.ok(p95 <= 2000, `p95 ${p95} ms (target 2 s)`);
    } finally {
      await lab.destroy();
    }
  },
});

Deno.test({
  name:
    "NAT lab: a mapping is renewed at half its lifetime on a real router, and after kill -9 the router drops it when that lifetime runs out",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    try {
      const [host] = await lab.addNatted("edm", 1, { portMapping: true });
      await lab.startServices();
      const lifetime = 4;
      const worker = lab.worker(host, "short-1", { PORT_MAPPING_LIFETIME_SEC: String(lifetime) });
      const mapped = await worker.waitForLog("port mapped", () => true, 20_000);
      assert.equal(mapped.lifetime_sec, lifetime);
      const router = host.router!;
      assert.equal((await miniupnpdMappings(router)).length, 1);
      // Renewed (twice, so the first was not a fluke), through its GET /.
      const health = await worker.waitForLog("health server listening", () => true, 20_000);
      const renewed = async () =>
        (await workerStatus(host, Number(health.port))).port_mapping.counts.renewed;
      const mappedAt = Date.parse(String(mapped.time));
      await waitFor(async () => (await renewed()) >= 2, "two renewals", 4 * lifetime * 1000, 200);
      const twoRenewalsMs = Date.now() - mappedAt;
      assert.equal((await miniupnpdMappings(router)).length, 1, "still one mapping");
      // kill -9: nobody deletes it, nobody renews it; the router lets it expire.
      const killedAt = Date.now();
      await worker.stop("SIGKILL");
      await waitFor(
        async () => (await miniupnpdMappings(router)).length === 0,
        "the router to drop the mapping",
        (lifetime + 10) * 1000,
        200,
      );
      const goneMs = Date.now() - killedAt;
      console.log(
        `two renewals ${twoRenewalsMs} ms after mapping (lifetime ${lifetime} s); ` +
          `gone ${goneMs} ms after kill -9`,
      );
      assert.ok(goneMs <= (lifetime + 2) * 1000 + 2000, `gone after ${goneMs} ms`);
    } finally {
      await lab.destroy();
    }
  },
});

Deno.test({
  name:
    "NAT lab: a router that refuses every mapping costs a log line and a counter; its host still punches as before",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    try {
      const [refusing] = await lab.addNatted("edm", 1, { portMapping: "refuse" });
      const [plain] = await lab.addNatted("eim", 1);
      await lab.startServices();
      const env = { PEER_AUTOCONNECT: "true", PEER_HELLO_SEC: "0.5" };
      const a = lab.worker(refusing, "refused-1", env);
      lab.worker(plain, "eim-1", env);
      const none = await a.waitForLog("no port mapping", () => true, 20_000);
      assert.equal(none.reason, "the gateway refused");
      assert.deepEqual(none.offered, ["upnp"]);
      assert.ok(a.lines.some((l) => l.message === "port mapping refused" && l.protocol === "upnp"));
      // Punching goes on as it would without a router that maps (a birthday round here).
      await waitFor(() => hearsDirect(a.lines, "eim-1"), "refused-1 direct to eim-1", 20_000, 250);
      assert.deepEqual(await miniupnpdMappings(refusing.router!), [], "nothing mapped");
    } finally {
      await lab.destroy();
    }
  },
});
