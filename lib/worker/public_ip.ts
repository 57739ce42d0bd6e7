/**
 * Asks an HTTP echo service (ipify and friends answer with the caller's
 * address as plain text) for this machine's public IP.
 *
 * @module
 */

import { readAtMost } from "../core/streams.ts";
import { normalizeIp } from "../protocol/ip.ts";

/** The echo service failed, timed out, or answered something that is not an IP. */
export class PublicIpError extends Error {
  override name = "PublicIpError";
}

/** Options for {@linkcode fetchPublicIp}. */
export interface FetchPublicIpOptions {
  /** @default {10000} */
  timeoutMs?: number;
  /** Aborts the request. */
  signal?: AbortSignal;
  /** Largest answer read, in bytes. @default {256} */
  maxBytes?: number;
  /** @default {globalThis.fetch} */
  fetch?: typeof fetch;
}

/**
 * Fetches `url` and returns the IP in its body, in canonical form.
 *
 * @throws {PublicIpError} on a network error, timeout, non-2xx status, an
 * answer over `maxBytes`, or an answer that is not an IP address.
 *
 * @example
 * ```ts
 * const ip = await fetchPublicIp("https://api.ipify.org", { timeoutMs: 5000 });
 * ```
 */
export async function fetchPublicIp(
  url: string,
  options: FetchPublicIpOptions = {},
): Promise<string> {
  const { timeoutMs = 10_000, signal, maxBytes = 256, fetch: doFetch = fetch } = options;
  const timeout = AbortSignal.timeout(timeoutMs);
  const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
  let response: Response;
  try {
    response = await doFetch(url, {
      signal: combined,
      headers: { accept: "text/plain" },
      redirect: "follow",
    });
  } catch (cause) {
    const why = timeout.aborted ? `no answer within ${timeoutMs} ms` : String(cause);
    throw new PublicIpError(`Cannot get public IP from ${url}: ${why}`, { cause });
  }
  try {
    if (!response.ok) {
      throw new PublicIpError(`Cannot get public IP from ${url}: status ${response.status}`);
    }
    const text = await readLimited(response, maxBytes, url);
    const ip = normalizeIp(text.trim());
    if (ip === null) {
      throw new PublicIpError(
        `Cannot get public IP from ${url}: the answer is not an IP address: ${
          JSON.stringify(text.slice(0, 64))
        }`,
      );
    }
    return ip;
  } catch (error) {
    if (error instanceof PublicIpError) throw error;
    const why = timeout.aborted ? `no answer within ${timeoutMs} ms` : String(error);
    throw new PublicIpError(`Cannot get public IP from ${url}: ${why}`, { cause: error });
  } finally {
    await response.body?.cancel().catch(() => {});
  }
}

async function readLimited(response: Response, maxBytes: number, url: string): Promise<string> {
  if (response.body === null) return "";
  const bytes = await readAtMost(response.body, maxBytes);
  if (bytes === null) {
    throw new PublicIpError(
      `Cannot get public IP from ${url}: the answer is longer than ${maxBytes} bytes`,
    );
  }
  return new TextDecoder().decode(bytes);
}
