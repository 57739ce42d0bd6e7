/**
 * End-to-end: the real entry points as subprocesses, as Cloud Run runs them.
 */

import assert from "node:assert/strict";
import {
  DENO,
  listWorkers,
  Proc,
  spawnRendezvous,
  spawnWorker,
  startIpEcho,
  startTcpProxy,
  waitFor,
  within,
} from "./_helpers.ts";

const FAST = { PING_INTERVAL_SEC: "0.5", PING_TIMEOUT_SEC: "1", RECONNECT_BASE_SEC: "0.1" };

Deno.test("worker registers with the rendezvous and reports the echo service's IP", async () => {
  // The stand-in answers a documentation address, so the listing shows the
  // reported IP apart from the observed one.
  const echo = await startIpEcho(() => new Response("203.0.113.50\n"));
  const rv = await spawnRendezvous();
  const worker = spawnWorker(rv.http, { WORKER_ID: "edge-1", IP_ECHO_URL: echo.url });
  try {
    const entry = await waitFor(async () => {
      const w = (await listWorkers(rv.http)).workers["edge-1"];
      return w?.http_reported_public_ip ? w : undefined;
    }, "edge-1 listed with its IP");
    assert.equal(entry.http_reported_public_ip, "203.0.113.50");
    assert.equal(entry.websocket_observed_ip, "127.0.0.1");
    assert.equal(entry.websocket_connected, true);
    assert.equal(echo.hits(), 1);

    const health = await worker.waitForLog("health server listening");
    const base = `http://127.0.0.1:${health.port}`;
    const ok = await fetch(`${base}/health`);
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "OK");
    const status = await (await fetch(base)).json();
    assert.equal(status.worker_id, "edge-1");
    assert.equal(status.rendezvous.status, "connected");
    assert.equal(status.rendezvous.http_reported_public_ip, "203.0.113.50");

    await rv.proc.waitForLog("worker reported public ip", (l) => l.worker_id === "edge-1");
  } finally {
    await worker.stop();
    await rv.proc.stop();
    await echo.close();
  }
});

Deno.test("worker on SIGTERM closes with 1000, is de-registered at once and exits 0", async () => {
  const rv = await spawnRendezvous();
  const worker = spawnWorker(rv.http, { WORKER_ID: "leaver" });
  try {
    await rv.proc.waitForLog("worker registered", (l) => l.worker_id === "leaver");
    const started = Date.now();
    worker.signal("SIGTERM");
    const status = await within(worker.status, 5000, "worker exit");
    assert.equal(status.code, 0, worker.dump());
    const gone = await rv.proc.waitForLog("worker de-registered", (l) => l.worker_id === "leaver");
    assert.equal(gone.total, 0);
    const disconnected = rv.proc.lines.find((l) => l.message === "worker disconnected");
    assert.equal(disconnected?.code, 1000);
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 2000, `de-registered ${elapsed} ms after SIGTERM`);
    assert.equal((await listWorkers(rv.http)).connected_workers_count, 0);
  } finally {
    await worker.stop();
    await rv.proc.stop();
  }
});

Deno.test("rendezvous restart: it exits 0 on SIGTERM with 1001, and workers re-register within the backoff bound", async () => {
  const first = await spawnRendezvous();
  const ids = ["r1", "r2", "r3"];
  const workers = ids.map((id) =>
    spawnWorker(first.http, { ...FAST, WORKER_ID: id, RECONNECT_MAX_SEC: "2" })
  );
  let second: Proc | undefined;
  try {
    await waitFor(
      async () => (await listWorkers(first.http)).connected_workers_count === 3,
      "three workers",
    );
    const stopAt = Date.now();
    first.proc.signal("SIGTERM");
    const status = await within(first.proc.status, 10_000, "rendezvous exit");
    assert.equal(status.code, 0, first.proc.dump());
    assert.ok(Date.now() - stopAt < 5000, "well inside Cloud Run's 10 s grace");
    for (const worker of workers) {
      const line = await worker.waitForLog("disconnected from rendezvous");
      assert.equal(line.code, 1001, worker.dump());
    }
    const restartedAt = Date.now();
    second = (await spawnRendezvous({ PORT: String(first.port) })).proc;
    await waitFor(
      async () => (await listWorkers(first.http)).connected_workers_count === 3,
      "all three back",
      8000,
    );
    const back = Date.now() - restartedAt;
    // Backoff windows 0.1, 0.2 … capped at 2 s: one window plus a connect.
    assert.ok(back < 4000, `registry whole ${back} ms after the restart`);
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await first.proc.stop();
    await second?.stop();
  }
});

Deno.test("rendezvous drops a frozen worker (SIGSTOP) and takes it back after SIGCONT", async () => {
  const rv = await spawnRendezvous({ IDLE_TIMEOUT_SEC: "1" });
  const worker = spawnWorker(rv.http, { WORKER_ID: "frozen", ...FAST });
  try {
    await rv.proc.waitForLog("worker registered", (l) => l.worker_id === "frozen");
    worker.signal("SIGSTOP");
    const stoppedAt = Date.now();
    await rv.proc.waitForLog("worker de-registered", (l) => l.worker_id === "frozen", 5000);
    assert.ok(Date.now() - stoppedAt < 3000, "dropped within the idle timeout bound");
    assert.equal((await listWorkers(rv.http)).connected_workers_count, 0);
    const count = rv.proc.lines.length;
    worker.signal("SIGCONT");
    await rv.proc.waitForLog("worker registered", (l) => l.worker_id === "frozen", 10_000, count);
  } finally {
    worker.signal("SIGCONT");
    await worker.stop();
    await rv.proc.stop();
  }
});

Deno.test("worker notices a silently dead connection through its heartbeat and reconnects", async () => {
  const rv = await spawnRendezvous();
  const proxy = startTcpProxy(rv.port);
  const worker = spawnWorker(`http://127.0.0.1:${proxy.port}`, {
    WORKER_ID: "blackholed",
    PING_INTERVAL_SEC: "0.3",
    PING_TIMEOUT_SEC: "0.6",
    RECONNECT_BASE_SEC: "0.1",
  });
  try {
    await worker.waitForLog("registered with rendezvous");
    const before = (await listWorkers(rv.http)).workers.blackholed.websocket_observed_port;
    proxy.blackholeExisting();
    const lost = await worker.waitForLog(
      "rendezvous stopped answering; reconnecting",
      () => true,
      5000,
    );
    assert.equal(lost.timeout_ms, 600);
    // The new registration may already be logged: look after the loss itself.
    const count = worker.lines.indexOf(lost) + 1;
    await worker.waitForLog("registered with rendezvous", () => true, 10_000, count);
    const after = (await listWorkers(rv.http)).workers.blackholed.websocket_observed_port;
    assert.notEqual(after, before, "a new session from a new port replaced the dead one");
  } finally {
    await worker.stop();
    await proxy.close();
    await rv.proc.stop();
  }
});

Deno.test("worker with a token registers; without it is refused and keeps retrying", async () => {
  const rv = await spawnRendezvous({ RENDEZVOUS_TOKEN: "s3cret" });
  const good = spawnWorker(rv.http, { WORKER_ID: "good", RENDEZVOUS_TOKEN: "s3cret" });
  const bad = spawnWorker(rv.http, { WORKER_ID: "bad", RECONNECT_BASE_SEC: "0.05" });
  try {
    await good.waitForLog("registered with rendezvous");
    const refused = await bad.waitForLog("cannot connect to rendezvous");
    assert.match(String(refused.error), /401/);
    await bad.waitForLog(
      "cannot connect to rendezvous",
      () => true,
      5000,
      bad.lines.indexOf(refused) + 1,
    );
    const listing = await listWorkers(rv.http, { authorization: "Bearer s3cret" });
    assert.deepEqual(Object.keys(listing.workers), ["good"]);
  } finally {
    await good.stop();
    await bad.stop();
    await rv.proc.stop();
  }
});

Deno.test("configuration errors name the variable and exit 2", async () => {
  const cases: [string, Record<string, string>, RegExp][] = [
    ["worker.ts", {}, /RENDEZVOUS_SERVICE_URL is not set/],
    ["worker.ts", { RENDEZVOUS_SERVICE_URL: "ftp://x" }, /RENDEZVOUS_SERVICE_URL.*ftp:/],
    ["worker.ts", { RENDEZVOUS_SERVICE_URL: "http://x", WORKER_ID: "a b" }, /WORKER_ID/],
    [
      "worker.ts",
      { RENDEZVOUS_SERVICE_URL: "http://x", PING_TIMEOUT_SEC: "x" },
      /PING_TIMEOUT_SEC/,
    ],
    ["rendezvous.ts", { PORT: "99999" }, /PORT/],
    ["rendezvous.ts", { TRUST_PROXY: "perhaps" }, /TRUST_PROXY/],
  ];
  for (const [file, env, pattern] of cases) {
    const proc = Proc.deno(["run", "--allow-net", "--allow-env", file], env);
    const status = await within(proc.status, 10_000, file);
    assert.equal(status.code, 2, `${file} ${JSON.stringify(env)}`);
    assert.match(proc.dump(), pattern);
  }
});

Deno.test("--help prints the configuration table and exits 0", async () => {
  for (
    const [file, variable] of [["worker.ts", "RENDEZVOUS_SERVICE_URL"], [
      "rendezvous.ts",
      "TRUST_PROXY",
    ]]
  ) {
    const proc = Proc.deno(["run", "--allow-net", "--allow-env", file, "--help"]);
    assert.equal((await proc.status).code, 0);
    assert.match(proc.stdout, new RegExp(variable));
  }
});

Deno.test("worker warns and assumes ws:// for a URL without a scheme", async () => {
  const rv = await spawnRendezvous();
  const worker = spawnWorker(`127.0.0.1:${rv.port}`, { WORKER_ID: "noscheme" });
  try {
    const warning = await worker.waitForLog(
      `RENDEZVOUS_SERVICE_URL ("127.0.0.1:${rv.port}") has no scheme: assuming ws://`,
    );
    assert.equal(warning.severity, "WARNING");
    await worker.waitForLog("registered with rendezvous");
  } finally {
    await worker.stop();
    await rv.proc.stop();
  }
});

Deno.test("worker reports its STUN-learned UDP endpoint, and again after the rendezvous restarts", async () => {
  const first = await spawnRendezvous({ STUN_PORT: "0" });
  const rvStun = (await first.proc.waitForLog("stun server listening")).port as number;
  const stun = Proc.deno(["run", "--allow-net", "--allow-env", "stun.ts"], {
    STUN_PORT: "0",
    STUN_HOST: "127.0.0.1",
  });
  let second: Proc | undefined;
  let worker: Proc | undefined;
  try {
    const alone = (await stun.waitForLog("stun server listening")).port as number;
    worker = spawnWorker(first.http, {
      WORKER_ID: "udp-1",
      STUN_SERVERS: `127.0.0.1:${rvStun},127.0.0.1:${alone}`,
      ...FAST,
    });
    const entry = await waitFor(
      async () => (await listWorkers(first.http)).workers["udp-1"]?.udp_endpoint,
      "udp report",
    );
    assert.equal(entry.public?.ip, "127.0.0.1");
    assert.equal(entry.nat_mapping, "no-nat", "loopback has no NAT");
    const bound = await worker.waitForLog("udp socket bound");
    assert.equal(bound.udp_local, `0.0.0.0:${entry.public?.port}`);
    const health = await worker.waitForLog("health server listening");
    const status = await (await fetch(`http://127.0.0.1:${health.port}/`)).json();
    assert.deepEqual(status.udp.public, entry.public);

    first.proc.signal("SIGTERM");
    assert.equal((await first.proc.status).code, 0);
    second = (await spawnRendezvous({ PORT: String(first.port), STUN_PORT: String(rvStun) })).proc;
    const again = await waitFor(
      async () => (await listWorkers(first.http)).workers["udp-1"]?.udp_endpoint,
      "udp report after the restart",
    );
    assert.deepEqual(again.public, entry.public, "same socket, same mapping");
  } finally {
    await worker?.stop();
    await stun.stop();
    await first.proc.stop();
    await second?.stop();
  }
});

Deno.test("stun.ts answers until SIGTERM, then logs its counters and exits 0", async () => {
  const stun = Proc.deno(["run", "--allow-net", "--allow-env", "stun.ts"], {
    STUN_PORT: "0",
    STUN_HOST: "127.0.0.1",
  });
  try {
    const port = (await stun.waitForLog("stun server listening")).port as number;
    const { StunClient } = await import("../lib/stun/client.ts");
    const { UdpEndpoint } = await import("../lib/peer/udp_endpoint.ts");
    const udp = UdpEndpoint.bind({ hostname: "127.0.0.1" });
    const client = new StunClient((b, to) => udp.send(b, to), { rtoMs: 50 });
    udp.onStun = (b, from) => client.handle(b, from);
    const result = await client.binding(`127.0.0.1:${port}`);
    await udp.close();
    assert.deepEqual(result.mapped, udp.local);
    stun.signal("SIGTERM");
    assert.equal((await within(stun.status, 5000, "stun exit")).code, 0);
    const stopped = await stun.waitForLog("stun server stopped");
    assert.equal(stopped.answered, 1);
  } finally {
    await stun.stop();
  }
});

Deno.test("STUN configuration errors name the variable and exit 2", async () => {
  const cases: [string, Record<string, string>, RegExp][] = [
    ["stun.ts", { STUN_PORT: "x" }, /STUN_PORT/],
    ["stun.ts", { STUN_ALT_HOST: "0.0.0.0" }, /STUN_ALT_HOST/],
    [
      "rendezvous.ts",
      {
        STUN_PORT: "3478",
        STUN_HOST: "127.0.0.1",
        STUN_ALT_HOST: "127.0.0.2",
        STUN_ALT_PORT: "3478",
      },
      /STUN_ALT_PORT/,
    ],
    [
      "worker.ts",
      { RENDEZVOUS_SERVICE_URL: "http://x", STUN_SERVERS: "a:b:c:d:e:f:g:h:i" },
      /STUN_SERVERS/,
    ],
    ["worker.ts", { RENDEZVOUS_SERVICE_URL: "http://x", UDP_HOST: "any" }, /UDP_HOST/],
  ];
  for (const [file, env, pattern] of cases) {
    const proc = Proc.deno(["run", "--allow-net", "--allow-env", file], env);
    const status = await within(proc.status, 10_000, file);
    assert.equal(status.code, 2, `${file} ${JSON.stringify(env)}\n${proc.dump()}`);
    assert.match(proc.dump(), pattern);
  }
});

Deno.test("rendezvous survives running out of file descriptors and keeps serving", async () => {
  // A low open-files limit for the rendezvous only, so the test can exhaust it.
  const proc = new Proc("sh", [
    "-c",
    `ulimit -n 200 && exec "${DENO}" run --allow-net --allow-env rendezvous.ts`,
  ], { PORT: "0", HOST: "127.0.0.1", MAX_CONNECTIONS: "1000" });
  const clients: WebSocket[] = [];
  try {
    const port = (await proc.waitForLog("rendezvous listening")).port as number;
    const closed: Promise<unknown>[] = [];
    for (let i = 0; i < 300; i++) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/register/fd-${i}`);
      ws.onerror = () => {};
      closed.push(new Promise((r) => ws.addEventListener("close", r)));
      clients.push(ws);
    }
    await proc.waitForLog("http listener stopped; restarting it", () => true, 20_000);
    for (const ws of clients) ws.close();
    await within(Promise.all(closed), 20_000, "clients closed");
    // The process is alive and accepts workers again.
    const listing = await waitFor(
      async () => {
        const response = await fetch(`http://127.0.0.1:${port}/ready`);
        await response.body?.cancel();
        return response.ok;
      },
      "ready again",
      20_000,
    );
    assert.ok(listing);
    const worker = spawnWorker(`http://127.0.0.1:${port}`, { WORKER_ID: "after-emfile" });
    try {
      await proc.waitForLog("worker registered", (l) => l.worker_id === "after-emfile", 20_000);
    } finally {
      await worker.stop();
    }
  } finally {
    for (const ws of clients) ws.close();
    await proc.stop();
  }
});

Deno.test("stun.ts and the rendezvous exit 1 with a clear line when the STUN port is taken", async () => {
  const busy = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const port = String((busy.addr as Deno.NetAddr).port);
  try {
    for (
      const [file, env] of [
        ["stun.ts", { STUN_PORT: port, STUN_HOST: "127.0.0.1" }],
        ["rendezvous.ts", { PORT: "0", HOST: "127.0.0.1", STUN_PORT: port }],
      ] as const
    ) {
      const proc = Proc.deno(["run", "--allow-net", "--allow-env", file], env);
      assert.equal((await within(proc.status, 10_000, file)).code, 1, proc.dump());
      const line = await proc.waitForLog("cannot start the stun server");
      assert.equal(String(line.port), port);
    }
  } finally {
    busy.close();
  }
});

Deno.test("worker keeps its key in WORKER_KEY_FILE across restarts; a bad key file exits 2", async () => {
  const rv = await spawnRendezvous();
  const dir = await Deno.makeTempDir();
  const keyFile = `${dir}/worker.jwk`;
  try {
    const fingerprints: string[] = [];
    for (let run = 0; run < 2; run++) {
      const worker = spawnWorker(rv.http, { WORKER_ID: "keeper", WORKER_KEY_FILE: keyFile });
      try {
        const key = await worker.waitForLog(run === 0 ? "worker key created" : "worker key loaded");
        await worker.waitForLog("registered with rendezvous");
        const entry = (await listWorkers(rv.http)).workers.keeper;
        assert.equal(entry.key_fingerprint, key.key_fingerprint);
        fingerprints.push(entry.key_fingerprint!);
      } finally {
        await worker.stop();
      }
    }
    assert.equal(fingerprints[0], fingerprints[1], "the same key after a restart");
    assert.equal((await Deno.stat(keyFile)).mode! & 0o777, 0o600);

    await Deno.writeTextFile(keyFile, "{}");
    const bad = spawnWorker(rv.http, { WORKER_ID: "keeper", WORKER_KEY_FILE: keyFile });
    const status = await within(bad.status, 10_000, "the worker to exit");
    assert.equal(status.code, 2, bad.dump());
    assert.match(bad.dump(), /Cannot use WORKER_KEY_FILE .*worker\.jwk/);
  } finally {
    await rv.proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a worker with a new key cannot take a held id; one with the right key gets it back", async () => {
  const rv = await spawnRendezvous({ KEY_HOLD_SEC: "3600" });
  const dir = await Deno.makeTempDir();
  const env = { WORKER_ID: "held", WORKER_KEY_FILE: `${dir}/owner.jwk` };
  let owner = spawnWorker(rv.http, env);
  let intruder: Proc | undefined;
  try {
    const ownerKey = await owner.waitForLog("worker key created");
    await owner.waitForLog("registered with rendezvous");
    intruder = spawnWorker(rv.http, { WORKER_ID: "held" }); // a fresh key of its own
    await intruder.waitForLog(
      "the rendezvous refused this worker: its id is bound to another key (keep the key in WORKER_KEY_FILE, or wait out the rendezvous's KEY_HOLD_SEC)",
    );
    await rv.proc.waitForLog("worker refused: id bound to another key");
    assert.equal(
      (await listWorkers(rv.http)).workers.held.key_fingerprint,
      ownerKey.key_fingerprint,
    );
    // The owner was never disconnected by the attempts.
    assert.equal(owner.lines.filter((l) => l.message === "registered with rendezvous").length, 1);
    assert.equal(owner.lines.filter((l) => l.message === "disconnected from rendezvous").length, 0);

    // The owner restarts while the intruder keeps trying: the id is still its.
    await owner.stop();
    owner = spawnWorker(rv.http, env);
    await owner.waitForLog("registered with rendezvous");
    assert.equal(
      (await listWorkers(rv.http)).workers.held.key_fingerprint,
      ownerKey.key_fingerprint,
    );
  } finally {
    await intruder?.stop();
    await owner.stop();
    await rv.proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
