/**
 * A whole rendezvous in one object: the WebSocket service on a listener that
 * survives running out of file descriptors, plus the STUN server beside it
 * when configured. `rendezvous.ts`, the demo and tests start the same thing.
 *
 * @module
 */

import { settleWithin } from "../core/clock.ts";
import { type Logger, silentLogger } from "../core/log.ts";
import { NAME, VERSION } from "../core/version.ts";
import { startStun } from "../stun/config.ts";
import type { StunServer } from "../stun/server.ts";
import type { RendezvousConfig } from "./config.ts";
import { serveResilient } from "./resilient_serve.ts";
import { Rendezvous } from "./server.ts";
import { Fleet } from "./fleet.ts";
import { BansFile } from "./bans_file.ts";
import { BindingsFile, loadBindings } from "./bindings_file.ts";
import { MemoryRegistry } from "./registry.ts";

/** How long {@linkcode RendezvousService.close} waits for open HTTP requests once sessions are closed. */
const LISTENER_DRAIN_MS = 1000;

/** Options for {@linkcode startRendezvous}. */
export interface StartRendezvousOptions {
  /** Where the service logs. @default {silentLogger} */
  logger?: Logger;
}

/** A running rendezvous service, made by {@linkcode startRendezvous}. */
export class RendezvousService {
  /** The WebSocket service: sessions, registry, peer services. */
  readonly rendezvous: Rendezvous;
  /** The STUN server beside it; undefined without `STUN_PORT`. */
  readonly stun: StunServer | undefined;
  /** Where the HTTP listener listens, once it does. */
  readonly addr: Promise<Deno.NetAddr>;
  /** The fleet over Redis; undefined without `REDIS_URL`. */
  readonly fleet: Fleet | undefined;
  readonly #server: { shutdown(): Promise<void> };
  readonly #shutdownTimeoutMs: number;
  #closed: Promise<void> | undefined;
  #bindingsFile?: BindingsFile;

  /** Use {@linkcode startRendezvous}. */
  constructor(config: RendezvousConfig, options: StartRendezvousOptions = {}) {
    const log = options.logger ?? silentLogger;
    this.#shutdownTimeoutMs = config.shutdownTimeoutSec * 1000;
    // STUN first: a port it cannot bind fails the start before anything listens.
    this.stun = config.stun ? startStun(config.stun, log) : undefined;
    this.fleet = config.fleet
      ? new Fleet({
        url: config.fleet.url,
        ...(config.fleet.caCert ? { caCerts: [config.fleet.caCert] } : {}),
        prefix: config.fleet.prefix,
        ttlMs: config.fleet.ttlSec * 1000,
        logger: log,
      })
      : undefined;
    // A proof names the authority the worker dialed; unset, any Host a client
    // sends is taken, so a rendezvous a worker also trusts could pass the
    // worker's proof for its own challenge on to this one as the worker.
    if (config.publicHosts === undefined && (config.fleet || config.requireWorkerKeys)) {
      log.warn("PUBLIC_HOSTS is unset: key proofs may name any Host a client sends", {
        advice: "set PUBLIC_HOSTS to the host[:port] workers dial",
      });
    }
    // A single instance may keep its key bindings across restarts.
    let registry: MemoryRegistry | undefined;
    if (config.keyBindingsFile !== undefined) {
      registry = new MemoryRegistry();
      const bindings = loadBindings(config.keyBindingsFile);
      registry.restoreBindings(bindings, Date.now());
      const file = new BindingsFile(config.keyBindingsFile, () => registry!.bindings(), log);
      registry.onBindingsChanged = () => file.changed();
      this.#bindingsFile = file;
      log.info("key bindings loaded", { path: config.keyBindingsFile, bindings: bindings.length });
    }
    // …and its revocations.
    let bans: BansFile | undefined;
    if (config.revocationsFile !== undefined) {
      bans = new BansFile(config.revocationsFile);
      log.info("revocations loaded", { path: config.revocationsFile, bans: bans.size });
    }
    const rendezvous = new Rendezvous({
      ...(registry ? { registry } : {}),
      ...(bans ? { bans } : {}),
      fleet: this.fleet,
      token: config.token,
      trustProxyHops: config.trustProxyHops,
      maxConnections: config.maxConnections,
      maxSessionsPerIp: config.maxSessionsPerIp,
      maxSessionsPerKey: config.maxSessionsPerKey,
      handshakeRatePerSec: config.handshakeRatePerSec,
      handshakeBurst: config.handshakeBurst,
      ...(this.stun ? { stunStats: () => this.stun!.stats } : {}),
      maxMessageBytes: config.maxMessageBytes,
      idleTimeoutSec: config.idleTimeoutSec,
      messageRatePerSec: config.messageRatePerSec,
      messageBurst: config.messageBurst,
      relayRatePerSec: config.relayRatePerSec,
      relayBurst: config.relayBurst,
      relayBytesPerSec: config.relayBytesPerSec,
      maxSendBufferBytes: config.maxSendBufferBytes,
      listRatePerMin: config.listRatePerMin,
      requireWorkerKeys: config.requireWorkerKeys,
      keyHoldSec: config.keyHoldSec,
      publicHosts: config.publicHosts,
      logger: log,
      name: `${NAME}-rendezvous`,
      version: VERSION,
    });
    this.rendezvous = rendezvous;
    const listening = Promise.withResolvers<Deno.NetAddr>();
    this.addr = listening.promise;
    this.#server = serveResilient({
      port: config.port,
      hostname: config.hostname,
      logger: log,
      onListen: (addr) => {
        rendezvous.markReady();
        log.info("rendezvous listening", {
          hostname: addr.hostname,
          port: addr.port,
          version: VERSION,
          auth: config.token !== undefined,
          trust_proxy_hops: config.trustProxyHops,
          fleet: this.fleet
            ? { instance: this.fleet.instance, prefix: config.fleet!.prefix }
            : null,
        });
        listening.resolve(addr);
      },
      onError: (error) => {
        log.error("request handler failed", { error });
        return new Response("Internal Server Error", { status: 500 });
      },
    }, rendezvous.handler);
  }

  /**
   * Drains: every worker gets notice and a 1001 close within
   * `SHUTDOWN_TIMEOUT_SEC`, then the STUN server and the listener stop.
   * Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    await this.rendezvous.close(this.#shutdownTimeoutMs);
    await this.#bindingsFile?.flush();
    await this.fleet?.close();
    await this.stun?.close();
    await settleWithin(this.#server.shutdown(), LISTENER_DRAIN_MS);
  }
}

/**
 * Starts a rendezvous from its configuration (see `loadRendezvousConfig()`).
 *
 * @throws {Error} when the STUN port cannot be bound (nothing is left running)
 * @throws {BindingsFileError} when `KEY_BINDINGS_FILE` cannot be read or is not one
 * @throws {BansFileError} when `REVOCATIONS_FILE` cannot be read or is not one
 *
 * @example
 * ```ts
 * import { loadRendezvousConfig, startRendezvous } from "@holepunch/holepunch";
 *
 * const service = startRendezvous(loadRendezvousConfig({ PORT: "0" }));
 * console.log("listening on", (await service.addr).port);
 * await service.close();
 * ```
 */
export function startRendezvous(
  config: RendezvousConfig,
  options: StartRendezvousOptions = {},
): RendezvousService {
  return new RendezvousService(config, options);
}
