/**
 * The baseline for bench/main.ts's memory scenario: a bare Deno WebSocket
 * server with the same ping setting, answering registration the way the
 * load generator expects and nothing more. What the rendezvous costs per
 * worker beyond this is what holepunch's features cost.
 *
 * @module
 */

const sockets = new Set<WebSocket>();
let registered = 0;
Deno.serve({ port: Number(Deno.env.get("PORT")), hostname: "0.0.0.0" }, (req) => {
  const path = new URL(req.url).pathname;
  if (path === "/ready") return new Response("ok");
  if (path === "/debug/stats") {
    const m = Deno.memoryUsage();
    return Response.json({
      sessions: sockets.size,
      registered,
      memory: { rss: m.rss, heap_used: m.heapUsed },
    });
  }
  const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 30 });
  sockets.add(socket);
  socket.onmessage = (e) => {
    if (String(e.data).includes("register_public_ip")) {
      registered++;
      socket.send('{"type":"public_ip_registered","ip":"203.0.113.1"}');
    }
  };
  socket.onclose = () => {
    sockets.delete(socket);
    registered--;
  };
  return response;
});
