/**
 * The rendezvous's admin API: revoking a worker, listing the bans, lifting
 * one. Every route needs the bearer token (`RENDEZVOUS_TOKEN`); without a
 * token configured they answer 403, since anyone could otherwise ban
 * anyone.
 *
 * | route                             | answer                                    |
 * | --------------------------------- | ----------------------------------------- |
 * | `POST /admin/revoke`              | 201 `{ban, sessions_closed}`              |
 * | `GET /admin/revoked`              | `{bans: [...]}`                           |
 * | `DELETE /admin/revoked/{subject}` | `{lifted: [...]}`, or 404                 |
 *
 * The body of a revocation is `{"worker_id"?, "key"?, "reason"?,
 * "duration_sec"?}`; a worker id that is registered now is revoked with the
 * key it registered with, so the same key under another id is refused too.
 * `{subject}` is a ban's id (a key fingerprint, or `id:` and a worker id),
 * a key, or a worker id: every ban it names is lifted.
 *
 * @module
 */

import type { Clock } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { readAtMost } from "../core/streams.ts";
import { json, problem } from "./http.ts";
import type { Registry } from "./registry.ts";
import {
  type Ban,
  banMatches,
  type BanStore,
  makeBan,
  parseRevokeRequest,
  Revocations,
  revokedCloseReason,
  RevokeError,
  type RevokeRequest,
} from "./revocations.ts";
import { CloseCode } from "../protocol/close_codes.ts";
import type { Session } from "./session.ts";

/** Largest revocation body read. */
const MAX_BODY_BYTES = 4096;

/** What the admin routes reach. */
export interface AdminDeps {
  /** The bearer token; unset: the routes answer 403. */
  token?: string;
  /** Where bans persist (the fleet's Redis); none: this process only. */
  store?: BanStore;
  /** This instance's sessions, to close those a ban refuses. */
  sessions: () => Iterable<Session>;
  registry: Registry;
  clock: Clock;
  logger: Logger;
}

/** The admin routes (`/admin/*`) and the bans they make. */
export class Admin {
  #d: AdminDeps & { revocations: Revocations };

  /** Admin routes over `deps`. */
  constructor(deps: AdminDeps) {
    const revocations = new Revocations({
      clock: deps.clock,
      store: deps.store,
      onBan: (ban) => this.#closeRevoked(ban),
    });
    this.#d = { ...deps, revocations };
  }

  /** The bans in force. */
  get bans(): Revocations {
    return this.#d.revocations;
  }

  /** Closes every session of this instance that `ban` refuses (4009); returns how many. */
  #closeRevoked(ban: Ban): number {
    let closed = 0;
    for (const session of this.#d.sessions()) {
      if (!banMatches(ban, session.workerId, session.key)) continue;
      session.leaving = "revoked";
      session.close(CloseCode.REVOKED, revokedCloseReason(ban));
      closed++;
    }
    if (closed > 0) {
      this.#d.logger.warn("sessions closed: revoked", { ban: ban.id, sessions: closed });
    }
    return closed;
  }

  /** The dashboard's revoke button (`dashboard_routes.ts`, which checked its CSRF token). */
  revokeFromDashboard(workerId: string, client: string): Promise<Response> {
    const request = {
      workerId,
      key: null,
      reason: "revoked from the dashboard",
      durationSec: null,
    };
    return this.revoke(request, `dashboard ${client}`);
  }

  /**
   * Answers a request under `/admin/`; `guard` is the bearer check (with
   * its wrong-guess limit) that runs before anything is read.
   */
  async handle(
    req: Request,
    path: string,
    client: string,
    guard: () => Response | undefined,
  ): Promise<Response> {
    if (this.#d.token === undefined) {
      return problem(403, "Cannot use the admin API: set RENDEZVOUS_TOKEN on the rendezvous first");
    }
    const refusal = guard();
    if (refusal) return refusal;
    if (path === "/admin/revoke") {
      if (req.method !== "POST") return notAllowed(req, "POST");
      return await this.#revokeRequest(req, client);
    }
    if (path === "/admin/revoked") {
      if (req.method !== "GET" && req.method !== "HEAD") return notAllowed(req, "GET, HEAD");
      return json({ bans: this.#d.revocations.list() });
    }
    if (path.startsWith("/admin/revoked/")) {
      if (req.method !== "DELETE") return notAllowed(req, "DELETE");
      let subject: string;
      try {
        subject = decodeURIComponent(path.slice("/admin/revoked/".length));
      } catch {
        return problem(400, "Cannot lift a ban: the subject is not valid percent-encoding");
      }
      return await this.lift(subject, client);
    }
    return problem(404, `Cannot find ${path}`);
  }

  async #revokeRequest(req: Request, client: string): Promise<Response> {
    const bytes = req.body ? await readAtMost(req.body, MAX_BODY_BYTES).catch(() => null) : null;
    if (bytes === null) {
      return problem(
        req.body ? 413 : 400,
        req.body
          ? `Cannot revoke: the body is over ${MAX_BODY_BYTES} bytes`
          : 'Cannot revoke: send a JSON body {"worker_id"} or {"key"}',
      );
    }
    let body: unknown;
    try {
      body = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return problem(400, "Cannot revoke: the body is not JSON");
    }
    try {
      return await this.revoke(parseRevokeRequest(body), client);
    } catch (error) {
      if (error instanceof RevokeError) return problem(error.status, error.message);
      throw error;
    }
  }

  /**
   * Makes the ban `request` asks for and closes its sessions; the answer
   * for the admin (or the dashboard). `by` is who asked, for the log.
   */
  async revoke(request: RevokeRequest, by: string): Promise<Response> {
    const { revocations, registry, clock, logger } = this.#d;
    const record = request.workerId === null ? undefined : await registry.get(request.workerId);
    const ban = await makeBan(request, record?.key ?? null, clock.now());
    let closed: number;
    try {
      closed = await revocations.add(ban);
    } catch (error) {
      if (error instanceof RevokeError) return problem(error.status, error.message);
      logger.error("cannot store a revocation", { ban: ban.id, error });
      return problem(
        503,
        `Cannot revoke: the ban could not be stored (${(error as Error).message})`,
        {
          "retry-after": "1",
        },
      );
    }
    logger.warn("worker revoked", { ...describe(ban), sessions_closed: closed, by });
    return json({ ban, sessions_closed: closed }, 201);
  }

  /** Lifts every ban `subject` names. */
  async lift(subject: string, by: string): Promise<Response> {
    let lifted: Ban[];
    try {
      lifted = await this.#d.revocations.lift(subject);
    } catch (error) {
      return problem(503, `Cannot lift: ${(error as Error).message}`, { "retry-after": "1" });
    }
    if (lifted.length === 0) return problem(404, `Cannot find a ban for ${subject}`);
    for (const ban of lifted) this.#d.logger.warn("revocation lifted", { ...describe(ban), by });
    return json({ lifted });
  }
}

function describe(ban: Ban): Record<string, unknown> {
  return {
    ban: ban.id,
    worker_id: ban.worker_id ?? undefined,
    key_fingerprint: ban.key_fingerprint ?? undefined,
    reason: ban.reason,
    expires_at: ban.expires_at === null ? undefined : new Date(ban.expires_at).toISOString(),
  };
}

function notAllowed(req: Request, allow: string): Response {
  return problem(405, `Method ${req.method} is not allowed`, { allow });
}
