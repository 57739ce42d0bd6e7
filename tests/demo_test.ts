import assert from "node:assert/strict";
import { Proc, within } from "./_helpers.ts";

Deno.test("deno task demo registers three workers, prints the table and shuts down cleanly", async () => {
  const demo = Proc.deno(["task", "demo"]);
  const status = await within(demo.status, 60_000, "the demo");
  assert.equal(status.code, 0, `${demo.stdout}\n${demo.dump()}`);
  assert.match(demo.stdout, /3 workers registered/);
  for (let i = 1; i <= 3; i++) {
    assert.match(
      demo.stdout,
      // observed, reported IP, UDP endpoint from STUN, NAT mapping (none on loopback)
      new RegExp(
        `demo-worker-${i}\\s+127\\.0\\.0\\.1:\\d+\\s+127\\.0\\.0\\.1\\s+` +
          `127\\.0\\.0\\.1:\\d+\\s+no-nat\\s+true`,
      ),
    );
  }
  // Every pair reports a direct path, and messages arrived relayed first, then direct.
  for (let i = 1; i <= 3; i++) {
    for (let j = 1; j <= 3; j++) {
      if (i === j) continue;
      assert.match(
        demo.stdout,
        new RegExp(
          `demo-worker-${i}\\s+demo-worker-${j}\\s+direct\\s+\\S+\\s+\\d+ \\(\\d+/[1-9]\\d*\\)`,
        ),
      );
    }
  }
  // The channel: megabytes over an encrypted stream, on the direct path, every byte counted.
  assert.match(
    demo.stdout,
    /stream demo-worker-1 → demo-worker-2: 8\.4 MB over the direct path in \d+ ms \([\d.]+ MB\/s\), all arrived/,
  );
  assert.match(demo.stdout, /every worker de-registered/);
  assert.match(demo.stdout, /rendezvous stopped. Demo done./);
});
