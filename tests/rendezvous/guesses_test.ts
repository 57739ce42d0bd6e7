/**
 * Wrong credentials are throttled per client: the bearer token on every
 * route that needs it, the dashboard's sign-in form, and registrations.
 */
import assert from "node:assert/strict";
import { GUESS_LIMITS, guessClient, Guesses } from "../../lib/rendezvous/guesses.ts";
import { FakeClock } from "../_fake_clock.ts";
import { startRendezvous } from "../_helpers.ts";

const TOKEN = "s3cret-token-of-the-rendezvous";

Deno.test("Guesses: a burst of wrong guesses, then one every refill; right ones cost nothing", async () => {
  const clock = new FakeClock();
  const throttled: string[] = [];
  const g = new Guesses(clock, (c) => throttled.push(c));
  for (let i = 0; i < GUESS_LIMITS.burst; i++) {
    assert.equal(g.refusal("a"), undefined, `guess ${i}`);
    g.wrong("a");
  }
  const refused = g.refusal("a")!;
  assert.equal(refused.status, 429);
  assert.equal(refused.headers.get("retry-after"), String(GUESS_LIMITS.refillMs / 1000));
  assert.equal(g.refusal("b"), undefined, "another client is not affected");
  await clock.tick(GUESS_LIMITS.refillMs);
  assert.equal(g.refusal("a"), undefined, "one more after a refill");
  g.wrong("a");
  assert.equal(g.refusal("a")?.status, 429);
  assert.deepEqual(throttled, ["a", "a"]);
  await clock.tick(GUESS_LIMITS.burst * GUESS_LIMITS.refillMs);
  assert.equal(g.refusal("a"), undefined);
  assert.equal(g.size, 0, "a client back to its full budget is forgotten");
});

Deno.test("Guesses remembers a bounded number of clients, the least recently wrong going first", () => {
  const clock = new FakeClock();
  const g = new Guesses(clock, () => {}, { burst: 2, refillMs: 60_000, maxClients: 100 });
  for (let i = 0; i < 1000; i++) g.wrong(`10.0.${i >> 8}.${i & 255}`);
  assert.equal(g.size, 100);
});

Deno.test("guessClient() knows an IPv6 client by its /64 and an IPv4 one by its address", () => {
  assert.equal(guessClient("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  assert.equal(guessClient("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
  assert.equal(guessClient("203.0.113.7"), "203.0.113.7");
  assert.equal(guessClient(null), "unknown");
});

Deno.test("the rendezvous throttles wrong bearer tokens and sign-ins per client with 429 and Retry-After", async () => {
  const clock = new FakeClock(Date.now());
  const rv = await startRendezvous({ token: TOKEN, clock, trustProxyHops: 1 });
  const from = (ip: string, token?: string) => ({
    "x-forwarded-for": ip,
    ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
  });
  const status = async (path: string, headers: Record<string, string>, init: RequestInit = {}) => {
    const res = await fetch(`${rv.http}${path}`, { headers, ...init });
    await res.body?.cancel();
    return { status: res.status, retryAfter: res.headers.get("retry-after") };
  };
  try {
    // No credential at all is not a guess: a scraper without its token is told 401 for ever.
    for (let i = 0; i < 2 * GUESS_LIMITS.burst; i++) {
      assert.equal((await status("/metrics", from("198.51.100.1"))).status, 401);
    }
    // Wrong tokens on any guarded route and wrong sign-ins share one budget.
    const wrong = [
      () => status("/metrics", from("198.51.100.2", "guess")),
      () => status("/debug/stats", from("198.51.100.2", "guess")),
      () => status("/debug/list_workers", from("198.51.100.2", "guess")),
      () => status("/ws/register/w1", from("198.51.100.2", "guess")),
      () =>
        status("/dashboard/login", {
          ...from("198.51.100.2"),
          "content-type": "application/x-www-form-urlencoded",
        }, { method: "POST", body: "token=guess" }),
    ];
    for (let i = 0; i < GUESS_LIMITS.burst; i++) {
      assert.equal((await wrong[i % wrong.length]()).status, 401, `guess ${i}`);
    }
    for (const attempt of wrong) {
      const res = await attempt();
      assert.equal(res.status, 429);
      assert.equal(res.retryAfter, String(GUESS_LIMITS.refillMs / 1000));
    }
    // Throttled, even the right token learns nothing; another client is served.
    assert.equal((await status("/metrics", from("198.51.100.2", TOKEN))).status, 429);
    assert.equal((await status("/metrics", from("198.51.100.3", TOKEN))).status, 200);
    assert.equal((await status("/dashboard", from("198.51.100.2", TOKEN))).status, 429);
    await clock.tick(GUESS_LIMITS.refillMs);
    assert.equal((await status("/metrics", from("198.51.100.2", TOKEN))).status, 200);
    const metrics =
      await (await fetch(`${rv.http}/metrics`, { headers: from("198.51.100.3", TOKEN) }))
        .text();
    assert.match(metrics, /holepunch_rendezvous_refused_total\{reason="guesses"\} 7/);
  } finally {
    await rv.close();
  }
});
