/**
 * Real Linux NATs in network namespaces: each worker learns its NAT's public
 * endpoint through STUN and classifies the mapping correctly.
 */

import { requireOrSkip } from "../_helpers.ts";
import assert from "node:assert/strict";
import { NetLab, netlabUnavailable } from "../_netlab.ts";

const skip = requireOrSkip(await netlabUnavailable(), "NAT lab tests");

Deno.test({
  name: "NAT lab: workers behind real NATs report their public UDP endpoint and mapping",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    try {
      const [eim] = await lab.addNatted("eim");
      const [edm] = await lab.addNatted("edm");
      const [blocked] = await lab.addNatted("block-udp");
      const open = await lab.addPublicHost();

      const rendezvous = await lab.startServices();

      const cases = [
        { host: eim, id: "behind-eim", mapping: "endpoint-independent" },
        { host: edm, id: "behind-edm", mapping: "endpoint-dependent" },
        { host: blocked, id: "udp-blocked", mapping: "no-udp" },
        { host: open, id: "public-host", mapping: "no-nat" },
      ];
      for (const { host, id } of cases) lab.worker(host, id, { UDP_PORT: "40000" });
      for (const { host, id, mapping } of cases) {
        const connecting = await rendezvous.waitForLog(
          "worker connecting",
          (l) => l.worker_id === id,
          20_000,
        );
        assert.equal(
          connecting.observed_ip,
          host.publicIp,
          `${id}: the rendezvous sees the NAT's address`,
        );
        const report = await rendezvous.waitForLog(
          "worker reported udp endpoint",
          (l) => l.worker_id === id,
          20_000, // "no-udp" waits out the worker's discovery schedule (4.75 s)
        );
        assert.equal(report.nat_mapping, mapping, `${id}:\n${rendezvous.dump()}`);
        if (mapping === "no-udp") {
          assert.equal(report.udp_public, null);
        } else {
          const [ip, port] = String(report.udp_public).split(":");
          assert.equal(ip, host.publicIp, `${id}: STUN sees the NAT's address`);
          if (mapping !== "endpoint-dependent") {
            assert.equal(port, "40000", `${id}: port preserved`);
          }
        }
      }
    } finally {
      await lab.destroy();
    }
  },
});
