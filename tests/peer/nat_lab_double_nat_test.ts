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

const skip = requireOrSkip(await netlabUnavailable(), "NAT lab tests");

Deno.test({
  name:
    "NAT lab: two homes behind one carrier NAT reach endpoint-dependent hosts directly on their first introduction; their own relayed pair makes no other round suspect",
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
      const hears = (a: string, b: string) =>
        procs[a].lines.find((l) =>
          l.message === "peer message received" && l.peer_id === b && l.path === "direct"
        );
      const pairs = [
        ["home-1", "edm-1"],
        ["home-1", "edm-2"],
        ["home-2", "edm-1"],
        ["home-2", "edm-2"],
      ];
      await waitFor(
        () => pairs.every(([a, b]) => hears(a, b) && hears(b, a)),
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
        const punch = procs[a].lines.find((l) =>
          l.message === "peer punch started" && l.peer_id === b
        );
        const first = [hears(a, b), hears(b, a)];
        const ms = first.every(Boolean) && punch
          ? Math.max(...first.map((l) => Date.parse(String(l!.time)))) -
            Date.parse(String(punch.time))
          : null;
        const introductions = procs[a].lines.filter((l) =>
          l.message === "peer punch started" && l.peer_id === b
        ).length;
        rows.push(
          `${a} ↔ ${b}: ${ms === null ? "not direct" : `direct in ${ms} ms`}, ` +
            `${introductions} introduction(s)`,
        );
        if (ms !== null) times.push(ms);
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
      assert.equal(hears("home-1", "home-2"), undefined, "the homes stay relayed");
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
