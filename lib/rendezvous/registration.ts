/**
 * A registration request (`GET /ws/register/{worker_id}`) read and checked
 * before any upgrade: the id and group, the bearer token, the key, that it
 * is a WebSocket upgrade at all, and the client's address (behind trusted
 * proxies, or the connection's). Each refusal has its own status.
 *
 * @module
 */

import type { Logger } from "../core/log.ts";
import { parsePublicKey } from "../protocol/identity.ts";
import { normalizeIp } from "../protocol/ip.ts";
import { isValidWorkerId, REGISTER_PATH_PREFIX } from "../protocol/messages.ts";
import { forwardedClientIp, problem } from "./http.ts";
import { guessClient, type Guesses } from "./guesses.ts";

/** Connection info as `Deno.serve` passes it. */
export type ServeInfo = Deno.ServeHandlerInfo<Deno.NetAddr>;

/** A registration that may go on to admission and the upgrade. */
export interface RegistrationRequest {
  workerId: string;
  group: string;
  /** The key it claims (`?key=`), to be proven once upgraded; null for none. */
  key: string | null;
  /** The client's address; null when a trusted proxy did not say. */
  observedIp: string | null;
  /** The client's port; null behind a proxy. */
  observedPort: number | null;
}

/** What {@linkcode parseRegistration} checks against. */
export interface RegistrationPolicy {
  token?: string;
  requireWorkerKeys: boolean;
  trustProxyHops: number;
  logger: Logger;
  /** Wrong tokens per client. */
  guesses: Guesses;
}

/**
 * The client's address: the `TRUST_PROXY_HOPS`-th entry from the right of
 * `X-Forwarded-For` behind proxies, else the peer's own (null when the
 * proxy named none; undefined when the client is already gone).
 */
export function clientAddress(
  req: Request,
  info: ServeInfo,
  trustProxyHops: number,
): { ip: string | null; port: number | null } | undefined {
  if (trustProxyHops > 0) {
    return {
      ip: forwardedClientIp(req.headers.get("x-forwarded-for"), trustProxyHops),
      port: null,
    };
  }
  try {
    // Throws "Request closed" when the client is already gone.
    return { ip: normalizeIp(info.remoteAddr.hostname), port: info.remoteAddr.port };
  } catch {
    return undefined;
  }
}

/** Reads a registration request: what it asks for, or the refusal to answer with. */
export function parseRegistration(
  req: Request,
  url: URL,
  info: ServeInfo,
  options: RegistrationPolicy,
): RegistrationRequest | Response {
  // A plain slice, not URLPattern: this runs once per registration, and
  // URLPattern's matcher was a measurable share of it.
  const segment = url.pathname.slice(REGISTER_PATH_PREFIX.length);
  let workerId: string | undefined;
  try {
    workerId = segment.includes("/") ? undefined : decodeURIComponent(segment);
  } catch {
    workerId = undefined;
  }
  if (workerId === undefined || !isValidWorkerId(workerId)) {
    return problem(
      400,
      "Cannot register: worker_id must be 1-128 characters of [A-Za-z0-9._-]",
    );
  }
  const group = url.searchParams.get("group") ?? "default";
  if (!isValidWorkerId(group)) {
    return problem(400, "Cannot register: group must be 1-128 characters of [A-Za-z0-9._-]");
  }
  const address = clientAddress(req, info, options.trustProxyHops);
  if (address === undefined) return problem(400, "Client went away");
  const { ip: observedIp, port: observedPort } = address;
  const denied = options.guesses.bearer(req, options.token, guessClient(observedIp));
  if (denied) return denied;
  const keyParam = url.searchParams.get("key");
  let key: string | null = null;
  if (keyParam !== null) {
    try {
      key = parsePublicKey(keyParam);
    } catch (error) {
      return problem(400, `Cannot register: ${(error as Error).message}`);
    }
  } else if (options.requireWorkerKeys) {
    options.logger.warn("worker refused: no key", { worker_id: workerId });
    return problem(
      401,
      "Cannot register: this rendezvous requires a worker key (?key=, proven by signature)",
    );
  }
  if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return problem(426, "Cannot register: this endpoint needs a WebSocket upgrade", {
      upgrade: "websocket",
    });
  }
  return { workerId, group, key, observedIp, observedPort };
}
