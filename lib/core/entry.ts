/**
 * What the three entry points (`rendezvous.ts`, `worker.ts`, `stun.ts`)
 * share: `--help`, a clean stop on SIGTERM or SIGINT (once, however many
 * signals come), and leaving with the logs flushed.
 *
 * @module
 */

import { helpText, type VariableDoc } from "./env.ts";
import { flushLogs, type Logger } from "./log.ts";

/** With `--help` or `-h` among the arguments: prints the configuration table and exits 0. */
export function exitOnHelp(title: string, usage: string, variables: readonly VariableDoc[]): void {
  if (!Deno.args.includes("--help") && !Deno.args.includes("-h")) return;
  console.log(helpText(title, usage, variables));
  Deno.exit(0);
}

/**
 * On the first SIGTERM or SIGINT: logs it, runs `stop`, flushes the logs
 * and exits 0 (later signals are ignored while it stops). Install it before
 * anything listens, so a signal right after start drains rather than kills.
 */
export function onStopSignal(log: Logger, stop: (signal: Deno.Signal) => Promise<void>): void {
  let stopping = false;
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, () => {
      if (stopping) return;
      stopping = true;
      log.info("shutdown signal received", { signal });
      void stop(signal).catch((error) => log.error("stop failed", { error })).finally(() =>
        exitAfterLogs(0)
      );
    });
  }
}

/** Flushes the logs, then exits with `code`. */
export function exitAfterLogs(code: number): never {
  flushLogs();
  Deno.exit(code);
}
