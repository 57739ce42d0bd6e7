/**
 * The dashboard's HTTP side: the page (or its sign-in form), the sign-in
 * POST that sets the cookie, the event stream, and the once-a-second
 * counters while any dashboard is open. The page itself and the hub that
 * pushes worker changes live in `dashboard.ts`.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import type { WorkerRecord } from "./registry.ts";
import {
  csrfToken,
  DashboardHub,
  dashboardPages,
  dashboardWorker,
  hasSignIn,
  signInCookie,
} from "./dashboard.ts";
import { isValidWorkerId } from "../protocol/messages.ts";
import { readAtMost } from "../core/streams.ts";
import { constantTimeEqual, problem } from "./http.ts";
import type { Guesses } from "./guesses.ts";

/** What the dashboard needs of the rendezvous. */
export interface DashboardDeps {
  /** The bearer token (unset: open). */
  token?: string;
  clock: Clock;
  /** Every worker of the fleet, for a new dashboard's first view. */
  workers: () => Promise<WorkerRecord[]>;
  /** The counters pushed once a second. */
  stats: () => unknown;
  /** A wrong token was signed in with: count and log it as a refusal. */
  refused: (fields: Record<string, unknown>) => void;
  /** Wrong credentials per client: the sign-in form and bearer tokens alike. */
  guesses: Guesses;
  /** Revokes `workerId` (`admin.ts`); the answer is the admin API's. */
  revoke: (workerId: string, client: string) => Promise<Response>;
}

/** The live dashboard (`/dashboard`, `/dashboard/login`, `/dashboard/events`). */
export class Dashboard {
  #o: DashboardDeps;
  #hub = new DashboardHub();
  #timer?: TimerId;
  #closed = false;

  /** A dashboard over `deps`. */
  constructor(deps: DashboardDeps) {
    this.#o = deps;
  }

  /** A worker joined or changed: open dashboards hear it. */
  worker(record: WorkerRecord): void {
    this.#hub.worker(record);
  }

  /** A worker left the fleet. */
  left(workerId: string): void {
    this.#hub.left(workerId);
  }

  /**
   * Bearer token, or (dashboard paths) the sign-in cookie; always, without
   * a token. The refusal otherwise: 429 for a client out of guesses (whatever
   * it sent), else 401.
   */
  async #refusal(req: Request, client: string): Promise<Response | undefined> {
    const token = this.#o.token;
    if (token === undefined) return undefined;
    const throttled = this.#o.guesses.refusal(client);
    if (throttled) return throttled;
    if (await hasSignIn(req, token, this.#o.clock.now())) return undefined;
    return this.#o.guesses.bearer(req, token, client);
  }

  /** `GET /dashboard`: the page, or the sign-in form. */
  async page(req: Request, client: string): Promise<Response> {
    const pages = await dashboardPages();
    const headers = {
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": pages.csp,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "cache-control": "no-store",
    };
    const refusal = await this.#refusal(req, client);
    if (refusal?.status === 429) return refusal;
    if (refusal) return new Response(pages.signIn(), { status: 401, headers });
    // Revoke buttons only for a cookie sign-in (the CSRF token is bound to it).
    const csrf = this.#o.token === undefined
      ? null
      : await csrfToken(req, this.#o.token, this.#o.clock.now());
    return new Response(pages.page(csrf ?? ""), { headers });
  }

  /**
   * `POST /dashboard/revoke` from the page's button: the sign-in cookie,
   * the CSRF token bound to it (`X-CSRF-Token`), and `{"worker_id"}`.
   */
  async revoke(req: Request, client: string): Promise<Response> {
    const token = this.#o.token;
    if (token === undefined) {
      return problem(403, "Cannot revoke: set RENDEZVOUS_TOKEN on the rendezvous first");
    }
    const throttled = this.#o.guesses.refusal(client);
    if (throttled) return throttled;
    const expected = await csrfToken(req, token, this.#o.clock.now());
    if (expected === null) return problem(401, "Cannot revoke: sign in to the dashboard first");
    if (!constantTimeEqual(req.headers.get("x-csrf-token") ?? "", expected)) {
      this.#o.guesses.wrong(client);
      this.#o.refused({ path: "/dashboard/revoke", client, why: "csrf" });
      return problem(403, "Cannot revoke: missing or wrong CSRF token (reload the dashboard)");
    }
    const bytes = req.body ? await readAtMost(req.body, 1024).catch(() => null) : null;
    let workerId: unknown;
    try {
      workerId = bytes === null ? undefined : JSON.parse(new TextDecoder().decode(bytes)).worker_id;
    } catch {
      workerId = undefined;
    }
    if (typeof workerId !== "string" || !isValidWorkerId(workerId)) {
      return problem(400, 'Cannot revoke: send {"worker_id"} with a valid worker id');
    }
    return await this.#o.revoke(workerId, client);
  }

  /** The sign-in form's POST: the token, checked, for a cookie; then back to the page. */
  async signIn(req: Request, url: URL, client: string): Promise<Response> {
    const token = this.#o.token;
    if (token === undefined) return Response.redirect(new URL("/dashboard", url), 303);
    // Out of guesses: refused before the form is read, right or wrong.
    const throttled = this.#o.guesses.refusal(client);
    if (throttled) return throttled;
    // The form is small: read at most 4 KiB of it, whatever the client claims.
    let given = "";
    if (req.body) {
      const bytes = await readAtMost(req.body, 4096).catch(() => new Uint8Array());
      if (bytes === null) return problem(413, "Cannot read a sign-in form larger than 4 KiB");
      given = new URLSearchParams(new TextDecoder().decode(bytes)).get("token") ?? "";
    }
    const pages = await dashboardPages();
    if (!constantTimeEqual(given, token)) {
      // Counted and logged like any refusal (at most once a second), answered with the form.
      this.#o.guesses.wrong(client);
      this.#o.refused({ path: "/dashboard/login", client });
      return new Response(pages.signIn("That is not the token."), {
        status: 401,
        headers: {
          "content-type": "text/html; charset=utf-8",
          "content-security-policy": pages.csp,
        },
      });
    }
    const secure = url.protocol === "https:" ||
      req.headers.get("x-forwarded-proto")?.split(",")[0].trim() === "https";
    return new Response(null, {
      status: 303,
      headers: {
        location: "/dashboard",
        "set-cookie": await signInCookie(token, this.#o.clock.now(), secure),
      },
    });
  }

  /** `GET /dashboard/events`: the Server-Sent Events stream. */
  async events(req: Request, client: string): Promise<Response> {
    const refusal = await this.#refusal(req, client);
    if (refusal) return refusal;
    const stream = this.#hub.open(async () => (await this.#o.workers()).map(dashboardWorker));
    this.#tick();
    return new Response(stream, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
      },
    });
  }

  /** Counters to open dashboards once a second, while any is open. */
  #tick(): void {
    if (this.#timer !== undefined) return;
    const tick = () => {
      this.#timer = undefined;
      if (this.#hub.clients === 0 || this.#closed) return;
      this.#hub.stats(this.#o.stats());
      this.#timer = this.#o.clock.setTimeout(tick, 1000);
    };
    this.#timer = this.#o.clock.setTimeout(tick, 0);
  }

  /** Ends every event stream and the ticker. */
  close(): void {
    this.#closed = true;
    this.#hub.close();
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
  }
}
