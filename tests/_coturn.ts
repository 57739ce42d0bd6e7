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
