/**
 * The rendezvous's HTTP routes: the registration WebSocket, health and
 * readiness, the seed's listing, stats, metrics and the dashboard, each
 * behind the bearer token where it says so.
 *
 * | route                         | auth          | answer                          |
 * | ----------------------------- | ------------- | ------------------------------- |
 * | `GET /ws/register/{id}`       | token         | the WebSocket (see registration)|
 * | `GET /`, `/health`, `/ready`  | none          | JSON                            |
 * | `GET /debug/list_workers`     | token         | the seed's listing, streamed    |
 * | `GET /debug/stats`            | token         | counts                          |
 * | `GET /metrics`                | token         | Prometheus text                 |
 * | `GET /dashboard`, `/events`   | token/cookie  | the page, its event stream      |
 * | `POST /dashboard/login`       | the form      | the sign-in cookie              |
 * | `POST /dashboard/revoke`      | cookie + CSRF | revokes a worker                |
 * | `/admin/revoke`, `/revoked`   | token         | revocations (`admin.ts`)        |
 *
 * @module
 */

import { METRICS_CONTENT_TYPE } from "../core/metrics.ts";
import { REGISTER_PATH_PREFIX } from "../protocol/messages.ts";
import type { Dashboard } from "./dashboard_routes.ts";
import { json, problem } from "./http.ts";
import type { ServeInfo } from "./registration.ts";

/** What the routes reach in the rendezvous. */
export interface RouteTarget {
  register(req: Request, url: URL, info: ServeInfo): Response;
  ready(): Response;
  about(): { name: string; version: string };
  /** What a client is known by, for its wrong guesses. */
  client(req: Request, info: ServeInfo): string;
  /** The refusal of a request that needs the bearer token (429 or 401), or undefined: go on. */
  guard(req: Request, client: string): Response | undefined;
  listWorkers(): Promise<Response>;
  stats(): Promise<Response>;
  metrics(): string;
  dashboard(): Dashboard;
  /** The admin API (`admin.ts`): bearer token, 403 without one. */
  admin(req: Request, path: string, client: string): Promise<Response>;
}

/** Answers one HTTP request. */
export function route(
  req: Request,
  info: ServeInfo,
  t: RouteTarget,
): Response | Promise<Response> {
  const url = new URL(req.url);
  const path = url.pathname;
  if (path.startsWith(REGISTER_PATH_PREFIX)) return t.register(req, url, info);
  if (path === "/dashboard/login" && req.method === "POST") {
    return t.dashboard().signIn(req, url, t.client(req, info));
  }
  if (path === "/dashboard/revoke" && req.method === "POST") {
    return t.dashboard().revoke(req, t.client(req, info));
  }
  if (path.startsWith("/admin/")) return t.admin(req, path, t.client(req, info));
  if (req.method !== "GET" && req.method !== "HEAD") {
    return problem(405, `Method ${req.method} is not allowed`, { allow: "GET, HEAD" });
  }
  switch (path) {
    case "/":
      return json({
        message: "Rendezvous Service is running. Connect via WebSocket at /ws/register/{worker_id}",
        ...t.about(),
      });
    case "/health":
      return json({ status: "ok" });
    case "/ready":
      return t.ready();
    case "/debug/list_workers":
      return t.guard(req, t.client(req, info)) ?? t.listWorkers();
    case "/debug/stats":
      return t.guard(req, t.client(req, info)) ?? t.stats();
    case "/dashboard":
      return t.dashboard().page(req, t.client(req, info));
    case "/dashboard/events":
      return t.dashboard().events(req, t.client(req, info));
    case "/metrics":
      return t.guard(req, t.client(req, info)) ??
        new Response(t.metrics(), { headers: { "content-type": METRICS_CONTENT_TYPE } });
    default:
      return problem(404, `Cannot find ${path}`);
  }
}
