import assert from "node:assert/strict";
import {
  addressOn,
  findGateway,
  guessGateway,
  parseRouteTable,
} from "../../lib/portmap/gateway.ts";
import { encodeAnnounceRequest, parseAnnounceResponse } from "../../lib/portmap/pcp.ts";

const HEADER =
  "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT";

Deno.test("the default route: lowest metric, up and via a gateway; host-order hex read right; junk skipped", () => {
  const table = [
    HEADER,
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
    "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0",
    "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0",
    "tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0", // no gateway flag
    "down0\t00000000\t0A00000A\t0002\t0\t0\t1\t00000000\t0\t0\t0", // not up
    "junk\tzz\t\t",
  ].join("\n");
  assert.deepEqual(parseRouteTable(table), { iface: "eth0", gateway: "192.0.2.1" });
  assert.equal(parseRouteTable(HEADER), undefined);
  assert.equal(parseRouteTable(""), undefined);
  assert.equal(
    parseRouteTable(HEADER + "\neth0\t00000000\tXYZ\t0003\t0\t0\t0\t00000000"),
    undefined,
  );
  const interfaces = [
    { name: "eth0", family: "IPv6", address: "fe80::1" },
    { name: "eth0", family: "IPv4", address: "192.0.2.20" },
  ] as Deno.NetworkInterfaceInfo[];
  assert.equal(addressOn("eth0", interfaces), "192.0.2.20");
  assert.equal(addressOn("wlan0", interfaces), undefined);
});

Deno.test("findGateway on this machine: null, or a gateway and an address of ours", async () => {
  const found = await findGateway();
  if (found === null) return;
  assert.match(found.gateway, /^\d+\.\d+\.\d+\.\d+$/);
  assert.ok(Deno.networkInterfaces().some((i) => i.address === found.clientIp));
});

Deno.test("PCP ANNOUNCE: the probe is a 24-byte request with lifetime 0; only an ANNOUNCE answer is one", () => {
  const req = encodeAnnounceRequest("192.0.2.20");
  assert.equal(req.length, 24);
  assert.deepEqual([...req.subarray(0, 8)], [2, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...req.subarray(8, 24)], [
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0xff,
    0xff,
    192,
    0,
    2,
    20,
  ]);
  const answer = req.slice();
  answer[1] = 0x80;
  answer[3] = 0;
  new DataView(answer.buffer).setUint32(8, 77);
  assert.deepEqual(parseAnnounceResponse(answer), { result: 0, epoch: 77 });
  assert.equal(parseAnnounceResponse(req), undefined, "a request is no answer");
  assert.equal(parseAnnounceResponse(answer.subarray(0, 20)), undefined);
  assert.equal(
    parseAnnounceResponse(
      new Uint8Array(25).fill(0).map((_, i) => i === 0 ? 2 : i === 1 ? 0x80 : 0),
    ),
    undefined,
    "not a multiple of 4",
  );
});

Deno.test("without the route table, the gateway is guessed as the LAN subnet's first address; loopback, link-local, bridges and /32s are passed over", () => {
  const i = (name: string, address: string, netmask: string) =>
    ({ name, family: "IPv4", address, netmask }) as Deno.NetworkInterfaceInfo;
  assert.deepEqual(
    guessGateway([
      i("lo", "127.0.0.1", "255.0.0.0"),
      i("docker0", "172.17.0.1", "255.255.0.0"),
      i("eth1", "169.254.3.4", "255.255.0.0"),
      i("tun0", "10.8.0.6", "255.255.255.255"),
      i("eth0", "192.168.1.20", "255.255.255.0"),
    ]),
    { gateway: "192.168.1.1", clientIp: "192.168.1.20" },
  );
  assert.deepEqual(guessGateway([i("en0", "10.0.5.7", "255.255.252.0")]), {
    gateway: "10.0.4.1",
    clientIp: "10.0.5.7",
  });
  assert.equal(
    guessGateway([i("eth0", "192.168.1.1", "255.255.255.0")]),
    undefined,
    "we are the .1",
  );
  assert.equal(guessGateway([i("lo", "127.0.0.1", "255.0.0.0")]), undefined);
});
