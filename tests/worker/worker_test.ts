import assert from "node:assert/strict";
import type { ClientEvent } from "../../lib/worker/client.ts";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { startWorker } from "../../lib/worker/worker.ts";
import { listWorkers, startRendezvous, waitFor, within } from "../_helpers.ts";

Deno.test("startWorker() runs a whole worker in-process: registers, serves health, leaves on close()", async () => {
  const server = await startRendezvous();
  const events: ClientEvent["type"][] = [];
  const registered = Promise.withResolvers<void>();
  const worker = startWorker(
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
  const worker = startWorker(
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
