/**
 * UPnP-IGD: the SSDP, description and SOAP codecs (hostile inputs are
 * undefined, never exceptions), and the client against an IGD on loopback
 * — an SSDP responder on real UDP and a description and control endpoint
 * over real HTTP: maps, renews the same port, takes another port on a
 * conflict, deletes, reads refusals, and follows nothing that points away
 * from the gateway.
 */
import assert from "node:assert/strict";
import {
  encodeAddPortMapping,
  encodeDeletePortMapping,
  encodeSearch,
  parseDescription,
  parseIpv4,
  parseSearchResponse,
  parseSoapAnswer,
} from "../../lib/portmap/upnp.ts";
import { discoverIgd, mapUpnp, unmapUpnp } from "../../lib/portmap/upnp_client.ts";
import { PortMapError } from "../../lib/portmap/client.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const IGD_ST = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
const answer = (location: string, st = IGD_ST) =>
  enc(
    `HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: ${st}\r\nUSN: uuid:x::${st}\r\nLOCATION: ${location}\r\n\r\n`,
  );

const description = (control: string, base = "") =>
  `<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">${base}<device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service>
<serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>${control}</controlURL></service></serviceList></device></deviceList></device></deviceList>
</device></root>`;

Deno.test("SSDP: the search is UDA 1.1's M-SEARCH for an IGD; an answer is read only from an IGD, with an http LOCATION on the gateway itself", () => {
  const search = new TextDecoder().decode(encodeSearch());
  assert.match(
    search,
    /^M-SEARCH \* HTTP\/1\.1\r\nHOST: 239\.255\.255\.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n$/,
  );
  assert.equal(
    parseSearchResponse(answer("http://192.168.1.1:5000/rootDesc.xml"), "192.168.1.1")?.href,
    "http://192.168.1.1:5000/rootDesc.xml",
  );
  assert.equal(
    parseSearchResponse(
      answer(
        "http://192.168.1.1:5000/d.xml",
        "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
      ),
      "192.168.1.1",
    )?.pathname,
    "/d.xml",
  );
  // Another host, another scheme, another device, garbage, a truncated or oversized answer: nothing.
  assert.equal(parseSearchResponse(answer("http://203.0.113.9/d.xml"), "192.168.1.1"), undefined);
  assert.equal(parseSearchResponse(answer("https://192.168.1.1/d.xml"), "192.168.1.1"), undefined);
  assert.equal(parseSearchResponse(answer("file:///etc/passwd"), "192.168.1.1"), undefined);
  assert.equal(
    parseSearchResponse(answer("http://192.168.1.1/d.xml", "upnp:rootdevice"), "192.168.1.1"),
    undefined,
  );
  assert.equal(
    parseSearchResponse(enc("HTTP/1.1 404 Not Found\r\n\r\n"), "192.168.1.1"),
    undefined,
  );
  assert.equal(parseSearchResponse(new Uint8Array([0xff, 0xfe, 0]), "192.168.1.1"), undefined);
  assert.equal(parseSearchResponse(new Uint8Array(4096), "192.168.1.1"), undefined);
  assert.equal(
    parseSearchResponse(
      enc("HTTP/1.1 200 OK\r\nST: " + IGD_ST + "\r\nLOCATION: ::::\r\n\r\n"),
      "192.168.1.1",
    ),
    undefined,
  );
});

Deno.test("a description's WANIPConnection control URL is resolved against LOCATION or URLBase, and taken only on the gateway", () => {
  const location = new URL("http://192.168.1.1:5000/rootDesc.xml");
  const found = parseDescription(description("/ctl/IPConn"), location);
  assert.equal(found?.url.href, "http://192.168.1.1:5000/ctl/IPConn");
  assert.equal(found?.serviceType, "urn:schemas-upnp-org:service:WANIPConnection:1");
  const based = parseDescription(
    description("ctl/IPConn", "<URLBase>http://192.168.1.1:5000/base/</URLBase>"),
    location,
  );
  assert.equal(based?.url.href, "http://192.168.1.1:5000/base/ctl/IPConn");
  // A control URL elsewhere, a document without the service, one too big, garbage: nothing.
  assert.equal(parseDescription(description("http://203.0.113.9/ctl"), location), undefined);
  assert.equal(
    parseDescription(description("/x", "<URLBase>http://203.0.113.9/</URLBase>"), location),
    undefined,
  );
  assert.equal(
    parseDescription(
      description("/x").replace("WANIPConnection", "WANCommonInterfaceConfig"),
      location,
    ),
    undefined,
  );
  assert.equal(parseDescription("<service>".repeat(20_000), location), undefined);
  assert.equal(parseDescription("<<<>>>", location), undefined);
});

Deno.test("SOAP: AddPortMapping and DeletePortMapping name UDP and escape text; answers, faults and junk are told apart", () => {
  const add = encodeAddPortMapping({
    serviceType: "urn:schemas-upnp-org:service:WANIPConnection:1",
    internalClient: "192.168.1.20",
    internalPort: 41641,
    externalPort: 41641,
    lifetime: 7200,
    description: "a<b>&c",
  });
  assert.equal(add.action, '"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"');
  for (
    const part of [
      "<NewExternalPort>41641</NewExternalPort>",
      "<NewProtocol>UDP</NewProtocol>",
      "<NewInternalClient>192.168.1.20</NewInternalClient>",
      "<NewLeaseDuration>7200</NewLeaseDuration>",
      "<NewPortMappingDescription>a&lt;b&gt;&amp;c</NewPortMappingDescription>",
    ]
  ) {
    assert.ok(add.body.includes(part), part);
  }
  assert.throws(
    () =>
      encodeAddPortMapping({
        serviceType: "s",
        internalClient: "x",
        internalPort: 70000,
        externalPort: 1,
        lifetime: 1,
      }),
    RangeError,
  );
  assert.ok(
    encodeDeletePortMapping("s", 5000).body.includes("<NewExternalPort>5000</NewExternalPort>"),
  );
  const ok =
    '<s:Envelope><s:Body><u:GetExternalIPAddressResponse xmlns:u="x"><NewExternalIPAddress>203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>';
  assert.deepEqual(parseSoapAnswer(200, ok, "GetExternalIPAddress", ["NewExternalIPAddress"]), {
    ok: true,
    values: { NewExternalIPAddress: "203.0.113.7" },
  });
  const fault =
    '<s:Envelope><s:Body><s:Fault><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>';
  assert.deepEqual(parseSoapAnswer(500, fault, "AddPortMapping"), {
    ok: false,
    code: 718,
    description: "ConflictInMappingEntry",
  });
  // Another action's answer, a missing field, another status, junk: undefined.
  assert.equal(parseSoapAnswer(200, ok, "AddPortMapping"), undefined);
  assert.equal(
    parseSoapAnswer(200, ok.replace(/<NewExternal[^]*IPAddress>/, ""), "GetExternalIPAddress", [
      "NewExternalIPAddress",
    ]),
    undefined,
  );
  assert.equal(parseSoapAnswer(302, ok, "GetExternalIPAddress"), undefined);
  assert.equal(parseSoapAnswer(500, "<errorCode>-5</errorCode>", "AddPortMapping"), undefined);
  assert.equal(parseSoapAnswer(200, "x".repeat(70_000), "AddPortMapping"), undefined);
  assert.equal(parseIpv4("203.0.113.7"), "203.0.113.7");
  for (const bad of ["", "1.2.3", "1.2.3.256", "a.b.c.d", "1.2.3.4 ", undefined]) {
    assert.equal(parseIpv4(bad), undefined);
  }
});

/** An IGD on 127.0.0.1: SSDP over UDP, description and control over HTTP. */
function igd(
  options: { conflictPort?: number; refuse?: number; location?: (port: number) => string } = {},
) {
  const calls: { action: string; body: string }[] = [];
  const mappings = new Map<number, { internalPort: number; lease: number }>();
  const http = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    if (req.method === "GET" && url.pathname === "/rootDesc.xml") {
      return new Response(description("/ctl/IPConn"), { headers: { "content-type": "text/xml" } });
    }
    if (req.method !== "POST" || url.pathname !== "/ctl/IPConn") {
      return new Response("", { status: 404 });
    }
    const action = (req.headers.get("soapaction") ?? "").replace(/^.*#|"$/g, "");
    const body = await req.text();
    calls.push({ action, body });
    const get = (name: string) => Number(body.match(new RegExp(`<${name}>(\\d+)</${name}>`))?.[1]);
    const fault = (code: number) =>
      new Response(
        `<s:Envelope><s:Body><s:Fault><detail><UPnPError><errorCode>${code}</errorCode><errorDescription>no</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`,
        { status: 500 },
      );
    if (action === "GetExternalIPAddress") {
      return new Response(
        `<s:Envelope><s:Body><u:GetExternalIPAddressResponse xmlns:u="x"><NewExternalIPAddress>203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>`,
      );
    }
    if (action === "AddPortMapping") {
      if (options.refuse) return fault(options.refuse);
      const port = get("NewExternalPort");
      if (port === options.conflictPort) return fault(718);
      mappings.set(port, { internalPort: get("NewInternalPort"), lease: get("NewLeaseDuration") });
      return new Response(
        `<s:Envelope><s:Body><u:AddPortMappingResponse xmlns:u="x"/></s:Body></s:Envelope>`,
      );
    }
    if (action === "DeletePortMapping") {
      if (!mappings.delete(get("NewExternalPort"))) return fault(714);
      return new Response(
        `<s:Envelope><s:Body><u:DeletePortMappingResponse xmlns:u="x"/></s:Body></s:Envelope>`,
      );
    }
    return fault(401);
  });
  const httpPort = http.addr.port;
  const ssdp = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  let searches = 0;
  const serving = (async () => {
    const buffer = new Uint8Array(2048);
    while (true) {
      let got;
      try {
        got = await ssdp.receive(buffer);
      } catch {
        return;
      }
      searches++;
      const location = options.location?.(httpPort) ?? `http://127.0.0.1:${httpPort}/rootDesc.xml`;
      // A stray answer first (not an IGD), then the gateway's.
      await ssdp.send(enc("HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n"), got[1]).catch(
        () => {},
      );
      await ssdp.send(answer(location), got[1]).catch(() => {});
    }
  })();
  return {
    target: {
      gateway: "127.0.0.1",
      searchTo: [{ hostname: "127.0.0.1", port: (ssdp.addr as Deno.NetAddr).port }],
      waitsMs: [100, 200, 400],
    },
    calls,
    mappings,
    get searches() {
      return searches;
    },
    async close() {
      ssdp.close();
      await serving;
      await http.shutdown();
    },
  };
}

Deno.test("UPnP client: finds the IGD, maps the same port for a lifetime, renews it, deletes it", async () => {
  const gw = igd();
  try {
    const counts = { ignored: 0 };
    const control = await discoverIgd(gw.target, counts);
    assert.equal(control.serviceType, "urn:schemas-upnp-org:service:WANIPConnection:1");
    assert.equal(counts.ignored, 1, "the stray answer was ignored");
    assert.equal(gw.searches, 1, "one search answered is one search sent");
    const mapped = await mapUpnp(control, "127.0.0.1", 41641, 120);
    assert.deepEqual(
      {
        ip: mapped.externalIp,
        port: mapped.externalPort,
        lifetime: mapped.lifetime,
        protocol: mapped.protocol,
      },
      { ip: "203.0.113.7", port: 41641, lifetime: 120, protocol: "upnp" },
    );
    assert.deepEqual(gw.mappings.get(41641), { internalPort: 41641, lease: 120 });
    assert.equal(
      (await mapUpnp(control, "127.0.0.1", 41641, 120)).externalPort,
      41641,
      "a renewal keeps the port",
    );
    await unmapUpnp(control, 41641);
    assert.equal(gw.mappings.size, 0);
    await assert.rejects(unmapUpnp(control, 41641), (e: PortMapError) => e.result === 714);
    assert.deepEqual(gw.calls.map((c) => c.action), [
      "GetExternalIPAddress",
      "AddPortMapping",
      "GetExternalIPAddress",
      "AddPortMapping",
      "DeletePortMapping",
      "DeletePortMapping",
    ]);
    await assert.rejects(
      mapUpnp(control, "127.0.0.1", 41641, 0),
      RangeError,
      "never a permanent mapping",
    );
  } finally {
    await gw.close();
  }
});

Deno.test("UPnP client: a taken port (718) gets one other port; a refusal says its code; a LOCATION elsewhere and silence find nothing", async () => {
  const conflict = igd({ conflictPort: 41641 });
  try {
    const control = await discoverIgd(conflict.target);
    const mapped = await mapUpnp(control, "127.0.0.1", 41641, 60, undefined, () => 0.5);
    assert.equal(mapped.externalPort, 1024 + Math.floor(0.5 * (65536 - 1024)));
    assert.equal(conflict.mappings.size, 1);
  } finally {
    await conflict.close();
  }
  const refusing = igd({ refuse: 606 });
  try {
    const control = await discoverIgd(refusing.target);
    await assert.rejects(
      mapUpnp(control, "127.0.0.1", 41641, 60),
      (e: PortMapError) => e.result === 606 && /not authorized/.test(e.message),
    );
  } finally {
    await refusing.close();
  }
  const elsewhere = igd({ location: () => "http://192.0.2.1/rootDesc.xml" });
  try {
    await assert.rejects(discoverIgd(elsewhere.target), /no answer to a search/);
    assert.equal(elsewhere.searches, 3, "three searches, then silence");
  } finally {
    await elsewhere.close();
  }
});
