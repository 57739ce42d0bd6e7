import assert from "node:assert/strict";
import { connectWebSocket, type TcpWebSocket } from "../../lib/core/websocket_client.ts";
import { within } from "../_helpers.ts";

/** A Deno.serve WebSocket server that echoes, and records the handshake's headers. */
function echoServer() {
  const listening = Promise.withResolvers<number>();
  const headers: (string | null)[] = [];
  const server = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    onListen: ({ port }) => listening.resolve(port),
  }, (req) => {
    headers.push(req.headers.get("authorization"));
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => {
      if (e.data === "close me") socket.close(4000, "as asked");
      else socket.send(e.data);
    };
    return response;
  });
  return { port: listening.promise, headers, close: () => server.shutdown() };
}

function events(socket: TcpWebSocket) {
  const messages: (string | ArrayBuffer)[] = [];
  const waiters: (() => void)[] = [];
  socket.addEventListener("message", (e) => {
    messages.push((e as MessageEvent).data);
    waiters.splice(0).forEach((w) => w());
  });
  const opened = new Promise<void>((resolve, reject) => {
    socket.addEventListener("open", () => resolve(), { once: true });
    socket.addEventListener("close", () => reject(new Error("closed before open")), { once: true });
  });
  opened.catch(() => {});
  const closed = new Promise<CloseEvent>((resolve) =>
    socket.addEventListener("close", (e) => resolve(e as CloseEvent), { once: true })
  );
  const next = async () => {
    while (messages.length === 0) await new Promise<void>((r) => waiters.push(r));
    return messages.shift()!;
  };
  return { opened, closed, next };
}

Deno.test("connectWebSocket() talks to Deno's server: text, binary, large messages, headers, close both ways", async () => {
  const server = echoServer();
  const port = await server.port;
  try {
    const socket = connectWebSocket(`ws://127.0.0.1:${port}/ws/x?key=1`, {
      authorization: "Bearer t",
    });
    const e = events(socket);
    await within(e.opened, 5000, "open");
    assert.equal(server.headers[0], "Bearer t");
    socket.send("hello ✓");
    assert.equal(await e.next(), "hello ✓");
    const big = new Uint8Array(3 * 65536 + 5).map((_, i) => (i * 131 + 7) & 0xff);
    socket.send(big);
    const echoed = await e.next();
    assert.ok(echoed instanceof ArrayBuffer);
    assert.deepEqual(new Uint8Array(echoed), big);
    socket.send(new Uint8Array([1, 2]));
    assert.deepEqual(new Uint8Array(await e.next() as ArrayBuffer), new Uint8Array([1, 2]));
    socket.send("close me");
    const closed = await within(e.closed, 5000, "close");
    assert.equal(closed.code, 4000);
    assert.equal(closed.reason, "as asked");
    assert.equal(socket.readyState, 3);

    const second = connectWebSocket(`ws://127.0.0.1:${port}/`, {});
    const f = events(second);
    await within(f.opened, 5000, "open");
    second.close(1000, "bye");
    assert.equal((await within(f.closed, 5000, "close")).code, 1000);
  } finally {
    await server.close();
  }
});

/** A raw TCP server that completes the handshake (or not) and then plays `script`. */
function rawServer(
  script: (conn: Deno.TcpConn) => Promise<void>,
  accept: (key: string) => Promise<string> = async (key) => {
    const digest = await crypto.subtle.digest(
      "SHA-1",
      new TextEncoder().encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
    );
    return btoa(String.fromCharCode(...new Uint8Array(digest)));
  },
) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const done = (async () => {
    const conn = await listener.accept();
    const buffer = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) return;
      head += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const key = /sec-websocket-key: (\S+)/i.exec(head)![1];
    await conn.write(new TextEncoder().encode(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${await accept(key)}\r\n\r\n`,
    ));
    try {
      await script(conn);
    } finally {
      try {
        conn.close();
      } catch {
        // Closed by the script.
      }
      listener.close();
    }
  })();
  return { port: (listener.addr as Deno.NetAddr).port, done };
}

/** Reads one masked client frame: opcode and unmasked payload. */
async function readClientFrame(
  conn: Deno.TcpConn,
): Promise<{ opcode: number; payload: Uint8Array }> {
  const head = new Uint8Array(2);
  await readFull(conn, head);
  assert.ok(head[1] & 0x80, "client frames are masked");
  const length = head[1] & 0x7f;
  assert.ok(length < 126);
  const mask = new Uint8Array(4);
  await readFull(conn, mask);
  const payload = new Uint8Array(length);
  await readFull(conn, payload);
  for (let i = 0; i < length; i++) payload[i] ^= mask[i & 3];
  return { opcode: head[0] & 0x0f, payload };
}

async function readFull(conn: Deno.TcpConn, into: Uint8Array): Promise<void> {
  let at = 0;
  while (at < into.length) {
    const n = await conn.read(into.subarray(at));
    if (n === null) throw new Error("eof");
    at += n;
  }
}

Deno.test("connectWebSocket() answers pings, joins fragments and echoes the server's close", async () => {
  const server = rawServer(async (conn) => {
    await conn.write(new Uint8Array([0x89, 0x01, 0x70])); // ping "p"
    const pong = await readClientFrame(conn);
    assert.equal(pong.opcode, 0xa);
    assert.deepEqual(pong.payload, new Uint8Array([0x70]));
    await conn.write(new Uint8Array([0x01, 0x03, ...new TextEncoder().encode("hel")])); // text, not FIN
    await conn.write(new Uint8Array([0x80, 0x02, ...new TextEncoder().encode("lo")])); // continuation, FIN
    await conn.write(new Uint8Array([0x88, 0x05, 0x0f, 0xa0, ...new TextEncoder().encode("bye")])); // close 4000
    const echo = await readClientFrame(conn);
    assert.equal(echo.opcode, 0x8);
    assert.deepEqual(echo.payload.subarray(0, 2), new Uint8Array([0x0f, 0xa0]));
  });
  const socket = connectWebSocket(`ws://127.0.0.1:${server.port}/`, {});
  const e = events(socket);
  await within(e.opened, 5000, "open");
  assert.equal(await within(e.next(), 5000, "the joined message"), "hello");
  const closed = await within(e.closed, 5000, "close");
  assert.equal(closed.code, 4000);
  assert.equal(closed.reason, "bye");
  await server.done;
});

Deno.test("connectWebSocket() refuses a wrong accept key and a masked server frame", async () => {
  const wrongAccept = rawServer(async () => {}, () => Promise.resolve("AAAA"));
  const a = connectWebSocket(`ws://127.0.0.1:${wrongAccept.port}/`, {});
  const ea = events(a);
  const errored = new Promise<string>((r) =>
    a.addEventListener("error", (e) => r((e as ErrorEvent).message))
  );
  assert.match(await within(errored, 5000, "error"), /Sec-WebSocket-Accept/);
  assert.equal((await ea.closed).code, 1006);
  await wrongAccept.done;

  const masked = rawServer(async (conn) => {
    await conn.write(new Uint8Array([0x81, 0x81, 1, 2, 3, 4, 0x41 ^ 1])); // masked "A"
    const close = await readClientFrame(conn);
    assert.equal(close.opcode, 0x8);
    assert.equal((close.payload[0] << 8) | close.payload[1], 1002);
  });
  const b = connectWebSocket(`ws://127.0.0.1:${masked.port}/`, {});
  const eb = events(b);
  await within(eb.opened, 5000, "open");
  assert.equal((await within(eb.closed, 5000, "close")).code, 1002);
  await masked.done;

  const refused = connectWebSocket("ws://127.0.0.1:1/", {});
  assert.equal((await within(events(refused).closed, 5000, "close")).code, 1006);
});
