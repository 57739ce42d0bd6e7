/**
 * IPv6 STUN in the NAT lab: a dual-stack host whose router rewrites IPv6
 * source addresses (NAT66) learns, from an IPv6 STUN server, the endpoint
 * its IPv6 socket is seen at — the router's, not its own — and the
 * rendezvous offers that to peers as a public candidate; a host behind a
 * plain stateful firewall is seen at its own address, offered once.
 */
import assert from "node:assert/strict";
import { requireOrSkip } from "../_helpers.ts";
import { NetLab, netlabUnavailable, PUBLIC_IP } from "../_netlab.ts";

const skip = requireOrSkip(await netlabUnavailable(), "NAT lab tests");

Deno.test({
  name:
    "NAT lab: behind a NAT66 the worker's IPv6 socket is seen at the router's address (IPv6 STUN) and that is offered; behind a firewall, its own",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    try {
      const [nat66] = await lab.addNatted("eim", 1, { ipv6: true, nat66: true });
      const [plain] = await lab.addNatted("eim", 1, { ipv6: true });
      const rendezvous = await lab.startServices();
      const stun6 = await lab.startStun6();
      const env = { STUN_SERVERS: `${PUBLIC_IP}:3478,${PUBLIC_IP}:3479,${stun6}` };
      const a = lab.worker(nat66, "nat66-1", env);
      const b = lab.worker(plain, "plain6-1", env);
      const seen = async (p: typeof a) =>
        (await p.waitForLog("udp6 endpoint discovered", () => true, 20_000)) as Record<
          string,
          unknown
        >;
      const [sa, sb] = [await seen(a), await seen(b)];
      const router = nat66.ns.replace(/-h(\d+)x\d+$/, "-r$1");
      assert.equal(sa.rewritten, true, JSON.stringify(sa));
      assert.ok(!String(sa.udp6_public).includes(nat66.ip6!), "not its own address");
      assert.equal(sb.rewritten, false, JSON.stringify(sb));
      assert.ok(String(sb.udp6_public).startsWith(`[${plain.ip6}]`), JSON.stringify(sb));
      // IPv4 discovery is unchanged: both endpoint-independent.
      for (const p of [a, b]) {
        const found = await p.waitForLog("udp endpoint discovered", () => true, 20_000);
        assert.equal(found.nat_mapping, "endpoint-independent");
      }
      // The rendezvous keeps it (and offers it: candidates_test.ts).
      const stored = await rendezvous.waitForLog(
        "worker reported udp endpoint",
        (l) => l.worker_id === "nat66-1" && l.udp_public6 !== null && l.udp_public6 !== undefined,
        20_000,
      );
      assert.equal(stored.udp_public6, sa.udp6_public);
      console.log(
        `NAT66 host seen at ${sa.udp6_public} (router ${router}); plain at ${sb.udp6_public}`,
      );
    } finally {
      await lab.destroy();
    }
  },
});
