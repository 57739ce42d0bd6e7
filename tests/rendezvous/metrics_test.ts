/**
 * `/metrics`: the Prometheus text format, checked by Prometheus's own
 * `promtool check metrics` (Debian's `prometheus` package), and the values
 * a session's life moves.
 */

import assert from "node:assert/strict";
import { Metrics } from "../../lib/core/metrics.ts";
import { requireOrSkip, startRendezvous, TestClient, waitFor } from "../_helpers.ts";
import { promtoolCheck as promtool, promtoolUnavailable, sample } from "../_promtool.ts";

const skip = requireOrSkip(await promtoolUnavailable(), "promtool checks");

Deno.test("Metrics renders counters, gauges and histograms in the text format, labels escaped", async () => {
  const m = new Metrics();
  const c = m.counter("t_things_total", "Things.\nDone \\ twice.");
  c.inc({ kind: 'a "quoted"\nvalue\\' });
  c.inc({ kind: 'a "quoted"\nvalue\\' }, 2);
  m.gauge("t_open", "Open now.", () => [[{ side: "left" }, 3], [{ side: "right" }, 0.5]]);
  const h = m.histogram("t_wait_seconds", "Waits.", [0.1, 1]);
  h.observe(0.05);
  h.observe(0.5);
  h.observe(5);
  const text = m.render();
  assert.equal(sample(text, 't_things_total{kind="a \\"quoted\\"\\nvalue\\\\"}'), 3);
  assert.ok(text.includes("# HELP t_things_total Things.\\nDone \\\\ twice."));
  assert.equal(sample(text, 't_open{side="right"}'), 0.5);
  assert.equal(sample(text, 't_wait_seconds_bucket{le="0.1"}'), 1);
  assert.equal(sample(text, 't_wait_seconds_bucket{le="1"}'), 2);
  assert.equal(sample(text, 't_wait_seconds_bucket{le="+Inf"}'), 3);
  assert.equal(sample(text, "t_wait_seconds_sum"), 5.55);
  assert.equal(sample(text, "t_wait_seconds_count"), 3);
  assert.throws(() => m.counter("t_things_total", "again"), RangeError);
  assert.throws(() => m.gauge("bad-name", "x", () => 1), RangeError);
  if (!skip) assert.equal(await promtool(text), "");
});

Deno.test({
  name:
    "rendezvous /metrics: behind the token, valid for promtool, and moved by registrations, introductions, paths, relay and closes",
  async fn() {
    const rv = await startRendezvous({ token: "s3cret" });
    const auth = { authorization: "Bearer s3cret" };
    try {
      const denied = await fetch(`${rv.http}/metrics`);
      assert.equal(denied.status, 401);
      await denied.body?.cancel();

      const a = await TestClient.connect(`${rv.ws}/ws/register/ma`, auth);
      const b = await TestClient.connect(`${rv.ws}/ws/register/mb`, auth);
      for (const [client, port, rtt] of [[a, 4000, 12], [b, 4001, 30]] as const) {
        client.send({
          type: "register_udp_endpoint",
          public: { ip: "203.0.113.9", port },
          local: [],
          nat: { mapping: port === 4000 ? "endpoint-independent" : "endpoint-dependent" },
          rtt_ms: rtt,
        });
        assert.equal((await client.next()).type, "udp_endpoint_registered");
      }
      a.send({ type: "connect", peer_id: "mb" });
      assert.equal((await a.next()).type, "punch");
      a.send({ type: "path_update", peer_id: "mb", path: "direct", rtt_ms: 3 });
      b.send({ type: "path_update", peer_id: "ma", path: "direct", rtt_ms: 3 });
      a.send({ type: "relay", to: "mb", data: "aGVsbG8=" });
      // b leaves once the frame reached it (two sessions: otherwise its close
      // may be handled first and the frame dropped, not relayed).
      let relayed = await b.next();
      while (relayed.type !== "relayed") relayed = await b.next();
      await b.close();

      const scrape = async () => {
        const response = await fetch(`${rv.http}/metrics`, { headers: auth });
        assert.equal(
          response.headers.get("content-type"),
          "text/plain; version=0.0.4; charset=utf-8",
        );
        return await response.text();
      };
      const text = await waitFor(async () => {
        const t = await scrape();
        return sample(t, 'holepunch_rendezvous_disconnections_total{code="1000"}') === 1 && t;
      }, "the close counted");
      if (!skip) assert.equal(await promtool(text), "", "promtool check metrics");
      const pair = "endpoint-dependent/endpoint-independent";
      const expected: [string, number][] = [
        ["holepunch_rendezvous_sessions", 1],
        ["holepunch_rendezvous_workers", 1],
        ["holepunch_rendezvous_registrations_total", 2],
        ["holepunch_rendezvous_introductions_total", 1],
        [`holepunch_rendezvous_path_reports_total{nat_pair="${pair}",path="direct"}`, 2],
        [`holepunch_rendezvous_time_to_direct_seconds_count{nat_pair="${pair}"}`, 1],
        ["holepunch_rendezvous_worker_rtt_seconds_count", 2],
        ['holepunch_rendezvous_worker_rtt_seconds_bucket{le="0.02"}', 1],
        ['holepunch_rendezvous_relay_messages_total{kind="message"}', 1],
        ["holepunch_rendezvous_relay_bytes_total", 8],
        ['holepunch_rendezvous_refused_total{reason="per_ip"}', 0],
      ];
      for (const [series, value] of expected) assert.equal(sample(text, series), value, series);

      // A reconnect within a minute counts as one.
      const again = await TestClient.connect(`${rv.ws}/ws/register/mb`, auth);
      assert.equal(sample(await scrape(), "holepunch_rendezvous_reconnects_total"), 1);
      await again.close();
      await a.close();
    } finally {
      await rv.close();
    }
  },
});
