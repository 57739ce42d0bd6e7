/**
 * Reading configuration from environment variables, with one clear error per
 * bad value naming the variable. Entry points print {@linkcode ConfigError}'s
 * message and exit with {@linkcode CONFIG_EXIT_CODE}.
 *
 * @module
 */

import { isLogLevel, type LogFormat, Logger, type LogLevel } from "./log.ts";

/** Exit status for a configuration error (as the issue tracker asks: 2). */
export const CONFIG_EXIT_CODE = 2;

/** Environment variables as read, so tests can pass their own. */
export type Env = Readonly<Record<string, string | undefined>>;

/** A configuration value is missing or malformed. */
export class ConfigError extends Error {
  override name = "ConfigError";
  /** The environment variable at fault. */
  readonly variable: string;
  constructor(variable: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.variable = variable;
  }
}

/** The process environment (needs `--allow-env`). */
export function processEnv(): Env {
  return Deno.env.toObject();
}

function raw(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === "" ? undefined : value;
}

/** A string variable, or `fallback` when unset or empty. */
export function stringVar(env: Env, name: string, fallback: string): string;
export function stringVar(env: Env, name: string): string | undefined;
export function stringVar(env: Env, name: string, fallback?: string): string | undefined {
  return raw(env, name) ?? fallback;
}

/** Bounds for numeric variables. */
export interface NumberBounds {
  min?: number;
  max?: number;
  /** Only whole numbers. @default {false} */
  integer?: boolean;
}

/** A numeric variable within bounds, or `fallback` when unset. */
export function numberVar(
  env: Env,
  name: string,
  fallback: number,
  bounds: NumberBounds = {},
): number {
  const text = raw(env, name);
  if (text === undefined) return fallback;
  const { min = -Infinity, max = Infinity, integer = false } = bounds;
  const value = Number(text);
  const kind = integer ? "a whole number" : "a number";
  if (
    !/^[+-]?(\d+\.?\d*|\.\d+)$/.test(text) || !Number.isFinite(value) ||
    (integer && !Number.isInteger(value))
  ) {
    throw new ConfigError(
      name,
      `Cannot read ${name}: it must be ${kind}: current value is "${text}"`,
    );
  }
  if (value < min || value > max) {
    throw new ConfigError(
      name,
      `Cannot read ${name}: it must be between ${min} and ${max}: current value is "${text}"`,
    );
  }
  return value;
}

/** A TCP/UDP port; 0 asks the system for a free one. */
export function portVar(env: Env, name: string, fallback: number): number {
  return numberVar(env, name, fallback, { min: 0, max: 65535, integer: true });
}

const TRUE = new Set(["1", "true", "yes", "on"]);
const FALSE = new Set(["0", "false", "no", "off"]);

/** A boolean variable (`1/true/yes/on`, `0/false/no/off`). */
export function boolVar(env: Env, name: string, fallback: boolean): boolean {
  const text = raw(env, name);
  if (text === undefined) return fallback;
  const lower = text.toLowerCase();
  if (TRUE.has(lower)) return true;
  if (FALSE.has(lower)) return false;
  throw new ConfigError(
    name,
    `Cannot read ${name}: it must be true or false: current value is "${text}"`,
  );
}

/** Logging settings shared by both programs. */
export interface LogConfig {
  /** Lines below this level are dropped (`LOG_LEVEL`). */
  level: LogLevel;
  /** JSON lines or text (`LOG_FORMAT`). */
  format: LogFormat;
}

/**
 * `LOG_LEVEL` (debug, info, warn, error; default info) and `LOG_FORMAT`
 * (json, text; default text on a terminal, json otherwise, as Cloud Run wants).
 */
export function logConfig(env: Env, isTerminal: boolean): LogConfig {
  const level = (raw(env, "LOG_LEVEL") ?? "info").toLowerCase();
  if (!isLogLevel(level)) {
    throw new ConfigError(
      "LOG_LEVEL",
      `Cannot read LOG_LEVEL: it must be one of debug, info, warn, error: current value is "${level}"`,
    );
  }
  const format = (raw(env, "LOG_FORMAT") ?? (isTerminal ? "text" : "json")).toLowerCase();
  if (format !== "json" && format !== "text") {
    throw new ConfigError(
      "LOG_FORMAT",
      `Cannot read LOG_FORMAT: it must be json or text: current value is "${format}"`,
    );
  }
  return { level, format };
}

/** A logger for a program, from its {@linkcode LogConfig}. */
export function createLogger(config: LogConfig, service: string): Logger {
  return new Logger({ level: config.level, format: config.format, fields: { service } });
}

/**
 * Runs `load`; on a {@linkcode ConfigError} prints its message prefixed with
 * `program` to stderr and exits with {@linkcode CONFIG_EXIT_CODE}.
 */
export function loadOrExit<T>(program: string, load: () => T): T {
  try {
    return load();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`${program}: ${error.message}`);
    Deno.exit(CONFIG_EXIT_CODE);
  }
}

/** One row of the configuration table printed by `--help` and in docs/configuration.md. */
export interface VariableDoc {
  /** The variable's name. */
  name: string;
  /** Its default, as a person reads it. */
  fallback: string;
  /** What it sets. */
  meaning: string;
}

/** The logging variables both programs read (see {@linkcode logConfig}). */
export const LOG_VARIABLES: readonly VariableDoc[] = [
  { name: "LOG_LEVEL", fallback: "info", meaning: "debug, info, warn or error" },
  {
    name: "LOG_FORMAT",
    fallback: "json (text on a terminal)",
    meaning: "json (Cloud Logging) or text",
  },
];

/** A `--help` text: usage and the variable table. */
export function helpText(
  program: string,
  usage: string,
  variables: readonly VariableDoc[],
): string {
  const width = Math.max(...variables.map((v) => v.name.length));
  const rows = variables.map((v) =>
    `  ${v.name.padEnd(width)}  ${v.meaning} [default: ${v.fallback}]`
  );
  return `${program}\n\nUsage: ${usage}\n\nEnvironment variables:\n${rows.join("\n")}\n`;
}
