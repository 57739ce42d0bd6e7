/**
 * Keeps the map in README's Layout true: `lib/` holds one folder per
 * subsystem and `mod.ts`, and imports point down the layers only.
 */
import assert from "node:assert/strict";
import { ROOT } from "./_helpers.ts";

/** What each folder of `lib/` may import, besides itself. */
const ALLOWED: Readonly<Record<string, readonly string[]>> = {
  core: [],
  protocol: ["core"],
  redis: ["core"],
  stun: ["core", "protocol"],
  peer: ["core", "protocol", "stun"],
  rendezvous: ["core", "protocol", "stun", "redis"],
  worker: ["core", "protocol", "stun", "peer", "portmap"],
  netcheck: ["core", "protocol", "stun", "peer", "portmap"],
  portmap: ["core", "protocol"],
  demo: ["core", "protocol", "redis", "stun", "peer", "rendezvous", "worker"],
  ctl: ["core", "protocol", "worker"],
};
/** Files outside `lib/` that `lib/` may read. */
const OUTSIDE_ALLOWED = new Set(["deno.json"]);

const SPECIFIER =
  /(?:^|[\s;}])(?:import|export)\s[^"';]*?from\s*["']([^"']+)["']|import\s*\(\s*["']([^"']+)["']\s*\)|^import\s*["']([^"']+)["']/gm;

/** The relative specifiers a module imports. */
export function importsOf(source: string): string[] {
  const out: string[] = [];
  for (const m of source.matchAll(SPECIFIER)) {
    const spec = m[1] ?? m[2] ?? m[3];
    if (spec.startsWith(".")) out.push(spec);
  }
  return out;
}

/** `lib/`-relative path → the folder it lives in, or "mod.ts". */
function layerOf(libPath: string): string {
  return libPath.includes("/") ? libPath.slice(0, libPath.indexOf("/")) : libPath;
}

/**
 * Every import in `files` (keyed by path relative to the repository root)
 * that breaks the layering, as "from → to: why".
 */
export function violations(files: ReadonlyMap<string, string>): string[] {
  const out: string[] = [];
  for (const [path, source] of files) {
    if (!path.startsWith("lib/")) continue;
    const from = layerOf(path.slice(4));
    for (const spec of importsOf(source)) {
      const target = new URL(spec, `file:///${path}`).pathname.slice(1);
      if (!target.startsWith("lib/")) {
        if (!OUTSIDE_ALLOWED.has(target)) {
          out.push(`${path} → ${target}: lib/ imports outside lib/`);
        }
        continue;
      }
      const to = layerOf(target.slice(4));
      const base = target.slice(target.lastIndexOf("/") + 1);
      if (base.startsWith("_") && to !== from) {
        out.push(`${path} → ${target}: a private file, for its own folder only`);
      }
      if (from === "mod.ts" || to === from) continue;
      if (to === "mod.ts") out.push(`${path} → ${target}: mod.ts is for users, not for lib/`);
      else if (!(ALLOWED[from] ?? []).includes(to)) {
        out.push(`${path} → ${target}: ${from}/ may import only ${ALLOWED[from]?.join(", ")}`);
      }
    }
  }
  return out;
}

async function readLib(): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  const walk = async (dir: string) => {
    for await (const entry of Deno.readDir(new URL(dir, ROOT))) {
      const path = `${dir}${entry.name}`;
      if (entry.isDirectory) await walk(`${path}/`);
      else if (entry.name.endsWith(".ts")) {
        files.set(path, await Deno.readTextFile(new URL(path, ROOT)));
      }
    }
  };
  await walk("lib/");
  return files;
}

Deno.test("lib/ holds one folder per subsystem and mod.ts, nothing else", async () => {
  const names: string[] = [];
  for await (const entry of Deno.readDir(new URL("lib/", ROOT))) {
    names.push(entry.isDirectory ? `${entry.name}/` : entry.name);
  }
  assert.deepEqual(names.sort(), [...Object.keys(ALLOWED).map((f) => `${f}/`), "mod.ts"].sort());
});

Deno.test("every import in lib/ points down the layers", async () => {
  const files = await readLib();
  assert.ok(files.size > 30, `found only ${files.size} files`);
  assert.deepEqual(violations(files), []);
});

Deno.test("violations() catches upward, outside and private imports", () => {
  const files = new Map([
    ["lib/peer/manager.ts", 'import type { X } from "../worker/client.ts";'],
    ["lib/stun/server.ts", 'import { y } from "../peer/udp_endpoint.ts";\nimport "./codec.ts";'],
    ["lib/core/log.ts", 'const m = await import("../../tests/_helpers.ts");'],
    ["lib/worker/a.ts", 'export { z } from "../peer/_util.ts";'],
    ["lib/worker/b.ts", 'import { v } from "../core/version.ts";\nimport x from "./_own.ts";'],
    ["lib/protocol/c.ts", 'import { m } from "../mod.ts";'],
    ["lib/mod.ts", 'export { startWorker } from "./worker/worker.ts";'],
    ["lib/core/version.ts", 'import j from "../../deno.json" with { type: "json" };'],
  ]);
  assert.deepEqual(violations(files), [
    "lib/peer/manager.ts → lib/worker/client.ts: peer/ may import only core, protocol, stun",
    "lib/stun/server.ts → lib/peer/udp_endpoint.ts: stun/ may import only core, protocol",
    "lib/core/log.ts → tests/_helpers.ts: lib/ imports outside lib/",
    "lib/worker/a.ts → lib/peer/_util.ts: a private file, for its own folder only",
    "lib/protocol/c.ts → lib/mod.ts: mod.ts is for users, not for lib/",
  ]);
});

/** Each coordinator, and the only files of `lib/` that may compose it (besides `mod.ts`). */
const COORDINATORS: Record<string, string[]> = {
  "lib/rendezvous/server.ts": ["lib/rendezvous/service.ts"],
  // The links' rehearsal composes two links in memory, as the manager composes real ones.
  "lib/peer/link.ts": ["lib/peer/manager.ts", "lib/peer/link_rehearsal.ts"],
  "lib/worker/worker.ts": ["lib/demo/main.ts"],
};

Deno.test("the rooms of a coordinator never import it: only its composer does", async () => {
  const files = await readLib();
  const wrong: string[] = [];
  for (const [path, source] of files) {
    if (path === "lib/mod.ts") continue;
    for (const spec of importsOf(source)) {
      const target = new URL(spec, `file:///${path}`).pathname.slice(1);
      const composers = COORDINATORS[target];
      if (composers && !composers.includes(path)) wrong.push(`${path} → ${target}`);
    }
  }
  assert.deepEqual(wrong, []);
});

/** The sizes a newcomer can still read in one sitting (issue 18). */
const MAX_FILE_LINES = 600;
const MAX_CLASS_LINES = 450;

/** Each top-level class in `source` with its length in lines (to its closing brace at column 0). */
export function classSizes(source: string): { name: string; lines: number }[] {
  const lines = source.split("\n");
  const out: { name: string; lines: number }[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = lines[i].match(/^(?:export )?(?:abstract )?class (\w+)/);
    if (!m) continue;
    if (/\{\s*\}\s*$/.test(lines[i])) {
      out.push({ name: m[1], lines: 1 });
      continue;
    }
    let end = i + 1;
    while (end < lines.length && lines[end] !== "}") end++;
    out.push({ name: m[1], lines: end - i + 1 });
  }
  return out;
}

Deno.test("no file in lib/ is over 600 lines and no class over 450", async () => {
  const big: string[] = [];
  for (const [path, source] of await readLib()) {
    const lines = source.split("\n").length - (source.endsWith("\n") ? 1 : 0);
    if (lines > MAX_FILE_LINES) big.push(`${path}: ${lines} lines`);
    for (const { name, lines } of classSizes(source)) {
      if (lines > MAX_CLASS_LINES) big.push(`${path}: class ${name}, ${lines} lines`);
    }
  }
  assert.deepEqual(big, []);
});

Deno.test("classSizes() measures each top-level class to its closing brace", () => {
  const source = "const a = 1;\nexport class A {\n  x = 1;\n}\nclass B {}\nabstract class C {\n}\n";
  assert.deepEqual(classSizes(source), [
    { name: "A", lines: 3 },
    { name: "B", lines: 1 },
    { name: "C", lines: 2 },
  ]);
});
