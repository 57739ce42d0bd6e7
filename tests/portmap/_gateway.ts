/**
 * A port-mapping gateway stand-in on 127.0.0.1 for the tests: a UDP socket
 * that answers each datagram with what `answer` returns (nothing, one
 * datagram, or several), and keeps what it was sent and by whom.
 */

/** What the gateway sends back for a request (in order). */
export type Answer = (request: Uint8Array) => Uint8Array[];

/** Starts the gateway; `close()` stops it. */
export function gateway(answer: Answer) {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const requests: Uint8Array[] = [];
  const senders: Deno.NetAddr[] = [];
  const first = Promise.withResolvers<void>();
  const done = (async () => {
    const buffer = new Uint8Array(2048);
    while (true) {
      let got;
      try {
        got = await socket.receive(buffer);
      } catch {
        return;
      }
      const [bytes, from] = got;
      requests.push(bytes.slice());
      senders.push(from as Deno.NetAddr);
      first.resolve();
      for (const reply of answer(bytes)) await socket.send(reply, from).catch(() => {});
    }
  })();
  return {
    port: (socket.addr as Deno.NetAddr).port,
    requests,
    senders,
    /** Resolves when the first request arrives. */
    asked: first.promise,
    socket,
    async close() {
      socket.close();
      await done;
    },
  };
}
