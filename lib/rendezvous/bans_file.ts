/**
 * A single instance's revocations across restarts (`REVOCATIONS_FILE`):
 * JSON `{"bans": [...]}`, written whole and renamed over the old file on
 * every change (bans are few and rare), before the ban takes effect — a ban
 * that cannot be written is not made (the admin hears 503). A fleet keeps
 * its bans in Redis instead (`fleet_bans.ts`).
 *
 * @module
 */

import { readJsonFileSync, writeTextFileAtomic } from "../core/files.ts";
import { type Ban, type BanListener, type BanStore, MAX_BANS, parseBan } from "./revocations.ts";

/** Most bytes the file may have (100,000 bans are about 40 MB). */
const MAX_FILE_BYTES = 64 * 1024 * 1024;

/** The file cannot be read or is not a revocations file; its text is never quoted. */
export class BansFileError extends Error {
  /** Always `"BansFileError"`. */
  override name = "BansFileError";
}

/** Revocations kept in a file. */
export class BansFile implements BanStore {
  #path: string;
  #bans = new Map<string, Ban>();
  #writing: Promise<void> = Promise.resolve();

  /**
   * The bans in `path` (none when it does not exist yet).
   *
   * @throws {BansFileError} when it cannot be read or holds anything else
   */
  constructor(path: string) {
    this.#path = path;
    for (const ban of loadBans(path)) this.#bans.set(ban.id, ban);
  }

  /** How many bans the file held at start. */
  get size(): number {
    return this.#bans.size;
  }

  put(ban: Ban): Promise<void> {
    return this.#write((bans) => bans.set(ban.id, ban));
  }

  remove(ids: readonly string[]): Promise<void> {
    return this.#write((bans) => ids.forEach((id) => bans.delete(id)));
  }

  all(): Promise<Ban[]> {
    return Promise.resolve([...this.#bans.values()]);
  }

  /** The rendezvous's bans start as the file's. */
  listen(listener: BanListener): void {
    void listener.reload();
  }

  /** Changes a copy, writes it, and keeps it only once written (one write at a time). */
  #write(change: (bans: Map<string, Ban>) => void): Promise<void> {
    const done = this.#writing.then(async () => {
      const next = new Map(this.#bans);
      change(next);
      const now = Date.now();
      for (const [id, ban] of next) {
        if (ban.expires_at !== null && ban.expires_at <= now) next.delete(id);
      }
      await writeTextFileAtomic(this.#path, JSON.stringify({ bans: [...next.values()] }));
      this.#bans = next;
    });
    this.#writing = done.catch(() => {});
    return done;
  }
}

function loadBans(path: string): Ban[] {
  const value = readJsonFileSync(
    path,
    "REVOCATIONS_FILE",
    MAX_FILE_BYTES,
    (message) => new BansFileError(message),
  );
  if (value === undefined) return [];
  const list = (value as { bans?: unknown })?.bans;
  if (!Array.isArray(list) || list.length > MAX_BANS) {
    throw new BansFileError(
      `Cannot use REVOCATIONS_FILE ${path}: expected {"bans":[…]} with at most ${MAX_BANS}`,
    );
  }
  return list.map((entry, i) => {
    const ban = parseBan(entry);
    if (!ban) throw new BansFileError(`Cannot use REVOCATIONS_FILE ${path}: ban ${i} is not one`);
    return ban;
  });
}
