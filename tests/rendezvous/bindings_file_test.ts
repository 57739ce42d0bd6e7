/**
 * KEY_BINDINGS_FILE: a single instance keeps who holds which id across a
 * kill -9 and restart, so another key cannot take a keyed worker's id in the
 * moment after the restart.
 */
import assert from "node:assert/strict";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { Identity } from "../../lib/protocol/identity.ts";
import { BindingsFileError, loadBindings } from "../../lib/rendezvous/bindings_file.ts";
import { keyedAt } from "../_fleet.ts";
import { Proc, rendezvousIn, waitFor, within } from "../_helpers.ts";

/** A rendezvous on `port` (0: any), keeping its bindings in `dir` unless `file` is false. */
async function start(dir: string, port: number, file = true) {
  const proc = rendezvousIn(dir, {
    PORT: String(port),
    ...(file ? { KEY_BINDINGS_FILE: `${dir}/bindings.json` } : {}),
  });
  const line = await proc.waitForLog("rendezvous listening");
  return { proc, port: line.port as number };
}

/** The code a session for `id` with `identity`'s key closes with, or "registered". */
async function register(port: number, id: string, identity: Identity) {
  const client = await keyedAt(port, id, identity);
  const first = await Promise.race([
    client.next().then((m) => String(m.type)),
    client.closed.then((e) => e.code),
  ]);
  return { client, outcome: first };
}

Deno.test("loadBindings() reads its file, none when missing, and never quotes a bad one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/b.json`;
    assert.deepEqual(loadBindings(path), [], "no file yet");
    const key = (await Identity.generate()).publicKey;
    await Deno.writeTextFile(
      path,
      JSON.stringify({ bindings: [{ id: "w1", key, idle_since: null }] }),
    );
    assert.deepEqual(loadBindings(path), [{ id: "w1", key, idle_since: null }]);
    const secret = "do-not-echo-this-text";
    for (
      const bad of [
        secret,
        JSON.stringify({ [secret]: 1 }),
        JSON.stringify({ bindings: [{ id: secret + "/", key, idle_since: null }] }),
        JSON.stringify({ bindings: [{ id: "w1", key: secret, idle_since: null }] }),
        JSON.stringify({ bindings: [{ id: "w1", key, idle_since: "yesterday" }] }),
      ]
    ) {
      await Deno.writeTextFile(path, bad);
      const error = (() => {
        try {
          loadBindings(path);
        } catch (e) {
          return e;
        }
      })();
      assert.ok(error instanceof BindingsFileError, bad);
      assert.ok(!error.message.includes(secret), error.message);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("KEY_BINDINGS_FILE: after kill -9 and a restart, another key cannot take a keyed worker's id", async () => {
  const dir = await Deno.makeTempDir();
  const rightful = await Identity.generate();
  const attacker = await Identity.generate();
  let rv = await start(dir, 0);
  const port = rv.port;
  try {
    const owner = await register(port, "keeper", rightful);
    assert.equal(owner.outcome, "registered");
    await waitFor(() => {
      try {
        return loadBindings(`${dir}/bindings.json`).some((b) => b.id === "keeper");
      } catch {
        return false; // not written yet
      }
    }, "the binding written");
    await rv.proc.stop("SIGKILL");
    rv = await start(dir, port);
    assert.ok(rv.proc.lines.some((l) => l.message === "key bindings loaded" && l.bindings === 1));
    // The attacker is there first, the moment the instance listens.
    const taken = await register(port, "keeper", attacker);
    assert.equal(taken.outcome, CloseCode.KEY_REFUSED);
    const back = await register(port, "keeper", rightful);
    assert.equal(back.outcome, "registered");
    await back.client.close();
    // SIGTERM writes the file once more on the way out.
    await rv.proc.stop("SIGTERM");
    assert.equal(
      loadBindings(`${dir}/bindings.json`).find((b) => b.id === "keeper")?.key,
      rightful.publicKey,
    );
  } finally {
    await rv.proc.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("without KEY_BINDINGS_FILE a restart forgets the bindings (what the docs warn of)", async () => {
  const dir = await Deno.makeTempDir();
  let rv = await start(dir, 0, false);
  const port = rv.port;
  try {
    const owner = await register(port, "keeper", await Identity.generate());
    assert.equal(owner.outcome, "registered");
    await rv.proc.stop("SIGKILL");
    rv = await start(dir, port, false);
    const taken = await register(port, "keeper", await Identity.generate());
    assert.equal(taken.outcome, "registered", "the first key after the restart takes the id");
    await taken.client.close();
  } finally {
    await rv.proc.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bad KEY_BINDINGS_FILE stops the rendezvous at start (exit 2), and KEY_BINDINGS_FILE with REDIS_URL is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/bindings.json`, "not json");
    const bad = rendezvousIn(dir, { PORT: "0", KEY_BINDINGS_FILE: `${dir}/bindings.json` });
    assert.equal((await within(bad.status, 10_000, "exit")).code, 2, bad.dump());
    assert.match(bad.dump(), /KEY_BINDINGS_FILE .*not JSON/);
    const both = Proc.deno(["run", "--allow-net", "--allow-env", "rendezvous.ts"], {
      PORT: "0",
      KEY_BINDINGS_FILE: `${dir}/bindings.json`,
      REDIS_URL: "redis://127.0.0.1:1",
    });
    assert.notEqual((await within(both.status, 10_000, "exit")).code, 0);
    assert.match(both.dump(), /a fleet keeps its key bindings in Redis/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
