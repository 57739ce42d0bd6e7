/**
 * `PEER_UDP_IO`: batched sockets through FFI where they can be had (Linux,
 * `--allow-ffi`), Deno's own elsewhere, said in the log and in `GET /`;
 * `ffi` without them stops the worker with a clear error. Both ways carry
 * a direct connection (the rest of the suite runs on FFI's).
 */
import assert from "node:assert/strict";
import { Logger } from "../../lib/core/log.ts";
import { FfiUdp, ffiUnavailable } from "../../lib/peer/ffi_udp.ts";
import { StunServer } from "../../lib/stun/server.ts";
import { formatAddress } from "../../lib/stun/client.ts";
import { loadWorkerConfig } from "../../lib/worker/config.ts";
import { openUdpIo } from "../../lib/worker/udp.ts";
import { startWorker, type Worker } from "../../lib/worker/worker.ts";
import type { PeerConnection } from "../../lib/peer/connection.ts";
import { requireOrSkip, spawnWorker, startRendezvous, within } from "../_helpers.ts";
import { assertIntact, transfer } from "../_peer_streams.ts";

const skip = requireOrSkip(ffiUnavailable(), "FFI socket tests");

Deno.test("openUdpIo: deno means none; auto and ffi open FFI's here (logged)", async () => {
  const lines: Record<string, unknown>[] = [];
  const logger = new Logger({ format: "json", sink: (line) => lines.push(JSON.parse(line)) });
  assert.equal(openUdpIo("deno", logger), undefined);
  for (const mode of ["auto", "ffi"] as const) {
    const opened = openUdpIo(mode, logger);
    if (skip) {
      assert.equal(opened, undefined);
      continue;
    }
    assert.ok(opened instanceof FfiUdp, mode);
    await opened.close();
  }
  assert.ok(lines.some((l) => l.udp_io === "deno" && l.why === "PEER_UDP_IO=deno"));
});

Deno.test("a worker without --allow-ffi keeps Deno's sockets and says why; PEER_UDP_IO=ffi there stops it (exit 2)", async () => {
  const rv = await startRendezvous();
  // Deno's sandbox whole: no --allow-ffi.
  const plain = spawnWorker(rv.http, { WORKER_ID: "plain" }, { ffi: false });
  const strict = spawnWorker(rv.http, { WORKER_ID: "strict", PEER_UDP_IO: "ffi" }, { ffi: false });
  const granted = skip ? undefined : spawnWorker(rv.http, { WORKER_ID: "granted" });
  try {
    const io = await plain.waitForLog("udp io: Deno's sockets");
    assert.equal(io.why, "no --allow-ffi");
    const health = await plain.waitForLog("health server listening");
    const status = await (await fetch(`http://127.0.0.1:${health.port}/`)).json();
    assert.equal(status.udp_io, "deno");
    const code = await within(strict.status, 20_000, "the strict worker's exit");
    assert.equal(code.code, 2, strict.dump());
    assert.ok(
      strict.lines.some((l) => /Cannot use PEER_UDP_IO=ffi: no --allow-ffi/.test(l.message)),
    );
    if (granted) {
      await granted.waitForLog("udp io: batched (recvmmsg/sendmmsg through FFI)");
      const h = await granted.waitForLog("health server listening");
      assert.equal((await (await fetch(`http://127.0.0.1:${h.port}/`)).json()).udp_io, "ffi");
    }
  } finally {
    await Promise.all([plain.stop(), strict.stop(), granted?.stop()]);
    await rv.close();
  }
});

Deno.test({
  name:
    "either way a punched pair moves a stream intact: Deno's sockets and FFI's, and one of each",
  ignore: skip !== undefined,
  async fn() {
    const stunA = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
    const stunB = StunServer.listen({ hostname: "127.0.0.1", port: 0 });
    const stun = [stunA, stunB].map((s) => formatAddress(s.addresses[0])).join(",");
    const rv = await startRendezvous();
    try {
      for (const [ioA, ioB] of [["deno", "deno"], ["ffi", "ffi"], ["ffi", "deno"]]) {
        const accepted = Promise.withResolvers<PeerConnection>();
        const make = (id: string, io: string) =>
          startWorker(
            loadWorkerConfig({
              RENDEZVOUS_SERVICE_URL: rv.http,
              WORKER_ID: id,
              IP_ECHO_URL: "off",
              STUN_SERVERS: stun,
              UDP_HOST: "127.0.0.1",
              CONTROL_DIR: "off",
              PEER_UDP_IO: io,
            }),
            { health: false, onConnection: (c) => accepted.resolve(c) },
          );
        const workers: Worker[] = [];
        try {
          const a = await make(`a-${ioA}-${ioB}`, ioA);
          workers.push(a);
          const b = await make(`b-${ioA}-${ioB}`, ioB);
          workers.push(b);
          assert.equal(a.status().udp_io, ioA);
          assert.equal(b.status().udp_io, ioB);
          const ab = await within(a.connect(b.id), 15_000, "connect");
          const ba = await within(accepted.promise, 15_000, "accept");
          const direct = Promise.withResolvers<void>();
          if (ab.path === "direct") direct.resolve();
          ab.addEventListener("path", (e) => {
            if ((e as CustomEvent).detail.path === "direct") direct.resolve();
          });
          await within(direct.promise, 15_000, "the direct path");
          const size = 4 * 1024 * 1024 + 3;
          const { data, received } = await transfer(ab, ba, size);
          assertIntact(data, received, size, `${ioA} → ${ioB}`);
        } finally {
          for (const w of workers) await w.close();
        }
      }
    } finally {
      await rv.close();
      stunA.close();
      stunB.close();
    }
  },
});
