/**
 * Interop with software we did not write: coturn's `turnserver` answering our
 * client, and coturn's `turnutils_stunclient` and `turnutils_natdiscovery`
 * asking our server. Everything on loopback.
 */

import assert from "node:assert/strict";
import { StunClient } from "../../lib/stun/client.ts";
import { StunServer } from "../../lib/stun/server.ts";
import { UdpEndpoint } from "../../lib/peer/udp_endpoint.ts";
import { freeTurnPort, turnserverArgs } from "../_coturn.ts";
import { Proc, requireOrSkip, waitFor, within } from "../_helpers.ts";

async function available(): Promise<string | undefined> {
  for (const tool of ["turnserver", "turnutils_stunclient", "turnutils_natdiscovery"]) {
    try {
      await new Deno.Command(tool, { args: ["-h"], stdout: "null", stderr: "null" }).output();
    } catch {
      return `${tool} not found (Debian package coturn)`;
    }
  }
  return undefined;
}

const skip = requireOrSkip(await available(), "coturn interop tests");

Deno.test({
  name: "our STUN client learns its mapped address from coturn's turnserver",
  ignore: skip !== undefined,
  async fn() {
    const udp = UdpEndpoint.bind({ hostname: "127.0.0.1" });
    const client = new StunClient((b, to) => udp.send(b, to), { rtoMs: 50, maxSends: 3 });
    udp.onStun = (b, from) => client.handle(b, from);
    const logs: string[] = [];
    try {
      // A port free when chosen may be taken by a parallel test before
      // turnserver binds it: up to three ports, each until it answers.
      let result;
      for (let attempt = 0; attempt < 3 && result === undefined; attempt++) {
        const port = freeTurnPort();
        const turn = new Proc("turnserver", turnserverArgs(port, "stdout"), {});
        try {
          // turnserver logs nothing we can wait on reliably; ask until it answers.
          result = await waitFor(
            () => client.binding(`127.0.0.1:${port}`).catch(() => undefined),
            "turnserver to answer",
            5_000,
          ).catch(() => undefined);
        } finally {
          await turn.stop("SIGTERM");
          logs.push(turn.stdout);
        }
      }
      assert.ok(result, `turnserver did not answer:\n${logs.join("\n---\n")}`);
      assert.deepEqual(result.mapped, udp.local);
      assert.match(result.software ?? "", /Coturn/i);
    } finally {
      await udp.close();
    }
  },
});

Deno.test({
  name: "coturn's turnutils_stunclient gets its mapped address from our STUN server",
  ignore: skip !== undefined,
  async fn() {
    const server = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const proc = new Proc("turnutils_stunclient", [
        "-p",
        String(server.addresses[0].port),
        "127.0.0.1",
      ], {});
      const status = await within(proc.status, 20_000, "turnutils_stunclient");
      const output = proc.stdout + proc.dump();
      assert.equal(status.code, 0, output);
      const match = /UDP reflexive addr: 127\.0\.0\.1:(\d+)/.exec(output);
      assert.ok(match, output);
      assert.ok(Number(match[1]) > 0);
      assert.ok(server.stats.answered >= 1);
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name: "coturn's turnutils_natdiscovery runs RFC 5780 tests against our four-socket server",
  ignore: skip !== undefined,
  async fn() {
    const server = StunServer.listen({
      hostname: "127.0.0.1",
      port: 0,
      alternate: { hostname: "127.0.0.2", port: 0 },
    });
    try {
      const proc = new Proc("turnutils_natdiscovery", [
        "-m",
        "-f",
        "-p",
        String(server.addresses[0].port),
        "127.0.0.1",
      ], {});
      const status = await within(proc.status, 30_000, "turnutils_natdiscovery");
      const output = proc.stdout + proc.dump();
      assert.equal(status.code, 0, output);
      // natdiscovery compares against its wildcard local address, so loopback
      // reads as a NAT; what matters is that every RFC 5780 test got answers.
      assert.match(output, /NAT with Endpoint Independent Mapping!/);
      assert.match(output, /NAT with Endpoint Independent Filtering!/);
      assert.match(output, /Response origin: : 127\.0\.0\.2:/, "answered from the alternate IP");
      assert.equal(server.stats.answered, 4);
    } finally {
      await server.close();
    }
  },
});
