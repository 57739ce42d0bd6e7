/**
 * Two small programs for tests that run inside lab namespaces:
 *
 *   deno run -A tests/_stream_tools.ts hash-server PORT
 *     listens on 127.0.0.1:PORT; for each connection reads to EOF, then
 *     answers "<bytes> <sha256 hex>" and closes. Logs `{"message":"listening"}`.
 *   deno run -A tests/_stream_tools.ts send-many PORT,PORT,… BYTES
 *     to each port in turn: sends BYTES deterministic bytes, half-closes,
 *     reads the answer and logs `{"message":"transfer","port":…,"ok":…,"ms":…}`.
 *   deno run -A tests/_stream_tools.ts send PORT STOPFILE [PAUSE_MS]
 *     connects to 127.0.0.1:PORT and sends deterministic bytes, 64 KiB at a
 *     time with a pause between (20 ms), until STOPFILE exists; then half-closes,
 *     reads the answer and logs `{"message":"sent","bytes":…,"sha256":…,"answer":…}`.
 *   deno run -A tests/_stream_tools.ts send-gated PORT BYTES ALLOWFILE
 *     sends BYTES deterministic bytes as fast as the stream takes them, but
 *     never past the byte count written in ALLOWFILE (read again whenever
 *     the sender reaches it); logs `{"message":"progress","bytes":…}` every
 *     16 MiB, then half-closes, reads the answer and logs "sent" as `send`.
 *   deno run -A tests/_stream_tools.ts requests PORT COUNT INTERVAL_MS
 *     COUNT requests one after another, one every INTERVAL_MS: 1 KiB, a
 *     half-close, the answer; logs `{"message":"request","ok":…,"ms":…}` for
 *     each (a failed connect counts as not ok), then `{"message":"requests done"}`.
 *
 * They log JSON lines on stderr, as the programs under test do.
 */
import { createHash } from "node:crypto";

const log = (message: string, fields: Record<string, unknown> = {}) =>
  console.error(JSON.stringify({ severity: "INFO", message, ...fields }));

/** Half-closes, reads the service's answer to the end, closes. */
async function finish(conn: Deno.TcpConn): Promise<string> {
  await conn.closeWrite();
  let answer = "";
  const buffer = new Uint8Array(256);
  while (true) {
    const r = await conn.read(buffer);
    if (r === null) break;
    answer += new TextDecoder().decode(buffer.subarray(0, r));
  }
  conn.close();
  return answer;
}

const [mode, portText, stopFile] = Deno.args;
const port = Number(portText);

if (mode === "hash-server") {
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  log("listening", { port });
  for await (const conn of listener) {
    (async () => {
      const hash = createHash("sha256");
      let bytes = 0;
      const buffer = new Uint8Array(65536);
      while (true) {
        const n = await conn.read(buffer);
        if (n === null) break;
        hash.update(buffer.subarray(0, n));
        bytes += n;
      }
      await conn.write(new TextEncoder().encode(`${bytes} ${hash.digest("hex")}`));
      conn.close();
    })().catch((error) => log("hash-server connection failed", { error: String(error) }));
  }
} else if (mode === "send-many") {
  const total = Number(stopFile);
  for (const text of portText.split(",")) {
    const target = Number(text);
    const started = performance.now();
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: target });
      const hash = createHash("sha256");
      const chunk = new Uint8Array(65536);
      let sent = 0;
      for (let n = 0; sent < total; n++) {
        const size = Math.min(chunk.length, total - sent);
        for (let i = 0; i < size; i++) chunk[i] = (i * 13 + n + target) & 0xff;
        let written = 0;
        while (written < size) written += await conn.write(chunk.subarray(written, size));
        hash.update(chunk.subarray(0, size));
        sent += size;
      }
      const answer = await finish(conn);
      const ok = answer === `${total} ${hash.digest("hex")}`;
      log("transfer", { port: target, ok, answer, ms: performance.now() - started });
    } catch (error) {
      log("transfer", { port: target, ok: false, error: String(error) });
    }
  }
  log("transfers done");
} else if (mode === "requests") {
  const count = Number(stopFile);
  const intervalMs = Number(Deno.args[3]);
  const body = new Uint8Array(1024).map((_, i) => i & 0xff);
  const expected = `${body.length} ${createHash("sha256").update(body).digest("hex")}`;
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      let written = 0;
      while (written < body.length) written += await conn.write(body.subarray(written));
      const answer = await finish(conn);
      log("request", { i, ok: answer === expected, answer, ms: performance.now() - started });
    } catch (error) {
      log("request", { i, ok: false, error: String(error), ms: performance.now() - started });
    }
    const left = intervalMs - (performance.now() - started);
    if (left > 0) await new Promise((r) => setTimeout(r, left)); // paced requests, not a wait
  }
  log("requests done");
} else if (mode === "send-gated") {
  const total = Number(stopFile);
  const allowFile = Deno.args[3];
  const allowed = async () => Number((await Deno.readTextFile(allowFile).catch(() => "0")) || 0);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const hash = createHash("sha256");
  const chunk = new Uint8Array(65536);
  let allowance = await allowed();
  let bytes = 0;
  for (let n = 0; bytes < total; n++) {
    const size = Math.min(chunk.length, total - bytes);
    while (bytes + size > allowance) {
      await new Promise((r) => setTimeout(r, 20)); // a gate, polled: the orchestrator opens it
      allowance = await allowed();
    }
    for (let i = 0; i < size; i++) chunk[i] = (i * 31 + n * 7) & 0xff;
    let written = 0;
    while (written < size) written += await conn.write(chunk.subarray(written, size));
    hash.update(chunk.subarray(0, size));
    bytes += size;
    if (n % 256 === 255) log("progress", { bytes });
  }
  const answer = await finish(conn);
  log("sent", { bytes, sha256: hash.digest("hex"), answer });
} else if (mode === "send") {
  const pauseMs = Number(Deno.args[3] ?? 20);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const hash = createHash("sha256");
  const chunk = new Uint8Array(65536);
  let bytes = 0;
  let n = 0;
  while (true) {
    try {
      await Deno.stat(stopFile);
      break;
    } catch {
      // Not yet: keep sending.
    }
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + n * 7) & 0xff;
    n++;
    let written = 0;
    while (written < chunk.length) written += await conn.write(chunk.subarray(written));
    hash.update(chunk);
    bytes += chunk.length;
    if (n % 16 === 0) log("progress", { bytes });
    // Paced (20 ms by default: about 3 MB/s), so the transfer spans the path changes.
    await new Promise((r) => setTimeout(r, pauseMs));
  }
  const answer = await finish(conn);
  log("sent", { bytes, sha256: hash.digest("hex"), answer });
}
