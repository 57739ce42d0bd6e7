/**
 * The peer transport: Deno's built-in QUIC (TLS 1.3, congestion control,
 * streams, flow control, datagrams) riding the worker's own paths, the way
 * iroh runs QUIC above its "magic socket".
 *
 * One `Deno.QuicEndpoint` per worker, bound to loopback, never reaches the
 * network itself. Each peer has a *stand-in*: a loopback UDP socket that is
 * the peer's address as far as QUIC knows. What QUIC sends to a stand-in is
 * carried to the peer over the link's current path (punched UDP or the
 * rendezvous relay); what arrives from the peer is handed to QUIC from its
 * stand-in. A path change is invisible to QUIC: its connection, streams and
 * congestion state carry on.
 *
 * Security, end to end: the listener's certificate is a fresh ECDSA P-256
 * one; its SHA-256 is signed by the worker's Ed25519 identity and published
 * through the rendezvous. A dialer pins that hash only after checking the
 * signature under the key the peer proved to the rendezvous, so the server
 * side is the peer itself. The dialer then proves its own identity on the
 * first stream: a signature over both worker ids and the server's
 * certificate hash, which binds it to this TLS connection (a relayed proof
 * would name another certificate). QUIC's AEAD and packet numbers reject
 * forged, replayed and reordered packets.
 *
 * @module
 */

import { settleWithin } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import {
  fromBase64Url,
  type Identity,
  toBase64Url,
  verifySignature,
} from "../protocol/identity.ts";
import type { PeerCertificate } from "./cert.ts";
import { MAX_PACKET, type StandIn, type StandInOptions, StandIns } from "./stand_in.ts";
import { type LoopEnds, WARM_UP, WarmUp } from "./warm_up.ts";
import {
  certificatePayload,
  checkDialerProof,
  dialerPayload,
  frameMessage,
  type GroupSecret,
  issue,
  type IssuedCertificate,
  readMessage,
  restOfStreams,
  TransportClose,
  TransportError,
  unvouched,
  within,
} from "./transport_auth.ts";
import type { TransportCredentials } from "../protocol/messages.ts";

export { TRANSPORT_MAGIC } from "./udp_endpoint.ts";
export {
  certificatePayload,
  dialerPayload,
  importGroupSecret,
  TransportClose,
  TransportError,
  vouchFor,
  vouchPayload,
} from "./transport_auth.ts";
/** ALPN of the peer transport. */
export const TRANSPORT_ALPN = "holepunch/1";
/**
 * A new certificate every 10 days: they live 14 (the WebTransport hash
 * rule), so a peer that fetched our credentials just before a rotation can
 * still dial the old listener's certificate... until it is replaced, and
 * the new one is published at once.
 */
export const CERT_ROTATION_MS = 10 * 86_400_000;
/** How long the listener waits for a dialer's proof. */
const AUTH_TIMEOUT_MS = 10_000;
/**
 * Handshakes in progress at once, and how long each may take: an Initial
 * that never finishes (a peer that stops answering, or means to) holds a
 * slot for this long, never the accept of anyone else.
 */
export const HANDSHAKE_LIMITS = { maxPending: 64, timeoutMs: 5000 } as const;

/** The congestion controllers Deno's QUIC offers. */
export type CongestionControl = "default" | "throughput" | "low-latency";

/** What the transport knows of a peer, from the rendezvous. */
export interface TransportPeer {
  /** The key the peer proved to the rendezvous; null for a keyless peer. */
  key: string | null;
  /** Its published credentials; null until it publishes them. */
  transport: TransportCredentials | null;
}

/** Options for {@linkcode PeerTransport.start}. */
export interface PeerTransportOptions {
  /** This worker's id. */
  workerId: string;
  /** This worker's identity, which signs its certificate and its dials. */
  identity: Identity;
  /** Where the transport logs refusals and failures. */
  logger: Logger;
  /**
   * Carries one packet (first byte {@linkcode TRANSPORT_MAGIC}) to `peerId`
   * over the current path; resolves once the bytes may be reused.
   */
  sendPacket(peerId: string, packet: Uint8Array): Promise<unknown> | void;
  /** The peer as the rendezvous describes it, or undefined for a stranger. */
  peer(peerId: string): TransportPeer | undefined;
  /** A peer dialed us and proved who it is (or set later: {@linkcode PeerTransport.setHandlers}). */
  onConnection?(peerId: string, conn: AuthenticatedConnection): void;
  /**
   * Whether `peerId`'s packets may open a stand-in (and so QUIC state): the
   * worker admits only peers the rendezvous introduced it to, so a group
   * member cannot make it hold state by relaying Initials. @default {() => true}
   */
  admits?(peerId: string): boolean;
  /** How many stand-ins, for how long (`STAND_IN_LIMITS`, `stand_in.ts`). */
  standIns?: StandInOptions;
  /** Whether to take a proven dial from `peerId` (false: refused as a duplicate). @default {() => true} */
  accepts?(peerId: string): boolean;
  /**
   * `GROUP_SECRET`, imported ({@linkcode importGroupSecret}), with this
   * worker's group: every peer's key must then be vouched for by it, so the
   * rendezvous cannot substitute keys. Unset: the rendezvous's word is taken.
   */
  group?: GroupSecret;
  /**
   * QUIC's congestion controller, in Deno's names. `"default"` moves the
   * most on clean paths; `"low-latency"` holds up far better under random
   * loss (see docs/performance.md).
   * @default {"default"}
   */
  congestionControl?: CongestionControl;
  /** New credentials after a certificate rotation: publish them. */
  onCredentials?(credentials: TransportCredentials): void;
  /** How often the certificate is replaced. @default {CERT_ROTATION_MS} */
  rotateEveryMs?: number;
}

/** A QUIC connection to a peer whose identity was checked, and its user streams. */
export interface AuthenticatedConnection {
  /** The connection. */
  conn: Deno.QuicConn;
  /** Streams the peer opens (the dialer's proof stream already taken out). */
  incoming: ReadableStream<Deno.QuicBidirectionalStream>;
  /** Which side dialed. */
  dialedBy: "us" | "peer";
}

/** Packets and bytes the transport carried, both ways, over every path. */
export interface TransportStats {
  /** Packets QUIC sent to peers. */
  packetsSent: number;
  /** Their bytes (QUIC packets, without the envelope byte). */
  bytesSent: number;
  /** Packets from peers handed to QUIC. */
  packetsReceived: number;
  /** Their bytes. */
  bytesReceived: number;
}

/**
 * A worker's QUIC endpoint and its peers' stand-ins.
 *
 * @example
 * ```ts ignore
 * const transport = await PeerTransport.start({ workerId, identity, logger, sendPacket, peer, onConnection });
 * publish(transport.credentials);             // through the rendezvous
 * const { conn } = await transport.dial("w2"); // pins w2's certificate, proves who we are
 * ```
 */
export class PeerTransport {
  /** What peers need to pin our certificate (current one); publish it through the rendezvous. */
  credentials: TransportCredentials;
  /** Packets and bytes carried so far. */
  readonly stats: TransportStats = {
    packetsSent: 0,
    bytesSent: 0,
    packetsReceived: 0,
    bytesReceived: 0,
  };
  /** Packets dropped: from a peer not introduced, or past the stand-ins' caps. */
  refusedPackets = 0;
  /** Peers with a stand-in (a socket) now, and those of them no connection proved yet. */
  get standIns(): number {
    return this.#standIns.size;
  }
  get standInsUnproven(): number {
    return this.#standIns.unproven;
  }
  /** Handshakes refused over `HANDSHAKE_LIMITS.maxPending`, and given up after its timeout. */
  readonly handshakes = { refused: 0, timedOut: 0 };
  #o: PeerTransportOptions;
  readonly #endpoint: Deno.QuicEndpoint;
  #listener: Deno.QuicListener;
  #certHash: string;
  /** The certificate before the last rotation: a dial under way then may have pinned it. */
  #previousCertHash: string | undefined;
  #rotateTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #standIns: StandIns;
  #closed = false;
  #accepting: Promise<void>[] = [];
  /** Handshakes in progress (at most `HANDSHAKE_LIMITS.maxPending`). */
  #handshaking = 0;
  /**
   * Resolves once the warm-up dial is done: true when it went through (see
   * `#warmUp`); false when it failed, which costs only speed, and is logged.
   */
  readonly warmedUp: Promise<boolean>;
  readonly #warmUp: WarmUp;
  #loopClaimed = false;

  /**
   * Who takes the peers' connections (the layer above, made after the
   * transport): replaces the options' handlers. Until one is set, a proven
   * dial is refused as the duplicate of one that does not exist yet.
   */
  setHandlers(handlers: Pick<PeerTransportOptions, "onConnection" | "accepts">): void {
    this.#o = { ...this.#o, ...handlers };
  }

  private constructor(options: PeerTransportOptions, issued: IssuedCertificate) {
    this.#o = options;
    this.#endpoint = new Deno.QuicEndpoint({ hostname: "127.0.0.1", port: 0 });
    this.#certHash = issued.credentials.cert_hash;
    this.credentials = issued.credentials;
    this.#listener = this.#listen(issued.cert);
    this.#scheduleRotation();
    this.#standIns = new StandIns(
      this.#endpoint.addr,
      this.stats,
      (peerId, packet) => this.#o.sendPacket(peerId, packet),
      options.standIns,
    );
    this.#warmUp = new WarmUp({
      endpoint: this.#endpoint,
      workerId: options.workerId,
      identity: options.identity,
      alpn: TRANSPORT_ALPN,
      certHash: this.#certHash,
      congestionControl: options.congestionControl,
      byPort: this.#standIns.byPort,
      ffi: options.standIns?.ffi,
    });
    this.warmedUp = this.#warmUp.dialed;
    this.#warmUp.failure.then((error) => {
      if (error && !this.#closed) {
        options.logger.warn("transport warm-up failed", { error: error.message });
      }
    });
  }

  /**
   * Both ends of the warm-up's loop connection, for the layer above to
   * rehearse on, once (else null, as when the warm-up failed); call
   * {@linkcode PeerTransport.loopDone} after. Unclaimed, they close in 5 s.
   */
  loop(): Promise<LoopEnds | null> {
    if (this.#loopClaimed) return Promise.resolve(null);
    this.#loopClaimed = true;
    return this.#warmUp.ends;
  }

  /** The rehearsal on the loop connection is over: it closes. */
  loopDone(): void {
    this.#warmUp.release();
  }

  /** Makes the certificate, signs it, and starts listening (on loopback only). */
  static async start(options: PeerTransportOptions): Promise<PeerTransport> {
    return new PeerTransport(options, await issue(options));
  }

  /** Listens with `cert` (the current listener from now on) and accepts on it. */
  #listen(cert: PeerCertificate): Deno.QuicListener {
    const listener = this.#endpoint.listen({
      cert: cert.cert,
      key: cert.key,
      alpnProtocols: [TRANSPORT_ALPN],
      keepAliveInterval: 5000,
      congestionControl: this.#o.congestionControl ?? "default",
      maxIdleTimeout: 30_000,
    });
    this.#listener = listener;
    this.#accepting.push(this.#acceptLoop(listener));
    return listener;
  }

  #scheduleRotation(): void {
    this.#rotateTimer = setTimeout(
      () =>
        void this.rotate().catch((error) =>
          this.#o.logger.error("transport certificate rotation failed", { error })
        ),
      this.#o.rotateEveryMs ?? CERT_ROTATION_MS,
    );
  }

  /**
   * Replaces the listener's certificate (done every `rotateEveryMs`): open
   * connections carry on; new dials need the new credentials, which
   * `onCredentials` gets to publish.
   */
  async rotate(): Promise<void> {
    if (this.#closed) return;
    clearTimeout(this.#rotateTimer);
    const issued = await issue(this.#o);
    if (this.#closed) return;
    this.#listener.stop();
    this.#previousCertHash = this.#certHash;
    this.#certHash = issued.credentials.cert_hash;
    this.credentials = issued.credentials;
    this.#listener = this.#listen(issued.cert);
    this.#o.logger.info("transport certificate rotated", {
      not_after: new Date(issued.cert.notAfter).toISOString(),
    });
    this.#o.onCredentials?.(this.credentials);
    this.#scheduleRotation();
  }

  /**
   * A packet from `peerId` (without the envelope byte), from UDP or the
   * relay: handed to QUIC. Resolves once the bytes may be reused.
   */
  receive(peerId: string, packet: Uint8Array): Promise<unknown> | undefined {
    if (this.#closed || packet.length === 0 || packet.length > MAX_PACKET) return undefined;
    // Only peers the rendezvous named, and introduced, get a stand-in (within
    // STAND_IN_LIMITS); a named peer's packets that overtake its introduction
    // wait for it (`early_packets.ts`); anyone else's go nowhere.
    let standIn = this.#standIns.get(peerId);
    if (!standIn && this.#o.peer(peerId) !== undefined) {
      if (this.#o.admits?.(peerId) ?? true) standIn = this.#standIns.admit(peerId);
      else if (this.#standIns.early.hold(peerId, packet)) return undefined;
    }
    if (!standIn) {
      this.refusedPackets++;
      return undefined;
    }
    return standIn.deliver(packet);
  }

  /** The rendezvous introduced `peerId`: what it sent before that goes to QUIC now. */
  introduced(peerId: string): void {
    for (const packet of this.#standIns.early.take(peerId)) void this.receive(peerId, packet);
  }

  /** Transport bytes each way through `peerId`'s stand-in, and ms since its last packet. */
  traffic(peerId: string): { sent: number; received: number; idle_ms: number } | undefined {
    const s = this.#standIns.get(peerId);
    return s && { ...s.bytes, idle_ms: Math.round(performance.now() - s.lastActive) };
  }

  /** Forgets a peer that left: its stand-in closes (its connection has timed out or closed). */
  forget(peerId: string): void {
    this.#standIns.forget(peerId);
  }

  /**
   * Dials `peerId`: pins its certificate (after checking that its identity
   * key signed it) and proves ours on the first stream.
   *
   * @throws {TransportError} when the peer is unknown, has no usable
   * credentials, or refuses us
   */
  async dial(peerId: string, timeoutMs = 15_000): Promise<AuthenticatedConnection> {
    const peer = this.#o.peer(peerId);
    if (!peer) throw new TransportError(`Cannot dial ${peerId}: the rendezvous does not know it`);
    if (!peer.key || !peer.transport) {
      throw new TransportError(`Cannot dial ${peerId}: it has published no key or certificate`);
    }
    const { cert_hash: certHash, signature } = peer.transport;
    const vouched = await verifySignature(
      peer.key,
      certificatePayload(peerId, certHash),
      signature,
    );
    if (!vouched) {
      this.#o.logger.warn("peer certificate refused: not signed by its key", { peer_id: peerId });
      throw new TransportError(`Cannot dial ${peerId}: its certificate is not signed by its key`);
    }
    const refusal = await unvouched(this.#o.group, peerId, peer);
    if (refusal !== null) {
      this.#o.logger.warn("peer refused: key not vouched for", { peer_id: peerId });
      throw new TransportError(`Cannot dial ${peerId}: ${refusal}`);
    }
    let hash: Uint8Array<ArrayBuffer>;
    try {
      hash = fromBase64Url(certHash, "certificate hash");
    } catch (error) {
      throw new TransportError(`Cannot dial ${peerId}: ${(error as Error).message}`);
    }
    let held;
    try {
      held = this.#standIns.dial(peerId);
    } catch (error) {
      throw new TransportError((error as Error).message);
    }
    try {
      const conn = await this.#dialThrough(peerId, held.standIn, hash, certHash, timeoutMs);
      held.done(true);
      return conn;
    } catch (error) {
      held.done(false);
      throw error;
    }
  }

  /** The handshake and the proof of a dial, through `peerId`'s stand-in. */
  async #dialThrough(
    peerId: string,
    standIn: StandIn,
    hash: Uint8Array<ArrayBuffer>,
    certHash: string,
    timeoutMs: number,
  ): Promise<AuthenticatedConnection> {
    // The proof is signed while the handshake runs.
    const signing = this.#o.identity.sign(dialerPayload(this.#o.workerId, peerId, certHash));
    signing.catch(() => {});
    const connecting = Deno.connectQuic({
      endpoint: this.#endpoint,
      hostname: "127.0.0.1",
      port: standIn.port,
      alpnProtocols: [TRANSPORT_ALPN],
      serverCertificateHashes: [{ algorithm: "sha-256", value: hash }],
      keepAliveInterval: 5000,
      congestionControl: this.#o.congestionControl ?? "default",
      maxIdleTimeout: 30_000,
    } as Deno.ConnectQuicOptions<false>);
    let conn: Deno.QuicConn;
    try {
      conn = await within(connecting, timeoutMs, `QUIC handshake with ${peerId}`);
    } catch (error) {
      connecting.then((c) => c.close({ closeCode: TransportClose.NORMAL, reason: "" }), () => {});
      throw new TransportError(`Cannot dial ${peerId}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    try {
      const control = await conn.createBidirectionalStream();
      const writer = control.writable.getWriter();
      const proof = await signing;
      await writer.write(frameMessage({
        worker_id: this.#o.workerId,
        signature: toBase64Url(proof),
      }));
      const reader = control.readable.getReader();
      const answer = await within(readMessage(reader), timeoutMs, `${peerId}'s answer`);
      if (answer.ok !== true) {
        const why = String(answer.error ?? "no reason").slice(0, 200);
        conn.close({
          closeCode: why === "duplicate" ? TransportClose.DUPLICATE : TransportClose.AUTH_FAILED,
          reason: why,
        });
        throw new TransportError(`${peerId} refused us: ${why}`);
      }
      reader.releaseLock();
      writer.releaseLock();
    } catch (error) {
      conn.close({ closeCode: TransportClose.AUTH_FAILED, reason: "auth failed" });
      throw error instanceof TransportError
        ? error
        : new TransportError(`Cannot dial ${peerId}: ${(error as Error).message}`, {
          cause: error,
        });
    }
    return { conn, incoming: conn.incomingBidirectionalStreams, dialedBy: "us" };
  }

  /**
   * Takes each incoming handshake on its own (at most
   * `HANDSHAKE_LIMITS.maxPending` at once), then drops those that did not
   * come through a stand-in. (In Deno 2.9.6 reading any property of a
   * `QuicIncoming` consumes it, so the address can only be checked after
   * `accept`.)
   */
  async #acceptLoop(listener: Deno.QuicListener): Promise<void> {
    while (!this.#closed && listener === this.#listener) {
      let incoming: Deno.QuicIncoming;
      try {
        incoming = await listener.incoming();
      } catch {
        if (this.#closed || listener !== this.#listener) return; // closed, or rotated out
        continue;
      }
      // Each handshake on its own: one that never finishes delays nobody.
      if (this.#handshaking >= HANDSHAKE_LIMITS.maxPending) {
        this.handshakes.refused++;
        incoming.ignore(); // no packet in answer
        continue;
      }
      this.#handshaking++;
      void this.#handshake(incoming).finally(() => this.#handshaking--);
    }
  }

  /** Completes one handshake within `HANDSHAKE_LIMITS.timeoutMs`, then hands the connection on. */
  async #handshake(incoming: Deno.QuicIncoming): Promise<void> {
    const accepting = incoming.accept() as Promise<Deno.QuicConn>;
    let conn: Deno.QuicConn;
    try {
      conn = await within(accepting, HANDSHAKE_LIMITS.timeoutMs, "a handshake");
    } catch {
      this.handshakes.timedOut++;
      // Finished after all: closed at once (until then QUIC holds it to its idle timeout).
      accepting.then(
        (c) => c.close({ closeCode: TransportClose.AUTH_FAILED, reason: "handshake too slow" }),
        () => {},
      );
      return;
    }
    if (this.#closed) return;
    const from = conn.remoteAddr;
    const peerId = from.hostname === "127.0.0.1" ? this.#standIns.byPort.get(from.port) : undefined;
    if (peerId === undefined) {
      conn.close({ closeCode: TransportClose.AUTH_FAILED, reason: "unknown peer" });
      return;
    }
    if (peerId === WARM_UP) {
      return await this.#warmUp.answer(conn);
    }
    await this.#authenticate(peerId, conn);
  }

  /** Checks the dialer's proof on a connection from `peerId`'s stand-in. */
  async #authenticate(peerId: string, conn: Deno.QuicConn): Promise<void> {
    const log = this.#o.logger;
    try {
      const streams = conn.incomingBidirectionalStreams.getReader();
      const first = await within(streams.read(), AUTH_TIMEOUT_MS, "the dialer's proof stream");
      if (first.done) throw new TransportError("no proof stream");
      const control = first.value;
      const reader = control.readable.getReader();
      const writer = control.writable.getWriter();
      const proof = await within(readMessage(reader), AUTH_TIMEOUT_MS, "the dialer's proof");
      const peer = this.#o.peer(peerId);
      const reason = await checkDialerProof(
        { peerId, ourId: this.#o.workerId, key: peer?.key ?? null, proof },
        [this.#certHash, this.#previousCertHash],
        () => unvouched(this.#o.group, peerId, peer!),
      );
      if (reason !== null) {
        log.warn("peer connection refused", { peer_id: peerId, reason });
        await this.#refuse(conn, writer, reason, TransportClose.AUTH_FAILED);
        return;
      }
      const take = this.#o.onConnection;
      if (!take || (this.#o.accepts && !this.#o.accepts(peerId))) {
        await this.#refuse(conn, writer, "duplicate", TransportClose.DUPLICATE);
        return;
      }
      await writer.write(frameMessage({ ok: true }));
      reader.releaseLock();
      writer.releaseLock();
      this.#standIns.proven(peerId);
      take(peerId, { conn, incoming: restOfStreams(streams), dialedBy: "peer" });
    } catch (error) {
      log.warn("peer connection failed", { peer_id: peerId, error: (error as Error).message });
      conn.close({ closeCode: TransportClose.AUTH_FAILED, reason: "auth failed" });
    }
  }

  /**
   * Answers a dial with a refusal the dialer can read: the dialer closes the
   * connection once it has the reason (closing first here could discard the
   * answer); if it does not within the auth timeout, we do.
   */
  async #refuse(
    conn: Deno.QuicConn,
    writer: WritableStreamDefaultWriter<Uint8Array>,
    reason: string,
    code: number,
  ): Promise<void> {
    await writer.write(frameMessage({ ok: false, error: reason })).catch(() => {});
    await writer.close().catch(() => {});
    await settleWithin(conn.closed, AUTH_TIMEOUT_MS);
    conn.close({ closeCode: code, reason });
  }

  /** Closes every connection, the listener and the stand-ins. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#rotateTimer);
    this.#listener.stop();
    this.#endpoint.close({ closeCode: TransportClose.SHUTDOWN, reason: "worker shutting down" });
    this.#warmUp.release();
    this.#standIns.close();
    await Promise.all([...this.#accepting, this.#warmUp.finished]);
  }
}
