/**
 * A single instance's key bindings across restarts (`KEY_BINDINGS_FILE`):
 * without them, after a restart the first key to register an id takes it,
 * and the rightful worker is refused for `KEY_HOLD_SEC`. The file is JSON,
 * written whole to a temporary file and renamed over the old one (atomic on
 * one filesystem), at most every 200 ms while bindings change and once at
 * shutdown. A fleet keeps its bindings in Redis instead.
 *
 * A binding held by a session when the instance stopped is restored as
 * idle since the restart: its worker has `KEY_HOLD_SEC` to come back.
 *
 * @module
 */

import { readJsonFileSync, writeTextFileAtomic } from "../core/files.ts";
import { type Logger } from "../core/log.ts";
import { isValidWorkerId } from "../protocol/messages.ts";
import { parsePublicKey } from "../protocol/identity.ts";

/** One binding as stored: `idle_since` (epoch ms) is null while a session held it. */
export interface StoredBinding {
  id: string;
  key: string;
  idle_since: number | null;
}

/** Most bytes the file may have (a million bindings are about 100 MB). */
export const MAX_BINDINGS_FILE_BYTES = 128 * 1024 * 1024;
/** How long a change waits before it is written, so a burst of them is one write. */
const SAVE_DELAY_MS = 200;

/** The file cannot be read or is not a bindings file; its text is never quoted. */
export class BindingsFileError extends Error {
  override name = "BindingsFileError";
}

/**
 * The bindings in `path`; none when it does not exist yet.
 *
 * @throws {BindingsFileError} when it cannot be read or holds anything else
 */
export function loadBindings(path: string): StoredBinding[] {
  const value = readJsonFileSync(
    path,
    "KEY_BINDINGS_FILE",
    MAX_BINDINGS_FILE_BYTES,
    (message) => new BindingsFileError(message),
  );
  if (value === undefined) return [];
  const list = (value as { bindings?: unknown })?.bindings;
  if (!Array.isArray(list)) {
    throw new BindingsFileError(
      `Cannot use KEY_BINDINGS_FILE ${path}: expected {"bindings":[{"id","key","idle_since"},…]}`,
    );
  }
  return list.map((entry, i) => {
    const { id, key, idle_since } = (entry ?? {}) as Record<string, unknown>;
    let valid = typeof id === "string" && isValidWorkerId(id) && typeof key === "string" &&
      (idle_since === null || (typeof idle_since === "number" && Number.isFinite(idle_since)));
    if (valid) {
      try {
        parsePublicKey(key as string);
      } catch {
        valid = false;
      }
    }
    if (!valid) {
      throw new BindingsFileError(
        `Cannot use KEY_BINDINGS_FILE ${path}: binding ${i} is not {"id","key","idle_since"}`,
      );
    }
    return { id: id as string, key: key as string, idle_since: idle_since as number | null };
  });
}

/** Writes the bindings to their file when they change. */
export class BindingsFile {
  #path: string;
  #snapshot: () => StoredBinding[];
  #log: Logger;
  #timer?: ReturnType<typeof setTimeout>;
  #writing: Promise<void> = Promise.resolve();

  /** Keeps `snapshot()` in `path`. */
  constructor(path: string, snapshot: () => StoredBinding[], log: Logger) {
    this.#path = path;
    this.#snapshot = snapshot;
    this.#log = log;
  }

  /** The bindings changed: written within {@linkcode SAVE_DELAY_MS}. */
  changed(): void {
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      void this.flush();
    }, SAVE_DELAY_MS);
  }

  /** Writes now (after any write in progress); a failure is logged, never thrown. */
  flush(): Promise<void> {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#writing = this.#writing.then(() => this.#write());
    return this.#writing;
  }

  async #write(): Promise<void> {
    try {
      await writeTextFileAtomic(this.#path, JSON.stringify({ bindings: this.#snapshot() }));
    } catch (error) {
      this.#log.error("cannot write KEY_BINDINGS_FILE", { path: this.#path, error });
    }
  }
}
