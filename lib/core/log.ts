/**
 * Structured logging: one JSON object per line with `severity`, `message`,
 * `time` and fields, which Cloud Logging parses as a structured entry; or a
 * readable line when a person is watching a terminal.
 *
 * @module
 */

import type { Clock } from "./clock.ts";
import { systemClock } from "./clock.ts";

/** Log levels, least to most severe. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** How lines are written. */
export type LogFormat = "json" | "text";

/** Values a log field may carry. */
export type LogFields = Record<string, unknown>;

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Cloud Logging's names for our levels. */
const SEVERITY: Record<LogLevel, string> = {
  debug: "DEBUG",
  info: "INFO",
  warn: "WARNING",
  error: "ERROR",
};

/** True when `value` names a {@linkcode LogLevel}. */
export function isLogLevel(value: string): value is LogLevel {
  return Object.hasOwn(RANK, value);
}

/** Options for {@linkcode Logger}. */
export interface LoggerOptions {
  /** Lines below this level are dropped. @default {"info"} */
  level?: LogLevel;
  /** One JSON object a line, or readable text. @default {"json"} */
  format?: LogFormat;
  /** Receives each finished line. @default {writes to stderr} */
  sink?: (line: string) => void;
  /** Fields added to every line. */
  fields?: LogFields;
  /** Time source for the timestamps. @default {systemClock} */
  clock?: Clock;
}

const encoder = new TextEncoder();

/**
 * Lines waiting for stderr. One write per burst instead of one per line: a
 * write costs about as much as building the line, and a busy rendezvous logs
 * several lines per registration. Flushed within 10 ms, at 64 KiB, and by
 * {@linkcode flushLogs} before exiting.
 */
let pending: string[] = [];
let pendingLength = 0;
let flushTimer: ReturnType<typeof setTimeout> | undefined;
const FLUSH_AFTER_MS = 10;
const FLUSH_AT_CHARS = 64 * 1024;

/** Writes every buffered line now (call before `Deno.exit`). */
export function flushLogs(): void {
  if (flushTimer !== undefined) clearTimeout(flushTimer);
  flushTimer = undefined;
  if (pending.length === 0) return;
  const text = pending.join("\n") + "\n";
  pending = [];
  pendingLength = 0;
  try {
    const bytes = encoder.encode(text);
    let written = 0;
    while (written < bytes.length) written += Deno.stderr.writeSync(bytes.subarray(written));
  } catch {
    // A closed stderr must not take the service down with it.
  }
}

function stderrSink(line: string): void {
  pending.push(line);
  pendingLength += line.length;
  if (pendingLength >= FLUSH_AT_CHARS) flushLogs();
  else flushTimer ??= setTimeout(flushLogs, FLUSH_AFTER_MS);
}

/** Turns field values JSON cannot carry faithfully into something it can. */
function fieldValue(value: unknown): unknown {
  if (value instanceof Error) {
    return { name: value.name, message: value.message };
  }
  if (typeof value === "bigint") return value.toString();
  return value;
}

/**
 * A structured logger.
 *
 * @example
 * ```ts
 * const log = new Logger({ level: "info", fields: { service: "rendezvous" } });
 * log.info("worker registered", { worker_id: "w1", observed_ip: "192.0.2.7", total: 3 });
 * // {"severity":"INFO","message":"worker registered","time":"…","service":"rendezvous",…}
 * ```
 */
export class Logger {
  /** Lines below this level are dropped. */
  readonly level: LogLevel;
  /** JSON or text lines. */
  readonly format: LogFormat;
  #sink: (line: string) => void;
  #fields: LogFields;
  #clock: Clock;
  #threshold: number;

  /** A logger writing to stderr unless `options.sink` says otherwise. */
  constructor(options: LoggerOptions = {}) {
    this.level = options.level ?? "info";
    this.format = options.format ?? "json";
    this.#sink = options.sink ?? stderrSink;
    this.#fields = options.fields ?? {};
    this.#clock = options.clock ?? systemClock;
    this.#threshold = RANK[this.level];
  }

  /** A logger that adds `fields` to every line of this one. */
  child(fields: LogFields): Logger {
    return new Logger({
      level: this.level,
      format: this.format,
      sink: this.#sink,
      fields: { ...this.#fields, ...fields },
      clock: this.#clock,
    });
  }

  /** True when lines at `level` are written; lets callers skip building fields. */
  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.#threshold;
  }

  /** Writes a debug line. */
  debug(message: string, fields?: LogFields): void {
    this.#write("debug", message, fields);
  }

  /** Writes an info line. */
  info(message: string, fields?: LogFields): void {
    this.#write("info", message, fields);
  }

  /** Writes a warning line. */
  warn(message: string, fields?: LogFields): void {
    this.#write("warn", message, fields);
  }

  /** Writes an error line. */
  error(message: string, fields?: LogFields): void {
    this.#write("error", message, fields);
  }

  #write(level: LogLevel, message: string, fields?: LogFields): void {
    if (RANK[level] < this.#threshold) return;
    const time = new Date(this.#clock.now()).toISOString();
    const merged: LogFields = { ...this.#fields };
    if (fields) {
      for (const key in fields) merged[key] = fieldValue(fields[key]);
    }
    let line: string;
    if (this.format === "json") {
      line = JSON.stringify({ severity: SEVERITY[level], message, time, ...merged });
    } else {
      const rest = Object.entries(merged)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) =>
          `${k}=${typeof v === "string" ? textValue(v) : escapeText(JSON.stringify(v))}`
        )
        .join(" ");
      line = `${time} ${SEVERITY[level].padEnd(7)} ${message}${rest ? " " + rest : ""}`;
    }
    this.#sink(line);
  }
}

/** What a plain value may hold in a text line; anything else is quoted. */
const PLAIN = /^[^\s"=\\\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*$/u;
/** Characters JSON leaves as they are that a terminal or a log reader would act on. */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;

/**
 * A string field of a text line: as it is when plain, else quoted with
 * every control or format character escaped, so a client-supplied value (a
 * close reason, a worker id) can neither end the line, forge another, nor
 * drive the terminal.
 */
function textValue(value: string): string {
  if (value !== "" && PLAIN.test(value)) return value;
  return escapeText(JSON.stringify(value));
}

function escapeText(json: string): string {
  return json.replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** A logger that writes nothing; a default for library code and tests. */
export const silentLogger: Logger = new Logger({ sink: () => {} });
