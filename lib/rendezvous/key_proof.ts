/**
 * The key proof of a keyed registration: a fresh nonce as a `challenge`,
 * and the worker's Ed25519 signature over the authority it dialed, its id
 * and the nonce, within a deadline; then the claim of the id's binding to
 * that key (or to none), which another key's recent session refuses.
 *
 * @module
 */

import { type Clock, delay } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { CloseCode, CloseReason } from "../protocol/close_codes.ts";
import {
  fingerprint,
  importPublicKey,
  newNonce,
  registrationPayload,
  verifySignature,
} from "../protocol/identity.ts";
import type { Registry } from "./registry.ts";
import type { Session } from "./session.ts";

/** What {@linkcode proveKey} and {@linkcode admitKey} need. */
export interface KeyProofOptions {
  /** `KEY_HOLD_SEC`: how long an id stays bound to its key after its last session. */
  keyHoldSec: number;
  /** How long the worker has to answer. */
  keyProofTimeoutMs: number;
  /** Authorities the proof may name; unset: the `Host` the session dialed. */
  publicHosts?: readonly string[];
  logger: Logger;
  clock: Clock;
}

/**
 * Challenges a keyed session and checks its answer; true when the key is
 * proven. On failure the session is closed with 4004 and logged.
 */
export async function proveKey(
  session: Session,
  key: string,
  options: KeyProofOptions,
): Promise<boolean> {
  const nonce = newNonce();
  session.proof = Promise.withResolvers<string | null>();
  session.send({ type: "challenge", nonce });
  const timeout = new AbortController();
  const signature = await Promise.race([
    session.proof.promise,
    delay(options.keyProofTimeoutMs, { signal: timeout.signal, clock: options.clock })
      .then(() => undefined, () => undefined),
  ]);
  timeout.abort();
  session.proof = undefined;
  if (signature === null) return false; // The socket closed.
  const fields = {
    worker_id: session.workerId,
    key_fingerprint: await fingerprint(key),
    observed_ip: session.observedIp,
  };
  if (signature === undefined) {
    options.logger.warn("worker refused: key proof timed out", fields);
    session.close(CloseCode.KEY_PROOF_FAILED, CloseReason.KEY_PROOF_TIMEOUT);
    return false;
  }
  const verifier = await importPublicKey(key);
  for (const authority of options.publicHosts ?? [session.authority]) {
    const payload = registrationPayload(authority, session.workerId, nonce);
    if (await verifySignature(verifier, payload, signature)) return true;
  }
  options.logger.warn("worker refused: key proof failed", {
    ...fields,
    authorities: options.publicHosts ?? [session.authority],
  });
  session.close(CloseCode.KEY_PROOF_FAILED, CloseReason.KEY_PROOF_FAILED);
  return false;
}

/**
 * The key gate of a registration: the proof of the session's key (if it
 * has one), then the claim of its id for that key. True when the session
 * may register; otherwise it is closed (4004 or 4003) and the refusal logged.
 */
export async function admitKey(
  session: Session,
  registry: Registry,
  options: KeyProofOptions,
): Promise<boolean> {
  if (session.socket.readyState !== WebSocket.OPEN) return false;
  const { key } = session;
  if (key !== null && !(await proveKey(session, key, options))) return false;
  if (session.socket.readyState !== WebSocket.OPEN) return false;
  const claim = await registry.claimKey(
    session.workerId,
    key,
    session.id,
    options.clock.now(),
    options.keyHoldSec * 1000,
  );
  if (claim.ok) return true;
  options.logger.warn("worker refused: id bound to another key", {
    worker_id: session.workerId,
    key_fingerprint: key === null ? null : await fingerprint(key),
    bound_fingerprint: await fingerprint(claim.bound),
    observed_ip: session.observedIp,
  });
  session.close(
    CloseCode.KEY_REFUSED,
    key === null ? CloseReason.KEY_REQUIRED : CloseReason.KEY_BOUND,
  );
  return false;
}
