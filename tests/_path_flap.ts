/**
 * Two real workers on one host with UDP bound to 0.0.0.0 have several
 * working candidates each (the STUN view on loopback, and the host's two
 * veth addresses): the direct path they choose must hold, not flap between
 * them, and no transport packet may be lost for arriving by another working
 * path. Inside a network namespace the test makes, never on the machine's
 * own interfaces.
 *
 * Registered by `peer/nat_lab_punch_test.ts`, so that it runs after the NAT
 * lab's punching tests rather than beside them: its five processes slowed
 * them enough to make their first-attempt figure flaky.
 */

import assert from "node:assert/strict";
import { type LogLine, within } from "./_helpers.ts";
import { type LabHost, NetLab } from "./_netlab.ts";

/** Path changes in a worker's log after its first direct path: each move to another address or to the relay. */
function pathChanges(lines: LogLine[]): string[] {
  const paths = lines
    .filter((l) => l.message === "peer path direct" || l.message === "peer path relay")
    .map((l) => l.message === "peer path relay" ? "relay" : `${l.to} via ${l.via}`);
  const first = paths.findIndex((p) => p !== "relay");
  if (first < 0) return [];
  const changes: string[] = [];
  for (let i = first + 1; i < paths.length; i++) {
    if (paths[i] !== paths[i - 1]) changes.push(`${paths[i - 1]} → ${paths[i]}`);
  }
  return changes;
}

/**
 * Two workers on one host with several working addresses keep one direct
 * path for 60 s, and every forwarded request is answered within 2 s.
 */
export async function pathFlapTest(): Promise<void> {
  const lab = await NetLab.create();
  const stopFile = await Deno.makeTempFile();
  await Deno.remove(stopFile);
  try {
    const host: LabHost = await lab.addIsolatedHost();
    const rendezvous = lab.deno(host.ns, ["run", "--allow-net", "--allow-env", "rendezvous.ts"], {
      PORT: "8080",
      HOST: "127.0.0.1",
      STUN_PORT: "3478",
    });
    await rendezvous.waitForLog("stun server listening", () => true, 20_000);
    await lab.hashServer(host);
    const env = {
      RENDEZVOUS_SERVICE_URL: "http://127.0.0.1:8080",
      STUN_SERVERS: "127.0.0.1:3478",
      UDP_HOST: "0.0.0.0",
      PEER_HELLO_SEC: "0",
    };
    const b = lab.worker(host, "flap-b", { ...env, PEER_EXPOSE: "9000" });
    const a = lab.worker(host, "flap-a", {
      ...env,
      PEER_FORWARD: "9100:flap-b:9000,9101:flap-b:9000",
    });
    for (const w of [a, b]) await w.waitForLog("registered with rendezvous", () => true, 20_000);
    // Load: a stream through the second forward for the whole minute.
    const bulk = lab.deno(host.ns, [
      "run",
      "--allow-all",
      "tests/_stream_tools.ts",
      "send",
      "9101",
      stopFile,
    ]);
    // A request every 500 ms for 60 s through the first.
    const requests = lab.deno(host.ns, [
      "run",
      "--allow-all",
      "tests/_stream_tools.ts",
      "requests",
      "9100",
      "120",
      "500",
    ]);
    await within(
      requests.waitForLog("requests done", () => true, 150_000),
      150_000,
      "the requests",
    );
    await Deno.writeTextFile(stopFile, "stop");
    const sent = await bulk.waitForLog("sent", () => true, 30_000);
    assert.equal(sent.answer, `${sent.bytes} ${sent.sha256}`, "the bulk stream arrived intact");

    const answered = requests.lines.filter((l) => l.message === "request");
    const slow = answered.filter((l) => !l.ok || (l.ms as number) > 2000);
    const ms = answered.map((l) => l.ms as number).sort((x, y) => x - y);
    const changes = { a: pathChanges(a.lines), b: pathChanges(b.lines) };
    console.log(
      `${answered.length} requests, median ${ms[ms.length >> 1]?.toFixed(1)} ms, slowest ${
        ms.at(-1)?.toFixed(1)
      } ms; path changes after the first: a ${changes.a.length}, b ${changes.b.length} (a sends to ${
        a.lines.findLast((l) => l.message === "peer path direct")?.to
      }, b to ${b.lines.findLast((l) => l.message === "peer path direct")?.to}); bulk ${
        ((sent.bytes as number) / 1e6).toFixed(1)
      } MB`,
    );
    assert.equal(answered.length, 120);
    assert.deepEqual(
      slow.map((l) => ({ i: l.i, ok: l.ok, ms: l.ms, error: l.error })),
      [],
      "every request answered within 2 s",
    );
    for (const [who, list] of Object.entries(changes)) {
      assert.ok(list.length <= 1, `${who}: ${list.length} path changes: ${list.join("; ")}`);
    }
    for (const w of [a, b]) {
      assert.ok(
        w.lines.some((l) => l.message === "peer path direct"),
        "the workers went direct",
      );
    }
  } finally {
    await lab.destroy();
    await Deno.remove(stopFile).catch(() => {});
  }
}
