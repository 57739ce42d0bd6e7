/**
 * Wire compatibility with the user's seed document: its own Python worker and
 * rendezvous, extracted from the document at test time and run unmodified
 * with Debian's python3, against ours.
 *
 * The seed worker hard-codes https://api.ipify.org. It must not reach the
 * internet from a test, so it runs with HTTPS_PROXY pointing at a local
 * CONNECT proxy that tunnels to a local TLS stand-in (certificate made here
 * with openssl, trusted through REQUESTS_CA_BUNDLE): the code is the seed's,
 * every byte stays on loopback.
 */

import assert from "node:assert/strict";
import {
  listWorkers,
  Proc,
  requireOrSkip,
  ROOT,
  spawnRendezvous,
  spawnWorker,
  startIpEcho,
  waitFor,
} from "./_helpers.ts";

const PYTHON = "/usr/bin/python3";
const SEED = new URL("../shared/seed/000_5af9689e8f2fdebc.txt", ROOT);

async function missing(): Promise<string | undefined> {
  try {
    await Deno.stat(SEED);
  } catch {
    return `seed document not found at ${SEED.pathname}`;
  }
  const probe = async (cmd: string, args: string[]) => {
    try {
      return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output())
        .success;
    } catch {
      return false;
    }
  };
  if (!await probe(PYTHON, ["-c", "import fastapi, uvicorn, websockets, requests"])) {
    return "Debian's python3 with python3-fastapi, -uvicorn, -websockets, -requests is not installed";
  }
  if (!await probe("openssl", ["version"])) return "openssl is not installed";
  return undefined;
}

const skip = requireOrSkip(await missing(), "seed interop tests");

/** The Python code block that follows `heading` in the seed document. */
function seedBlock(doc: string, heading: string): string {
  const at = doc.indexOf(heading);
  assert.ok(at >= 0, `seed heading ${heading} not found`);
  const start = doc.indexOf("```python\n", at) + "```python\n".length;
  const end = doc.indexOf("\n```", start);
  return doc.slice(start, end) + "\n";
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function seedFiles(): Promise<{ dir: string; rendezvous: string; worker: string }> {
  const doc = await Deno.readTextFile(SEED);
  const dir = await Deno.makeTempDir({ prefix: "holepunch-seed-" });
  await Deno.mkdir(`${dir}/rendezvous`);
  await Deno.mkdir(`${dir}/worker`);
  const rendezvous = `${dir}/rendezvous/main.py`;
  const worker = `${dir}/worker/main.py`;
  await Deno.writeTextFile(
    rendezvous,
    seedBlock(doc, "`rendezvous_service_code/main.py` (for Step 2)"),
  );
  await Deno.writeTextFile(worker, seedBlock(doc, "`main.py` (Worker - for Step 2)"));
  return { dir, rendezvous, worker };
}

/**
 * A stand-in for https://api.ipify.org: an HTTPS server with a self-signed
 * certificate for that name, behind a CONNECT proxy that tunnels every
 * request to it (whatever host was asked for).
 */
async function startFakeIpify(dir: string, answer: string) {
  const key = `${dir}/key.pem`;
  const cert = `${dir}/cert.pem`;
  const made = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "1",
      "-subj",
      "/CN=api.ipify.org",
      "-addext",
      "subjectAltName=DNS:api.ipify.org",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(made.success, new TextDecoder().decode(made.stderr));
  const tlsListening = Promise.withResolvers<number>();
  const tls = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    cert: await Deno.readTextFile(cert),
    key: await Deno.readTextFile(key),
    onListen: ({ port }) => tlsListening.resolve(port),
  }, () => new Response(answer));
  const tlsPort = await tlsListening.promise;

  const targets: string[] = [];
  const proxy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const serving = (async () => {
    for await (const client of proxy) {
      conns.push(client);
      (async () => {
        const buffer = new Uint8Array(4096);
        let head = "";
        while (!head.includes("\r\n\r\n")) {
          const n = await client.read(buffer);
          if (n === null) return;
          head += new TextDecoder().decode(buffer.subarray(0, n));
        }
        const match = /^CONNECT (\S+) HTTP/.exec(head);
        if (!match) {
          await client.write(new TextEncoder().encode("HTTP/1.1 405 Method Not Allowed\r\n\r\n"));
          client.close();
          return;
        }
        targets.push(match[1]);
        const upstream = await Deno.connect({ hostname: "127.0.0.1", port: tlsPort });
        conns.push(upstream);
        await client.write(new TextEncoder().encode("HTTP/1.1 200 Connection established\r\n\r\n"));
        await Promise.all([
          client.readable.pipeTo(upstream.writable).catch(() => {}),
          upstream.readable.pipeTo(client.writable).catch(() => {}),
        ]);
      })().catch(() => {});
    }
  })().catch(() => {});
  return {
    proxyUrl: `http://127.0.0.1:${(proxy.addr as Deno.NetAddr).port}`,
    caBundle: cert,
    targets,
    async close() {
      proxy.close();
      await serving;
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Already closed.
        }
      }
      await tls.shutdown();
    },
  };
}

Deno.test({
  name: "the seed's own Python worker registers with our rendezvous, unmodified",
  ignore: skip !== undefined,
  async fn() {
    const files = await seedFiles();
    const ipify = await startFakeIpify(files.dir, "203.0.113.77");
    const rv = await spawnRendezvous();
    const worker = new Proc(PYTHON, ["-u", files.worker], {
      RENDEZVOUS_SERVICE_URL: rv.http,
      PORT: String(freePort()),
      PING_INTERVAL_SEC: "1",
      PING_TIMEOUT_SEC: "2",
      HTTPS_PROXY: ipify.proxyUrl,
      https_proxy: ipify.proxyUrl,
      NO_PROXY: "127.0.0.1,localhost",
      no_proxy: "127.0.0.1,localhost",
      REQUESTS_CA_BUNDLE: ipify.caBundle,
    });
    try {
      const entry = await waitFor(
        async () => {
          const listing = await listWorkers(rv.http);
          const [id, w] = Object.entries(listing.workers)[0] ?? [];
          return w?.http_reported_public_ip ? { id, ...w } : undefined;
        },
        "the seed worker listed with its ipify IP",
        20_000,
      ).catch((error) => {
        throw new Error(`seed worker output:\n${worker.stdout}\n${worker.dump()}`, {
          cause: error,
        });
      });
      assert.equal(entry.http_reported_public_ip, "203.0.113.77");
      assert.equal(entry.websocket_observed_ip, "127.0.0.1");
      assert.equal(entry.websocket_connected, true);
      assert.deepEqual(
        ipify.targets,
        ["api.ipify.org:443"],
        "it asked ipify, through our stand-in",
      );
      assert.match(worker.stdout, new RegExp(`Worker '${entry.id}': Connected to Rendezvous.`));
      assert.match(worker.stdout, /Sent HTTP-based public IP to Rendezvous/);
      // Our extra messages reach it and are printed, not fatal.
      assert.match(worker.stdout, /"type": ?"registered"/);

      // The seed worker notices SIGTERM on its next receive timeout and closes.
      worker.signal("SIGTERM");
      await rv.proc.waitForLog("worker de-registered", (l) => l.worker_id === entry.id, 15_000);
      assert.equal((await listWorkers(rv.http)).connected_workers_count, 0);
    } finally {
      await worker.stop();
      await rv.proc.stop();
      await ipify.close();
      await Deno.remove(files.dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "our worker registers with the seed's own FastAPI rendezvous, unmodified, and heartbeats",
  ignore: skip !== undefined,
  async fn() {
    const files = await seedFiles();
    const port = freePort();
    const seed = new Proc(
      PYTHON,
      ["-u", files.rendezvous],
      { PORT: String(port) },
      `${files.dir}/rendezvous`,
    );
    const base = `http://127.0.0.1:${port}`;
    const echo = await startIpEcho(() => new Response("203.0.113.78"));
    let worker: Proc | undefined;
    try {
      await waitFor(
        async () => (await fetch(base).then((r) => r.json())).message,
        "seed rendezvous up",
        20_000,
      )
        .catch((error) => {
          throw new Error(`seed rendezvous output:\n${seed.stdout}\n${seed.dump()}`, {
            cause: error,
          });
        });
      worker = spawnWorker(base, {
        WORKER_ID: "deno-worker",
        IP_ECHO_URL: echo.url,
        PING_INTERVAL_SEC: "0.3",
        PING_TIMEOUT_SEC: "2",
      });
      const entry = await waitFor(
        async () => {
          const w = (await listWorkers(base)).workers["deno-worker"];
          return w?.http_reported_public_ip ? w : undefined;
        },
        "our worker in the seed's listing",
        15_000,
      );
      assert.equal(entry.http_reported_public_ip, "203.0.113.78");
      assert.equal(entry.websocket_observed_ip, "127.0.0.1");
      assert.equal(entry.websocket_connected, true);
      // The seed answers our echo_request heartbeats.
      await waitFor(
        () => (seed.stdout.match(/Sent echo_response to worker 'deno-worker'/g) ?? []).length >= 3,
        "three answered heartbeats",
        10_000,
      );
      assert.ok(!worker.lines.some((l) => l.message.includes("stopped answering")), worker.dump());

      worker.signal("SIGTERM");
      assert.equal((await worker.status).code, 0);
      await waitFor(
        () => seed.stdout.includes("Worker 'deno-worker' de-registered. Total workers: 0"),
        "seed de-registration",
      );
    } finally {
      await worker?.stop();
      await seed.stop();
      await echo.close();
      await Deno.remove(files.dir, { recursive: true });
    }
  },
});
