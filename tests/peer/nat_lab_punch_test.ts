/**
 * Hole punching on real Linux NATs: nine workers behind endpoint-independent,
 * endpoint-dependent, full-cone, shared and UDP-blocking NATs and on a public
 * host, all connecting to all. Asserts the outcomes per pair and
 * prints the measurements.
 */

import assert from "node:assert/strict";
import { LINK_TIMING } from "../../lib/peer/link.ts";
import { netlabUnavailable } from "../_netlab.ts";
import { type PairResult, runPunchLab } from "../_punch_lab.ts";

const skip = await netlabUnavailable();
if (skip && Deno.env.get("HOLEPUNCH_REQUIRE_ALL")) throw new Error(`NAT lab cannot run: ${skip}`);
if (skip) console.log(`NAT lab tests skipped: ${skip}`);

function median(values: number[]): number {
  const sorted = values.slice().sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

Deno.test({
  name:
    "NAT lab: every pair gets a direct path where the NATs allow it, keeps it, and sends messages and a file either way",
  ignore: skip !== undefined,
  async fn() {
    // Direct paths must outlive a keepalive round and the loss timeout.
    const hold = LINK_TIMING.keepaliveMs + LINK_TIMING.lostAfterMs + 1000;
    const { results, seconds } = await runPunchLab(40, hold, 1024 * 1024);
    const show = (r: PairResult) =>
      `${r.from} ← ${r.to}: ${r.path} (expected ${r.expected}), ${r.messages} msgs, direct after ${r.directMs} ms, strategy ${r.strategy}`;
    console.log(`lab ran ${seconds.toFixed(1)} s`);
    for (const r of results) console.log("  " + show(r));

    for (const r of results) assert.ok(r.messages >= 3, `delivered: ${show(r)}`);
    // A file each way between every pair, through PEER_FORWARD and PEER_EXPOSE, equal SHA-256.
    const failed = results.filter((r) => !r.transfer?.ok);
    assert.equal(
      failed.length,
      0,
      failed.map((r) =>
        `${r.from} → ${r.to} (${r.path}): ${JSON.stringify(r.transfer)}\n    ${
          r.events.join("\n    ")
        }`
      ).join("\n"),
    );
    const byPath = (path: string) =>
      results.filter((r) => r.path === path).map((r) => r.transfer!.ms!).sort((x, y) => x - y);
    console.log(
      `1 MiB through PEER_FORWARD, all ${results.length} ordered pairs at once: median ${
        median(byPath("direct"))
      } ms direct, ${median(byPath("relay"))} ms relayed`,
    );
    const shouldBeDirect = results.filter((r) => r.expected === "direct");
    const direct = shouldBeDirect.filter((r) => r.path === "direct" && r.directMs !== null);
    const detail = (r: PairResult) => {
      const back = results.find((o) => o.from === r.to && o.to === r.from)!;
      return [show(r), ...r.events, `${r.to}'s side:`, ...back.events].join("\n    ");
    };
    const missing = shouldBeDirect.filter((r) => !direct.includes(r));
    assert.equal(missing.length, 0, missing.map(detail).join("\n"));
    const lost = direct.filter((r) => r.lost > 0);
    assert.equal(lost.length, 0, `direct paths lost:\n${lost.map(detail).join("\n")}`);
    for (const r of results.filter((r) => r.expected === "relay")) {
      assert.equal(r.path, "relay", show(r));
    }
    assert.ok(direct.every((r) => r.directMs! <= 20_000), "direct within 20 s");
    const easy = direct.filter((r) => r.strategy === "ice");
    console.log(`median time to direct (ICE pairs): ${median(easy.map((r) => r.directMs!))} ms`);
    assert.ok(median(easy.map((r) => r.directMs!)) <= 1500, "EIM pairs: median ≤ 1.5 s");
    const firstTry = direct.filter((r) => r.attempts === 1).length / direct.length;
    console.log(`direct on the first attempt: ${(firstTry * 100).toFixed(1)} %`);
    assert.ok(firstTry >= 0.97);
    const relayTimes = results.map((r) => r.firstRelayMs).filter((v): v is number => v !== null);
    console.log(
      `first relayed frame after connect: median ${median(relayTimes)} ms, max ${
        Math.max(...relayTimes)
      } ms`,
    );
    assert.ok(median(relayTimes) <= 100);
  },
});
