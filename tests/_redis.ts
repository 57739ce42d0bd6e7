/**
 * A real redis-server (Debian's `redis-server`) on a free loopback port, for
 * the client's tests and the fleet's: plain or TLS (a throwaway certificate
 * made with openssl), with or without a password, stoppable and restartable
 * on the same port.
 */

import { parseRedisUrl, RedisConnection } from "../lib/redis/client.ts";
import { Proc, toolMissing } from "./_helpers.ts";

/** Why redis-server cannot run here, or undefined when it can. */
export async function redisUnavailable(): Promise<string | undefined> {
  return await toolMissing("redis-server", ["--version"], "redis-server") ??
    await toolMissing("openssl", ["version"], "openssl");
}

/** A redis-server on 127.0.0.1:`port` that keeps nothing on disk (restarts come back empty). */
export function redisServerArgs(port: number): string[] {
  return ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no"];
}

/** A TCP port free on 127.0.0.1 right now. */
export function freeTcpPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Options for {@linkcode RedisServer.start}. */
export interface RedisServerOptions {
  /** requirepass: AUTH with this password. */
  password?: string;
  /** An ACL user with a password of its own (`user:password`), besides `default`. */
  user?: { name: string; password: string };
  /** Serve TLS only (a self-signed certificate, in `caCert`). */
  tls?: boolean;
  port?: number;
}

/** One redis-server process. */
export class RedisServer {
  readonly port: number;
  readonly caCert?: string;
  #options: RedisServerOptions;
  #dir: string;
  #proc?: Proc;

  private constructor(options: RedisServerOptions, dir: string, port: number, caCert?: string) {
    this.#options = options;
    this.#dir = dir;
    this.port = port;
    this.caCert = caCert;
  }

  static async start(options: RedisServerOptions = {}): Promise<RedisServer> {
    const dir = await Deno.makeTempDir({ prefix: "holepunch-redis-" });
    let caCert: string | undefined;
    if (options.tls) {
      const made = await new Deno.Command("openssl", {
        args: [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:prime256v1",
          "-nodes",
          "-days",
          "1",
          "-subj",
          "/CN=127.0.0.1",
          "-addext",
          "subjectAltName=IP:127.0.0.1",
          // An end-entity certificate, trusted as itself (rustls refuses a CA as a server's).
          "-addext",
          "basicConstraints=critical,CA:FALSE",
          "-addext",
          "extendedKeyUsage=serverAuth",
          "-keyout",
          `${dir}/key.pem`,
          "-out",
          `${dir}/cert.pem`,
        ],
        stdout: "null",
        stderr: "piped",
      }).output();
      if (!made.success) throw new Error(new TextDecoder().decode(made.stderr));
      caCert = await Deno.readTextFile(`${dir}/cert.pem`);
    }
    const server = new RedisServer(options, dir, options.port ?? freeTcpPort(), caCert);
    await server.restart();
    return server;
  }

  /** `redis://…` or `rediss://…` for this server, with the user or password given. */
  url(auth: "none" | "password" | "user" = "none"): string {
    const scheme = this.#options.tls ? "rediss" : "redis";
    const credentials = auth === "password"
      ? `:${encodeURIComponent(this.#options.password ?? "")}@`
      : auth === "user"
      ? `${this.#options.user!.name}:${encodeURIComponent(this.#options.user!.password)}@`
      : "";
    return `${scheme}://${credentials}127.0.0.1:${this.port}`;
  }

  /** Starts (again) on the same port, empty: nothing is saved. */
  async restart(): Promise<void> {
    const o = this.#options;
    const args = [
      // TLS only: the plain port closed, the TLS one on `port`.
      ...redisServerArgs(o.tls ? 0 : this.port),
      "--dir",
      this.#dir,
      "--loglevel",
      "notice",
      ...(o.password ? ["--requirepass", o.password] : []),
      ...(o.tls
        ? [
          "--tls-port",
          String(this.port),
          "--tls-cert-file",
          `${this.#dir}/cert.pem`,
          "--tls-key-file",
          `${this.#dir}/key.pem`,
          "--tls-auth-clients",
          "no",
        ]
        : []),
    ];
    const proc = new Proc("redis-server", args, {});
    this.#proc = proc;
    await proc.waitForStdout(/Ready to accept connections/, 10_000);
    if (o.user) {
      // An ACL user of its own (no spaces in its password: ACL rules cannot hold them).
      const admin = await RedisConnection.open({
        url: parseRedisUrl(this.url(o.password ? "password" : "none")),
        ...(this.caCert ? { caCerts: [this.caCert] } : {}),
      });
      try {
        await admin.command([
          "ACL",
          "SETUSER",
          o.user.name,
          "on",
          `>${o.user.password}`,
          "~*",
          "&*",
          "+@all",
        ]);
      } finally {
        admin.close();
      }
    }
  }

  /** Stops the server (SIGKILL unless told otherwise): connections drop at once. */
  async stop(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    await this.#proc?.stop(signal);
    this.#proc = undefined;
  }

  async close(): Promise<void> {
    await this.stop();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}
