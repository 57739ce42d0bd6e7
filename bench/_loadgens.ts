/**
 * Drives bench/_loadgen.ts processes from a benchmark: spawn, send commands,
 * read their JSON lines.
 *
 * @module
 */

const ROOT = new URL("../", import.meta.url);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One load-generator process. */
export class LoadGen {
  child: Deno.ChildProcess;
  messages: Record<string, unknown>[] = [];
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #reading: Promise<void>;

  constructor(options: Record<string, unknown>) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net", "bench/_loadgen.ts", JSON.stringify(options)],
      cwd: ROOT.pathname,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#writer = this.child.stdin.getWriter();
    const stdout = this.child.stdout;
    this.#reading = (async () => {
      let buffer = "";
      for await (const chunk of stdout.pipeThrough(new TextDecoderStream())) {
        buffer += chunk;
        let i;
        while ((i = buffer.indexOf("\n")) >= 0) {
          this.messages.push(JSON.parse(buffer.slice(0, i)));
          buffer = buffer.slice(i + 1);
        }
      }
    })();
  }

  async command(text: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(text + "\n"));
  }

  last(type: string): Record<string, unknown> | undefined {
    return this.messages.findLast((m) => m.type === type);
  }

  async next(type: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const from = this.messages.length;
    const start = performance.now();
    while (performance.now() - start < timeoutMs) {
      const found = this.messages.slice(from).find((m) => m.type === type);
      if (found) return found;
      await sleep(20);
    }
    throw new Error(`load generator: no ${type} message`);
  }

  async stop(): Promise<void> {
    await this.command("stop").catch(() => {});
    await this.child.status;
    await this.#reading.catch(() => {});
  }
}
