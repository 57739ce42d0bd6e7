/**
 * coturn's turnserver as a plain STUN server on loopback, for the interop
 * tests and the STUN benchmark alike.
 */

/** Arguments for a STUN-only turnserver on 127.0.0.1:`port`, logging to `logFile`. */
export function turnserverArgs(port: number, logFile: string): string[] {
  return [
    "-n", // no configuration file
    "-S", // STUN only
    "--no-cli",
    "--no-tls",
    "--no-dtls",
    "-L",
    "127.0.0.1",
    "-p",
    String(port),
    "--log-file",
    logFile,
    ...(logFile === "stdout" ? [] : ["--no-stdout-log"]),
    "--pidfile",
    `/tmp/turnserver-${port}.pid`,
  ];
}

/**
 * A loopback port free for both UDP and TCP at this moment: turnserver
 * binds both, and retries a taken TCP port for a long time before it
 * answers on UDP. (Another process may still take it before turnserver
 * does; callers retry with a new port.)
 */
export function freeTurnPort(): number {
  for (let i = 0; i < 50; i++) {
    const udp = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const port = (udp.addr as Deno.NetAddr).port;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch {
      // TCP side taken: try another.
    } finally {
      udp.close();
    }
  }
  throw new Error("Cannot find a port free for both UDP and TCP");
}
