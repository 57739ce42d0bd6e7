import assert from "node:assert/strict";
import { fetchPublicIp, PublicIpError } from "../../lib/worker/public_ip.ts";
import { startIpEcho } from "../_helpers.ts";

Deno.test("fetchPublicIp() reads the caller's IP from a local echo service", async () => {
  const echo = await startIpEcho();
  try {
    assert.equal(await fetchPublicIp(echo.url), "127.0.0.1");
  } finally {
    await echo.close();
  }
});

Deno.test("fetchPublicIp() trims and normalizes the answer", async () => {
  const echo = await startIpEcho(() => new Response("  2001:DB8:0:0::7\n"));
  try {
    assert.equal(await fetchPublicIp(echo.url), "2001:db8::7");
  } finally {
    await echo.close();
  }
});

Deno.test("fetchPublicIp() rejects answers that are not an IP, too long, or errors", async () => {
  const answers: [Response, RegExp][] = [
    [new Response("<html>captive portal</html>"), /not an IP address/],
    [new Response("1".repeat(10_000)), /longer than 256 bytes/],
    [new Response("1.2.3.4", { status: 503 }), /status 503/],
    [new Response(""), /not an IP address/],
  ];
  for (const [response, pattern] of answers) {
    const echo = await startIpEcho(() => response);
    try {
      await assert.rejects(fetchPublicIp(echo.url), (e: unknown) => {
        assert.ok(e instanceof PublicIpError);
        assert.match(e.message, pattern);
        return true;
      });
    } finally {
      await echo.close();
    }
  }
});

Deno.test("fetchPublicIp() gives up after its timeout", async () => {
  const release = Promise.withResolvers<void>();
  const echo = await startIpEcho(async () => {
    await release.promise;
    return new Response("1.2.3.4");
  });
  try {
    await assert.rejects(fetchPublicIp(echo.url, { timeoutMs: 100 }), /no answer within 100 ms/);
  } finally {
    release.resolve();
    await echo.close();
  }
});

Deno.test("fetchPublicIp() reports a refused connection as PublicIpError", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  await assert.rejects(fetchPublicIp(`http://127.0.0.1:${port}/`), PublicIpError);
});
