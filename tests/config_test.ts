import assert from "node:assert/strict";
import { ConfigError } from "../lib/core/env.ts";
import { loadRendezvousConfig } from "../lib/rendezvous/config.ts";
import { loadWorkerConfig, registrationUrl, rendezvousBaseUrl } from "../lib/worker/config.ts";

Deno.test("loadRendezvousConfig() has production defaults", () => {
  const config = loadRendezvousConfig({});
  assert.equal(config.port, 8080);
  assert.equal(config.hostname, "0.0.0.0");
  assert.equal(config.token, undefined);
  assert.equal(config.trustProxyHops, 0);
  assert.equal(config.maxMessageBytes, 65536);
  assert.ok(config.idleTimeoutSec <= 60);
  assert.deepEqual(config.log, { level: "info", format: "json" });
  assert.equal(loadRendezvousConfig({}, true).log.format, "text");
});

Deno.test("loadRendezvousConfig() reads TRUST_PROXY as a boolean or a hop count", () => {
  assert.equal(loadRendezvousConfig({ TRUST_PROXY: "true" }).trustProxyHops, 1);
  assert.equal(loadRendezvousConfig({ TRUST_PROXY: "off" }).trustProxyHops, 0);
  assert.equal(loadRendezvousConfig({ TRUST_PROXY: "2" }).trustProxyHops, 2);
  assert.throws(() => loadRendezvousConfig({ TRUST_PROXY: "maybe" }), { variable: "TRUST_PROXY" });
});

Deno.test("loadRendezvousConfig() names the variable at fault", () => {
  const bad: Record<string, string> = {
    PORT: "http",
    MAX_CONNECTIONS: "0",
    MAX_MESSAGE_BYTES: "1.5",
    IDLE_TIMEOUT_SEC: "-1",
    LOG_LEVEL: "chatty",
    LOG_FORMAT: "xml",
  };
  for (const [name, value] of Object.entries(bad)) {
    assert.throws(
      () => loadRendezvousConfig({ [name]: value }),
      (e: unknown) =>
        e instanceof ConfigError && e.variable === name && e.message.includes(`"${value}"`),
      name,
    );
  }
});

Deno.test("rendezvousBaseUrl() maps the seed's schemes", () => {
  const cases: [string, string, boolean][] = [
    ["http://rv.example:8080", "ws://rv.example:8080", false],
    ["https://rv-xyz.a.run.app/", "wss://rv-xyz.a.run.app", false],
    ["ws://localhost:1", "ws://localhost:1", false],
    ["WSS://h/prefix/", "wss://h/prefix", false],
    ["localhost:8080", "ws://localhost:8080", true],
    ["rv.internal", "ws://rv.internal", true],
  ];
  for (const [input, expected, warns] of cases) {
    const { url, warning } = rendezvousBaseUrl(input);
    assert.equal(url.href.replace(/\/$/, ""), expected, input);
    assert.equal(warning !== undefined, warns, input);
  }
});

Deno.test("rendezvousBaseUrl() rejects other schemes and junk", () => {
  for (const input of ["ftp://h", "mailto:x@y", "http://", "http://u:p@h", "file:///x"]) {
    assert.throws(() => rendezvousBaseUrl(input), ConfigError, input);
  }
});

Deno.test("registrationUrl() appends the seed's path and keeps a prefix", () => {
  assert.equal(
    registrationUrl(rendezvousBaseUrl("https://h/rv/").url, "w-1").href,
    "wss://h/rv/ws/register/w-1",
  );
  assert.equal(
    registrationUrl(rendezvousBaseUrl("http://h:9").url, "abc").href,
    "ws://h:9/ws/register/abc",
  );
});

Deno.test("loadWorkerConfig() requires RENDEZVOUS_SERVICE_URL and defaults the rest", () => {
  assert.throws(() => loadWorkerConfig({}), { variable: "RENDEZVOUS_SERVICE_URL" });
  const config = loadWorkerConfig({ RENDEZVOUS_SERVICE_URL: "https://rv" });
  assert.match(config.workerId, /^[0-9a-f-]{36}$/);
  assert.notEqual(
    loadWorkerConfig({ RENDEZVOUS_SERVICE_URL: "https://rv" }).workerId,
    config.workerId,
  );
  assert.equal(config.ipEchoUrl, "https://api.ipify.org/");
  assert.equal(config.pingIntervalMs, 25_000);
  assert.equal(config.pingTimeoutMs, 25_000);
  assert.equal(config.port, 8080);
});

Deno.test("loadWorkerConfig() reads the seed's variables and ours", () => {
  const config = loadWorkerConfig({
    RENDEZVOUS_SERVICE_URL: "http://rv:8080",
    WORKER_ID: "edge-7",
    PING_INTERVAL_SEC: "0.5",
    PING_TIMEOUT_SEC: "2",
    IP_ECHO_URL: "off",
    RENDEZVOUS_TOKEN: "t",
    PORT: "0",
  });
  assert.equal(config.workerId, "edge-7");
  assert.equal(config.pingIntervalMs, 500);
  assert.equal(config.pingTimeoutMs, 2000);
  assert.equal(config.ipEchoUrl, undefined);
  assert.equal(config.token, "t");
  assert.equal(config.port, 0);
});

Deno.test("loadWorkerConfig() names the variable at fault", () => {
  const base = { RENDEZVOUS_SERVICE_URL: "http://rv" };
  const bad: Record<string, string> = {
    RENDEZVOUS_SERVICE_URL: "gopher://x",
    WORKER_ID: "has space",
    IP_ECHO_URL: "ftp://x",
    PING_INTERVAL_SEC: "soon",
    PORT: "70000",
    RECONNECT_MAX_SEC: "0.1",
    CONTROL_DIR: "relative/dir",
  };
  for (const [name, value] of Object.entries(bad)) {
    assert.throws(
      () => loadWorkerConfig({ ...base, [name]: value }),
      (e: unknown) => e instanceof ConfigError && e.variable === name,
      name,
    );
  }
});

Deno.test("loadWorkerConfig() puts the control socket in the runtime directory, /tmp/holepunch-$USER, CONTROL_DIR, or nowhere", () => {
  const base = { RENDEZVOUS_SERVICE_URL: "http://rv" };
  assert.equal(
    loadWorkerConfig({ ...base, XDG_RUNTIME_DIR: "/run/user/1000" }).controlDir,
    "/run/user/1000/holepunch",
  );
  assert.equal(loadWorkerConfig({ ...base, USER: "ana" }).controlDir, "/tmp/holepunch-ana");
  assert.equal(loadWorkerConfig({ ...base, USER: "../x" }).controlDir, "/tmp/holepunch-.._x");
  assert.equal(loadWorkerConfig({ ...base, CONTROL_DIR: "/srv/hp" }).controlDir, "/srv/hp");
  assert.equal(loadWorkerConfig({ ...base, CONTROL_DIR: "off" }).controlDir, undefined);
});

Deno.test("loadRendezvousConfig() reads the worker-key settings", () => {
  const defaults = loadRendezvousConfig({});
  assert.equal(defaults.requireWorkerKeys, false);
  assert.equal(defaults.keyHoldSec, 300);
  assert.equal(defaults.publicHosts, undefined);
  const set = loadRendezvousConfig({
    REQUIRE_WORKER_KEYS: "true",
    KEY_HOLD_SEC: "86400",
    PUBLIC_HOSTS: "Rendezvous-xyz.a.run.app, 10.0.0.5:8080",
  });
  assert.equal(set.requireWorkerKeys, true);
  assert.equal(set.keyHoldSec, 86400);
  assert.deepEqual(set.publicHosts, ["rendezvous-xyz.a.run.app", "10.0.0.5:8080"]);
  for (const bad of ["https://x.example", "x.example/path", " , ", "user@x.example"]) {
    assert.throws(() => loadRendezvousConfig({ PUBLIC_HOSTS: bad }), { variable: "PUBLIC_HOSTS" });
  }
  assert.throws(() => loadRendezvousConfig({ KEY_HOLD_SEC: "-1" }), { variable: "KEY_HOLD_SEC" });
});

Deno.test("loadWorkerConfig() reads PEER_CONGESTION_CONTROL", () => {
  const base = { RENDEZVOUS_SERVICE_URL: "http://x" };
  assert.equal(loadWorkerConfig(base).peerCongestionControl, "default");
  assert.equal(
    loadWorkerConfig({ ...base, PEER_CONGESTION_CONTROL: "low-latency" }).peerCongestionControl,
    "low-latency",
  );
  assert.throws(() => loadWorkerConfig({ ...base, PEER_CONGESTION_CONTROL: "bbr" }), {
    variable: "PEER_CONGESTION_CONTROL",
  });
});

Deno.test("loadWorkerConfig() reads PUNCH_OPENING_TTL: 3 unless set, 0 turns it off, bad values name it", () => {
  const base = { RENDEZVOUS_SERVICE_URL: "http://x" };
  assert.equal(loadWorkerConfig(base).punchOpeningTtl, 3);
  assert.equal(loadWorkerConfig({ ...base, PUNCH_OPENING_TTL: "5" }).punchOpeningTtl, 5);
  assert.equal(loadWorkerConfig({ ...base, PUNCH_OPENING_TTL: "0" }).punchOpeningTtl, 0);
  for (const bad of ["-1", "2.5", "256", "three"]) {
    assert.throws(() => loadWorkerConfig({ ...base, PUNCH_OPENING_TTL: bad }), {
      variable: "PUNCH_OPENING_TTL",
    });
  }
});

Deno.test("loadWorkerConfig() reads WORKER_KEY_FILE", () => {
  const base = { RENDEZVOUS_SERVICE_URL: "http://x" };
  assert.equal(loadWorkerConfig(base).keyFile, undefined);
  assert.equal(
    loadWorkerConfig({ ...base, WORKER_KEY_FILE: "/keys/w1.jwk" }).keyFile,
    "/keys/w1.jwk",
  );
});

Deno.test("loadRendezvousConfig() reads the fleet's Redis settings, and refuses bad ones by name", () => {
  assert.equal(loadRendezvousConfig({}).fleet, undefined, "no REDIS_URL: one instance, in memory");
  const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  assert.deepEqual(
    loadRendezvousConfig({
      REDIS_URL: "rediss://default:s3cret@10.0.0.3:6378",
      REDIS_CA_CERT: pem,
      REDIS_PREFIX: "prod-fleet",
      FLEET_TTL_SEC: "8",
    }).fleet,
    {
      url: "rediss://default:s3cret@10.0.0.3:6378",
      caCert: pem.trim(),
      prefix: "prod-fleet",
      ttlSec: 8,
    },
  );
  assert.deepEqual(loadRendezvousConfig({ REDIS_URL: "redis://127.0.0.1" }).fleet, {
    url: "redis://127.0.0.1",
    prefix: "holepunch",
    ttlSec: 5,
  });
  const refused = (env: Record<string, string>, name: string) =>
    assert.throws(
      () => loadRendezvousConfig(env),
      (e: Error) =>
        e instanceof ConfigError && e.variable === name && !e.message.includes("s3cret"),
      JSON.stringify(env),
    );
  refused({ REDIS_URL: "http://u:s3cret@h" }, "REDIS_URL");
  refused({ REDIS_URL: "redis://h/99" }, "REDIS_URL");
  refused({ REDIS_URL: "redis://h", REDIS_CA_CERT: "not a pem" }, "REDIS_CA_CERT");
  refused({ REDIS_URL: "redis://h", REDIS_PREFIX: "a b" }, "REDIS_PREFIX");
  refused({ REDIS_URL: "redis://h", FLEET_TTL_SEC: "0" }, "FLEET_TTL_SEC");
});
