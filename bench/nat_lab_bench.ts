/**
 * Hole-punching outcomes over repeated NAT-lab runs (needs root): per pair of
 * NAT kinds, how often the pair went direct, how fast, on which attempt, and
 * how soon the first relayed frame left; "1st try" counts pairs direct on
 * the first introduction (rerolls included), "no reroll" those direct in
 * its first round. Writes bench/results/nat-lab-*.json.
 *
 * Both router kinds, each its own set of runs: routers that drop unsolicited
 * input and routers that do not (`--routers filtering|non-filtering|both`).
 *
 * Run: `deno task bench:natlab` (5 runs of each kind; `-- --runs N` for more;
 * `-- --all` adds every extra topology at once: routers that map ports
 * (miniupnpd), a carrier NAT with two homes, split UDP).
 *
 * @module
 */

import { numberFlag, percentile, stringFlag } from "./_common.ts";
import { netlabUnavailable, portMappingUnavailable } from "../tests/_netlab.ts";
import {
  EXTRA_LAB_WORKERS,
  LAB_WORKERS,
  type RouterKind,
  runPunchLab,
} from "../tests/_punch_lab.ts";

const runs = numberFlag("--runs", 5);
/** Every topology at once: the extra workers too (mapping routers, a carrier with two homes, split UDP). */
const all = Deno.args.includes("--all");
const routerArg = stringFlag("--routers", "both");
const kinds: RouterKind[] = routerArg === "both"
  ? ["filtering", "non-filtering"]
  : [routerArg as RouterKind];
const why = await netlabUnavailable() ?? (all ? await portMappingUnavailable() : undefined);
if (why) {
  console.error(`nat lab benchmark cannot run: ${why}`);
  Deno.exit(1);
}

const kind = (id: string) => [...LAB_WORKERS, ...EXTRA_LAB_WORKERS].find((w) => w.id === id)!.kind;
const everyone = [...LAB_WORKERS, ...EXTRA_LAB_WORKERS].map((w) => w.id);
const shared = (a: string, b: string) => a.startsWith("shared") && b.startsWith("shared");
const segment = (a: string, b: string) => [a, b].sort().join() === "eim-2,eim-3";
const category = (a: string, b: string) =>
  shared(a, b)
    ? "same NAT (eim)"
    : segment(a, b)
    ? "eim ↔ eim, shared segment"
    : [kind(a), kind(b)].sort().join(" ↔ ");

interface Bucket {
  pairs: number;
  expectedDirect: number;
  direct: number;
  delivered: number;
  firstAttempt: number;
  /** Direct in the introduction's first round, no reroll. */
  firstRound: number;
  directMs: number[];
  firstRelayMs: number[];
}
const buckets = new Map<string, Bucket>();
/** Pairs the NATs allow that stayed relayed, per router kind: with a worker of the shared segment or not. */
const misses = new Map<string, { segment: number; elsewhere: string[] }>();
/** Time to direct of EIM ↔ EDM pairs (birthday) without a worker of the shared segment. */
const edmPairMs = new Map<string, number[]>();
/** Pairs with a mapping side that the NATs allow (a blocked side aside): time to direct, first attempts. */
const mappedPairs = new Map<string, { ms: number[]; firstAttempt: number; pairs: number }>();
/** Time to direct of every pair the NATs allow. */
const allDirectMs = new Map<string, number[]>();
const onSegment = (id: string) => id === "eim-2" || id === "eim-3";
const pct = (p: number, xs: number[]) => percentile(xs, p / 100);

for (const routers of kinds) {
  for (let run = 1; run <= runs; run++) {
    const { results, seconds } = await runPunchLab(
      40,
      0,
      0,
      routers,
      {},
      all ? everyone : undefined,
    );
    console.error(`${routers} run ${run}/${runs}: ${seconds.toFixed(1)} s`);
    for (const r of results) {
      const key = `${routers}|${category(r.from, r.to)}`;
      const b = buckets.get(key) ?? {
        pairs: 0,
        expectedDirect: 0,
        direct: 0,
        delivered: 0,
        firstAttempt: 0,
        firstRound: 0,
        directMs: [],
        firstRelayMs: [],
      };
      b.pairs++;
      if (r.expected === "direct") b.expectedDirect++;
      if (r.expected === "direct" && r.path !== "direct") {
        const m = misses.get(routers) ?? { segment: 0, elsewhere: [] };
        if (onSegment(r.from) || onSegment(r.to)) m.segment++;
        else {
          m.elsewhere.push(`${r.from} ← ${r.to}`);
          // Unexplained: its events, for whoever traces it.
          console.error(
            `miss ${routers} ${r.from} ← ${r.to}:\n  ${r.events.slice(0, 30).join("\n  ")}`,
          );
        }
        misses.set(routers, m);
      }
      const mapping = kind(r.from) === "mapped" || kind(r.to) === "mapped";
      if (mapping && r.expected === "direct") {
        const m = mappedPairs.get(routers) ?? { ms: [], firstAttempt: 0, pairs: 0 };
        m.pairs++;
        if (r.path === "direct" && r.directMs !== null) m.ms.push(r.directMs);
        if (r.path === "direct" && r.attempts === 1) m.firstAttempt++;
        mappedPairs.set(routers, m);
      }
      if (r.path === "direct" && r.directMs !== null) {
        allDirectMs.set(routers, [...allDirectMs.get(routers) ?? [], r.directMs]);
        const birthday = r.strategy === "easy-side" || r.strategy === "hard-side";
        if (birthday && !onSegment(r.from) && !onSegment(r.to)) {
          edmPairMs.set(routers, [...edmPairMs.get(routers) ?? [], r.directMs]);
        }
        b.direct++;
        b.directMs.push(r.directMs);
        if (r.attempts === 1) b.firstAttempt++;
        if (r.attempts === 1 && r.round === 0) b.firstRound++;
      }
      if (r.messages >= 3) b.delivered++;
      if (r.firstRelayMs !== null) b.firstRelayMs.push(r.firstRelayMs);
      buckets.set(key, b);
    }
  }
}

const rows = [...buckets].sort(([a], [b]) => a.localeCompare(b)).map(([key, b]) => ({
  routers: key.split("|")[0],
  pair: key.split("|")[1],
  directions: b.pairs,
  direct_pct: Number((100 * b.direct / b.pairs).toFixed(1)),
  expected_direct_pct: Number((100 * b.expectedDirect / b.pairs).toFixed(1)),
  delivered_pct: Number((100 * b.delivered / b.pairs).toFixed(1)),
  direct_first_attempt_pct: b.direct ? Number((100 * b.firstAttempt / b.direct).toFixed(1)) : null,
  direct_first_round_pct: b.direct ? Number((100 * b.firstRound / b.direct).toFixed(1)) : null,
  direct_ms_p50: pct(50, b.directMs),
  direct_ms_p95: pct(95, b.directMs),
  first_relay_ms_p50: pct(50, b.firstRelayMs),
}));

const header = [
  "routers",
  "pair",
  "dirs",
  "direct %",
  "expected %",
  "delivered %",
  "1st try %",
  "no reroll %",
  "direct p50 ms",
  "direct p95 ms",
  "1st relay p50 ms",
];
const table = rows.map((r) => [
  r.routers,
  r.pair,
  String(r.directions),
  String(r.direct_pct),
  String(r.expected_direct_pct),
  String(r.delivered_pct),
  String(r.direct_first_attempt_pct ?? "-"),
  String(r.direct_first_round_pct ?? "-"),
  String(Number.isNaN(r.direct_ms_p50) ? "-" : r.direct_ms_p50),
  String(Number.isNaN(r.direct_ms_p95) ? "-" : r.direct_ms_p95),
  String(Number.isNaN(r.first_relay_ms_p50) ? "-" : r.first_relay_ms_p50),
]);
const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i].length)));
console.log(
  `\nNAT lab, ${runs} runs of each router kind × ${LAB_WORKERS.length} workers (every ordered pair counted once per run)\n`,
);
for (const row of [header, widths.map((w) => "-".repeat(w)), ...table]) {
  console.log(row.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd());
}
const machine = {
  cores: navigator.hardwareConcurrency,
  loadavg_after: Deno.loadavg(),
  deno: Deno.version.deno,
  date: new Date().toISOString(),
};
const file = new URL(`results/nat-lab-${machine.date.replace(/[:.]/g, "-")}.json`, import.meta.url);
await Deno.mkdir(new URL("results/", import.meta.url), { recursive: true });
// The targets, per router kind.
const summary = kinds.map((routers) => {
  const mine = [...buckets].filter(([k]) => k.startsWith(`${routers}|`)).map(([, b]) => b);
  const sum = (f: (b: Bucket) => number) => mine.reduce((n, b) => n + f(b), 0);
  const eimEdm = [...buckets].filter(([k]) =>
    k.startsWith(`${routers}|`) && /edm/.test(k) &&
    !/edm ↔ edm/.test(k) && !/block/.test(k)
  ).flatMap(([, b]) => b.directMs);
  const eimEdmOffSegment = edmPairMs.get(routers) ?? [];
  return {
    routers,
    direct_of_expected_pct: Number(
      (100 * sum((b) => b.direct) / sum((b) => b.expectedDirect)).toFixed(1),
    ),
    first_attempt_pct: Number((100 * sum((b) => b.firstAttempt) / sum((b) => b.direct)).toFixed(1)),
    first_round_pct: Number((100 * sum((b) => b.firstRound) / sum((b) => b.direct)).toFixed(1)),
    delivered_pct: Number((100 * sum((b) => b.delivered) / sum((b) => b.pairs)).toFixed(1)),
    edm_pairs_direct_ms_p95: pct(95, eimEdm),
    edm_pairs_off_segment_direct_ms_p95: pct(95, eimEdmOffSegment),
    all_pairs_direct_ms_p95: pct(95, allDirectMs.get(routers) ?? []),
    mapped_pairs: mappedPairs.get(routers)?.pairs ?? 0,
    mapped_pairs_first_attempt_pct: mappedPairs.get(routers)?.pairs
      ? Number(
        (100 * mappedPairs.get(routers)!.firstAttempt / mappedPairs.get(routers)!.pairs).toFixed(1),
      )
      : null,
    mapped_pairs_direct_ms_p95: pct(95, mappedPairs.get(routers)?.ms ?? []),
    misses_with_a_shared_segment_worker: misses.get(routers)?.segment ?? 0,
    misses_elsewhere: misses.get(routers)?.elsewhere ?? [],
  };
});
console.log("");
for (const t of summary) {
  console.log(
    `${t.routers}: direct ${t.direct_of_expected_pct} % of the pairs the NATs allow (target 100); first attempt ${t.first_attempt_pct} % (≥ 97; ${t.first_round_pct} % without a reroll); delivered ${t.delivered_pct} %; pairs with one EDM side: p95 to direct ${t.edm_pairs_direct_ms_p95} ms (≤ 5000), ${t.edm_pairs_off_segment_direct_ms_p95} ms without eim-2 and eim-3; misses: ${t.misses_with_a_shared_segment_worker} with eim-2 or eim-3 (the shared segment; their own pair is expected relayed when neither router filters), ${t.misses_elsewhere.length} elsewhere ${
      t.misses_elsewhere.join(", ")
    }`,
  );
}
if (all) {
  for (const t of summary) {
    console.log(
      `${t.routers}, every topology at once: p95 to direct of every pair the NATs allow ${t.all_pairs_direct_ms_p95} ms (≤ 5000); pairs with a mapping side: ${t.mapped_pairs}, direct on the first attempt ${t.mapped_pairs_first_attempt_pct} % (target 100), p95 to direct ${t.mapped_pairs_direct_ms_p95} ms (≤ 2000)`,
    );
  }
}
await Deno.writeTextFile(
  file,
  JSON.stringify({ machine, runs, all, rows, summary }, null, 2) + "\n",
);
console.log(`\nwrote ${file.pathname}`);
