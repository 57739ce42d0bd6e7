import assert from "node:assert/strict";
import { REINTRODUCE_AFTER_MS, Reintroductions } from "../../lib/peer/reintroductions.ts";
import { FakeClock } from "../_fake_clock.ts";

Deno.test("Reintroductions: asked now and once more after the rendezvous's window, unless direct by then, forgotten or closed", async () => {
  const clock = new FakeClock(0);
  const asked: string[] = [];
  const direct = new Set<string>();
  const r = new Reintroductions(clock, (id) => asked.push(id), (id) => !direct.has(id));
  r.request("a");
  r.request("b");
  r.request("c");
  assert.deepEqual(asked, ["a", "b", "c"]);
  direct.add("b"); // b went direct meanwhile
  r.forget("c"); // c left
  await clock.tick(REINTRODUCE_AFTER_MS - 1);
  assert.deepEqual(asked, ["a", "b", "c"], "not before the window");
  await clock.tick(1);
  assert.deepEqual(asked, ["a", "b", "c", "a"]);
  // A second request restarts the wait; close() clears it.
  r.request("a");
  r.close();
  await clock.tick(REINTRODUCE_AFTER_MS);
  assert.deepEqual(asked, ["a", "b", "c", "a", "a"]);
  assert.equal(clock.pending, 0);
});
