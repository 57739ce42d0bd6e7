/**
 * Short-lived self-signed TLS certificates for the peer transport, made in
 * process with WebCrypto (the `denoland/deno` images have no `openssl`).
 *
 * A peer's certificate is never checked against a CA: the dialer pins its
 * SHA-256 (`serverCertificateHashes`, the WebTransport rule: ECDSA P-256,
 * valid at most 14 days), and the hash itself is signed by the peer's
 * long-term identity key. So the certificate only needs to be well-formed
 * DER: an X.509 v3 certificate (RFC 5280 §4.1) with an ECDSA P-256 key,
 * signed by that key.
 *
 * @module
 */

/** RFC 5280 §4.1: the longest life the WebTransport hash rule accepts is 14 days. */
export const MAX_CERT_LIFETIME_MS = 14 * 86_400_000;
/** Backdating, so a peer whose clock is a little behind still sees the certificate valid. */
const BACKDATE_MS = 3_600_000;

// ---- a minimal DER encoder (X.690) -------------------------------------------

function length(n: number): number[] {
  if (n < 0x80) return [n];
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return [0x80 | bytes.length, ...bytes];
}

function tlv(tag: number, ...content: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const total = content.reduce((sum, c) => sum + c.length, 0);
  const head = [tag, ...length(total)];
  const out = new Uint8Array(head.length + total);
  out.set(head);
  let at = head.length;
  for (const c of content) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

const sequence = (...items: Uint8Array[]): Uint8Array<ArrayBuffer> => tlv(0x30, ...items);
const set = (...items: Uint8Array[]) => tlv(0x31, ...items);

/** A non-negative INTEGER from big-endian magnitude bytes (X.690 §8.3). */
function integer(magnitude: Uint8Array): Uint8Array {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  // A leading 1 bit would read as negative: prefix a zero byte.
  return trimmed[0] & 0x80 ? tlv(0x02, new Uint8Array([0]), trimmed) : tlv(0x02, trimmed);
}

function oid(text: string): Uint8Array {
  const parts = text.split(".").map(Number);
  const bytes = [40 * parts[0] + parts[1]];
  for (const part of parts.slice(2)) {
    const chunk = [part & 0x7f];
    for (let v = Math.floor(part / 128); v > 0; v = Math.floor(v / 128)) {
      chunk.unshift(0x80 | (v & 0x7f));
    }
    bytes.push(...chunk);
  }
  return tlv(0x06, new Uint8Array(bytes));
}

const utf8 = (text: string) => tlv(0x0c, new TextEncoder().encode(text));

/** UTCTime for years before 2050, GeneralizedTime after (RFC 5280 §4.1.2.5). */
function time(ms: number): Uint8Array {
  const iso = new Date(ms).toISOString(); // 2026-11-25T15:28:57.123Z
  const digits = iso.slice(0, 19).replace(/[-:T]/g, "") + "Z"; // 20261125152857Z
  const year = Number(iso.slice(0, 4));
  return year < 2050
    ? tlv(0x17, new TextEncoder().encode(digits.slice(2)))
    : tlv(0x18, new TextEncoder().encode(digits));
}

const ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";
const COMMON_NAME = "2.5.4.3";
const SUBJECT_ALT_NAME = "2.5.29.17";

/** ECDSA-Sig-Value (RFC 3279 §2.2.3) from WebCrypto's r‖s. */
function ecdsaSignature(raw: Uint8Array): Uint8Array {
  const half = raw.length / 2;
  return sequence(integer(raw.subarray(0, half)), integer(raw.subarray(half)));
}

function pem(label: string, der: Uint8Array): string {
  let binary = "";
  for (const b of der) binary += String.fromCharCode(b);
  const lines = btoa(binary).match(/.{1,64}/g)!.join("\n");
  return `-----BEGIN ${label}-----\n${lines}\n-----END ${label}-----\n`;
}

/** A certificate and its key, ready for `Deno.QuicEndpoint.listen`. */
export interface PeerCertificate {
  /** The certificate, PEM. */
  cert: string;
  /** Its private key, PKCS#8 PEM. */
  key: string;
  /** SHA-256 of the certificate's DER: what a dialer pins. */
  hash: Uint8Array<ArrayBuffer>;
  /** When it stops being valid (ms since the epoch). */
  notAfter: number;
}

/** Options for {@linkcode createPeerCertificate}. */
export interface PeerCertificateOptions {
  /** The subject's common name (and DNS name). @default {"holepunch-peer"} */
  name?: string;
  /** How long it is valid, at most 14 days. @default {MAX_CERT_LIFETIME_MS} */
  lifetimeMs?: number;
  /** The time to count from. @default {Date.now()} */
  now?: number;
}

/**
 * Makes a self-signed ECDSA P-256 certificate for a QUIC listener.
 *
 * @example
 * ```ts
 * import { createPeerCertificate } from "./cert.ts";
 *
 * const { cert, key, hash } = await createPeerCertificate();
 * console.log(cert.startsWith("-----BEGIN CERTIFICATE-----"), key.length > 0, hash.length); // true true 32
 * ```
 */
export async function createPeerCertificate(
  options: PeerCertificateOptions = {},
): Promise<PeerCertificate> {
  const name = options.name ?? "holepunch-peer";
  const now = options.now ?? Date.now();
  const lifetime = Math.min(options.lifetimeMs ?? MAX_CERT_LIFETIME_MS, MAX_CERT_LIFETIME_MS);
  // The hash rule counts the whole validity period, backdating included.
  const notBefore = now - Math.min(BACKDATE_MS, lifetime / 2);
  const notAfter = notBefore + lifetime;
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  const algorithm = sequence(oid(ECDSA_WITH_SHA256));
  const subject = sequence(set(sequence(oid(COMMON_NAME), utf8(name))));
  const serial = crypto.getRandomValues(new Uint8Array(16));
  serial[0] &= 0x7f; // positive
  const extensions = tlv(
    0xa3,
    sequence(
      sequence(
        oid(SUBJECT_ALT_NAME),
        tlv(0x04, sequence(tlv(0x82, new TextEncoder().encode(name)))),
      ),
    ),
  );
  const tbs = sequence(
    tlv(0xa0, integer(new Uint8Array([2]))), // v3
    integer(serial),
    algorithm,
    subject, // issuer: self-signed
    sequence(time(notBefore), time(notAfter)),
    subject,
    spki,
    extensions,
  );
  const raw = new Uint8Array(
    await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, pair.privateKey, tbs),
  );
  const der = sequence(tbs, algorithm, tlv(0x03, new Uint8Array([0]), ecdsaSignature(raw)));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey));
  return {
    cert: pem("CERTIFICATE", der),
    key: pem("PRIVATE KEY", pkcs8),
    hash: new Uint8Array(await crypto.subtle.digest("SHA-256", der)),
    notAfter,
  };
}
