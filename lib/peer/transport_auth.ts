/**
 * Who is at the other end of a transport connection: the bytes a worker
 * signs for its certificate and a dialer signs for its proof, the group
 * secret's vouches, issuing a certificate with its credentials, and the
 * small length-prefixed JSON messages the proof travels in.
 *
 * @module
 */

import {
  fromBase64Url,
  type Identity,
  toBase64Url,
  verifySignature,
} from "../protocol/identity.ts";
import type { TransportCredentials } from "../protocol/messages.ts";
import { createPeerCertificate, type PeerCertificate } from "./cert.ts";

/** Connection close codes of the transport (QUIC application error codes). */
export const TransportClose = {
  /** The application closed the connection. */
  NORMAL: 0,
  /** The dialer's proof was missing, malformed or wrong. */
  AUTH_FAILED: 1,
  /** A connection for this pair already exists (simultaneous dials). */
  DUPLICATE: 2,
  /** The worker is shutting down. */
  SHUTDOWN: 3,
} as const;

/** The dialer's proof and the answer: small, bounded. */
const MAX_AUTH_BYTES = 1024;

/** A connection could not be made or was refused; says why. */
export class TransportError extends Error {
  /** Always `"TransportError"`. */
  override name = "TransportError";
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The bytes a worker signs to vouch for its transport certificate. */
export function certificatePayload(workerId: string, certHash: string): Uint8Array<ArrayBuffer> {
  return encoder.encode(`holepunch-transport-cert-v1\n${workerId}\n${certHash}`);
}

/** The bytes a dialer signs to prove who it is to the listener it reached. */
export function dialerPayload(
  dialerId: string,
  listenerId: string,
  listenerCertHash: string,
): Uint8Array<ArrayBuffer> {
  return encoder.encode(
    `holepunch-transport-dial-v1\n${dialerId}\n${listenerId}\n${listenerCertHash}`,
  );
}

/** The bytes `GROUP_SECRET` vouches for: a worker's group, id and key. */
export function vouchPayload(
  group: string,
  workerId: string,
  key: string,
): Uint8Array<ArrayBuffer> {
  return encoder.encode(`holepunch-group-vouch-v1\n${group}\n${workerId}\n${key}`);
}

/** Imports a `GROUP_SECRET` as an HMAC-SHA256 key. */
export async function importGroupSecret(secret: string): Promise<CryptoKey> {
  return await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
}

/** The vouch for (group, id, key) under the secret, base64url. */
export async function vouchFor(
  secret: CryptoKey,
  group: string,
  workerId: string,
  key: string,
): Promise<string> {
  return toBase64Url(
    new Uint8Array(await crypto.subtle.sign("HMAC", secret, vouchPayload(group, workerId, key))),
  );
}

/** What {@linkcode issue} signs with. */
export interface IssueOptions {
  workerId: string;
  identity: Identity;
  /** The group and its secret, to vouch with. */
  group?: { name: string; secret: CryptoKey };
}

/** A certificate and the credentials that publish it. */
export interface IssuedCertificate {
  cert: PeerCertificate;
  credentials: TransportCredentials;
}

/** Makes a certificate and signs (and, with a group secret, vouches for) it. */
export async function issue(options: IssueOptions): Promise<IssuedCertificate> {
  const cert = await createPeerCertificate({ name: "holepunch-peer" });
  const certHash = toBase64Url(cert.hash);
  const signature = toBase64Url(
    await options.identity.sign(certificatePayload(options.workerId, certHash)),
  );
  const { group } = options;
  const vouch = group &&
    await vouchFor(group.secret, group.name, options.workerId, options.identity.publicKey);
  return {
    cert,
    credentials: vouch === undefined
      ? { cert_hash: certHash, signature }
      : { cert_hash: certHash, signature, vouch },
  };
}

/** Reads one length-prefixed (uint16) JSON message of at most {@linkcode MAX_AUTH_BYTES}. */
export async function readMessage(
  reader: ReadableStreamBYOBReader | ReadableStreamDefaultReader<Uint8Array>,
): Promise<Record<string, unknown>> {
  let buffered = new Uint8Array(0);
  while (true) {
    if (buffered.length >= 2) {
      const length = (buffered[0] << 8) | buffered[1];
      if (length > MAX_AUTH_BYTES) throw new TransportError("auth message too large");
      if (buffered.length >= 2 + length) {
        const value = JSON.parse(decoder.decode(buffered.subarray(2, 2 + length)));
        if (typeof value !== "object" || value === null) {
          throw new TransportError("bad auth message");
        }
        return value;
      }
    }
    const { value, done } = await (reader as ReadableStreamDefaultReader<Uint8Array>).read();
    if (done) throw new TransportError("stream ended before the auth message");
    if (buffered.length + value.length > MAX_AUTH_BYTES + 2) {
      throw new TransportError("auth message too large");
    }
    const next = new Uint8Array(buffered.length + value.length);
    next.set(buffered);
    next.set(value, buffered.length);
    buffered = next;
  }
}

export function frameMessage(value: unknown): Uint8Array<ArrayBuffer> {
  const body = encoder.encode(JSON.stringify(value));
  const out = new Uint8Array(2 + body.length);
  out[0] = body.length >> 8;
  out[1] = body.length & 0xff;
  out.set(body, 2);
  return out;
}

/** Rejects after `ms` with a {@linkcode TransportError} naming `what`, unless `promise` settles first. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TransportError(`${what} timed out`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Null when a dialer proved it is `peerId`: its proof names it and is
 * signed under its key over one of `certHashes` (ours now, or the one
 * before the last rotation: which one a handshake used is not observable
 * here; either binds the proof to this worker), and `unvouched()` finds its
 * certificate vouched for. Else why not.
 */
export async function checkDialerProof(
  dial: { peerId: string; ourId: string; key: string | null; proof: Record<string, unknown> },
  certHashes: readonly (string | undefined)[],
  unvouched: () => Promise<string | null>,
): Promise<string | null> {
  const { peerId, ourId, key, proof } = dial;
  if (proof.worker_id !== peerId) return "the proof names another worker";
  if (!key) return "the rendezvous knows no key for this peer";
  if (typeof proof.signature !== "string") return "no signature";
  const why = await unvouched();
  if (why !== null) return why;
  for (const certHash of certHashes) {
    if (certHash === undefined) continue;
    if (await verifySignature(key, dialerPayload(peerId, ourId, certHash), proof.signature)) {
      return null;
    }
  }
  return "the signature does not verify under the peer's key";
}

/** A worker group's shared secret, by name (`GROUP_SECRET`, `GROUP`). */
export interface GroupSecret {
  /** The group's name. */
  name: string;
  /** The HMAC key made from the secret ({@linkcode importGroupSecret}). */
  secret: CryptoKey;
}

/**
 * Null when there is no group, or when its secret vouches for `peerId`'s
 * key (the vouch it published with its certificate); else why not.
 */
export async function unvouched(
  group: GroupSecret | undefined,
  peerId: string,
  peer: { key: string | null; transport: { vouch?: string } | null },
): Promise<string | null> {
  if (!group) return null;
  const vouch = peer.transport?.vouch;
  const refusal = "its key is not vouched for by GROUP_SECRET";
  if (!vouch || !peer.key) return refusal;
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = fromBase64Url(vouch, "vouch");
  } catch {
    return refusal;
  }
  const ok = await crypto.subtle.verify(
    "HMAC",
    group.secret,
    bytes,
    vouchPayload(group.name, peerId, peer.key),
  );
  return ok ? null : refusal;
}

/**
 * The streams `streams` (a connection's incoming streams, the proof stream
 * already read) has yet to give, as a stream of their own.
 */
export function restOfStreams(
  streams: ReadableStreamDefaultReader<Deno.QuicBidirectionalStream>,
): ReadableStream<Deno.QuicBidirectionalStream> {
  return new ReadableStream<Deno.QuicBidirectionalStream>({
    pull: async (controller) => {
      const next = await streams.read().catch(() => ({ done: true as const, value: undefined }));
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
    cancel: () => streams.cancel().catch(() => {}),
  });
}
