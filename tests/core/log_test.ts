import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { FakeClock } from "../_fake_clock.ts";

function capture(options: ConstructorParameters<typeof Logger>[0] = {}) {
  const lines: string[] = [];
  const log = new Logger({ clock: new FakeClock(0), sink: (l) => lines.push(l), ...options });
  return { log, lines };
}

Deno.test("Logger writes JSON lines with Cloud Logging's severity, message and time", () => {
  const { log, lines } = capture({ fields: { service: "rendezvous" } });
  log.info("worker registered", { worker_id: "w1", total: 3 });
  log.warn("careful", { error: new TypeError("boom") });
  assert.deepEqual(JSON.parse(lines[0]), {
    severity: "INFO",
    message: "worker registered",
    time: "1970-01-01T00:00:00.000Z",
    service: "rendezvous",
    worker_id: "w1",
    total: 3,
  });
  assert.deepEqual(JSON.parse(lines[1]).error, { name: "TypeError", message: "boom" });
  assert.equal(JSON.parse(lines[1]).severity, "WARNING");
});

Deno.test("Logger drops lines below its level", () => {
  const { log, lines } = capture({ level: "warn" });
  log.debug("d");
  log.info("i");
  log.warn("w");
  log.error("e");
  assert.deepEqual(lines.map((l) => JSON.parse(l).severity), ["WARNING", "ERROR"]);
  assert.equal(log.enabled("info"), false);
  assert.equal(log.enabled("error"), true);
});

Deno.test("Logger.child() adds fields to every line", () => {
  const { log, lines } = capture();
  log.child({ worker_id: "w9" }).info("hello", { n: 1 });
  assert.equal(JSON.parse(lines[0]).worker_id, "w9");
  assert.equal(JSON.parse(lines[0]).n, 1);
});

Deno.test("Logger text format is one readable line", () => {
  const { log, lines } = capture({ format: "text" });
  log.info("worker registered", { worker_id: "w1", total: 2, skipped: undefined });
  assert.equal(lines[0], "1970-01-01T00:00:00.000Z INFO    worker registered worker_id=w1 total=2");
});

Deno.test("Logger text format quotes and escapes what a client sent, so it cannot forge lines or drive a terminal", () => {
  const { log, lines } = capture({ format: "text" });
  const reason =
    'bye\n1970-01-01T00:00:00.000Z INFO    worker registered worker_id=admin\x1b[2J\u2028"x=y"';
  log.info("worker disconnected", {
    reason,
    worker_id: "w 1",
    empty: "",
    n: 1,
    o: { r: "\u0085" },
  });
  assert.equal(lines.length, 1);
  // deno-lint-ignore no-control-regex
  assert.ok(!/[\n\r\x1b\u2028\u0085]/.test(lines[0]), lines[0]);
  assert.equal(
    lines[0],
    '1970-01-01T00:00:00.000Z INFO    worker disconnected reason="bye\\n1970-01-01T00:00:00.000Z INFO    worker registered worker_id=admin\\u001b[2J\\u2028\\"x=y\\"" worker_id="w 1" empty="" n=1 o={"r":"\\u0085"}',
  );
});
