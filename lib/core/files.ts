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
