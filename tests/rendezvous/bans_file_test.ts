/**
 * REVOCATIONS_FILE: a single instance keeps its bans across a kill -9 and a
 * restart; a ban it cannot write is not made (503); a bad file stops it at
 * start, and the file is refused beside REDIS_URL (a fleet uses Redis).
 */
import assert from "node:assert/strict";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { ConfigError } from "../../lib/core/env.ts";
import { loadRendezvousConfig } from "../../lib/rendezvous/config.ts";
import { Proc, rendezvousIn, TestClient, within } from "../_helpers.ts";

const AUTH = { authorization: "Bearer s3cret" };

/** `rendezvous.ts` on `port` (0: any), allowed to read and write `dir` only. */
async function start(dir: string, port: number, file: string) {
  const proc = rendezvousIn(dir, {
    PORT: String(port),
    RENDEZVOUS_TOKEN: "s3cret",
    REVOCATIONS_FILE: file,
  });
  const line = await proc.waitForLog("rendezvous listening");
  return { proc, port: line.port as number, http: `http://127.0.0.1:${line.port}` };
}

function revoke(http: string, body: unknown) {
  return fetch(`${http}/admin/revoke`, {
    method: "POST",
    headers: { ...AUTH, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

async function closeCode(port: number, id: string): Promise<number | string> {
  const client = new TestClient(`ws://127.0.0.1:${port}/ws/register/${id}`, AUTH);
  const outcome = await Promise.race([
    client.next().then((m) => String(m.type)),
    client.closed.then((e) => e.code),
  ]);
  await client.close().catch(() => {});
  return outcome;
}

Deno.test("REVOCATIONS_FILE: bans outlive kill -9 and a restart; lifting is kept too", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/revoked.json`;
  let rv = await start(dir, 0, file);
  const port = rv.port;
  try {
    assert.equal(
      (await revoke(rv.http, { worker_id: "gone", reason: "left the team" })).status,
      201,
    );
    assert.equal((await revoke(rv.http, { worker_id: "back-soon" })).status, 201);
    await rv.proc.stop("SIGKILL");
    rv = await start(dir, port, file);
    assert.ok(rv.proc.lines.some((l) => l.message === "revocations loaded" && l.bans === 2));
    const listed = await (await fetch(`${rv.http}/admin/revoked`, { headers: AUTH })).json();
    assert.deepEqual(listed.bans.map((b: { id: string }) => b.id).sort(), [
      "id:back-soon",
      "id:gone",
    ]);
    assert.equal(await closeCode(port, "gone"), CloseCode.REVOKED, "refused after the restart");
    const lifted = await fetch(`${rv.http}/admin/revoked/back-soon`, {
      method: "DELETE",
      headers: AUTH,
    });
    assert.equal(lifted.status, 200);
    await lifted.body?.cancel();
    await rv.proc.stop("SIGKILL");
    rv = await start(dir, port, file);
    assert.equal(await closeCode(port, "back-soon"), "registered");
    assert.equal(await closeCode(port, "gone"), CloseCode.REVOKED);
  } finally {
    await rv.proc.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("REVOCATIONS_FILE that cannot be written: the ban is not made (503), the worker not closed", async () => {
  const dir = await Deno.makeTempDir();
  // A directory that does not exist: read as no bans, never writable.
  const rv = await start(dir, 0, `${dir}/missing/revoked.json`);
  const worker = new TestClient(`ws://127.0.0.1:${rv.port}/ws/register/w1`, AUTH);
  try {
    assert.equal((await worker.next()).type, "registered");
    const r = await revoke(rv.http, { worker_id: "w1" });
    assert.equal(r.status, 503);
    assert.match((await r.json()).error, /could not be stored/);
    assert.equal(r.headers.get("retry-after"), "1");
    const listed = await (await fetch(`${rv.http}/admin/revoked`, { headers: AUTH })).json();
    assert.deepEqual(listed.bans, []);
    assert.equal(worker.socket.readyState, WebSocket.OPEN);
    await rv.proc.waitForLog("cannot store a revocation");
  } finally {
    await worker.close().catch(() => {});
    await rv.proc.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bad REVOCATIONS_FILE stops the rendezvous at start (exit 2), never quoted; refused beside REDIS_URL", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const secret = "do-not-echo-this-text";
    for (const bad of [secret, JSON.stringify({ bans: [{ id: secret }] }), "{}"]) {
      await Deno.writeTextFile(`${dir}/revoked.json`, bad);
      const proc = Proc.deno(
        ["run", "--allow-net", "--allow-env", `--allow-read=${dir}`, "rendezvous.ts"],
        { HOST: "127.0.0.1", PORT: "0", REVOCATIONS_FILE: `${dir}/revoked.json` },
      );
      const status = await within(proc.status, 20_000, "the exit");
      assert.equal(status.code, 2, proc.dump());
      assert.ok(proc.lines.some((l) => l.message === "cannot start: cannot use its state file"));
      assert.ok(!proc.dump().includes(secret));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.throws(
    () => loadRendezvousConfig({ REDIS_URL: "redis://127.0.0.1:6379", REVOCATIONS_FILE: "/tmp/x" }),
    (e) => e instanceof ConfigError && /keeps its revocations in Redis/.test(e.message),
  );
});
