/**
 * netcheck against the project's own STUN server (with RFC 5780 on two
 * loopback addresses), coturn's turnserver, a rendezvous, and servers that
 * never answer; the task as a subprocess with `--json`; and the verdicts.
 */

import assert from "node:assert/strict";
import {
  describeOffer,
  directVerdict,
  doubleNat,
  formatReport,
  runNetcheck,
} from "../../lib/netcheck/netcheck.ts";
import { gateway } from "../portmap/_gateway.ts";
import { StunServer } from "../../lib/stun/server.ts";
import {
  listWorkers,
  Proc,
  requireOrSkip,
  startRendezvous,
  toolMissing,
  waitFor,
  within,
} from "../_helpers.ts";
import { freeTurnPort, turnserverArgs } from "../_coturn.ts";

const noCoturn = requireOrSkip(
  await toolMissing("turnserver", ["-h"], "coturn"),
  "netcheck against coturn",
);

Deno.test("netcheck with our STUN servers (RFC 5780 on 127.0.0.1 and 127.0.0.2) and a rendezvous", async () => {
  const rfc5780 = StunServer.listen({
    hostname: "127.0.0.1",
    port: 0,
    alternate: { hostname: "127.0.0.2" },
  });
  const plain = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const rv = await startRendezvous({ token: "s3cret" });
  try {
    const servers = [rfc5780, plain].map((s) => `127.0.0.1:${s.addresses[0].port}`);
    const gw = natPmpGateway("100.64.0.9"); // a gateway behind a carrier's NAT
    const report = await runNetcheck({
      stunServers: servers,
      rendezvousUrl: rv.http,
      token: "s3cret",
      echoes: 3,
      portMapping: {
        findGateway: () => Promise.resolve({ gateway: "127.0.0.1", clientIp: "127.0.0.1" }),
        target: {
          port: gw.port,
          waitsMs: [50, 100],
          searchTo: [{ hostname: "127.0.0.1", port: 9 }],
        },
      },
    }).finally(() => gw.close());
    assert.deepEqual(report.port_mapping, {
      gateway: "127.0.0.1",
      offered: { pcp: false, "nat-pmp": true, upnp: false },
      externalIp: "100.64.0.9",
    });
    assert.equal(report.double_nat, true);
    assert.equal(report.udp, true);
    assert.deepEqual(report.stun.map((s) => s.mapped?.split(":")[0]), ["127.0.0.1", "127.0.0.1"]);
    assert.equal(report.mapping, "no-nat", "loopback: the host's own address");
    assert.equal(
      report.filtering,
      "endpoint-independent",
      "no NAT filters nothing (RFC 5780 test II)",
    );
    assert.equal(report.filtering_server, servers[0]);
    assert.equal(report.hairpinning, null, "nothing to hairpin without a NAT");
    assert.equal(report.rendezvous?.rtt_ms.length, 3);
    assert.ok(report.rendezvous!.median_ms! >= 0);
    assert.equal(report.direct.likely, true);
    // The throwaway session left: nothing of it stays listed.
    await waitFor(
      async () =>
        (await listWorkers(rv.http, { authorization: "Bearer s3cret" })).connected_workers_count ===
          0,
      "netcheck's session gone",
    );
    const text = formatReport(report);
    assert.match(text, /NAT filtering\s+endpoint-independent \(RFC 5780/);
    assert.match(
      text,
      /Port mapping\s+NAT-PMP \(gateway 127\.0\.0\.1; it says 100\.64\.0\.9, STUN sees 127\.0\.0\.1: another NAT is in front of it \(double NAT\)/,
    );
    assert.match(
      text,
      /Rendezvous\s+http:\/\/127\.0\.0\.1:\d+: [\d.]+ ms \(median of 3 WebSocket echoes\)/,
    );
  } finally {
    await rfc5780.close();
    await plain.close();
    await rv.close();
  }
});

Deno.test("netcheck sees IPv6 UDP through a STUN server with an IPv6 address", async () => {
  let server: StunServer;
  try {
    server = StunServer.listen({ hostname: "::1", port: 0 });
  } catch (error) {
    requireOrSkip(`IPv6 loopback unavailable here: ${(error as Error).message}`, "this test");
    return;
  }
  try {
    const report = await runNetcheck({
      stunServers: [`[::1]:${server.addresses[0].port}`],
      portMapping: false,
    });
    assert.equal(report.udp, false, "no IPv4 answer from an IPv6-only server");
    assert.match(report.ipv6_udp ?? "", /^\[::1\]:\d+$/);
    assert.match(formatReport(report), /IPv6 UDP\s+yes, seen as \[::1\]/);
  } finally {
    await server.close();
  }
});

Deno.test("netcheck where nothing answers: no UDP, relay only, and a refused rendezvous said plainly", async () => {
  const rv = await startRendezvous({ token: "s3cret" });
  try {
    const report = await runNetcheck({
      stunServers: ["127.0.0.1:1", "127.0.0.1:2"],
      rendezvousUrl: rv.http,
      echoes: 1,
      portMapping: false,
    });
    assert.equal(report.udp, false);
    assert.equal(report.mapping, "no-udp");
    assert.equal(report.direct.likely, false);
    assert.match(report.stun[0].error!, /did not answer/);
    assert.equal(report.rendezvous?.median_ms, null);
    assert.ok(report.rendezvous?.error, "no token: the rendezvous refused, and the report says so");
  } finally {
    await rv.close();
  }
});

Deno.test({
  name: "netcheck against coturn's turnserver",
  ignore: noCoturn !== undefined,
  async fn() {
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = freeTurnPort();
      const turn = new Proc("turnserver", turnserverArgs(port, "stdout"), {});
      try {
        const report = await waitFor(
          async () => {
            const r = await runNetcheck({ stunServers: [`127.0.0.1:${port}`], portMapping: false });
            return r.udp && r;
          },
          "turnserver to answer",
          10_000,
        ).catch(() => undefined);
        if (!report) continue;
        assert.equal(report.stun[0].mapped?.startsWith("127.0.0.1:"), true);
        assert.equal(report.mapping, "no-nat");
        return;
      } finally {
        await turn.stop("SIGTERM");
      }
    }
    assert.fail("turnserver never answered");
  },
});

Deno.test("deno task netcheck --json prints the report as JSON", async () => {
  const server = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const proc = Proc.deno([
      "task",
      "netcheck",
      "--json",
      "--stun",
      `127.0.0.1:${server.addresses[0].port}`,
    ], { RENDEZVOUS_SERVICE_URL: "" });
    const status = await within(proc.status, 20_000, "netcheck");
    assert.equal(status.code, 0, proc.dump());
    const report = JSON.parse(proc.stdout);
    assert.equal(report.udp, true);
    assert.equal(report.rendezvous, null);
  } finally {
    await server.close();
  }
});

Deno.test("directVerdict: what each NAT lets through", () => {
  assert.equal(directVerdict("no-udp", "unknown", false).likely, false);
  assert.match(directVerdict("endpoint-dependent", "unknown", true).detail, /relay.*IPv6/);
  assert.match(
    directVerdict("endpoint-independent", "endpoint-independent", false).detail,
    /full-cone/,
  );
  assert.match(directVerdict("unknown", "unknown", false).detail, /two STUN servers/);
});

/** A NAT-PMP gateway on loopback that answers public-address requests with `ip`. */
const natPmpGateway = (ip: string) =>
  gateway((req) =>
    req[0] === 0 && req[1] === 0 // only NAT-PMP's public-address request
      ? [new Uint8Array([0, 128, 0, 0, 0, 0, 0, 9, ...ip.split(".").map(Number)])]
      : []
  );

Deno.test("the port-mapping line: what the gateway offers, a public address, a double NAT, nothing to ask, not asked", () => {
  const offer = (
    externalIp: string | null,
    offered = { pcp: true, "nat-pmp": true, upnp: true },
  ) => ({
    gateway: "192.168.1.1",
    offered,
    externalIp,
  });
  assert.equal(
    describeOffer(offer("203.0.113.7"), "203.0.113.7"),
    "PCP, NAT-PMP, UPnP (gateway 192.168.1.1; public address 203.0.113.7)",
  );
  assert.equal(doubleNat(offer("203.0.113.7"), "203.0.113.7"), false);
  assert.equal(doubleNat(offer("203.0.113.7"), "198.51.100.4"), true, "STUN sees another address");
  assert.equal(doubleNat(offer("192.168.0.5"), null), true, "a private one");
  assert.equal(doubleNat(offer(null), "203.0.113.7"), null, "the gateway did not say");
  assert.equal(
    describeOffer(offer(null, { pcp: false, "nat-pmp": false, upnp: false }), null),
    "none (gateway 192.168.1.1 answered no probe)",
  );
  assert.equal(describeOffer({ ...offer(null), gateway: null }, null), "no gateway to ask");
  assert.equal(describeOffer(null, null), "not asked (PORT_MAPPING=off)");
});
