/**
 * The benchmark harness keeps working: a quick run of its scenarios with
 * small numbers (the real figures come from `deno task bench`, not tests).
 */

import assert from "node:assert/strict";
import { Proc, within } from "./_helpers.ts";

Deno.test("deno task bench -- --quick runs every scenario and writes its table", async () => {
  const bench = Proc.deno([
    "task",
    "bench",
    "--",
    "--quick",
    "--only",
    "cold,fleet,storm,rtt,relay",
  ]);
  const status = await within(bench.status, 120_000, "the quick benchmark");
  assert.equal(status.code, 0, bench.dump());
  for (const scenario of ["cold start", "fleet", "storm", "round trips", "relay"]) {
    assert.match(bench.stdout, new RegExp(`^${scenario}\\s`, "m"), bench.stdout);
  }
  assert.match(bench.stdout, /wrote .*bench\/results\/bench-.*\.json/);
});
