/**
 * `deno task ctl` against live worker processes, through their control
 * sockets: status, peers, forwards, ping (relay, then direct), and the
 * refusals a user meets (no worker running, several, an unknown peer).
 */
import { ffiUnavailable } from "../../lib/peer/ffi_udp.ts";
import assert from "node:assert/strict";
import { DENO, ROOT, spawnRendezvous, spawnWorker, waitFor } from "../_helpers.ts";
import { decodePing, encodePing } from "../../lib/worker/ping.ts";
import { formatBytes, formatPong } from "../../lib/ctl/format.ts";

async function ctl(
  dir: string,
  ...args: string[]
): Promise<{ code: number; out: string; err: string }> {
  const { code, stdout, stderr } = await new Deno.Command(DENO, {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-net",
      "lib/ctl/main.ts",
      ...args,
    ],
    cwd: ROOT,
    env: { CONTROL_DIR: dir, PORT: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code, out: decode(stdout), err: decode(stderr) };
}

Deno.test("ping payloads: only a ping or pong with a 16-hex nonce is one", () => {
  assert.deepEqual(decodePing(encodePing("ping", "0123456789abcdef")), {
    kind: "ping",
    nonce: "0123456789abcdef",
  });
  const bad = ['{"ping":"xyz"}', '{"pong":1}', '{"ping":"0123456789abcdef","x":1}', "[1]", "ping"];
  for (const text of bad) assert.equal(decodePing(new TextEncoder().encode(text)), null, text);
  assert.equal(decodePing(new Uint8Array(1000).fill(0x7b)), null, "too long");
  assert.equal(formatBytes(999), "999 B");
  assert.equal(formatBytes(1_234_567), "1.2 MB");
  assert.equal(
    formatPong("w2", { path: "direct", to: "203.0.113.9:4001", ms: 1.04 }),
    "pong from w2 via 203.0.113.9:4001 in 1.0 ms",
  );
});

Deno.test("ctl: status, peers, forwards and ping of live workers through their control sockets", async () => {
  const dir = await Deno.makeTempDir();
  const sockets = `${dir}/sockets`;
  const rv = await spawnRendezvous({ STUN_PORT: "0" });
  const stunPort = (await rv.proc.waitForLog("stun server listening")).port as number;
  const env = {
    STUN_SERVERS: `127.0.0.1:${stunPort}`,
    CONTROL_DIR: sockets,
    PEER_EXPOSE: "9",
  };
  const none = await ctl(sockets, "status");
  assert.equal(none.code, 1);
  assert.match(none.err, /No worker is running here/);
  const a = spawnWorker(rv.http, { ...env, WORKER_ID: "ctl-a" });
  const b = spawnWorker(rv.http, { ...env, WORKER_ID: "ctl-b" });
  try {
    const portOf = async (w: typeof a) =>
      (await w.waitForLog("control socket listening")).path as string;
    const [pathA] = [await portOf(a), await portOf(b)];
    const portA = Number(/worker-(\d+)\.sock$/.exec(pathA)![1]);
    // Only the user may use it.
    assert.equal((await Deno.stat(pathA)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(sockets)).mode! & 0o777, 0o700);

    const several = await ctl(sockets, "status");
    assert.equal(several.code, 1);
    assert.match(several.err, /Several workers are running here/);
    assert.match(several.err, /ctl-a/);

    // The first ping waits for the introduction; then the pair goes direct.
    const pings = await ctl(sockets, "ping", "ctl-b", "-c", "4", "--port", String(portA));
    console.log(pings.out);
    assert.equal(pings.code, 0, pings.out + pings.err);
    assert.match(pings.out, /pong from ctl-b via (relay|[\d.]+:\d+) in [\d.]+ ms/);
    await waitFor(
      async () =>
        /via [\d.]+:\d+ in/.test(
          (await ctl(sockets, "ping", "ctl-b", "-c", "1", "--worker", "ctl-a")).out,
        ),
      "a pong over the direct path",
      20_000,
    );

    const status = await ctl(sockets, "status", "--worker", "ctl-a");
    assert.equal(status.code, 0, status.err);
    assert.match(status.out, /worker\s+ctl-a/);
    assert.match(status.out, /^ctl-b\s+direct [\d.]+:\d+\s+[\d.]+ ms/m);
    // Batched UDP where FFI can be had (Linux: CI), and said so.
    const io = ffiUnavailable() === undefined ? "batched" : "Deno's sockets";
    assert.match(status.out, new RegExp(`^udp\\s+.*, NAT [a-z-]+, ${io}$`, "m"));
    const json = JSON.parse((await ctl(sockets, "status", "--json", "--port", String(portA))).out);
    assert.equal(json.worker_id, "ctl-a");

    const peers = await ctl(sockets, "peers", "--worker", "ctl-a");
    assert.match(peers.out, /^ctl-b\s+endpoint-independent|^ctl-b\s+no-nat/m);
    const forwards = await ctl(sockets, "forwards", "--worker", "ctl-b");
    assert.match(forwards.out, /^expose\s+9\s/m);

    const lost = await ctl(
      sockets,
      "ping",
      "nobody",
      "-c",
      "1",
      "--timeout",
      "1",
      "--worker",
      "ctl-a",
    );
    assert.equal(lost.code, 1);
    assert.match(lost.out, /no pong from nobody/);
    const unknown = await ctl(sockets, "status", "--worker", "ctl-z");
    assert.equal(unknown.code, 1);
    assert.match(unknown.err, /No worker with id "ctl-z" is running here/);
    // A worker that stops takes its socket with it; one killed leaves it, and ctl passes over it.
    await a.stop("SIGTERM");
    await b.stop("SIGKILL");
    const left = (await Array.fromAsync(Deno.readDir(sockets))).map((e) => e.name);
    assert.equal(left.length, 1, `${left}`);
    const stale = await ctl(sockets, "status");
    assert.equal(stale.code, 1);
    assert.match(stale.err, /No worker is running here/);
  } finally {
    await a.stop();
    await b.stop();
    await rv.proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
