/**
 * Worker identities: a long-term Ed25519 key pair per worker (WebCrypto),
 * the proof a worker gives the rendezvous that it holds its key, and the
 * short fingerprint people compare.
 *
 * The registration proof is a signature over a fixed context string, the
 * authority (host[:port]) the worker dialed, its worker id and a nonce the
 * rendezvous chose for this connection only:
 *
 *   "holepunch-register-v1\n" authority "\n" worker_id "\n" nonce
 *
 * so a signature cannot be replayed on another connection (new nonce), for
 * another id, or at another rendezvous (another authority).
 *
 * @module
 */

import { decodeBase64Url, hex, toBase64Url } from "../core/encoding.ts";

const encoder = new TextEncoder();

/** Length of an Ed25519 public key (RFC 8032 §5.1.5). */
export const PUBLIC_KEY_BYTES = 32;
/** Length of an Ed25519 signature (RFC 8032 §5.1.6). */
export const SIGNATURE_BYTES = 64;
/** Bytes of randomness in a registration nonce. */
export const NONCE_BYTES = 32;
/** Domain separation for registration proofs; never reused for other signatures. */
const REGISTER_CONTEXT = "holepunch-register-v1";

/** A key or signature was not in the expected form. */
export class IdentityError extends Error {
  /** Always `"IdentityError"`. */
  override name = "IdentityError";
}

/** Decodes base64url (padding optional); throws {@linkcode IdentityError} on junk. */
export function fromBase64Url(text: string, what = "value"): Uint8Array<ArrayBuffer> {
  const bytes = decodeBase64Url(text);
  if (bytes === undefined) throw new IdentityError(`Cannot read ${what}: it is not base64url`);
  return bytes;
}

export { toBase64Url } from "../core/encoding.ts";

/**
 * Checks that `text` is a base64url Ed25519 public key and returns its
 * canonical form (unpadded).
 *
 * @throws {IdentityError} when it is not 32 bytes of base64url
 */
export function parsePublicKey(text: string): string {
  const bytes = fromBase64Url(text, "worker key");
  if (bytes.length !== PUBLIC_KEY_BYTES) {
    throw new IdentityError(
      `Cannot use worker key: an Ed25519 key is ${PUBLIC_KEY_BYTES} bytes: current length is ${bytes.length}`,
    );
  }
  return toBase64Url(bytes);
}

/**
 * The short form of a public key people compare: the first 8 bytes of its
 * SHA-256 as hex in groups of four ("3f2a:9c01:…").
 */
export async function fingerprint(publicKey: string): Promise<string> {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", fromBase64Url(publicKey, "worker key")),
  );
  return hex(digest.subarray(0, 8)).match(/.{4}/g)!.join(":");
}

/** A fresh registration nonce (base64url of {@linkcode NONCE_BYTES} random bytes). */
export function newNonce(): string {
  return toBase64Url(crypto.getRandomValues(new Uint8Array(NONCE_BYTES)));
}

/** The bytes a worker signs to register (see the module doc). */
export function registrationPayload(
  authority: string,
  workerId: string,
  nonce: string,
): Uint8Array<ArrayBuffer> {
  return encoder.encode(`${REGISTER_CONTEXT}\n${authority.toLowerCase()}\n${workerId}\n${nonce}`);
}

/**
 * A worker's long-term key pair.
 *
 * @example
 * ```ts
 * import { Identity } from "./identity.ts";
 *
 * const identity = await Identity.generate();
 * const signature = await identity.sign(new TextEncoder().encode("hello"));
 * console.log(identity.publicKey, signature.length); // "…", 64
 * ```
 */
export class Identity {
  /** The public key, base64url (32 bytes). */
  readonly publicKey: string;
  /** Its fingerprint (see {@linkcode fingerprint}). */
  readonly fingerprint: string;
  readonly #privateKey: CryptoKey;
  readonly #jwk: JsonWebKey;

  private constructor(publicKey: string, fp: string, privateKey: CryptoKey, jwk: JsonWebKey) {
    this.publicKey = publicKey;
    this.fingerprint = fp;
    this.#privateKey = privateKey;
    this.#jwk = jwk;
  }

  /** A new random identity. */
  static async generate(): Promise<Identity> {
    const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, [
      "sign",
      "verify",
    ]) as CryptoKeyPair;
    return await Identity.fromJwk(await crypto.subtle.exportKey("jwk", pair.privateKey));
  }

  /**
   * An identity from a private key in JWK form (`{"kty":"OKP","crv":"Ed25519","d":…,"x":…}`).
   *
   * @throws {IdentityError} when `jwk` is not an Ed25519 private key
   */
  static async fromJwk(jwk: JsonWebKey): Promise<Identity> {
    if (
      jwk?.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.d !== "string" ||
      typeof jwk.x !== "string"
    ) {
      throw new IdentityError(
        'Cannot use key: expected an Ed25519 private key as JWK ({"kty":"OKP","crv":"Ed25519","d":…,"x":…})',
      );
    }
    const clean: JsonWebKey = { kty: "OKP", crv: "Ed25519", d: jwk.d, x: jwk.x };
    let privateKey: CryptoKey;
    try {
      privateKey = await crypto.subtle.importKey("jwk", clean, { name: "Ed25519" }, true, [
        "sign",
      ]);
    } catch (error) {
      throw new IdentityError(`Cannot use key: ${(error as Error).message}`, { cause: error });
    }
    const publicKey = parsePublicKey(jwk.x);
    // A JWK whose x does not belong to its d would sign under a key nobody can verify.
    const probe = encoder.encode("holepunch-key-check");
    const verifier = await importPublicKey(publicKey);
    const ok = await crypto.subtle.verify(
      "Ed25519",
      verifier,
      await crypto.subtle.sign("Ed25519", privateKey, probe),
      probe,
    );
    if (!ok) throw new IdentityError("Cannot use key: its public part (x) does not match d");
    return new Identity(publicKey, await fingerprint(publicKey), privateKey, clean);
  }

  /** The private key as JWK, for a key file. */
  toJwk(): JsonWebKey {
    return { ...this.#jwk };
  }

  /** An Ed25519 signature over `data`. */
  async sign(data: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
    return new Uint8Array(await crypto.subtle.sign("Ed25519", this.#privateKey, data));
  }

  /** Signs a registration challenge; the answer for `prove_key`, base64url. */
  async proveRegistration(authority: string, workerId: string, nonce: string): Promise<string> {
    return toBase64Url(await this.sign(registrationPayload(authority, workerId, nonce)));
  }
}

/** Imports a base64url Ed25519 public key for verification. */
export async function importPublicKey(publicKey: string): Promise<CryptoKey> {
  return await crypto.subtle.importKey(
    "raw",
    fromBase64Url(publicKey, "worker key"),
    { name: "Ed25519" },
    false,
    ["verify"],
  );
}

/** True when `signature` (base64url) is `publicKey`'s signature over `data`. */
export async function verifySignature(
  publicKey: string | CryptoKey,
  data: Uint8Array<ArrayBuffer>,
  signature: string,
): Promise<boolean> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = fromBase64Url(signature, "signature");
  } catch {
    return false;
  }
  if (bytes.length !== SIGNATURE_BYTES) return false;
  const key = typeof publicKey === "string" ? await importPublicKey(publicKey) : publicKey;
  return await crypto.subtle.verify("Ed25519", key, bytes, data);
}
