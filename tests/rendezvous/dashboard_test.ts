/**
 * The dashboard in a real browser (Debian's chromium, headless, over the
 * DevTools protocol): sign-in with the token through the form (a cookie,
 * never the URL), workers appearing, punching and leaving live, the path
 * matrix with text for its colours, 5,000 workers paged, the strict CSP
 * (the page's own script runs, nothing else loads), and a screenshot kept
 * as an artifact.
 */

import assert from "node:assert/strict";
import { MemoryRegistry, type WorkerRecord } from "../../lib/rendezvous/registry.ts";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import { requireOrSkip, startRendezvous, TestClient, waitFor, within } from "../_helpers.ts";
import { Browser, chromiumUnavailable, type Page } from "../_chromium.ts";

const skip = requireOrSkip(await chromiumUnavailable(), "dashboard tests");

/** Where screenshots go (HOLEPUNCH_ARTIFACTS, else a temporary directory). */
async function artifact(name: string, bytes: Uint8Array): Promise<string> {
  const dir = Deno.env.get("HOLEPUNCH_ARTIFACTS") ??
    await Deno.makeTempDir({ prefix: "holepunch-artifacts-" });
  await Deno.mkdir(dir, { recursive: true });
  const path = `${dir}/${name}`;
  await Deno.writeFile(path, bytes);
  return path;
}

const text = (page: Page, selector: string) =>
  page.evaluate<string>(`document.querySelector(${JSON.stringify(selector)})?.innerText ?? ""`);

Deno.test({
  name:
    "dashboard: sign in with the token, then workers join, punch and leave live; matrix, CSP, screenshot",
  ignore: skip !== undefined,
  async fn() {
    const rv = await startRendezvous({ token: "s3cret" });
    const browser = await Browser.launch();
    const auth = { authorization: "Bearer s3cret" };
    const clients: TestClient[] = [];
    try {
      const page = await browser.open(`${rv.http}/dashboard`);
      // Signed out: the form, not the dashboard.
      await waitFor(
        async () => (await text(page, "h1")).includes("holepunch fleet"),
        "the form",
        10_000,
        50,
      );
      assert.equal(await page.evaluate("document.querySelector('#workers')"), null);
      await signInAt(page, "s3cret");
      assert.equal(
        await page.evaluate("location.href"),
        `${rv.http}/dashboard`,
        "no token in the URL",
      );
      assert.equal(await page.evaluate("document.cookie"), "", "the cookie is HttpOnly");

      // Workers join...
      for (const id of ["w1", "w2", "w3"]) {
        clients.push(await TestClient.connect(`${rv.ws}/ws/register/${id}?group=g`, auth));
      }
      await waitFor(
        async () => (await text(page, "#count")) === "3",
        "three workers shown",
        10_000,
        50,
      );
      const rows = await page.evaluate<string[]>(
        "[...document.querySelectorAll('#workers tbody tr')].map((r) => r.dataset.id)",
      );
      assert.deepEqual(rows, ["w1", "w2", "w3"]);
      // ...report their NATs, are introduced and punch.
      const [w1, w2] = clients;
      for (
        const [client, port, nat] of [[w1, 4001, "endpoint-independent"], [
          w2,
          4002,
          "endpoint-dependent",
        ]] as const
      ) {
        client.send({
          type: "register_udp_endpoint",
          public: { ip: "203.0.113.9", port },
          local: [],
          nat: { mapping: nat },
          rtt_ms: 10,
          // w2's router mapped its socket (PCP): the page shows it.
          ...(port === 4002
            ? { mapped: { ip: "203.0.113.9", port: 41641, protocol: "pcp", lifetime_sec: 7200 } }
            : {}),
        });
      }
      w1.send({ type: "connect", peer_id: "w2" });
      w1.send({ type: "path_update", peer_id: "w2", path: "direct", rtt_ms: 4 });
      w2.send({ type: "path_update", peer_id: "w1", path: "relay", rtt_ms: null });
      await page.evaluate(
        "document.querySelector('#group').value = 'g'; document.querySelector('#group').dispatchEvent(new Event('change'))",
      );
      // Each worker's report reaches the page on its own: wait for both.
      const cells = () =>
        page.evaluate<{ text: string; cls: string }[][]>(
          "[...document.querySelectorAll('#matrix tbody tr')].map((r) => [...r.querySelectorAll('td')].map((c) => ({ text: c.textContent, cls: c.className })))",
        );
      await waitFor(
        async () => {
          const m = await cells();
          return m[0]?.[1]?.text === "direct 4 ms" && m[1]?.[0]?.text === "relay";
        },
        "both paths in the matrix",
        10_000,
        50,
      );
      const matrix = await cells();
      assert.deepEqual(matrix[0], [
        { text: "·", cls: "self" },
        { text: "direct 4 ms", cls: "direct" },
        { text: "none", cls: "none" },
      ]);
      assert.deepEqual(matrix[1][0], { text: "relay", cls: "relay" });
      const w1Row = await text(page, "#workers tbody tr[data-id=w1]");
      assert.match(w1Row, /203\.0\.113\.9:4001/);
      assert.match(w1Row, /endpoint-independent/);
      assert.match(
        await text(page, "#workers tbody tr[data-id=w2]"),
        /203\.0\.113\.9:41641 \(PCP, 7200 s\)/,
      );
      await waitFor(
        async () =>
          (await text(page, "#outcomes")).includes("endpoint-dependent/endpoint-independent"),
        "path reports by NAT pair",
        10_000,
        50,
      );

      // One leaves.
      await clients[2].close();
      await waitFor(async () => (await text(page, "#count")) === "2", "w3 gone", 10_000, 50);
      assert.ok(!(await text(page, "#workers")).includes("w3"));

      // Only the page's own script and style ran: no CSP violation, no error.
      // (The sign-in page's own 401 is logged as a failed load; that one is expected.)
      assert.deepEqual(
        browser.console.filter((l) => /Content Security Policy|exceptionDetails|Uncaught/i.test(l)),
        [],
      );
      const csp = (await fetch(`${rv.http}/dashboard`, { headers: auth })).headers.get(
        "content-security-policy",
      )!;
      assert.match(
        csp,
        /default-src 'none'; script-src 'sha256-[^']+'; style-src 'sha256-[^']+'; connect-src 'self'/,
      );

      const path = await artifact("dashboard.png", await page.screenshot());
      console.log(`screenshot: ${path}`);
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => {})));
      await browser.close();
      await rv.close();
    }
  },
});

Deno.test({
  name: "dashboard: 5,000 workers arrive in one snapshot, paged 100 at a time, and stay filterable",
  ignore: skip !== undefined,
  async fn() {
    const registry = new MemoryRegistry();
    for (let i = 0; i < 5000; i++) {
      await registry.put(
        {
          worker_id: `bulk-${String(i).padStart(4, "0")}`,
          session_id: `s${i}`,
          observed_ip: `198.51.100.${i % 250}`,
          observed_port: 40000 + i,
          http_reported_public_ip: null,
          connected_at: Date.now(),
          udp_endpoint: null,
          group: `g${i % 10}`,
          peer_paths: {},
          key: null,
          key_fingerprint: null,
          transport: null,
        } satisfies WorkerRecord,
      );
    }
    const rv = await startRendezvous({ registry });
    const browser = await Browser.launch();
    try {
      const page = await browser.open(`${rv.http}/dashboard`);
      const started = performance.now();
      await waitFor(async () => (await text(page, "#count")) === "5000", "5,000 shown", 20_000, 50);
      console.log(
        `5,000 workers rendered ${Math.round(performance.now() - started)} ms after navigation`,
      );
      assert.equal(await text(page, "#page"), "page 1 of 50 (5000 shown)");
      assert.equal(
        await page.evaluate("document.querySelectorAll('#workers tbody tr').length"),
        100,
      );
      await page.evaluate(
        "document.querySelector('#filter').value = 'bulk-4999'; document.querySelector('#filter').dispatchEvent(new Event('input'))",
      );
      await waitFor(
        async () => (await text(page, "#page")) === "page 1 of 1 (1 shown)",
        "the filter",
        10_000,
        50,
      );
      // The matrix is for one group, and bounded.
      assert.match(await text(page, "#matrix caption"), /first 30 of 500 workers/);
    } finally {
      await browser.close();
      await rv.close();
    }
  },
});

Deno.test("dashboard sign-in: a wrong token gets the form again (401, counted), a huge form 413, events 401 without the cookie", async () => {
  const rv = await startRendezvous({ token: "s3cret" });
  try {
    const post = (body: BodyInit) =>
      fetch(`${rv.http}/dashboard/login`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body,
        redirect: "manual",
      });
    const wrong = await post("token=nope");
    assert.equal(wrong.status, 401);
    assert.match(await wrong.text(), /That is not the token/);
    assert.equal(wrong.headers.get("set-cookie"), null);
    assert.equal(rv.rendezvous.refused.sign_in, 1);
    const huge = await post("token=" + "x".repeat(100_000));
    assert.equal(huge.status, 413);
    await huge.body?.cancel();
    const events = await fetch(`${rv.http}/dashboard/events`);
    assert.equal(events.status, 401);
    await events.body?.cancel();
    const forged = await fetch(`${rv.http}/dashboard/events`, {
      headers: { cookie: `hp_dashboard=${Date.now() + 3600_000}.${"A".repeat(43)}` },
    });
    assert.equal(forged.status, 401, "a cookie not made with the token is refused");
    await forged.body?.cancel();
    const right = await post("token=s3cret");
    assert.equal(right.status, 303);
    const cookie = right.headers.get("set-cookie")!;
    assert.match(cookie, /HttpOnly; SameSite=Strict/);
    const page = await fetch(`${rv.http}/dashboard`, { headers: { cookie: cookie.split(";")[0] } });
    assert.equal(page.status, 200);
    await page.body?.cancel();
  } finally {
    await rv.close();
  }
});

/** Signs `page` in with `token` through the form; resolves once the page is live. */
async function signInAt(page: Page, token: string): Promise<void> {
  await waitFor(
    async () => (await text(page, "h1")).includes("holepunch fleet"),
    "the form",
    10_000,
    50,
  );
  await page.evaluate(`(() => {
    document.querySelector('input[name=token]').value = ${JSON.stringify(token)};
    document.querySelector('form').submit();
  })()`);
  await waitFor(
    async () => (await text(page, "#status")) === "live",
    "the live dashboard",
    10_000,
    50,
  );
}

Deno.test({
  name:
    "dashboard revoke button: two clicks revoke the worker (4009, its row goes), under the strict CSP",
  ignore: skip !== undefined,
  async fn() {
    const rv = await startRendezvous({ token: "s3cret" });
    const browser = await Browser.launch();
    const auth = { authorization: "Bearer s3cret" };
    const victim = await TestClient.connect(`${rv.ws}/ws/register/victim`, auth);
    const keeper = await TestClient.connect(`${rv.ws}/ws/register/keeper`, auth);
    try {
      const page = await browser.open(`${rv.http}/dashboard`);
      await signInAt(page, "s3cret");
      const button = `document.querySelector('button[data-revoke="victim"]')`;
      await waitFor(() => page.evaluate(`${button} !== null`), "the revoke button", 10_000, 50);
      // One click arms it; nothing is revoked yet.
      await page.evaluate(`${button}.click()`);
      assert.equal(await page.evaluate(`${button}.textContent`), "confirm revoke");
      assert.equal(rv.rendezvous.connectionCount, 2);
      await page.evaluate(`${button}.click()`);
      const close = await within(victim.closed, 5000, "the victim's close");
      assert.equal(close.code, CloseCode.REVOKED);
      assert.equal(close.reason, "revoked: revoked from the dashboard");
      await waitFor(
        async () => (await text(page, "#notice")).startsWith("revoked victim"),
        "the notice",
        10_000,
        50,
      );
      await waitFor(
        () => page.evaluate(`${button} === null`),
        "the victim's row leaving",
        10_000,
        50,
      );
      assert.equal(
        await page.evaluate(`document.querySelector('button[data-revoke="keeper"]').textContent`),
        "revoke",
      );
      const bans = (await (await fetch(`${rv.http}/admin/revoked`, { headers: auth })).json()).bans;
      assert.deepEqual(bans.map((b: { id: string }) => b.id), ["id:victim"]);
      assert.deepEqual(
        browser.console.filter((l) => /Content Security Policy|exceptionDetails|Uncaught/i.test(l)),
        [],
      );
    } finally {
      await Promise.all([victim, keeper].map((c) => c.close().catch(() => {})));
      await browser.close();
      await rv.close();
    }
  },
});

Deno.test("dashboard revoke: needs the sign-in cookie and the CSRF token bound to that cookie; none without a token", async () => {
  const open = await startRendezvous();
  try {
    const r = await fetch(`${open.http}/dashboard/revoke`, { method: "POST", body: "{}" });
    assert.equal(r.status, 403);
    await r.body?.cancel();
    const page = await (await fetch(`${open.http}/dashboard`)).text();
    assert.match(page, /<meta name="csrf-token" content="">/, "no token: no buttons");
  } finally {
    await open.close();
  }
  const rv = await startRendezvous({ token: "s3cret" });
  const target = await TestClient.connect(`${rv.ws}/ws/register/target`, {
    authorization: "Bearer s3cret",
  });
  try {
    const signIn = async () => {
      const r = await fetch(`${rv.http}/dashboard/login`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: "token=s3cret",
        redirect: "manual",
      });
      return r.headers.get("set-cookie")!.split(";")[0];
    };
    const csrfOf = async (cookie: string) => {
      const html = await (await fetch(`${rv.http}/dashboard`, { headers: { cookie } })).text();
      return /<meta name="csrf-token" content="([^"]*)">/.exec(html)![1];
    };
    const first = await signIn();
    let second = await signIn();
    while (second === first) second = await signIn(); // the cookie names its millisecond
    const csrf = await csrfOf(first);
    assert.match(csrf, /^[A-Za-z0-9_-]{43}$/);
    assert.notEqual(await csrfOf(second), csrf, "each sign-in has its own");
    // Signed in with the bearer only: the page, but no buttons.
    const bearerPage = await (await fetch(`${rv.http}/dashboard`, {
      headers: { authorization: "Bearer s3cret" },
    })).text();
    assert.match(bearerPage, /<meta name="csrf-token" content="">/);
    const post = (headers: Record<string, string>, body = '{"worker_id":"target"}') =>
      fetch(`${rv.http}/dashboard/revoke`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body,
      });
    const cases: [Record<string, string>, string | undefined, number, RegExp][] = [
      [{}, undefined, 401, /sign in/],
      [{ "x-csrf-token": csrf }, undefined, 401, /sign in/],
      [{ cookie: first }, undefined, 403, /CSRF/],
      [{ cookie: second, "x-csrf-token": csrf }, undefined, 403, /CSRF/],
      [{ cookie: first, "x-csrf-token": csrf }, '{"worker_id":"no spaces"}', 400, /worker_id/],
      [{ cookie: first, "x-csrf-token": csrf }, "not json", 400, /worker_id/],
    ];
    for (const [headers, body, status, message] of cases) {
      const r = await post(headers, body);
      assert.equal(r.status, status, JSON.stringify(headers));
      assert.match((await r.json()).error, message);
    }
    assert.equal(rv.rendezvous.connectionCount, 1, "nothing was revoked");
    const done = await post({ cookie: first, "x-csrf-token": csrf });
    assert.equal(done.status, 201);
    assert.equal((await done.json()).sessions_closed, 1);
    assert.equal((await within(target.closed, 5000, "close")).code, CloseCode.REVOKED);
  } finally {
    await target.close().catch(() => {});
    await rv.close();
  }
});
