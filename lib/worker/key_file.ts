/**
 * The worker's long-term key on disk (`WORKER_KEY_FILE`): a JWK file made
 * with mode 0600 on first start and read on every later one, so the worker
 * keeps its identity, and with it its worker id at the rendezvous, across
 * restarts.
 *
 * @module
 */

import type { Logger } from "../core/log.ts";
import { Identity, IdentityError } from "../protocol/identity.ts";

/** The key file could not be read, parsed or written; says which and why. */
export class KeyFileError extends Error {
  /** Always `"KeyFileError"`. */
  override name = "KeyFileError";
  /** The file at fault. */
  readonly path: string;

  /** An error about `path`. */
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.path = path;
  }
}

/**
 * The worker's identity: read from `path`, created there (mode 0600) when it
 * does not exist, or, without a path, made fresh for this process only.
 * Logs which, with the public key and its fingerprint.
 *
 * @throws {KeyFileError} when the file exists but is not a usable key, or
 * cannot be created
 */
export async function loadIdentity(path: string | undefined, logger: Logger): Promise<Identity> {
  if (path === undefined) {
    const identity = await Identity.generate();
    logger.info("worker key generated for this process (set WORKER_KEY_FILE to keep it)", {
      public_key: identity.publicKey,
      key_fingerprint: identity.fingerprint,
    });
    return identity;
  }
  let text: string | undefined;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new KeyFileError(
        path,
        `Cannot read WORKER_KEY_FILE ${path}: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
  }
  if (text !== undefined) {
    let identity: Identity;
    try {
      identity = await Identity.fromJwk(JSON.parse(text));
    } catch (error) {
      // A parse error quotes the text it choked on, and this text is a
      // private key: say what is wrong without a byte of it (and keep it
      // out of `cause`, which error printers show too).
      if (error instanceof SyntaxError) {
        throw new KeyFileError(
          path,
          `Cannot use WORKER_KEY_FILE ${path}: it is not JSON (expected an Ed25519 private key as JWK)`,
        );
      }
      const why = error instanceof IdentityError ? error.message : "not a usable key";
      throw new KeyFileError(path, `Cannot use WORKER_KEY_FILE ${path}: ${why}`);
    }
    const mode = (await Deno.stat(path)).mode;
    if (mode !== null && (mode & 0o077) !== 0) {
      logger.warn("worker key file is readable by others; chmod 600 it", {
        path,
        mode: `0${(mode & 0o777).toString(8)}`,
      });
    }
    logger.info("worker key loaded", {
      path,
      public_key: identity.publicKey,
      key_fingerprint: identity.fingerprint,
    });
    return identity;
  }
  const identity = await Identity.generate();
  try {
    // createNew: two processes starting at once must not overwrite each other's key.
    await Deno.writeTextFile(path, JSON.stringify(identity.toJwk()) + "\n", {
      mode: 0o600,
      createNew: true,
    });
  } catch (error) {
    if (error instanceof Deno.errors.AlreadyExists) return await loadIdentity(path, logger);
    throw new KeyFileError(
      path,
      `Cannot create WORKER_KEY_FILE ${path}: ${(error as Error).message}`,
      { cause: error },
    );
  }
  logger.info("worker key created", {
    path,
    public_key: identity.publicKey,
    key_fingerprint: identity.fingerprint,
  });
  return identity;
}
