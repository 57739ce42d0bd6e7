import assert from "node:assert/strict";
import { REPLAY_WINDOW, ReplayWindow } from "../../lib/peer/replay_window.ts";

Deno.test("ReplayWindow takes each number once and refuses those older than the window", () => {
  const w = new ReplayWindow();
  assert.equal(w.newest, -1);
  assert.equal(w.accept(0), true);
  assert.equal(w.accept(0), false);
  assert.equal(w.accept(5), true);
  assert.equal(w.accept(3), true, "reordered within the window");
  assert.equal(w.accept(3), false);
  assert.equal(w.accept(5 + REPLAY_WINDOW), true);
  assert.equal(w.accept(5), false, "exactly a window behind the newest");
  assert.equal(w.accept(6), true, "just inside the window");
  for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.equal(w.accept(bad), false, String(bad));
  }
});

Deno.test("ReplayWindow agrees with a plain set over random reordered, replayed sequences", () => {
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let run = 0; run < 50; run++) {
    const w = new ReplayWindow();
    const seen = new Set<number>();
    let newest = -1;
    let next = 0;
    for (let i = 0; i < 2000; i++) {
      const r = random();
      // Mostly new numbers, some late ones, some replays, some far jumps.
      const seq = r < 0.6
        ? next++
        : r < 0.8
        ? Math.max(0, next - 1 - Math.floor(random() * 100))
        : r < 0.95
        ? [...seen][Math.floor(random() * seen.size)] ?? 0
        : (next += Math.floor(random() * 200));
      const expected = !seen.has(seq) && seq > newest - REPLAY_WINDOW;
      assert.equal(w.accept(seq), expected, `run ${run}, step ${i}, seq ${seq}`);
      if (expected) {
        seen.add(seq);
        newest = Math.max(newest, seq);
      }
    }
  }
});
