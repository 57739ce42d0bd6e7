/**
 * A forwarded TCP stream survives every path change: relay at first, then
 * direct, then back to the relay while the direct path is blocked
 * (iptables in the lab), then direct again once it is unblocked. The bytes
 * that arrive are the bytes that were sent (same length, same SHA-256).
 */

import assert from "node:assert/strict";
import { LINK_TIMING } from "../../lib/peer/link.ts";
import { type Proc, within } from "../_helpers.ts";
import { NetLab, netlabUnavailable } from "../_netlab.ts";

const skip = await netlabUnavailable();
if (skip && Deno.env.get("HOLEPUNCH_REQUIRE_ALL")) throw new Error(`NAT lab cannot run: ${skip}`);
if (skip) console.log(`NAT lab path-change test skipped: ${skip}`);

async function sh(...args: string[]): Promise<void> {
  const out = await new Deno.Command(args[0], { args: args.slice(1), stderr: "piped" }).output();
  if (!out.success) throw new Error(`${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

Deno.test({
  name:
    "NAT lab: a forwarded stream arrives byte-exact across relay → direct → relay (blocked) → direct",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    const procs: Proc[] = [];
    const stopFile = await Deno.makeTempFile();
    await Deno.remove(stopFile);
    try {
      await lab.startServices();
      const a = await lab.addPublicHost();
      const b = await lab.addPublicHost();
      const service = lab.deno(b.ns, [
        "run",
        "--allow-all",
        "tests/_stream_tools.ts",
        "hash-server",
        "9000",
      ]);
      await service.waitForLog("listening");
      const workerB = lab.worker(b, "path-b", { PEER_EXPOSE: "9000" });
      const workerA = lab.worker(a, "path-a", { PEER_FORWARD: "9100:path-b:9000" });
      procs.push(workerA, workerB);
      await workerA.waitForLog("forward listening");
      await workerB.waitForLog("registered with rendezvous");
      await workerA.waitForLog("registered with rendezvous");

      const sender = lab.deno(a.ns, [
        "run",
        "--allow-all",
        "tests/_stream_tools.ts",
        "send",
        "9100",
        stopFile,
      ]);
      // The stream starts on the relay while the link is punched, then moves to direct.
      const opened = await workerA.waitForLog("peer connection open", () => true, 20_000);
      assert.equal(opened.path, "relay");
      const direct = await workerA.waitForLog("peer path direct", () => true, 20_000);
      const at = workerA.lines.indexOf(direct) + 1;
      await sender.waitForLog("progress", (l) => (l.bytes as number) >= 2 * 1024 * 1024, 20_000);

      // Block UDP between the two hosts: the keepalive goes unanswered and the link falls back.
      for (const rule of [["INPUT", "-s"], ["OUTPUT", "-d"]]) {
        await sh(
          "ip",
          "netns",
          "exec",
          a.ns,
          "iptables",
          "-A",
          rule[0],
          "-p",
          "udp",
          rule[1],
          b.ip,
          "-j",
          "DROP",
        );
      }
      const lost = await workerA.waitForLog(
        "peer direct path lost",
        () => true,
        LINK_TIMING.keepaliveMs + LINK_TIMING.lostAfterMs + 5000,
        at,
      );
      const relayAgainAt = workerA.lines.indexOf(lost) + 1;
      const progressAtBlock = sender.lines.filter((l) => l.message === "progress").length;
      await sender.waitForLog("progress", () => true, 20_000, sender.lines.length); // still moving, on the relay

      for (const rule of [["INPUT", "-s"], ["OUTPUT", "-d"]]) {
        await sh(
          "ip",
          "netns",
          "exec",
          a.ns,
          "iptables",
          "-D",
          rule[0],
          "-p",
          "udp",
          rule[1],
          b.ip,
          "-j",
          "DROP",
        );
      }
      // The link asks for a new introduction every upgradeRetryMs and punches again.
      await workerA.waitForLog(
        "peer path direct",
        () => true,
        LINK_TIMING.upgradeRetryMs + 15_000,
        relayAgainAt,
      );
      await sender.waitForLog("progress", () => true, 20_000, sender.lines.length);
      assert.ok(sender.lines.filter((l) => l.message === "progress").length > progressAtBlock);

      await Deno.writeTextFile(stopFile, "stop");
      const sent = await within(
        sender.waitForLog("sent", () => true, 60_000),
        60_000,
        "the sender",
      );
      assert.equal(sent.answer, `${sent.bytes} ${sent.sha256}`, "same length, same SHA-256");
      assert.ok((sent.bytes as number) > 4 * 1024 * 1024, `${sent.bytes} bytes`);
      console.log(
        `moved ${((sent.bytes as number) / 1e6).toFixed(1)} MB byte-exact across four paths`,
      );
    } finally {
      await lab.destroy();
      await Deno.remove(stopFile).catch(() => {});
    }
  },
});
