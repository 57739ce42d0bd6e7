import assert from "node:assert/strict";
import type { ClientEvent } from "../../lib/worker/client.ts";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { startWorker } from "../../lib/worker/worker.ts";
import { KeyFileError, loadIdentity } from "../../lib/worker/key_file.ts";
import { Logger, silentLogger } from "../../lib/core/log.ts";
import { listWorkers, startRendezvous, waitFor, within } from "../_helpers.ts";

Deno.test("startWorker() runs a whole worker in-process: registers, serves health, leaves on close()", async () => {
  const server = await startRendezvous();
  const events: ClientEvent["type"][] = [];
  const registered = Promise.withResolvers<void>();
  const worker = await startWorker(
    loadWorkerConfig({
      RENDEZVOUS_SERVICE_URL: server.http,
      WORKER_ID: "in-process",
      IP_ECHO_URL: "off",
      STUN_SERVERS: "off",
      PORT: "0",
      HOST: "127.0.0.1",
    }),
    {
      onEvent: (event) => {
        events.push(event.type);
        if (event.type === "registered") registered.resolve();
      },
    },
  );
  try {
    assert.equal(worker.id, "in-process");
    await within(registered.promise, 5000, "registration");
    const listing = await listWorkers(server.http);
    assert.deepEqual(Object.keys(listing.workers), ["in-process"]);
    // Without UDP the worker still tells its peers it can only be relayed to.
    await waitFor(
      async () =>
        (await listWorkers(server.http)).workers["in-process"].udp_endpoint?.nat_mapping ===
          "no-udp",
      "the no-udp report",
    );
    const addr = await worker.healthAddr;
    assert.ok(addr);
    const status = await (await fetch(`http://127.0.0.1:${addr.port}/`)).json();
    assert.equal(status.worker_id, "in-process");
    // Registered with a key it proved; the listing and GET / show the same one.
    assert.deepEqual(status.key, {
      public_key: worker.identity.publicKey,
      fingerprint: worker.identity.fingerprint,
    });
    assert.equal(listing.workers["in-process"].key, worker.identity.publicKey);
    assert.equal(listing.workers["in-process"].key_fingerprint, worker.identity.fingerprint);
    assert.equal(status.udp, null);
    assert.deepEqual(status, JSON.parse(JSON.stringify(worker.status())));
    assert.equal(status.rendezvous.status, "connected");
    assert.equal(status.rendezvous.observed_ip, "127.0.0.1");
  } finally {
    await worker.close();
    await worker.close(); // idempotent
    await server.close();
  }
  assert.deepEqual(events.slice(0, 3), ["connecting", "connected", "registered"]);
  assert.equal(events.at(-1), "stopped");
});

Deno.test("startWorker() without a health server resolves healthAddr to null", async () => {
  const server = await startRendezvous();
  const worker = await startWorker(
    loadWorkerConfig({
      RENDEZVOUS_SERVICE_URL: server.http,
      IP_ECHO_URL: "off",
      STUN_SERVERS: "off",
    }),
    { health: false },
  );
  try {
    assert.equal(await worker.healthAddr, null);
    await waitFor(
      async () => (await listWorkers(server.http)).workers[worker.id] !== undefined,
      "registration",
    );
  } finally {
    await worker.close();
    await server.close();
  }
});

Deno.test("loadIdentity() creates WORKER_KEY_FILE with mode 0600, then keeps using it", async () => {
  const dir = await Deno.makeTempDir();
  const lines: Record<string, unknown>[] = [];
  const logger = new Logger({ sink: (l) => lines.push(JSON.parse(l)) });
  try {
    const path = `${dir}/worker.key`;
    const created = await loadIdentity(path, logger);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.equal(lines.at(-1)?.message, "worker key created");
    const loaded = await loadIdentity(path, logger);
    assert.equal(loaded.publicKey, created.publicKey);
    assert.equal(lines.at(-1)?.message, "worker key loaded");
    assert.equal(lines.at(-1)?.key_fingerprint, created.fingerprint);

    await Deno.chmod(path, 0o644);
    await loadIdentity(path, logger);
    assert.ok(
      lines.some((l) => l.message === "worker key file is readable by others; chmod 600 it"),
    );

    const fresh = await loadIdentity(undefined, logger);
    assert.notEqual(fresh.publicKey, created.publicKey);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadIdentity() refuses a key file that is not an Ed25519 JWK, naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secret = "MC4CAQAwBQYDK2VwBCIEIGZ5-private-material";
    for (
      const [content, why] of [
        ["not json", /JSON/],
        ['{"kty":"RSA"}', /Ed25519/],
        // A PEM key where a JWK belongs: the error must not quote it.
        [`-----BEGIN PRIVATE KEY-----\n${secret}\n`, /not JSON/],
        [`{"kty":"OKP","crv":"Ed25519","d":"${secret}","x":7}`, /Ed25519/],
        [`{"d":"${secret}"`, /not JSON/],
      ] as const
    ) {
      const path = `${dir}/bad.key`;
      await Deno.writeTextFile(path, content, { mode: 0o600 });
      const error = await loadIdentity(path, silentLogger).then(() => undefined, (e) => e);
      assert.ok(error instanceof KeyFileError, String(error));
      assert.equal(error.path, path);
      assert.match(error.message, new RegExp(`WORKER_KEY_FILE ${path}`));
      assert.match(error.message, why);
      const shown = `${error.message} ${error.stack} ${String(error.cause ?? "")}`;
      assert.ok(!shown.includes(secret.slice(0, 12)), `quotes the file: ${shown}`);
    }
    const error = await loadIdentity(`${dir}/missing-dir/worker.key`, silentLogger).then(
      () => undefined,
      (e) => e,
    );
    assert.ok(error instanceof KeyFileError);
    assert.match(error.message, /Cannot create WORKER_KEY_FILE/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
