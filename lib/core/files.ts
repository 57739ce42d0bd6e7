/**
 * Files a service keeps its state in: written whole to a temporary file
 * beside the target and renamed over it (atomic on one filesystem), so a
 * crash mid-write leaves the old file, never half of the new one.
 *
 * @module
 */

/**
 * Writes `text` to `path` atomically, readable by the owner only.
 *
 * @throws whatever the file system throws (the temporary file is removed)
 */
export async function writeTextFileAtomic(path: string, text: string): Promise<void> {
  const temp = `${path}.${crypto.randomUUID()}.tmp`;
  try {
    await Deno.writeTextFile(temp, text, { mode: 0o600 });
    await Deno.rename(temp, path);
  } catch (error) {
    await Deno.remove(temp).catch(() => {});
    throw error;
  }
}

/**
 * The JSON value in `path`, or undefined when there is no such file. A
 * file over `maxBytes`, unreadable, or not JSON throws `fail(message)`,
 * with a message that names the file by `name` and never quotes it (it may
 * hold secrets).
 */
export function readJsonFileSync(
  path: string,
  name: string,
  maxBytes: number,
  fail: (message: string) => Error,
): unknown {
  const read = <T>(what: () => T): T | undefined => {
    try {
      return what();
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return undefined;
      throw fail(`Cannot read ${name} ${path}: ${(error as Error).message}`);
    }
  };
  const size = read(() => Deno.statSync(path).size);
  if (size === undefined) return undefined;
  if (size > maxBytes) throw fail(`Cannot use ${name} ${path}: ${size} bytes, at most ${maxBytes}`);
  const text = read(() => Deno.readTextFileSync(path));
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw fail(`Cannot use ${name} ${path}: it is not JSON`);
  }
}
