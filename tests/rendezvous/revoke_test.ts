/**
 * Revoking a worker on one rendezvous: the admin API's answers (and its
 * refusals of everything else), the 4009 close within the request, refused
 * reconnects by key and by id, peers told `peer_left` with reason
 * `revoked`, lifting, and the bans' index with expiry (an injected clock).
 * The fleet-wide part is `revoke_fleet_test.ts`.
 */

import assert from "node:assert/strict";
import { Identity } from "../../lib/protocol/identity.ts";
import { CloseCode } from "../../lib/protocol/close_codes.ts";
import {
  type Ban,
  banMatches,
  makeBan,
  parseBan,
  parseRevokeRequest,
  Revocations,
  revokedCloseReason,
  RevokeError,
} from "../../lib/rendezvous/revocations.ts";
import { startRendezvous, TestClient, within } from "../_helpers.ts";
import { until } from "../_fleet.ts";

const AUTH = { authorization: "Bearer s3cret" };

function revoke(http: string, body: unknown, headers: Record<string, string> = AUTH) {
  return fetch(`${http}/admin/revoke`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

Deno.test("parseRevokeRequest: names the wrong field; defaults the reason; bounds the duration", () => {
  const bad: [unknown, RegExp][] = [
    [null, /JSON object/],
    [[], /JSON object/],
    [{}, /name the worker/],
    [{ worker_id: "no spaces" }, /worker_id must be/],
    [{ worker_id: 7 }, /worker_id must be/],
    [{ key: "AAAA" }, /32 bytes/],
    [{ key: "not base64!" }, /base64url/],
    [{ key: 12 }, /key must be a string/],
    [{ worker_id: "w", reason: "" }, /reason must be/],
    [{ worker_id: "w", reason: "x".repeat(201) }, /reason must be/],
    [{ worker_id: "w", reason: "line\nbreak" }, /reason must be/],
    [{ worker_id: "w", duration_sec: 0 }, /duration_sec/],
    [{ worker_id: "w", duration_sec: 1.5 }, /duration_sec/],
    [{ worker_id: "w", duration_sec: "60" }, /duration_sec/],
    [{ worker_id: "w", duration_sec: 11 * 365 * 86_400 }, /duration_sec/],
  ];
  for (const [body, message] of bad) {
    assert.throws(() => parseRevokeRequest(body), (e) => {
      assert.ok(e instanceof RevokeError);
      assert.equal(e.status, 400);
      assert.match(e.message, message);
      return true;
    }, JSON.stringify(body));
  }
  assert.deepEqual(parseRevokeRequest({ worker_id: "w1" }), {
    workerId: "w1",
    key: null,
    reason: "revoked by an administrator",
    durationSec: null,
  });
  assert.equal(parseRevokeRequest({ worker_id: "w1", duration_sec: 60 }).durationSec, 60);
});

Deno.test("Revocations: matches by key under any id and by id with any key; lapses; lifts by any name", async () => {
  let now = 1_000_000;
  const closed: string[] = [];
  const bans = new Revocations({
    clock: { now: () => now } as never,
    onBan: (ban) => (closed.push(ban.id), 1),
  });
  const key = (await Identity.generate()).publicKey;
  const other = (await Identity.generate()).publicKey;
  const byKey = await makeBan(
    { workerId: "w1", key: null, reason: "stolen", durationSec: 60 },
    key,
    now,
  );
  assert.match(
    byKey.id,
    /^[0-9a-f]{4}(:[0-9a-f]{4}){3}$/,
    "a keyed ban is known by its fingerprint",
  );
  assert.equal(await bans.add(byKey), 1);
  assert.deepEqual(closed, [byKey.id]);
  assert.equal(bans.match("w1", key)?.id, byKey.id);
  assert.equal(bans.match("another-id", key)?.id, byKey.id, "the key under another id");
  assert.equal(bans.match("w1", other)?.id, byKey.id, "the id with another key");
  assert.equal(bans.match("w1", null)?.id, byKey.id, "the id without a key");
  assert.equal(bans.match("w2", other), undefined);
  // A keyless ban of the same id beside it; lifting one leaves the other in force.
  const byId = await makeBan(
    { workerId: "w1", key: null, reason: "x", durationSec: null },
    null,
    now,
  );
  assert.equal(byId.id, "id:w1");
  await bans.add(byId);
  assert.deepEqual((await bans.lift(byKey.key_fingerprint!)).map((b) => b.id), [byKey.id]);
  assert.equal(bans.match("w1", null)?.id, "id:w1", "the id's other ban still holds");
  assert.equal(bans.match("x", key), undefined);
  await bans.add(byKey);
  now += 60_000;
  assert.equal(bans.match("x", key), undefined, "lapsed at expires_at");
  assert.deepEqual(bans.list().map((b) => b.id), ["id:w1"]);
  assert.deepEqual((await bans.lift("w1")).map((b) => b.id), ["id:w1"]);
  assert.equal(bans.size, 0);
  assert.deepEqual(await bans.lift("w1"), []);
});

Deno.test("Revocations: a store that fails makes no ban; stored bans are reloaded and their sessions closed", async () => {
  const stored = new Map<string, Ban>();
  let failing = true;
  const store = {
    put: (ban: Ban) => {
      if (failing) return Promise.reject(new Error("Redis is away"));
      stored.set(ban.id, ban);
      return Promise.resolve();
    },
    remove: (ids: readonly string[]) => {
      for (const id of ids) stored.delete(id);
      return Promise.resolve();
    },
    all: () => Promise.resolve([...stored.values()]),
  };
  const closed: string[] = [];
  const bans = new Revocations({
    clock: { now: Date.now } as never,
    store,
    onBan: (b) => (closed.push(b.id), 0),
  });
  const ban = await makeBan(
    { workerId: "w1", key: null, reason: "r", durationSec: null },
    null,
    Date.now(),
  );
  await assert.rejects(() => bans.add(ban), /Redis is away/);
  assert.equal(bans.match("w1", null), undefined);
  failing = false;
  stored.set(ban.id, ban); // made by another instance while we were away
  await bans.reload();
  assert.equal(bans.match("w1", null)?.id, "id:w1");
  assert.deepEqual(closed, ["id:w1"]);
  await bans.reload();
  assert.deepEqual(closed, ["id:w1"], "a ban already known is not applied twice");
  stored.clear(); // lifted elsewhere while we were away
  await bans.reload();
  assert.equal(bans.match("w1", null), undefined);
});

Deno.test("parseBan refuses what is not a ban; close reasons fit RFC 6455's 123 bytes", async () => {
  for (const junk of [null, 1, "x", {}, { id: 1 }, { id: "a", worker_id: null, key: null }]) {
    assert.equal(parseBan(junk), undefined);
  }
  const ban = await makeBan(
    { workerId: "w", key: null, reason: "é".repeat(200), durationSec: null },
    null,
    0,
  );
  assert.deepEqual(parseBan(JSON.parse(JSON.stringify(ban))), ban);
  const reason = revokedCloseReason(ban);
  assert.ok(new TextEncoder().encode(reason).length <= 123, reason);
  assert.match(reason, /^revoked: é+…$/);
  assert.equal(revokedCloseReason({ ...ban, reason: "short" }), "revoked: short");
  assert.ok(banMatches(ban, "w", null));
});

Deno.test("admin API: refuses without a token configured, without the bearer, and every malformed request", async () => {
  const open = await startRendezvous();
  try {
    const r = await revoke(open.http, { worker_id: "w1" }, {});
    assert.equal(r.status, 403);
    assert.match((await r.json()).error, /set RENDEZVOUS_TOKEN/);
  } finally {
    await open.close();
  }
  const rv = await startRendezvous({ token: "s3cret" });
  try {
    const cases: [Promise<Response>, number, RegExp][] = [
      [revoke(rv.http, { worker_id: "w1" }, {}), 401, /bearer/],
      [revoke(rv.http, { worker_id: "w1" }, { authorization: "Bearer nope" }), 401, /bearer/],
      [revoke(rv.http, "{not json"), 400, /not JSON/],
      [revoke(rv.http, { worker_id: "a b" }), 400, /worker_id/],
      [revoke(rv.http, "x".repeat(5000)), 413, /4096 bytes/],
      [fetch(`${rv.http}/admin/revoke`, { headers: AUTH }), 405, /GET is not allowed/],
      [fetch(`${rv.http}/admin/revoked`, { method: "POST", headers: AUTH }), 405, /POST/],
      [
        fetch(`${rv.http}/admin/revoked/nobody`, { method: "DELETE", headers: AUTH }),
        404,
        /nobody/,
      ],
      [fetch(`${rv.http}/admin/revoked/%zz`, { method: "DELETE", headers: AUTH }), 400, /percent/],
      [fetch(`${rv.http}/admin/other`, { headers: AUTH }), 404, /Cannot find/],
    ];
    for (const [pending, status, message] of cases) {
      const response = await pending;
      assert.equal(response.status, status, `${response.url} ${status}`);
      assert.match((await response.json()).error, message);
    }
    assert.equal(rv.rendezvous.connectionCount, 0);
  } finally {
    await rv.close();
  }
});

Deno.test("revoke: the session closes with 4009 and the reason, reconnects are refused, peers hear peer_left revoked; DELETE lifts", async () => {
  const rv = await startRendezvous({ token: "s3cret" });
  const identity = await Identity.generate();
  const headers = AUTH;
  const url = (id: string) => `${rv.ws}/ws/register/${id}`;
  const watcher = await TestClient.connect(url("watcher"), headers);
  const clients: TestClient[] = [watcher];
  try {
    watcher.send({ type: "list_peers", watch: true });
    await until(watcher, (m) => m.type === "peers", "the listing");
    // A keyed worker, proving its key.
    const target = new TestClient(`${url("target")}?key=${identity.publicKey}`, headers);
    clients.push(target);
    await within(target.opened, 5000, "open");
    const challenge = await target.next();
    target.send({
      type: "prove_key",
      signature: await identity.proveRegistration(
        `127.0.0.1:${rv.port}`,
        "target",
        challenge.nonce as string,
      ),
    });
    assert.equal((await target.next()).type, "registered");
    await until(watcher, (m) => m.type === "peer_joined", "target joining");

    const response = await revoke(rv.http, { worker_id: "target", reason: "key leaked" });
    assert.equal(response.status, 201);
    const { ban, sessions_closed } = await response.json();
    assert.equal(sessions_closed, 1);
    assert.equal(ban.key, identity.publicKey, "a registered id is revoked with its key");
    assert.equal(ban.key_fingerprint, identity.fingerprint);
    assert.equal(ban.worker_id, "target");
    assert.equal(ban.expires_at, null);
    const close = await within(target.closed, 1000, "the revoked session's close");
    assert.equal(close.code, CloseCode.REVOKED);
    assert.equal(close.reason, "revoked: key leaked");
    const left = await until(watcher, (m) => m.type === "peer_left", "peer_left");
    assert.deepEqual(left, { type: "peer_left", peer_id: "target", reason: "revoked" });

    // Refused again: the same key under another id, the id without a key.
    for (const attempt of [`${url("renamed")}?key=${identity.publicKey}`, url("target")]) {
      const again = new TestClient(attempt, headers);
      clients.push(again);
      const refused = await within(again.closed, 5000, "the refusal");
      assert.equal(refused.code, CloseCode.REVOKED, attempt);
      assert.equal(refused.reason, "revoked: key leaked");
    }
    assert.equal(rv.rendezvous.refused.revoked, 2);
    const metrics = await (await fetch(`${rv.http}/metrics`, { headers })).text();
    assert.match(metrics, /holepunch_rendezvous_revocations 1\b/);
    assert.match(metrics, /holepunch_rendezvous_refused_total\{reason="revoked"\} 2\b/);

    const listed = await (await fetch(`${rv.http}/admin/revoked`, { headers })).json();
    assert.deepEqual(listed.bans.map((b: Ban) => b.id), [identity.fingerprint]);
    const lifted = await fetch(
      `${rv.http}/admin/revoked/${encodeURIComponent(identity.fingerprint)}`,
      { method: "DELETE", headers },
    );
    assert.equal(lifted.status, 200);
    assert.equal((await lifted.json()).lifted.length, 1);
    // Back: the key registers again.
    const back = new TestClient(`${url("target")}?key=${identity.publicKey}`, headers);
    clients.push(back);
    const nonce = (await back.next()).nonce as string;
    back.send({
      type: "prove_key",
      signature: await identity.proveRegistration(`127.0.0.1:${rv.port}`, "target", nonce),
    });
    assert.equal((await back.next()).type, "registered");
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await rv.close();
  }
});

Deno.test("revoke by key, for a while: a key not connected now is refused when it comes, others are not", async () => {
  const rv = await startRendezvous({ token: "s3cret" });
  const identity = await Identity.generate();
  try {
    const response = await revoke(rv.http, {
      key: identity.publicKey,
      reason: "offboarded",
      duration_sec: 3600,
    });
    assert.equal(response.status, 201);
    const { ban, sessions_closed } = await response.json();
    assert.equal(sessions_closed, 0);
    assert.equal(ban.worker_id, null);
    assert.ok(Math.abs(ban.expires_at - ban.revoked_at - 3600_000) < 1);
    const client = new TestClient(
      `${rv.ws}/ws/register/anyone?key=${identity.publicKey}`,
      AUTH,
    );
    const close = await within(client.closed, 5000, "the refusal");
    assert.equal(close.code, CloseCode.REVOKED);
    // A keyless worker of another id is not touched.
    const other = await TestClient.connect(`${rv.ws}/ws/register/other`, AUTH);
    await other.close();
  } finally {
    await rv.close();
  }
});
