import assert from "node:assert/strict";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { startWorker, type StartWorkerOptions, type Worker } from "../../lib/worker/worker.ts";
import type { PeerConnection } from "../../lib/peer/connection.ts";
import { StunServer } from "../../lib/stun/server.ts";
import { formatAddress } from "../../lib/stun/client.ts";
import { startRendezvous, type TestRendezvous, within } from "../_helpers.ts";
import { assertIntact, transfer } from "../_peer_streams.ts";
import { MemoryRegistry, type WorkerRecord } from "../../lib/rendezvous/registry.ts";
import { Identity, toBase64Url } from "../../lib/protocol/identity.ts";
import { createPeerCertificate } from "../../lib/peer/cert.ts";
import { certificatePayload } from "../../lib/peer/transport.ts";
import { Logger } from "../../lib/core/log.ts";

/** A worker `id` of `rv` on loopback, relay-only unless `env` names STUN servers. */
function worker(
  rv: TestRendezvous,
  id: string,
  env: Record<string, string> = {},
  options: StartWorkerOptions = {},
): Promise<Worker> {
  return startWorker(
    loadWorkerConfig({
      RENDEZVOUS_SERVICE_URL: rv.http,
      WORKER_ID: id,
      IP_ECHO_URL: "off",
      STUN_SERVERS: "off",
      UDP_HOST: "127.0.0.1",
      ...env,
    }),
    { health: false, ...options },
  );
}

async function pair(rv: TestRendezvous, env: Record<string, string> = {}) {
  const accepted = Promise.withResolvers<PeerConnection>();
  const make = (id: string) => worker(rv, id, env, { onConnection: (c) => accepted.resolve(c) });
  const a = await make("a");
  const b = await make("b");
  return { a, b, accepted: accepted.promise };
}

async function closeAll(rv: TestRendezvous, ...workers: Worker[]) {
  for (const w of workers) await w.close();
  await rv.close();
}

Deno.test("two workers connect over the relay: an authenticated stream moves bytes intact", async () => {
  const rv = await startRendezvous();
  const { a, b, accepted } = await pair(rv);
  try {
    const ab = await within(a.connect("b"), 15_000, "a → b");
    const ba = await within(accepted, 15_000, "b accepts");
    assert.equal(ab.peerId, "b");
    assert.equal(ba.peerId, "a");
    assert.equal(ab.dialedBy, "us");
    assert.equal(ba.dialedBy, "peer");
    assert.equal(ab.path, "relay");
    const size = 3 * 1024 * 1024 + 17;
    const { data, received } = await transfer(ab, ba, size);
    assertIntact(data, received, size);
    // connect() from the other side returns the same connection.
    assert.equal(await b.connect("a"), ba);
  } finally {
    await closeAll(rv, a, b);
  }
});

Deno.test("two workers connect directly once punched, and datagrams flow", async () => {
  const rv = await startRendezvous();
  const stunA = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const stunB = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
  const servers = [stunA, stunB].map((s) => formatAddress(s.addresses[0])).join(",");
  const { a, b, accepted } = await pair(rv, { STUN_SERVERS: servers });
  try {
    const ab = await within(a.connect("b"), 15_000, "a → b");
    const ba = await within(accepted, 15_000, "b accepts");
    const direct = Promise.withResolvers<void>();
    ab.addEventListener("path", (e) => {
      if ((e as CustomEvent).detail.path === "direct") direct.resolve();
    });
    if (ab.path === "relay") await within(direct.promise, 10_000, "the direct path");
    const { received } = await transfer(ab, ba, 1024 * 1024);
    assert.equal(received.length, 1024 * 1024);
    await ab.sendDatagram(new TextEncoder().encode("ping"));
    assert.equal(
      new TextDecoder().decode(await within(ba.readDatagram(), 5000, "datagram")),
      "ping",
    );
  } finally {
    await closeAll(rv, a, b);
    await stunA.close();
    await stunB.close();
  }
});

/** A registry that lies about some workers, as a compromised rendezvous would. */
class LyingRegistry extends MemoryRegistry {
  constructor(readonly lie: (record: WorkerRecord) => WorkerRecord) {
    super();
  }
  override async get(workerId: string) {
    const record = await super.get(workerId);
    return record && this.lie(record);
  }
  override async list() {
    return (await super.list()).map((r) => this.lie(r));
  }
}

/** Mallory's own certificate, properly signed by Mallory's key for the id "b". */
async function forgedForB(mallory: Identity, vouch?: string) {
  const hash = toBase64Url((await createPeerCertificate()).hash);
  const signature = toBase64Url(await mallory.sign(certificatePayload("b", hash)));
  return vouch === undefined
    ? { cert_hash: hash, signature }
    : { cert_hash: hash, signature, vouch };
}

/**
 * Workers "a" and "b" (with `secrets`, if given) under a rendezvous whose
 * registry tells `lie`s; `check` runs with both and every log line.
 */
async function underLyingRendezvous(
  lie: (record: WorkerRecord) => WorkerRecord,
  secrets: [string, string] | undefined,
  check: (a: Worker, b: Worker, logs: Record<string, unknown>[]) => Promise<void>,
) {
  const logs: Record<string, unknown>[] = [];
  const rv = await startRendezvous({ registry: new LyingRegistry(lie) });
  const make = (id: string, secret?: string) =>
    worker(rv, id, secret === undefined ? {} : { GROUP_SECRET: secret }, {
      logger: new Logger({ sink: (l) => logs.push(JSON.parse(l)) }),
    });
  const b = await make("b", secrets?.[1]);
  const a = await make("a", secrets?.[0]);
  try {
    await check(a, b, logs);
  } finally {
    await closeAll(rv, a, b);
  }
}

/** a's connect to b fails with `why`, and neither side holds a connection. */
async function refused(a: Worker, b: Worker, why: RegExp) {
  await assert.rejects(() => a.connect("b", { timeoutMs: 3000 }), why);
  assert.equal(a.connections.all.length, 0);
  assert.equal(b.connections.all.length, 0);
}

Deno.test("a rendezvous that substitutes keys or certificates gets no connection made, and nothing delivered", async (t) => {
  const mallory = await Identity.generate();
  const forged = await forgedForB(mallory);
  const cases: [string, (r: WorkerRecord) => WorkerRecord, RegExp][] = [
    [
      "b's certificate swapped for Mallory's, b's key kept",
      (r) => r.worker_id === "b" && r.transport ? { ...r, transport: forged } : r,
      /not signed by its key/,
    ],
    [
      "b's key and certificate both swapped for Mallory's",
      (r) =>
        r.worker_id === "b" && r.transport
          ? { ...r, key: mallory.publicKey, transport: forged }
          : r,
      /timed out|Cannot dial b/,
    ],
    [
      "a's key swapped for Mallory's (b checks a's proof)",
      (r) => r.worker_id === "a" ? { ...r, key: mallory.publicKey } : r,
      /refused us|Cannot dial b/,
    ],
  ];
  for (const [name, lie, why] of cases) {
    await t.step(name, () => underLyingRendezvous(lie, undefined, (a, b) => refused(a, b, why)));
  }
});

Deno.test("GROUP_SECRET: peers accept only keys the secret vouches for, so substituted keys are refused", async (t) => {
  const mallory = await Identity.generate();
  // Mallory has no secret to vouch with.
  const forged = await forgedForB(mallory, toBase64Url(new Uint8Array(32)));
  const secret = "correct horse battery staple";
  const honest = (r: WorkerRecord) => r;
  await t.step(
    "an honest rendezvous: the vouched keys connect",
    () =>
      underLyingRendezvous(honest, [secret, secret], async (a) => {
        assert.equal((await a.connect("b", { timeoutMs: 10_000 })).peerId, "b");
      }),
  );
  await t.step(
    "b's key and certificate swapped for Mallory's: refused before dialing",
    () =>
      underLyingRendezvous(
        (r) =>
          r.worker_id === "b" && r.transport
            ? { ...r, key: mallory.publicKey, transport: forged }
            : r,
        [secret, secret],
        async (a, b, logs) => {
          await refused(a, b, /not vouched for by GROUP_SECRET/);
          assert.ok(logs.some((l) => l.message === "peer refused: key not vouched for"));
        },
      ),
  );
  await t.step("a's key swapped: b refuses a's dial", () =>
    underLyingRendezvous(
      (r) => r.worker_id === "a" ? { ...r, key: mallory.publicKey } : r,
      [secret, secret],
      async (a, b, logs) => {
        await refused(a, b, /refused us|Cannot dial b/);
        assert.ok(logs.some((l) => l.message === "peer connection refused"));
      },
    ));
  await t.step("workers with different secrets do not connect", () =>
    underLyingRendezvous(
      honest,
      [secret, "another secret, also long"],
      (a, b) => refused(a, b, /not vouched for by GROUP_SECRET/),
    ));
});

Deno.test("simultaneous connects from both sides end in one connection, the one the smaller id dialed", async () => {
  const rv = await startRendezvous();
  const { a, b } = await pair(rv);
  try {
    // Both must know each other's certificate first, so both really dial.
    const known = Promise.withResolvers<void>();
    const check = setInterval(() => {
      if (a.peers.peer("b")?.transport && b.peers.peer("a")?.transport) known.resolve();
    }, 5);
    await within(known.promise, 10_000, "both peers known").finally(() => clearInterval(check));
    const [ab, ba] = await within(Promise.all([a.connect("b"), b.connect("a")]), 15_000, "both");
    assert.equal(ab.dialedBy, "us"); // "a" < "b": a's dial won
    assert.equal(ba.dialedBy, "peer");
    assert.equal(a.connections.all.length, 1);
    assert.equal(b.connections.all.length, 1);
    const { received } = await transfer(ba, ab, 100_000);
    assert.equal(received.length, 100_000);
  } finally {
    await closeAll(rv, a, b);
  }
});

Deno.test("a slow reader slows the writer: QUIC flow control bounds what a stream buffers", async () => {
  const rv = await startRendezvous();
  const { a, b, accepted } = await pair(rv);
  try {
    const ab = await within(a.connect("b"), 15_000, "a → b");
    const ba = await within(accepted, 15_000, "b accepts");
    const stream = await ab.openStream();
    const writer = stream.writable.getWriter();
    const chunk = new Uint8Array(64 * 1024);
    const limit = 64 * 1024 * 1024;
    let written = 0;
    // Nobody reads yet: writes must stop completing long before 64 MiB.
    while (written < limit) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stalled = new Promise<"stalled">((r) => timer = setTimeout(() => r("stalled"), 1000));
      const write = writer.write(chunk).then(() => "written" as const);
      const outcome = await Promise.race([write, stalled]);
      clearTimeout(timer);
      if (outcome === "stalled") {
        // Reading now lets the pending write and the rest through.
        const reader = ba.incomingStreams.getReader();
        const { value: incoming } = await reader.read();
        reader.releaseLock();
        const reading = (async () => {
          let n = 0;
          for await (const part of incoming!.readable) n += part.length;
          return n;
        })();
        await write;
        written += chunk.length;
        await writer.close();
        assert.equal(await within(reading, 20_000, "the reader"), written);
        break;
      }
      written += chunk.length;
    }
    assert.ok(written < limit, `writes never stalled: ${written} bytes buffered`);
    console.log(`writer stalled after ${(written / 1024 / 1024).toFixed(1)} MiB unread`);
  } finally {
    await closeAll(rv, a, b);
  }
});

Deno.test("a rotated transport certificate keeps open connections and is what new dials pin", async () => {
  const rv = await startRendezvous();
  const { a, b, accepted } = await pair(rv);
  const c = await worker(rv, "c");
  try {
    const ab = await within(a.connect("b"), 15_000, "a → b");
    const ba = await within(accepted, 15_000, "b accepts");
    const before = c.peers.peer("b")?.transport?.cert_hash;
    await b.rotateCertificate();
    // c hears b's new certificate from the rendezvous, then dials it.
    const heard = Promise.withResolvers<void>();
    const poll = setInterval(() => {
      const now = c.peers.peer("b")?.transport?.cert_hash;
      if (now !== undefined && now !== before) heard.resolve();
    }, 5);
    await within(heard.promise, 10_000, "b's new certificate").finally(() => clearInterval(poll));
    const cb = await within(c.connect("b"), 15_000, "c → b after the rotation");
    assert.equal(cb.peerId, "b");
    // The connection made before the rotation still carries streams.
    const { received } = await transfer(ab, ba, 50_000);
    assert.equal(received.length, 50_000);
  } finally {
    await c.close();
    await closeAll(rv, a, b);
  }
});
