/**
 * HTTP helpers of the rendezvous: JSON answers and problems, bearer-token
 * checks in constant time, the client address behind trusted proxies.
 *
 * @module
 */

import { normalizeIp } from "../protocol/ip.ts";

const encoder = new TextEncoder();

export const JSON_HEADERS = { "content-type": "application/json; charset=utf-8" };

export function json(body: unknown, status = 200, headers: HeadersInit = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...JSON_HEADERS, ...headers },
  });
}

export function problem(status: number, error: string, headers: HeadersInit = {}): Response {
  return json({ error }, status, headers);
}

/** UTF-8 length of `text`, stopping early once it passes `limit`. */
export function utf8LengthExceeds(text: string, limit: number): boolean {
  // Every UTF-16 unit is at least one UTF-8 byte and at most three.
  if (text.length > limit) return true;
  if (text.length * 3 <= limit) return false;
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff) {
      bytes += 4; // A surrogate pair: one four-byte sequence.
      i++;
    } else bytes += 3;
    if (bytes > limit) return true;
  }
  return false;
}

/** Compares secrets in time independent of where they first differ. */
export function constantTimeEqual(a: string, b: string): boolean {
  const x = encoder.encode(a);
  const y = encoder.encode(b);
  if (x.length !== y.length) return false;
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

/**
 * The client address from `X-Forwarded-For`, trusting `hops` proxies: each
 * proxy appends the address it saw, so the entry `hops` from the right is the
 * last one a trusted proxy wrote. Entries left of it are the client's to
 * forge and are never used.
 */
export function forwardedClientIp(header: string | null, hops: number): string | null {
  if (header === null || hops < 1) return null;
  const entries = header.split(",").map((e) => e.trim()).filter((e) => e !== "");
  const entry = entries[entries.length - hops];
  if (entry === undefined) return null;
  // Some proxies write "[v6]:port" or "v4:port".
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(entry);
  if (bracketed) return normalizeIp(bracketed[1]);
  const v4WithPort = /^(\d+\.\d+\.\d+\.\d+):\d+$/.exec(entry);
  return normalizeIp(v4WithPort ? v4WithPort[1] : entry);
}

/** Whether `req` carries `Authorization: Bearer <token>` (always, without a token). */
export function bearerAuthorized(req: Request, token: string | undefined): boolean {
  if (token === undefined) return true;
  const header = req.headers.get("authorization") ?? "";
  const match = /^Bearer\s+(.+)$/i.exec(header);
  return match !== null && constantTimeEqual(match[1].trim(), token);
}

/** The 401 for a missing or wrong bearer token. */
export function unauthorized(): Response {
  return problem(401, "Missing or invalid bearer token", {
    "www-authenticate": 'Bearer realm="holepunch"',
  });
}
