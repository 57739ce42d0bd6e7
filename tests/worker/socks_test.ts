/**
 * The SOCKS5 door (`PEER_SOCKS`): curl through it to a peer's exposed port
 * by the peer's id, with real worker processes; and what a client that is
 * not a well-behaved SOCKS5 CONNECT gets.
 */
import assert from "node:assert/strict";
import { requireOrSkip, spawnRendezvous, spawnWorker, toolMissing, waitFor } from "../_helpers.ts";
import { parseSocks, readSocksRequest, SocksError, SocksReply } from "../../lib/worker/socks.ts";

const skip = requireOrSkip(await toolMissing("curl", ["--version"], "curl"), "curl through SOCKS5");

/** Runs `readSocksRequest` on a real TCP connection fed `bytes`; what came back, and the outcome. */
async function handshake(bytes: number[]): Promise<{ answer: number[]; result: unknown }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
  });
  const server = await listener.accept();
  await client.write(new Uint8Array(bytes));
  await client.closeWrite();
  const result = await readSocksRequest(server).catch((e) => e);
  server.close();
  const answer = new Uint8Array(await new Response(client.readable).arrayBuffer());
  listener.close();
  return { answer: [...answer], result };
}

Deno.test("SOCKS5 handshakes: CONNECT to a peer id is read; other versions, methods, commands and IP literals are refused", async () => {
  const connect = [
    5,
    1,
    0,
    5,
    1,
    0,
    3,
    4,
    ..."db-1".split("").map((c) => c.charCodeAt(0)),
    0x15,
    0x38,
  ];
  const ok = await handshake(connect);
  assert.deepEqual(ok.answer, [5, 0]);
  assert.deepEqual(ok.result, { peerId: "db-1", port: 5432 });
  const socks4 = await handshake([4, 1, 0, 80, 127, 0, 0, 1, 0]);
  assert.ok(socks4.result instanceof SocksError && socks4.result.reply === undefined);
  const auth = await handshake([5, 1, 2]);
  assert.deepEqual(auth.answer, [5, 0xff], "no acceptable method");
  const bind = await handshake([5, 1, 0, 5, 2, 0, 3, 1, 0x61, 0, 80]);
  assert.equal((bind.result as SocksError).reply, SocksReply.COMMAND_NOT_SUPPORTED);
  const ip = await handshake([5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80]);
  assert.equal((ip.result as SocksError).reply, SocksReply.ADDRESS_TYPE_NOT_SUPPORTED);
  const name = await handshake([5, 1, 0, 5, 1, 0, 3, 3, 0x61, 0x2f, 0x62, 0, 80]);
  assert.equal(
    (name.result as SocksError).reply,
    SocksReply.HOST_UNREACHABLE,
    "a/b is no worker id",
  );
  const cut = await handshake([5, 1, 0, 5, 1, 0, 3, 10, 0x61]);
  assert.ok(cut.result instanceof SocksError, "the client closed mid-request");
  assert.deepEqual(parseSocks("1080"), { hostname: "127.0.0.1", port: 1080 });
  assert.deepEqual(parseSocks("0.0.0.0:1080"), { hostname: "0.0.0.0", port: 1080 });
  assert.deepEqual(parseSocks("[::1]:1080"), { hostname: "::1", port: 1080 });
  assert.equal(parseSocks("off"), undefined);
  assert.throws(() => parseSocks("127.0.0.1:99999"));
});

async function curl(
  socks: number,
  url: string,
): Promise<{ code: number; out: string; err: string }> {
  const { code, stdout, stderr } = await new Deno.Command("curl", {
    args: ["-sS", "--max-time", "20", "--socks5-hostname", `127.0.0.1:${socks}`, url],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code, out: decode(stdout), err: decode(stderr) };
}

Deno.test({
  name:
    "curl --socks5-hostname reaches a peer's exposed port by its id; unknown peers, unexposed ports and access rules get their SOCKS replies",
  ignore: skip !== undefined,
  async fn() {
    const site = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      (req) => new Response(`hello from b, ${new URL(req.url).pathname}`),
    );
    const sitePort = site.addr.port;
    // A second port b exposes only to others: the access rules of PEER_EXPOSE.
    const closedSite = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      () => new Response("secret"),
    );
    const rv = await spawnRendezvous({ STUN_PORT: "0" });
    const stunPort = (await rv.proc.waitForLog("stun server listening")).port as number;
    const stun = { STUN_SERVERS: `127.0.0.1:${stunPort}` };
    const a = spawnWorker(rv.http, { ...stun, WORKER_ID: "socks-a", PEER_SOCKS: "127.0.0.1:0" });
    const b = spawnWorker(rv.http, {
      ...stun,
      WORKER_ID: "socks-b",
      PEER_EXPOSE: `${sitePort}@socks-?|other-*,${closedSite.addr.port}@report-*`,
    });
    try {
      const socks = (await a.waitForLog("socks listening")).port as number;
      await b.waitForLog("registered with rendezvous");
      // Until a has heard of b from the rendezvous, b is "no such peer": retried.
      let got = { code: -1, out: "", err: "" };
      await waitFor(
        async () => {
          got = await curl(socks, `http://socks-b:${sitePort}/path`);
          return got.code === 0;
        },
        "curl through the SOCKS door",
        20_000,
      ).catch(() => {});
      assert.equal(got.code, 0, got.err);
      assert.equal(got.out, "hello from b, /path");

      const stranger = await curl(socks, `http://nobody:${sitePort}/`);
      assert.equal(stranger.code, 97, `curl: ${stranger.err}`); // SOCKS connect failed
      const closed = await curl(socks, "http://socks-b:9/");
      assert.equal(closed.code, 97, `curl: ${closed.err}`);
      const denied = await curl(socks, `http://socks-b:${closedSite.addr.port}/`);
      assert.equal(denied.code, 97, `curl: ${denied.err}`);
      assert.match(denied.err, /\(2\)|not allowed/, "reply 2: not allowed by the ruleset");
      // b says why (its log line may come a moment after a's reply).
      await b.waitForLog("forward request refused: not allowed", (l) => l.peer_id === "socks-a");
      const ip = await curl(socks, `http://127.0.0.1:${sitePort}/`);
      assert.notEqual(ip.code, 0, "an IP literal reaches nothing");
      const reasons = a.lines.filter((l) => l.message === "socks request refused")
        .map((l) => String(l.reason));
      assert.ok(reasons.some((r) => r.includes("no such peer")), reasons.join("\n"));
      assert.ok(reasons.some((r) => r.includes("not exposed")), reasons.join("\n"));
      assert.ok(
        reasons.some((r) => r.includes("socks-a is not allowed to reach port")),
        reasons.join("\n"),
      );
      const exposed = await fetch(
        `http://127.0.0.1:${(await b.waitForLog("health server listening")).port}/`,
      ).then((r) => r.json());
      assert.equal(exposed.exposes[String(closedSite.addr.port)].refused, 1, "counted");
      const status = await fetch(
        `http://127.0.0.1:${(await a.waitForLog("health server listening")).port}/`,
      )
        .then((r) => r.json());
      const [, counted] = Object.entries(status.forwards).find(([k]) => k.startsWith("socks:")) as [
        string,
        { connections: number; refused: number },
      ];
      assert.ok(counted.connections >= 4 && counted.refused >= 3, JSON.stringify(counted));
    } finally {
      await a.stop();
      await b.stop();
      await rv.proc.stop();
      await site.shutdown();
      await closedSite.shutdown();
    }
  },
});
