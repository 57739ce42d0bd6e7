/**
 * No Docker engine runs here, so every command the Dockerfiles run is run
 * by this test outside Docker: the build stage's COPY and RUN into a scratch
 * /app and DENO_DIR, then the runtime CMD from there, with the image's
 * entrypoint's "deno" prefix. A missing file, a missing permission flag or a
 * cache miss under --cached-only fails here.
 */

import assert from "node:assert/strict";
import { DENO, Proc, ROOT, startRendezvous, waitFor, within } from "./_helpers.ts";
import { loadWorkerConfig } from "../lib/worker/config.ts";
import { startWorker } from "../lib/worker/worker.ts";

interface Instruction {
  op: string;
  args: string;
}

function parseDockerfile(text: string): Instruction[] {
  const joined = text.replace(/\\\n/g, " ");
  return joined.split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => {
      const space = l.indexOf(" ");
      return { op: l.slice(0, space).toUpperCase(), args: l.slice(space + 1).trim() };
    });
}

async function pinnedDenoVersion(): Promise<string> {
  const ci = await Deno.readTextFile(new URL(".ci/run", ROOT));
  const match = /DENO_VERSION=(\S+)/.exec(ci);
  assert.ok(match, ".ci/run pins DENO_VERSION");
  return match[1].replace(/["']/g, "");
}

async function stage(file: string): Promise<{ app: string; denoDir: string; cmd: string[] }> {
  const instructions = parseDockerfile(await Deno.readTextFile(new URL(file, ROOT)));
  const version = instructions.find((i) => i.op === "ARG" && i.args.startsWith("DENO_VERSION="));
  assert.equal(version?.args, `DENO_VERSION=${await pinnedDenoVersion()}`, "same pin as .ci/run");
  const froms = instructions.filter((i) => i.op === "FROM");
  assert.ok(
    froms.length === 2 && froms.every((f) => f.args.startsWith("denoland/deno:${DENO_VERSION}")),
  );
  const users = instructions.filter((i) => i.op === "USER");
  assert.ok(users.length > 0 && users.at(-1)!.args !== "root", "runs as a non-root user");
  assert.ok(instructions.some((i) => i.op === "ENV" && /^PORT=/.test(i.args)));

  const app = await Deno.makeTempDir({ prefix: "holepunch-app-" });
  const denoDir = await Deno.makeTempDir({ prefix: "holepunch-deno-dir-" });
  const buildEnd = instructions.indexOf(froms[1]);
  for (const { op, args } of instructions.slice(0, buildEnd)) {
    if (op === "COPY") {
      const parts = args.split(/\s+/).filter((p) => !p.startsWith("--"));
      const dest = parts.pop()!;
      for (const source of parts) {
        const target = dest.endsWith("/") && !source.endsWith("/")
          ? `${app}/${dest.replace(/^\.\//, "")}${source}`
          : `${app}/${dest.replace(/^\.\//, "")}`;
        const copy = await new Deno.Command("cp", {
          args: ["-r", new URL(source, ROOT).pathname, target],
        }).output();
        assert.ok(copy.success, `COPY ${source} ${dest}`);
      }
    } else if (op === "RUN") {
      const run = await new Deno.Command("sh", {
        args: ["-c", args],
        cwd: app,
        env: { DENO_DIR: denoDir, PATH: `${DENO.replace(/\/[^/]+$/, "")}:${Deno.env.get("PATH")}` },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(run.success, `RUN ${args}: ${new TextDecoder().decode(run.stderr)}`);
    }
  }
  const cmd = instructions.findLast((i) => i.op === "CMD");
  assert.ok(cmd, "has a CMD");
  return { app, denoDir, cmd: JSON.parse(cmd.args) };
}

Deno.test("Dockerfile.rendezvous: its build and start commands work outside Docker", async () => {
  const { app, denoDir, cmd } = await stage("Dockerfile.rendezvous");
  const proc = new Proc(DENO, cmd, { DENO_DIR: denoDir, PORT: "0", HOST: "127.0.0.1" }, app);
  try {
    const listening = await proc.waitForLog("rendezvous listening", () => true, 20_000);
    const ready = await fetch(`http://127.0.0.1:${listening.port}/ready`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();
    proc.signal("SIGTERM");
    assert.equal((await within(proc.status, 10_000, "exit")).code, 0);
  } finally {
    await proc.stop();
    await Deno.remove(app, { recursive: true });
    await Deno.remove(denoDir, { recursive: true });
  }
});

Deno.test("Dockerfile.worker: its build and start commands work outside Docker", async () => {
  const { app, denoDir, cmd } = await stage("Dockerfile.worker");
  const rv = await startRendezvous();
  const proc = new Proc(DENO, cmd, {
    DENO_DIR: denoDir,
    PORT: "0",
    HOST: "127.0.0.1",
    RENDEZVOUS_SERVICE_URL: rv.http,
    WORKER_ID: "from-dockerfile",
    IP_ECHO_URL: "off",
    STUN_SERVERS: "off",
  }, app);
  try {
    await proc.waitForLog("registered with rendezvous", () => true, 20_000);
    proc.signal("SIGTERM");
    assert.equal((await within(proc.status, 10_000, "exit")).code, 0);
  } finally {
    await proc.stop();
    await rv.close();
    await Deno.remove(app, { recursive: true });
    await Deno.remove(denoDir, { recursive: true });
  }
});

Deno.test("compile:ctl's permission flags are enough for holepunch status against a running worker", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const words = (config.tasks["compile:ctl"] as string).split(/\s+/);
  assert.deepEqual(words.slice(0, 2), ["deno", "compile"]);
  assert.ok(words.includes("--output"), "it names its output");
  const entry = words.at(-1)!;
  const flags = words.slice(2, -1).filter((w, i, all) =>
    w !== "--output" && all[i - 1] !== "--output"
  );
  const dir = await Deno.makeTempDir();
  const rv = await startRendezvous();
  const worker = await startWorker(loadWorkerConfig({
    RENDEZVOUS_SERVICE_URL: rv.http,
    WORKER_ID: "compiled-ctl",
    PORT: "0",
    HOST: "127.0.0.1",
    IP_ECHO_URL: "off",
    STUN_SERVERS: "off",
    CONTROL_DIR: dir,
  }));
  try {
    await waitFor(async () => {
      for await (const _ of Deno.readDir(dir)) return true;
      return false;
    }, "the control socket");
    const { code, stdout, stderr } = await new Deno.Command(DENO, {
      args: ["run", ...flags, entry, "status", "--dir", dir],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(stdout);
    assert.equal(code, 0, new TextDecoder().decode(stderr));
    assert.match(out, /worker\s+compiled-ctl/);
  } finally {
    await worker.close();
    await rv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compile tasks: their permission flags are enough to run each program", async () => {
  // `deno compile` needs Deno's download host (unreachable here), so run the
  // same flags with `deno run`: a missing permission fails the same way.
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const rv = await startRendezvous();
  try {
    for (const name of ["compile:rendezvous", "compile:worker"]) {
      const words = (config.tasks[name] as string).split(/\s+/);
      assert.deepEqual(words.slice(0, 2), ["deno", "compile"], name);
      const entry = words.at(-1)!;
      const flags = words.slice(2, -1).filter((w, i, all) =>
        w !== "--output" && all[i - 1] !== "--output"
      );
      assert.ok(words.includes("--output"), `${name} names its output`);
      const proc = new Proc(DENO, ["run", ...flags, entry], {
        PORT: "0",
        HOST: "127.0.0.1",
        RENDEZVOUS_SERVICE_URL: rv.http,
        WORKER_ID: "compiled",
        IP_ECHO_URL: "off",
        STUN_SERVERS: "off",
      });
      try {
        await proc.waitForLog(
          entry === "worker.ts" ? "registered with rendezvous" : "rendezvous listening",
        );
        proc.signal("SIGTERM");
        assert.equal((await within(proc.status, 10_000, "exit")).code, 0, proc.dump());
      } finally {
        await proc.stop();
      }
    }
  } finally {
    await rv.close();
  }
});
