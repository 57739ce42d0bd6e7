import assert from "node:assert/strict";
import type { BindingResult } from "../../lib/stun/client.ts";
import { StunClient } from "../../lib/stun/client.ts";
import { StunServer } from "../../lib/stun/server.ts";
import type { TransportAddress } from "../../lib/stun/attributes.ts";
import { UdpEndpoint } from "../../lib/peer/udp_endpoint.ts";
import {
  classifyMapping,
  localCandidates,
  type UdpEndpointReport,
  UdpPresence,
} from "../../lib/stun/discovery.ts";
import { FakeClock, flush } from "../_fake_clock.ts";

const own = new Set(["10.0.0.5", "127.0.0.1"]);
const answer = (ip: string, port: number): BindingResult => ({
  server: { family: 4, ip: "192.0.2.1", port: 3478 },
  mapped: { family: 4, ip, port },
  rttMs: 1,
});

Deno.test("classifyMapping() tells the NAT behaviours apart", () => {
  assert.equal(classifyMapping(own, 4000, []), "no-udp");
  assert.equal(classifyMapping(own, 4000, [undefined, undefined]), "no-udp");
  assert.equal(
    classifyMapping(own, 4000, [answer("10.0.0.5", 4000), answer("10.0.0.5", 4000)]),
    "no-nat",
  );
  assert.equal(
    classifyMapping(own, 4000, [answer("203.0.113.1", 4000), answer("203.0.113.1", 4000)]),
    "endpoint-independent",
  );
  assert.equal(
    classifyMapping(own, 4000, [answer("203.0.113.1", 4000), answer("203.0.113.1", 51234)]),
    "endpoint-dependent",
  );
  assert.equal(
    classifyMapping(own, 4000, [answer("203.0.113.1", 4000), answer("203.0.113.2", 4000)]),
    "endpoint-dependent",
  );
  assert.equal(classifyMapping(own, 4000, [answer("203.0.113.1", 4000), undefined]), "unknown");
  assert.equal(
    classifyMapping(own, 4000, [answer("10.0.0.5", 4001), answer("10.0.0.5", 4001)]),
    "endpoint-independent",
    "our address but another port: a port-translating NAT on this host",
  );
});

Deno.test("localCandidates() offers reachable interface addresses with the socket's port", () => {
  const interfaces = [
    { family: "IPv4" as const, address: "127.0.0.1" },
    { family: "IPv4" as const, address: "10.0.0.5" },
    { family: "IPv4" as const, address: "169.254.1.1" },
    { family: "IPv4" as const, address: "10.0.0.5" },
    { family: "IPv6" as const, address: "fe80::1" },
    { family: "IPv6" as const, address: "2001:db8::5" },
  ];
  assert.deepEqual(localCandidates(interfaces, { family: 4, ip: "0.0.0.0", port: 7 }), [
    { ip: "10.0.0.5", port: 7 },
  ]);
  assert.deepEqual(localCandidates(interfaces, { family: 6, ip: "::", port: 7 }), [
    { ip: "2001:db8::5", port: 7 },
  ]);
  assert.deepEqual(localCandidates(interfaces, { family: 4, ip: "10.0.0.9", port: 7 }), [
    { ip: "10.0.0.9", port: 7 },
  ]);
});

Deno.test("UdpPresence discovers through real STUN servers on the socket it will punch from", async () => {
  const a = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const b = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const silent = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const udp = UdpEndpoint.bind({ hostname: "0.0.0.0" });
  const stun = new StunClient((bytes, to) => udp.send(bytes, to), {
    rtoMs: 20,
    maxSends: 2,
    finalWaitFactor: 2,
  });
  udp.onStun = (bytes, from) => stun.handle(bytes, from);
  const reports: UdpEndpointReport[] = [];
  const server = (s: StunServer) => `127.0.0.1:${s.addresses[0].port}`;
  try {
    const interfaces = () => [{ family: "IPv4" as const, address: "127.0.0.1" }];
    const presence = new UdpPresence({
      stun,
      servers: [server(a), server(b)],
      local: udp.local,
      interfaces,
      onChange: (r) => reports.push(r),
    });
    const report = await presence.discover();
    assert.deepEqual(report.public, { ip: "127.0.0.1", port: udp.local.port });
    assert.equal(report.nat.mapping, "no-nat");
    assert.equal(reports.length, 1);
    await presence.discover();
    assert.equal(reports.length, 1, "an unchanged report is not reported again");

    // An IPv6 socket's global addresses ride along as local candidates, after the socket's own.
    const dualStack = new UdpPresence({
      stun,
      servers: [server(a), server(b)],
      local: udp.local,
      interfaces: () => [{ family: "IPv4", address: "10.0.0.5" }],
      moreLocal: () => [{ ip: "2001:db8::5", port: 9 }],
    });
    assert.deepEqual((await dualStack.discover()).local, [
      { ip: "10.0.0.5", port: udp.local.port },
      { ip: "2001:db8::5", port: 9 },
    ]);

    const oneSilent = new UdpPresence({
      stun,
      servers: [server(a), `127.0.0.1:${(silent.addr as Deno.NetAddr).port}`],
      local: udp.local,
      interfaces: () => [],
    });
    assert.equal((await oneSilent.discover()).nat.mapping, "unknown");
    const noneAnswer = new UdpPresence({
      stun,
      servers: [`127.0.0.1:${(silent.addr as Deno.NetAddr).port}`],
      local: udp.local,
      interfaces: () => [],
    });
    const none = await noneAnswer.discover();
    assert.equal(none.nat.mapping, "no-udp");
    assert.equal(none.public, null);
  } finally {
    silent.close();
    await udp.close();
    await a.close();
    await b.close();
  }
});

Deno.test("UdpPresence keepalive refreshes the mapping and reports when it moves", async () => {
  const clock = new FakeClock(0);
  let mappedPort = 40000;
  const asked: string[] = [];
  const stun = {
    binding: (server: string | TransportAddress) => {
      asked.push(String(server));
      return Promise.resolve(answer("203.0.113.7", mappedPort));
    },
  } as unknown as StunClient;
  const reports: UdpEndpointReport[] = [];
  const presence = new UdpPresence({
    stun,
    servers: ["s1:3478", "s2:3478"],
    local: { family: 4, ip: "0.0.0.0", port: 5000 },
    interfaces: () => [],
    keepaliveMs: 20_000,
    clock,
    onChange: (r) => reports.push(r),
  });
  await presence.discover();
  assert.equal(reports.at(-1)?.nat.mapping, "endpoint-independent");
  const stop = new AbortController();
  const loop = presence.keepAlive(stop.signal);
  asked.length = 0;
  await clock.tick(20_000);
  assert.deepEqual(asked, ["s1:3478"], "one refresh to the anchor server");
  assert.equal(reports.length, 1);
  mappedPort = 40001; // the NAT dropped and re-created the mapping
  await clock.tick(20_000);
  await flush();
  assert.equal(reports.length, 2);
  assert.deepEqual(reports.at(-1)?.public, { ip: "203.0.113.7", port: 40001 });
  stop.abort();
  await loop;
});
