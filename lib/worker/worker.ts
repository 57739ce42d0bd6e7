/**
 * A whole worker in one object: the rendezvous client, the UDP socket with
 * its STUN discovery, the peer manager, the optional hellos and the health
 * server, wired once here so that `worker.ts`, the demo and tests start the
 * same thing.
 *
 * @module
 */

import { Backoff } from "../core/backoff.ts";
import { settleWithin } from "../core/clock.ts";
import { type Logger, silentLogger } from "../core/log.ts";
import { VERSION } from "../core/version.ts";
import { PeerManager } from "../peer/manager.ts";
import { type PeerConnection, PeerConnections } from "../peer/connection.ts";
import { importGroupSecret, PeerTransport, type TransportStats } from "../peer/transport.ts";
import { rehearse } from "../peer/rehearsal.ts";
import { rehearseLinks } from "../peer/link_rehearsal.ts";
import { Forwarder } from "./forward.ts";
import type { PathKind } from "../protocol/messages.ts";
import { type ClientEvent, RendezvousClient } from "./client.ts";
import { registrationUrl, type WorkerConfig } from "./config.ts";
import { workerHealthHandler, workerMetrics, type WorkerStatus } from "./health.ts";
import { describeHello, sendHello, startHello } from "./hello.ts";
import { loadIdentity } from "./key_file.ts";
import { type Control, type PeerView, startControl } from "./control.ts";
import { fingerprint } from "../protocol/identity.ts";
import { Pinger, type Pong } from "./ping.ts";
import { fetchPublicIp } from "./public_ip.ts";
import type { Identity } from "../protocol/identity.ts";
import { openUdpIo, startWorkerUdp, type WorkerUdp } from "./udp.ts";
import type { PortMapperOptions } from "../portmap/mapper.ts";
import { behindAnotherNat } from "../portmap/gateway.ts";
import type { FfiUdp } from "../peer/ffi_udp.ts";

/** How long {@linkcode Worker.close} gives closing connections' last packets to leave. */
const CLOSE_FLUSH_MS = 50;

/** How long {@linkcode Worker.close} waits for open health requests to finish. */
const HEALTH_DRAIN_MS = 1000;

/** Options for {@linkcode startWorker}. */
export interface StartWorkerOptions {
  /** Where the worker logs. @default {silentLogger} */
  logger?: Logger;
  /**
   * Serve `/health` and `/` on `config.hostname:config.port`. Off for
   * in-process workers that need no HTTP endpoint.
   * @default {true}
   */
  health?: boolean;
  /**
   * Receives every diagnostic message (`PeerManager.send`, the hellos) a
   * peer sends: authenticated, not encrypted. By default it is logged as
   * `peer message received`. Application data goes over `connect()`.
   */
  onMessage?: (peerId: string, payload: Uint8Array, path: PathKind) => void;
  /** Receives every event of the rendezvous session (registered, disconnected, …). */
  onEvent?: (event: ClientEvent) => void;
  /**
   * A peer connected to us. Without it, such connections are still kept:
   * {@linkcode Worker.connect} returns them.
   */
  onConnection?: (connection: PeerConnection) => void;
  /** Where the port mapper looks for the gateway (tests). @default {the default route's} */
  portMapper?: Pick<PortMapperOptions, "findGateway" | "target">;
  /**
   * The worker's key. By default it comes from `config.keyFile`
   * (`WORKER_KEY_FILE`), or is made fresh for this worker.
   */
  identity?: Identity;
}

/** The parts of a worker, made bottom-up by {@linkcode startWorker}. */
interface WorkerParts {
  client: RendezvousClient;
  udp: WorkerUdp | undefined;
  peers: PeerManager;
  connections: PeerConnections;
  transport: PeerTransport;
  forwarder: Forwarder;
  pinger: Pinger;
  /** The batched sockets (`PEER_UDP_IO`), if in use. */
  ffi: FfiUdp | undefined;
}

/**
 * A running worker, made by {@linkcode startWorker}: registered (or
 * registering) with the rendezvous, discovering its UDP endpoint, and
 * punching to its peers.
 */
export class Worker {
  /** The worker's id at the rendezvous. */
  readonly id: string;
  /** The worker's long-term key, proven to the rendezvous at every registration. */
  readonly identity: Identity;
  /** Peer links: introductions, punching, relay, messages. */
  readonly peers: PeerManager;
  /** Connections to peers (one per peer), over {@linkcode Worker.peers}' paths. */
  readonly connections: PeerConnections;
  readonly #transport: PeerTransport;
  readonly #forwarder: Forwarder;
  /** The health server's address, once it listens; null without one. */
  readonly healthAddr: Promise<Deno.NetAddr | null>;
  readonly #client: RendezvousClient;
  readonly #udp: WorkerUdp | undefined;
  readonly #stop = new AbortController();
  readonly #running: Promise<void>;
  readonly #health: Deno.HttpServer<Deno.NetAddr> | undefined;
  readonly #hello: ReturnType<typeof setInterval> | undefined;
  readonly #pinger: Pinger;
  readonly #ffi: FfiUdp | undefined;
  /** The control socket for `deno task ctl`, once the health server listens. */
  #control: Promise<Control | undefined> = Promise.resolve(undefined);
  #closed: Promise<void> | undefined;

  /** Use {@linkcode startWorker}: it makes the parts, bottom-up. */
  constructor(
    config: WorkerConfig,
    identity: Identity,
    parts: WorkerParts,
    options: StartWorkerOptions = {},
  ) {
    const log = options.logger ?? silentLogger;
    this.id = config.workerId;
    this.identity = identity;
    this.#client = parts.client;
    this.#udp = parts.udp;
    this.peers = parts.peers;
    this.connections = parts.connections;
    this.#transport = parts.transport;
    this.#forwarder = parts.forwarder;
    this.#pinger = parts.pinger;
    this.#ffi = parts.ffi;
    this.#hello = config.peerHelloMs > 0
      ? startHello(this.peers, config.workerId, config.peerHelloMs)
      : undefined;

    log.info("worker starting", {
      version: VERSION,
      ip_echo_url: config.ipEchoUrl ?? "off",
    });
    const listening = Promise.withResolvers<Deno.NetAddr | null>();
    this.healthAddr = listening.promise;
    if (options.health ?? true) {
      this.#health = Deno.serve(
        {
          port: config.port,
          hostname: config.hostname,
          signal: this.#stop.signal,
          onListen: (addr) => {
            log.info("health server listening", { hostname: addr.hostname, port: addr.port });
            listening.resolve(addr);
            if (config.controlDir !== undefined) {
              this.#control = startControl({
                dir: config.controlDir,
                port: addr.port,
                status: () => this.status(),
                peers: () => this.peerViews(),
                ping: (peerId, timeoutMs) => this.ping(peerId, timeoutMs),
                logger: log,
              }).catch((error) => {
                log.warn("no control socket: deno task ctl cannot reach this worker", {
                  dir: config.controlDir,
                  error: (error as Error).message,
                });
                return undefined;
              });
            }
          },
        },
        workerHealthHandler(
          () => this.status(),
          () => workerMetrics(this.status(), this.peers.pathBytes),
        ),
      );
    } else {
      listening.resolve(null);
    }
    this.#running = this.#client.run(this.#stop.signal);
  }

  /**
   * The connection to `peerId`: the open one, whoever dialed it, or a new
   * one. It is authenticated both ways (each side's identity key, as proven
   * to the rendezvous) and encrypted end to end, and carries on across path
   * changes (relay first, then direct, then back when the direct path dies).
   *
   * @throws {TransportError} when no connection comes up within `timeoutMs` (default 30 s)
   */
  connect(
    peerId: string,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<PeerConnection> {
    return this.connections.connect(peerId, options);
  }

  /** The peers the rendezvous told us of, with their key fingerprints and paths. */
  async peerViews(): Promise<PeerView[]> {
    const links = this.peers.snapshot() as Record<
      string,
      { path?: string; direct_to?: string | null }
    >;
    return await Promise.all(this.peers.peers.map(async (peer) => ({
      worker_id: peer.worker_id,
      nat_mapping: peer.nat_mapping,
      public: peer.public ? `${peer.public.ip}:${peer.public.port}` : null,
      fingerprint: peer.key ? await fingerprint(peer.key).catch(() => null) : null,
      path: links[peer.worker_id]?.path ?? null,
      direct_to: links[peer.worker_id]?.direct_to ?? null,
    })));
  }

  /**
   * Pings `peerId` over its link (asking for an introduction first if need
   * be): the pong's path and round trip, and the direct address in use.
   *
   * @throws {PingTimeoutError} when no pong comes within `timeoutMs`
   */
  async ping(peerId: string, timeoutMs = 5000): Promise<Pong & { to: string | null }> {
    const pong = await this.#pinger.ping(peerId, timeoutMs);
    const link = this.peers.snapshot()[peerId] as { direct_to?: string | null } | undefined;
    return { ...pong, to: pong.path === "direct" ? link?.direct_to ?? null : null };
  }

  /**
   * Replaces the transport certificate now (it happens by itself every 10
   * days) and publishes the new one; open connections carry on.
   */
  async rotateCertificate(): Promise<void> {
    await this.#transport.rotate();
  }

  /** Packets and bytes the peer transport carried, over every path. */
  get transportStats(): TransportStats {
    return { ...this.#transport.stats };
  }

  /** What the worker is doing: the JSON its `GET /` serves. */
  status(): WorkerStatus {
    return {
      worker_id: this.id,
      version: VERSION,
      key: { public_key: this.identity.publicKey, fingerprint: this.identity.fingerprint },
      rendezvous: this.#client.snapshot(),
      udp: this.#udp?.presence.last ?? null,
      udp_io: this.#ffi ? "ffi" : "deno",
      port_mapping: this.#portMapping(),
      peers: Object.fromEntries(
        Object.entries(this.peers.snapshot()).map(([id, link]) => {
          const traffic = this.#transport.traffic(id);
          return [id, {
            ...link as Record<string, unknown>,
            bytes: traffic ? { sent: traffic.sent, received: traffic.received } : null,
            idle_ms: traffic?.idle_ms ?? null,
          }];
        }),
      ),
      ...this.#forwarder.snapshot(),
      handshakes: {
        refused: this.#transport.handshakes.refused,
        timed_out: this.#transport.handshakes.timedOut,
      },
      limits: {
        stand_ins: this.#transport.standIns,
        stand_ins_unproven: this.#transport.standInsUnproven,
        extra_sockets: this.peers.extraSockets,
        transport_packets_refused: this.#transport.refusedPackets,
        punch_packets_paced: this.peers.pacedOut,
        punch_packets_over_budget: this.peers.budget.dropped,
      },
    };
  }

  /**
   * The port mapping's status, and whether the gateway is behind another
   * NAT: its mapped address private or shared, or not the one STUN sees.
   */
  #portMapping(): WorkerStatus["port_mapping"] {
    const status = this.#udp?.portMapper?.status;
    if (!status) return null;
    const seen = this.#udp?.presence.last?.public?.ip ?? null;
    return { ...status, double_nat: behindAnotherNat(status.mapping?.externalIp ?? null, seen) };
  }

  /**
   * Leaves the rendezvous (a clean close, so peers learn at once), closes the
   * peer links, the UDP socket and the health server. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    if (this.#hello !== undefined) clearInterval(this.#hello);
    await (await this.#control)?.close();
    await this.#forwarder.close();
    this.connections.close();
    // The paths stay open a moment so the connections' CONNECTION_CLOSE
    // frames reach the peers, which then learn at once, not after an idle timeout.
    await settleWithin(new Promise(() => {}), CLOSE_FLUSH_MS);
    await this.#transport.close();
    this.#stop.abort();
    await this.#running;
    await this.peers.close();
    await this.#udp?.close();
    await this.#ffi?.close();
    if (this.#health) await settleWithin(this.#health.finished, HEALTH_DRAIN_MS);
  }
}

/**
 * Starts a whole worker from its configuration (see `loadWorkerConfig()`):
 * it loads or makes its key, registers with the rendezvous (proving the
 * key), discovers its UDP endpoint, punches to its peers and serves its
 * health endpoint, until {@linkcode Worker.close}.
 *
 * @throws {KeyFileError} when `WORKER_KEY_FILE` exists but holds no usable key
 * @throws {UdpIoError} when `PEER_UDP_IO=ffi` and batched sockets cannot be had here
 *
 * @example
 * ```ts
 * import { loadWorkerConfig, startWorker } from "@holepunch/holepunch";
 *
 * const config = loadWorkerConfig({ RENDEZVOUS_SERVICE_URL: "http://localhost:8080", PORT: "0" });
 * const worker = await startWorker(config);
 * // … later
 * await worker.close();
 * ```
 */
export async function startWorker(
  config: WorkerConfig,
  options: StartWorkerOptions = {},
): Promise<Worker> {
  const log = options.logger ?? silentLogger;
  const identity = options.identity ?? await loadIdentity(config.keyFile, log);
  // A local connection accepted while the worker is still starting waits for it (within the
  // forward's own wait), as it would for an unreachable peer.
  const started = Promise.withResolvers<Worker>();
  started.promise.catch(() => {}); // a failed start is thrown below; no forward waits on it then
  // Listeners first: a forward port that is taken fails the start before anything runs.
  const forwarder = new Forwarder({
    forwards: config.peerForward,
    exposes: config.peerExpose,
    connect: async (peerId, timeoutMs) => {
      const startedAt = Date.now();
      let worker: Worker | undefined;
      started.promise.then((w) => worker = w, () => {});
      await settleWithin(started.promise, timeoutMs);
      if (!worker) throw new Error(`the worker did not start within ${timeoutMs} ms`);
      return await worker.connect(peerId, {
        timeoutMs: Math.max(0, timeoutMs - (Date.now() - startedAt)),
      });
    },
    waitMs: config.peerForwardWaitMs,
    socks: config.peerSocks,
    knows: async (peerId) => {
      const worker = await started.promise.catch(() => undefined);
      return worker?.peers.peer(peerId) !== undefined;
    },
    logger: log,
  });

  // Bottom-up: each part is made from the ones below it (the rendezvous
  // client, the UDP socket, the peer manager, the transport, the
  // connections); the few calls upward are handlers set once both ends exist,
  // before anything runs.
  const { ipEchoUrl, ipEchoTimeoutMs } = config;
  const client = new RendezvousClient({
    url: registrationUrl(config.rendezvousBase, config.workerId, config.group),
    workerId: config.workerId,
    token: config.token,
    identity,
    pingIntervalMs: config.pingIntervalMs,
    pingTimeoutMs: config.pingTimeoutMs,
    backoff: new Backoff({ baseMs: config.reconnectBaseMs, maxMs: config.reconnectMaxMs }),
    lookupPublicIp: ipEchoUrl === undefined
      ? undefined
      : (signal) => fetchPublicIp(ipEchoUrl, { signal, timeoutMs: ipEchoTimeoutMs }),
    logger: log,
  });
  // Batched UDP where it can be had (PEER_UDP_IO): the socket, its extra sockets, the stand-ins.
  const ffi = openUdpIo(config.peerUdpIo, log);
  const udp = config.stunServers.length === 0 ? undefined : startWorkerUdp({
    ffi,
    hostname: config.udpHost,
    port: config.udpPort,
    stunServers: config.stunServers,
    keepaliveMs: config.stunKeepaliveMs,
    logger: log,
    report: (report) =>
      client.send({ type: "register_udp_endpoint", ...report, rtt_ms: client.rttMs }),
    portMapping: config.portMapping === "auto",
    portMappingLifetimeSec: config.portMappingLifetimeSec,
    portMapper: options.portMapper,
  });
  const peers = new PeerManager({
    udp: udp?.udp,
    udp6: udp?.udp6,
    sendToRendezvous: (message) => client.send(message),
    sendRelayPacket: (peerId, packet) => client.sendPacket(peerId, packet),
    autoConnect: config.peerAutoConnect,
    openingTtl: config.punchOpeningTtl,
    batchedStandIns: ffi !== undefined,
    stunServers: config.stunServers,
    logger: log,
  });
  const pinger = new Pinger((peerId, payload) => peers.send(peerId, payload));
  udp?.setReportedListener((report) => {
    peers.ownMappingReported(report.mapped != null);
    peers.ownEndpointReported(report.public);
  });
  let transport: PeerTransport;
  try {
    transport = await PeerTransport.start({
      workerId: config.workerId,
      identity,
      logger: log,
      sendPacket: (peerId, packet) => peers.sendPacket(peerId, packet),
      peer: (peerId) => peers.peer(peerId),
      // Only peers we were introduced to may make us hold a stand-in and QUIC state.
      admits: (peerId) => peers.wasIntroduced(peerId),
      // Peers pin our certificate only as our key vouches for it (again after each rotation).
      onCredentials: (credentials) => client.send({ type: "register_transport", ...credentials }),
      congestionControl: config.peerCongestionControl,
      standIns: { ffi },
      group: config.groupSecret === undefined
        ? undefined
        : { name: config.group, secret: await importGroupSecret(config.groupSecret) },
    });
  } catch (error) {
    started.reject(error);
    await Promise.all([forwarder.close(), peers.close(), udp?.close()]);
    await ffi?.close();
    throw error;
  }
  peers.setTransport(transport);
  const connections = new PeerConnections({
    workerId: config.workerId,
    transport,
    // A fresh process compiles a connection's code at start, on a loop
    // connection of its own, and the punching code on two links in memory,
    // not on the first connect() (rehearsal.ts, link_rehearsal.ts).
    warmUp: (it) => Promise.all([rehearse(it, log), rehearseLinks()]),
    // Once introduced, the link punches again by itself when it must.
    introduce: (peerId) => {
      if (!peers.introduced(peerId)) peers.connect(peerId);
    },
    ready: (peerId) => {
      const peer = peers.peer(peerId);
      return peer?.key != null && peer.transport !== null;
    },
    pathOf: (peerId) => peers.pathOf(peerId),
    onConnection: options.onConnection,
    onForward: (request) => void forwarder.handle(request),
    logger: log,
  });

  // The calls upward.
  transport.setHandlers({
    onConnection: (peerId, auth) => connections.incoming(peerId, auth),
    accepts: (peerId) => connections.accepts(peerId),
  });
  peers.setHandlers({
    // Hello 0 goes out as soon as a peer is known: it waits for the
    // introduction, then is relayed at once (time to first relayed byte).
    onPeer: (peerId) => {
      if (config.peerHelloMs > 0) sendHello(peers, peerId, config.workerId, 0);
    },
    onPeerInfo: (peer) => connections.peerChanged(peer.worker_id),
    onPath: (peerId) => connections.pathChanged(peerId),
    // A revoked peer is not trusted a moment longer: its connection goes, streams and all.
    onPeerLeft: (peerId, reason) => {
      if (reason === "revoked") connections.drop(peerId, "peer revoked by the rendezvous");
    },
    // Pings are answered here; every other message goes to the application, or the log.
    onMessage: (peerId, payload, path) => {
      if (pinger.receive(peerId, payload, path)) return;
      if (options.onMessage) return options.onMessage(peerId, payload, path);
      log.info("peer message received", { peer_id: peerId, path, ...describeHello(payload) });
    },
  });
  client.setHandlers({
    onEvent: (event) => {
      options.onEvent?.(event);
      if (event.type !== "registered") return;
      udp?.onRegistered();
      // Without UDP, peers still learn we exist and can only be relayed to.
      if (!udp) {
        client.send({
          type: "register_udp_endpoint",
          public: null,
          local: [],
          nat: { mapping: "no-udp" },
          rtt_ms: client.rttMs,
        });
      }
      // Peers can dial us once they have our certificate: we publish it once
      // a dial is quick (the warm-up done), not while we still compile.
      void connections.warmedUp.then(() =>
        client.send({ type: "register_transport", ...transport.credentials })
      );
      peers.onRegistered();
    },
    onPeerMessage: (message) => peers.handle(message),
    onRelayPacket: (peerId, packet) => void peers.receiveRelayed(peerId, packet),
  });
  if (!udp) peers.ownEndpointReported(null);

  const worker = new Worker(
    config,
    identity,
    { client, udp, peers, connections, transport, forwarder, pinger, ffi },
    options,
  );
  started.resolve(worker);
  return worker;
}
