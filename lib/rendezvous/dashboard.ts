/**
 * The live dashboard (`GET /dashboard`): one HTML page with its CSS and
 * script inline (no external assets, a strict Content-Security-Policy with
 * their hashes), fed by Server-Sent Events (`/dashboard/events`): a snapshot
 * of the fleet, then each worker that joins, changes or leaves, and the
 * counters once a second. With `RENDEZVOUS_TOKEN` the browser signs in once
 * through a form that sets an HttpOnly, SameSite=Strict cookie (an expiry
 * and its HMAC under the token, so any instance of a fleet accepts it); the
 * token never travels in a URL.
 *
 * @module
 */

import { toBase64Url } from "../core/encoding.ts";
import type { WorkerRecord } from "./registry.ts";
import { type MappedEndpoint, MAPPING_PROTOCOL_NAMES } from "../protocol/messages.ts";

/** A worker as the dashboard shows it. */
export interface DashboardWorker {
  id: string;
  group: string;
  observed: string | null;
  reported: string | null;
  udp: string | null;
  nat: string | null;
  /** The gateway's port mapping: address, protocol and lifetime. */
  mapped: string | null;
  since: string;
  key: string | null;
  paths: Record<string, { path: string; rtt_ms: number | null }>;
}

/** A port mapping as the dashboard shows it: `11.0.1.1:41641 (PCP, 7200 s)`. */
function mappedText(m: MappedEndpoint | null | undefined): string | null {
  if (!m) return null;
  return `${m.ip}:${m.port} (${MAPPING_PROTOCOL_NAMES[m.protocol]}, ${m.lifetime_sec} s)`;
}

/** The dashboard's view of a record. */
export function dashboardWorker(r: WorkerRecord): DashboardWorker {
  const pub = r.udp_endpoint?.public;
  return {
    id: r.worker_id,
    group: r.group,
    observed: r.observed_ip === null
      ? null
      : r.observed_port === null
      ? r.observed_ip
      : `${r.observed_ip}:${r.observed_port}`,
    reported: r.http_reported_public_ip,
    udp: pub ? (pub.ip.includes(":") ? `[${pub.ip}]:${pub.port}` : `${pub.ip}:${pub.port}`) : null,
    nat: r.udp_endpoint?.nat_mapping ?? null,
    mapped: mappedText(r.udp_endpoint?.mapped),
    since: new Date(r.connected_at).toISOString(),
    key: r.key_fingerprint,
    paths: Object.fromEntries(
      Object.entries(r.peer_paths).map(([peer, p]) => [peer, { path: p.path, rtt_ms: p.rtt_ms }]),
    ),
  };
}

const SIGN_IN_COOKIE = "hp_dashboard";
/** A sign-in lasts this long. */
const SIGN_IN_MS = 12 * 3600_000;
const encoder = new TextEncoder();

async function hmac(token: string, text: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(token),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(text)));
  return toBase64Url(mac);
}

/** The `Set-Cookie` value of a new sign-in. */
export async function signInCookie(token: string, now: number, secure: boolean): Promise<string> {
  const expires = now + SIGN_IN_MS;
  const value = `${expires}.${await hmac(token, `dashboard:${expires}`)}`;
  return `${SIGN_IN_COOKIE}=${value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=${
    SIGN_IN_MS / 1000
  }${secure ? "; Secure" : ""}`;
}

/** The valid, unexpired sign-in cookie `req` carries for `token`, or null. */
async function signIn(req: Request, token: string, now: number): Promise<string | null> {
  const cookies = req.headers.get("cookie") ?? "";
  const match = new RegExp(`(?:^|;\\s*)${SIGN_IN_COOKIE}=(\\d{1,16})\\.([A-Za-z0-9_-]{43})`)
    .exec(cookies);
  if (!match || Number(match[1]) <= now) return null;
  const expected = await hmac(token, `dashboard:${match[1]}`);
  let diff = expected.length ^ match[2].length;
  for (let i = 0; i < expected.length; i++) {
    diff |= expected.charCodeAt(i) ^ match[2].charCodeAt(i % match[2].length);
  }
  return diff === 0 ? `${match[1]}.${match[2]}` : null;
}

/** Whether `req` carries a valid, unexpired sign-in cookie for `token`. */
export async function hasSignIn(req: Request, token: string, now: number): Promise<boolean> {
  return await signIn(req, token, now) !== null;
}

/**
 * The CSRF token of `req`'s sign-in: an HMAC under the token of the cookie
 * itself, so it is only good with that cookie (and lapses with it). Null
 * without a valid sign-in cookie.
 */
export async function csrfToken(req: Request, token: string, now: number): Promise<string | null> {
  const cookie = await signIn(req, token, now);
  return cookie === null ? null : await hmac(token, `csrf:${cookie}`);
}

const STYLE = `
body{font:14px system-ui,sans-serif;margin:1rem 2rem;color:#1b1f24;background:#fafafa}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.5rem}
.tiles{display:flex;gap:1rem;flex-wrap:wrap}
.tile{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.5rem .9rem;min-width:8rem}
.tile b{display:block;font-size:1.3rem}
table{border-collapse:collapse;background:#fff;margin-top:.5rem}
th,td{border:1px solid #d0d7de;padding:.2rem .45rem;text-align:left;white-space:nowrap}
th{background:#eef1f4}
td.direct{background:#c8f0cf}td.relay{background:#fde7b0}td.none{background:#eceff1;color:#57606a}
td.self{background:#fff;color:#8c959f}
#status.live{color:#1a7f37}#status.down{color:#cf222e}
.controls{display:flex;gap:1rem;align-items:center;margin:.5rem 0}
`;

const SCRIPT = `
"use strict";
const PAGE = 100, MATRIX = 30;
const CSRF = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
const workers = new Map();
let page = 0, pending = false, stats = null, previous = null, arming = null;
const $ = (id) => document.getElementById(id);
const cell = (tr, text, cls) => { const td = document.createElement("td"); td.textContent = text ?? "–"; if (cls) td.className = cls; tr.appendChild(td); return td; };
function schedule() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } }
function render() {
  const filter = $("filter").value.trim().toLowerCase();
  const all = [...workers.values()].sort((a, b) => a.id < b.id ? -1 : 1)
    .filter((w) => !filter || w.id.toLowerCase().includes(filter) || w.group.toLowerCase().includes(filter));
  const pages = Math.max(1, Math.ceil(all.length / PAGE));
  page = Math.min(page, pages - 1);
  $("count").textContent = String(workers.size);
  $("groups").textContent = String(new Set([...workers.values()].map((w) => w.group)).size);
  $("page").textContent = "page " + (page + 1) + " of " + pages + " (" + all.length + " shown)";
  const body = document.createElement("tbody");
  for (const w of all.slice(page * PAGE, page * PAGE + PAGE)) {
    const tr = document.createElement("tr");
    tr.dataset.id = w.id;
    for (const v of [w.id, w.group, w.observed, w.reported, w.udp, w.nat, w.mapped, w.since.replace("T", " ").slice(0, 19), w.key]) cell(tr, v);
    const paths = Object.values(w.paths);
    cell(tr, paths.filter((p) => p.path === "direct").length + " direct, " + paths.filter((p) => p.path === "relay").length + " relay");
    const actions = cell(tr, CSRF ? "" : null);
    if (CSRF) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.revoke = w.id;
      button.textContent = arming === w.id ? "confirm revoke" : "revoke";
      actions.appendChild(button);
    }
    body.appendChild(tr);
  }
  $("workers").replaceChild(body, $("workers").tBodies[0]);
  const select = $("group"), chosen = select.value;
  const groups = [...new Set([...workers.values()].map((w) => w.group))].sort();
  if (select.options.length !== groups.length || groups.some((g, i) => select.options[i].value !== g)) {
    select.replaceChildren(...groups.map((g) => new Option(g, g)));
    if (groups.includes(chosen)) select.value = chosen;
  }
  renderMatrix(select.value);
}
function renderMatrix(group) {
  const members = [...workers.values()].filter((w) => w.group === group).sort((a, b) => a.id < b.id ? -1 : 1);
  const shown = members.slice(0, MATRIX);
  const table = document.createElement("table");
  table.id = "matrix";
  const caption = table.createCaption();
  caption.textContent = "Paths in group " + group + " (row: the worker that reports; " + (members.length > MATRIX ? "first " + MATRIX + " of " + members.length : members.length) + " workers)";
  const head = table.createTHead().insertRow();
  const corner = document.createElement("th"); corner.textContent = "from / to"; head.appendChild(corner);
  for (const w of shown) { const th = document.createElement("th"); th.scope = "col"; th.textContent = w.id; head.appendChild(th); }
  const body = table.createTBody();
  for (const a of shown) {
    const tr = body.insertRow();
    const th = document.createElement("th"); th.scope = "row"; th.textContent = a.id; tr.appendChild(th);
    for (const b of shown) {
      if (a.id === b.id) { cell(tr, "·", "self"); continue; }
      const p = a.paths[b.id];
      if (!p) cell(tr, "none", "none");
      else cell(tr, p.path + (p.rtt_ms != null ? " " + Math.round(p.rtt_ms) + " ms" : ""), p.path === "direct" ? "direct" : "relay");
    }
  }
  $("matrix").replaceWith(table);
}
function renderStats(s) {
  const rate = (k) => previous ? Math.max(0, (s[k] - previous[k]) / ((s.at - previous.at) / 1000)).toFixed(1) : "–";
  $("registrations").textContent = rate("registrations") + "/s";
  $("introductions").textContent = rate("introductions") + "/s";
  $("relay").textContent = previous ? (Math.max(0, (s.relay_bytes - previous.relay_bytes) / ((s.at - previous.at) / 1000)) / 1024).toFixed(1) + " KiB/s" : "–";
  previous = s;
  const body = document.createElement("tbody");
  for (const [pair, o] of Object.entries(s.outcomes).sort()) {
    const tr = document.createElement("tr");
    cell(tr, pair); cell(tr, String(o.direct ?? 0)); cell(tr, String(o.relay ?? 0));
    body.appendChild(tr);
  }
  $("outcomes").replaceChild(body, $("outcomes").tBodies[0]);
}
const events = new EventSource("/dashboard/events");
events.onopen = () => { $("status").textContent = "live"; $("status").className = "live"; };
events.onerror = () => { $("status").textContent = "reconnecting"; $("status").className = "down"; };
events.addEventListener("snapshot", (e) => { workers.clear(); for (const w of JSON.parse(e.data).workers) workers.set(w.id, w); schedule(); });
events.addEventListener("worker", (e) => { const w = JSON.parse(e.data); workers.set(w.id, w); schedule(); });
events.addEventListener("left", (e) => { workers.delete(JSON.parse(e.data).id); schedule(); });
events.addEventListener("stats", (e) => renderStats(JSON.parse(e.data)));
$("filter").addEventListener("input", () => { page = 0; schedule(); });
$("group").addEventListener("change", () => schedule());
$("prev").addEventListener("click", () => { page = Math.max(0, page - 1); schedule(); });
$("next").addEventListener("click", () => { page++; schedule(); });
$("workers").addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-revoke]");
  if (!button) return;
  const id = button.dataset.revoke;
  if (arming !== id) {
    arming = id;
    button.textContent = "confirm revoke";
    setTimeout(() => { if (arming === id) { arming = null; schedule(); } }, 5000);
    return;
  }
  arming = null;
  button.disabled = true;
  const r = await fetch("/dashboard/revoke", { method: "POST", headers: { "content-type": "application/json", "x-csrf-token": CSRF }, body: JSON.stringify({ worker_id: id }) }).catch(() => null);
  const answer = r ? await r.json().catch(() => ({})) : {};
  $("notice").textContent = r?.ok ? "revoked " + id + " (sessions closed here: " + answer.sessions_closed + ")" : "cannot revoke " + id + ": " + (answer.error ?? (r ? r.status : "no answer"));
  schedule();
});
`;

const BODY = `<h1>holepunch fleet <small id="status" role="status">connecting</small></h1>
<div class="tiles">
<div class="tile">workers<b id="count">0</b></div>
<div class="tile">groups<b id="groups">0</b></div>
<div class="tile">registrations<b id="registrations">–</b></div>
<div class="tile">introductions<b id="introductions">–</b></div>
<div class="tile">relay<b id="relay">–</b></div>
</div>
<h2>Workers</h2>
<p id="notice" role="status"></p>
<div class="controls"><label>Filter <input id="filter" type="search" placeholder="id or group"></label>
<button id="prev" type="button">previous</button><span id="page"></span><button id="next" type="button">next</button></div>
<table id="workers"><thead><tr><th scope="col">id</th><th scope="col">group</th><th scope="col">observed</th><th scope="col">reported IP</th><th scope="col">UDP endpoint</th><th scope="col">NAT mapping</th><th scope="col">port mapping</th><th scope="col">connected since (UTC)</th><th scope="col">key</th><th scope="col">paths</th><th scope="col">actions</th></tr></thead><tbody></tbody></table>
<h2>Peer paths</h2>
<div class="controls"><label>Group <select id="group"></select></label></div>
<table id="matrix"></table>
<h2>Path reports by NAT pair</h2>
<table id="outcomes"><thead><tr><th scope="col">NAT pair</th><th scope="col">direct</th><th scope="col">relay</th></tr></thead><tbody></tbody></table>`;

async function sha256(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
  return btoa(String.fromCharCode(...digest));
}

let pages:
  | Promise<{ page: (csrf: string) => string; signIn: (error?: string) => string; csp: string }>
  | undefined;

/**
 * The page (with the CSRF token of its sign-in: empty, no revoke buttons),
 * the sign-in form, and the CSP that allows exactly their inline style and script.
 */
export function dashboardPages() {
  pages ??= (async () => {
    const csp = [
      "default-src 'none'",
      `script-src 'sha256-${await sha256(SCRIPT)}'`,
      `style-src 'sha256-${await sha256(STYLE)}'`,
      "connect-src 'self'",
      "form-action 'self'",
      "base-uri 'none'",
      "frame-ancestors 'none'",
    ].join("; ");
    const html = (body: string, script: boolean, csrf = "") =>
      `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="csrf-token" content="${csrf}"><title>holepunch fleet</title><style>${STYLE}</style></head><body>${body}${
        script ? `<script>${SCRIPT}</script>` : ""
      }</body></html>`;
    return {
      csp,
      // The token is base64url: nothing in it needs escaping.
      page: (csrf: string) => html(BODY, true, csrf),
      signIn: (error?: string) =>
        html(
          `<h1>holepunch fleet</h1><form method="post" action="/dashboard/login"><p><label>Rendezvous token <input name="token" type="password" autocomplete="current-password" required></label> <button type="submit">Sign in</button></p>${
            error ? `<p role="alert">${error}</p>` : ""
          }</form>`,
          false,
        ),
    };
  })();
  return pages;
}

/**
 * Pushes fleet changes to every open dashboard. A client that cannot keep
 * up (its stream's queue full) is dropped: its browser reconnects and gets
 * a fresh snapshot, and memory stays bounded.
 */
export class DashboardHub {
  #clients = new Set<ReadableStreamDefaultController<Uint8Array>>();

  /** Dashboards open now. */
  get clients(): number {
    return this.#clients.size;
  }

  /** A stream for one dashboard: `snapshot` first, then changes. */
  open(snapshot: () => Promise<DashboardWorker[]>): ReadableStream<Uint8Array> {
    let self: ReadableStreamDefaultController<Uint8Array>;
    return new ReadableStream<Uint8Array>({
      start: async (controller) => {
        self = controller;
        this.#clients.add(controller);
        controller.enqueue(encoder.encode(`retry: 2000\n\n`));
        this.#send(controller, "snapshot", { workers: await snapshot() });
      },
      cancel: () => {
        this.#clients.delete(self);
      },
    }, { highWaterMark: 512 });
  }

  #send(controller: ReadableStreamDefaultController<Uint8Array>, event: string, data: unknown) {
    if ((controller.desiredSize ?? 0) <= 0) {
      this.#clients.delete(controller);
      try {
        controller.close();
      } catch { /* closed already */ }
      return;
    }
    try {
      controller.enqueue(encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
    } catch {
      this.#clients.delete(controller);
    }
  }

  #broadcast(event: string, data: unknown): void {
    for (const client of [...this.#clients]) this.#send(client, event, data);
  }

  /** A worker joined or changed. */
  worker(record: WorkerRecord): void {
    if (this.#clients.size) this.#broadcast("worker", dashboardWorker(record));
  }

  /** A worker left. */
  left(workerId: string): void {
    if (this.#clients.size) this.#broadcast("left", { id: workerId });
  }

  /** The counters, once a second. */
  stats(stats: unknown): void {
    if (this.#clients.size) this.#broadcast("stats", stats);
  }

  /** Ends every stream (shutdown). */
  close(): void {
    for (const client of this.#clients) {
      try {
        client.close();
      } catch { /* closed already */ }
    }
    this.#clients.clear();
  }
}
