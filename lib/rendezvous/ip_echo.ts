/**
 * A tiny IP echo service, the stand-in for api.ipify.org on machines (and in
 * tests and the demo) that must not reach the internet: it answers with the
 * caller's address as plain text, or as `{"ip": …}` with `?format=json`.
 *
 * @module
 */

import { normalizeIp } from "../protocol/ip.ts";

/**
 * A `Deno.serve` handler answering with the caller's IP.
 *
 * @example
 * ```ts
 * Deno.serve({ port: 0 }, ipEchoHandler);
 * ```
 */
export function ipEchoHandler(req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Response {
  let ip: string;
  try {
    ip = normalizeIp(info.remoteAddr.hostname) ?? info.remoteAddr.hostname;
  } catch {
    return new Response("client went away\n", { status: 400 });
  }
  if (new URL(req.url).searchParams.get("format") === "json") return Response.json({ ip });
  return new Response(ip, { headers: { "content-type": "text/plain; charset=utf-8" } });
}
