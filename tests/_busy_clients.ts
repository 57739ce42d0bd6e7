/**
 * Test helper, run as its own process: opens N WebSockets to the rendezvous
 * URL given, makes each send an echo_request every millisecond, and prints
 * every close code as one JSON line on stdout when all have closed. With
 * HONOR_NOTICE=1 a client stops sending on `going_away`, as the worker does.
 *
 * Usage: deno run --allow-net --allow-env tests/_busy_clients.ts WS_BASE N
 */

const [base, count] = [Deno.args[0], Number(Deno.args[1])];
const honor = Deno.env.get("HONOR_NOTICE") === "1";
let streaming = 0;
const codes = await Promise.all(
  Array.from({ length: count }, (_, i) =>
    new Promise<number>((resolve) => {
      const socket = new WebSocket(`${base}/ws/register/busy-${i}`);
      let quiet = false;
      let counted = false;
      const timer = setInterval(() => {
        if (quiet || socket.readyState !== WebSocket.OPEN) return;
        socket.send(JSON.stringify({ type: "echo_request", payload: "x".repeat(64) }));
      }, 1);
      socket.onmessage = (event) => {
        const type = JSON.parse(event.data).type;
        if (type === "going_away" && honor) quiet = true;
        if (type === "echo_response" && !counted) {
          counted = true;
          // Every client streams before the test starts the shutdown.
          if (++streaming === count) console.error(JSON.stringify({ message: "streaming" }));
        }
      };
      socket.onclose = (event) => {
        clearInterval(timer);
        resolve(event.code);
      };
    })),
);
console.log(JSON.stringify(codes));
