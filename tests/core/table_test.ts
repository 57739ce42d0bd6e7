import assert from "node:assert/strict";
import { formatTable } from "../../lib/core/table.ts";

Deno.test("formatTable pads columns to the widest cell, with an optional rule under the header", () => {
  const rows = [["peer", "path"], ["w2", "direct 10.0.0.2:4001"], ["longer-id", "relay"]];
  assert.equal(
    formatTable(rows),
    "peer       path\nw2         direct 10.0.0.2:4001\nlonger-id  relay",
  );
  assert.equal(
    formatTable(rows.slice(0, 2), { rule: true }),
    "peer  path\n----  --------------------\nw2    direct 10.0.0.2:4001",
  );
});
