import assert from "node:assert/strict";
import { portMapLine } from "../../lib/ctl/format.ts";

Deno.test("ctl status's portmap line: a mapping held, behind another NAT, still asking, refused, silent, no gateway", () => {
  const base = {
    gateway: "192.168.1.1",
    offered: { pcp: true, "nat-pmp": true, upnp: false },
    mapping: null,
    counts: { mapped: 0, renewed: 0, failed: 0, ignored: 0 },
    double_nat: null,
  };
  const mapping = {
    protocol: "pcp" as const,
    externalIp: "203.0.113.7",
    externalPort: 41641,
    internalPort: 41641,
    lifetime: 7200,
    epoch: 9,
  };
  assert.equal(
    portMapLine({ ...base, mapping, double_nat: false }),
    "203.0.113.7:41641 by PCP on 192.168.1.1, 7200 s",
  );
  assert.equal(
    portMapLine({ ...base, mapping: { ...mapping, externalIp: "100.64.0.9" }, double_nat: true }),
    "100.64.0.9:41641 by PCP on 192.168.1.1, 7200 s, but the gateway is behind another NAT",
  );
  assert.equal(
    portMapLine({ ...base, offered: { pcp: null, "nat-pmp": true, upnp: null } }),
    "asking 192.168.1.1",
  );
  assert.equal(
    portMapLine({ ...base, counts: { ...base.counts, failed: 2 } }),
    "none: 192.168.1.1 refused (2 refusals)",
  );
  assert.equal(
    portMapLine({ ...base, offered: { pcp: false, "nat-pmp": false, upnp: false } }),
    "none: 192.168.1.1 answered no probe",
  );
  assert.equal(portMapLine({ ...base, gateway: null }), "no gateway to ask");
});
