/**
 * A carrier-grade NAT with two home NATs behind it, beside endpoint-dependent
 * hosts: the two homes share the carrier's public address and cannot reach
 * each other (no hairpinning there), which is their own explanation — so
 * their failed rounds must not make the homes' other rounds reroll. Every
 * home ↔ EDM pair goes direct; the pair of homes stays relayed.
 */
import assert from "node:assert/strict";
import { requireOrSkip, waitFor } from "../_helpers.ts";
import { NetLab, netlabUnavailable } from "../_netlab.ts";
import { hearsDirect, pairDirect } from "../_punch_lab.ts";

const skip = requireOrSkip(await netlabUnavailable(), "NAT lab tests");

Deno.test({
  name:
    "NAT lab: two homes behind one carrier NAT reach endpoint-dependent hosts directly; their own relayed pair makes no other round suspect",
  ignore: skip !== undefined,
  async fn() {
    const lab = await NetLab.create();
    try {
      const carrier = await lab.addCarrierNat();
      const hosts = {
        "home-1": (await lab.addNatted("eim", 1, { segment: carrier }))[0],
        "home-2": (await lab.addNatted("eim", 1, { segment: carrier }))[0],
        "edm-1": (await lab.addNatted("edm", 1))[0],
        "edm-2": (await lab.addNatted("edm", 1))[0],
      };
      await lab.startServices();
      const env = { PEER_AUTOCONNECT: "true", PEER_HELLO_SEC: "0.5" };
      const procs = Object.fromEntries(
        Object.entries(hosts).map(([id, host]) => [id, lab.worker(host, id, env)]),
      );
      const pairs = [
        ["home-1", "edm-1"],
        ["home-1", "edm-2"],
        ["home-2", "edm-1"],
        ["home-2", "edm-2"],
      ] as const;
      const outcome = ([a, b]: readonly [string, string]) => pairDirect(procs[a], procs[b], [a, b]);
      await waitFor(
        () => pairs.every((pair) => outcome(pair)),
        "every home ↔ EDM pair direct both ways",
        30_000,
        250,
      ).catch(() => {});
      // The homes' own first round runs out (no hairpinning at the carrier): the event
      // that used to make every other first round of theirs reroll.
      const homesFailed = () =>
        procs["home-1"].lines.find((l) =>
          l.message === "peer punch failed" && l.peer_id === "home-2" && l.cause === "timeout"
        );
      await waitFor(() => homesFailed(), "the homes' own first round to run out", 30_000, 250);
      const rows: string[] = [];
      const times: number[] = [];
      for (const [a, b] of pairs) {
        const direct = outcome([a, b]);
        rows.push(
          `${a} ↔ ${b}: ${
            direct ? `direct in ${direct.ms} ms, introduction ${direct.attempts}` : "not direct"
          }`,
        );
        if (direct) times.push(direct.ms);
      }
      const suspect = Object.values(procs).flatMap((p) =>
        p.lines.filter((l) =>
          l.message === "peer punch failed" && l.cause === "mapping_suspect"
        )
      ).length;
      times.sort((x, y) => x - y);
      console.log(rows.join("\n"));
      console.log(
        `median ${times[Math.floor(times.length / 2)]} ms, slowest ${times.at(-1)} ms; ` +
          `rounds rerolled on suspicion: ${suspect}`,
      );
      assert.equal(times.length, pairs.length, rows.join("\n"));
      // The homes' own pair: relayed (the carrier does not hairpin), and no reason to suspect.
      assert.equal(hearsDirect(procs["home-1"].lines, "home-2"), false, "the homes stay relayed");
      const homeSuspicion = ["home-1", "home-2"].flatMap((id) =>
        procs[id].lines.filter((l) =>
          l.message === "peer punch failed" && l.cause === "mapping_suspect"
        )
      );
      assert.deepEqual(homeSuspicion, [], "no round of a home rerolled on suspicion");
    } finally {
      await lab.destroy();
    }
  },
});
