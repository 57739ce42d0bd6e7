/**
 * One connection attempt of the rendezvous client, from dialing to close:
 * the handshake's deadline, the heartbeat and its deadline, the key proof,
 * the rendezvous's `going_away` notice, and how it ended. The client runs
 * one after another (`client.ts`), with its reconnect policy between them.
 *
 * @module
 */

import type { Clock, TimerId } from "../core/clock.ts";
import type { Logger } from "../core/log.ts";
import { CloseCode, CloseReason } from "../protocol/close_codes.ts";
import type { Identity } from "../protocol/identity.ts";
import { type ClientMessage, ProtocolError, type ServerMessage } from "../protocol/messages.ts";
import { parseServerMessage } from "../protocol/parse.ts";
import type { ClientEvent, SocketFactory, WebSocketLike } from "./client.ts";

/** What one connection ended with. */
export interface SessionOutcome {
  code: number;
  reason: string;
  opened: boolean;
  durationMs: number;
}

/** What an attempt needs of the client that runs it. */
export interface AttemptHost {
  clock: Clock;
  logger: Logger;
  workerId: string;
  identity?: Identity;
  token?: string;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  openSocket: SocketFactory;
  emit(event: ClientEvent): void;
  /** The socket opened: it is the client's session now. */
  opened(socket: WebSocketLike, at: number): void;
  /** The attempt ended (opened or not). */
  ended(socket: WebSocketLike | undefined): void;
  /** The rendezvous said it closes this socket next: nothing more is sent on it. */
  quiet(socket: WebSocketLike): void;
  /** Heartbeat `seq` left at `at` (its echo measures the round trip). */
  heartbeat(seq: number, at: number): void;
  send(socket: WebSocketLike, message: ClientMessage): boolean;
  relayFrame(data: ArrayBuffer): void;
  serverMessage(message: ServerMessage): void;
  reportPublicIp(socket: WebSocketLike, signal: AbortSignal): Promise<void>;
}

/** One connection attempt; {@linkcode ConnectionAttempt.run} resolves with how it ended. */
export class ConnectionAttempt {
  #h: AttemptHost;
  #url: URL;
  #signal: AbortSignal;
  #done = Promise.withResolvers<SessionOutcome>();
  #abort = new AbortController();
  #socket?: WebSocketLike;
  #startedAt: number;
  #opened = false;
  #openedAt = 0;
  #finished = false;
  #heartbeatSeq = 0;
  #heartbeatTimer?: TimerId;
  #deadlineTimer?: TimerId;
  #lastError = "";
  #onOpen = () => this.#opening();
  #onMessage = (event: Event) => this.#message(event as MessageEvent);
  #onClose = (event: Event) =>
    this.#finish((event as CloseEvent).code, (event as CloseEvent).reason);
  #onError = (event: Event) => {
    this.#lastError = (event as ErrorEvent).message ?? "";
  };
  #onStop = () => this.#stop();

  /** An attempt to `url` (with our key, if any), until `signal` aborts. */
  constructor(host: AttemptHost, url: URL, signal: AbortSignal) {
    this.#h = host;
    this.#url = new URL(url);
    if (host.identity) this.#url.searchParams.set("key", host.identity.publicKey);
    this.#signal = signal;
    this.#startedAt = host.clock.now();
  }

  /** Dials, and resolves once the connection is over. */
  run(): Promise<SessionOutcome> {
    const h = this.#h;
    const headers: Record<string, string> = {};
    if (h.token !== undefined) headers.authorization = `Bearer ${h.token}`;
    let socket: WebSocketLike;
    try {
      socket = h.openSocket(this.#url.href, headers);
    } catch (error) {
      this.#lastError = (error as Error).message;
      this.#finish(1006, "");
      return this.#done.promise;
    }
    this.#socket = socket;
    socket.addEventListener("open", this.#onOpen);
    socket.addEventListener("message", this.#onMessage);
    socket.addEventListener("close", this.#onClose);
    socket.addEventListener("error", this.#onError);
    this.#signal.addEventListener("abort", this.#onStop, { once: true });
    if (this.#signal.aborted) this.#stop();
    else this.#armDeadline(); // The handshake gets the same bound as a heartbeat.
    return this.#done.promise;
  }

  #finish(code: number, reason: string): void {
    if (this.#finished) return;
    this.#finished = true;
    const { clock, logger } = this.#h;
    clock.clearTimeout(this.#heartbeatTimer);
    clock.clearTimeout(this.#deadlineTimer);
    this.#abort.abort();
    this.#signal.removeEventListener("abort", this.#onStop);
    const socket = this.#socket;
    socket?.removeEventListener("open", this.#onOpen);
    socket?.removeEventListener("message", this.#onMessage);
    socket?.removeEventListener("close", this.#onClose);
    socket?.removeEventListener("error", this.#onError);
    this.#h.ended(socket);
    const opened = this.#opened;
    const now = clock.now();
    this.#h.emit({ type: "disconnected", code, reason, opened });
    const fields = {
      worker_id: this.#h.workerId,
      code,
      reason: reason || undefined,
      error: this.#lastError || undefined,
      session_ms: opened ? now - this.#openedAt : undefined,
    };
    if (opened) logger.info("disconnected from rendezvous", fields);
    else logger.warn("cannot connect to rendezvous", fields);
    this.#done.resolve({ code, reason, opened, durationMs: opened ? now - this.#openedAt : 0 });
  }

  /** Gives up on a socket that may never say goodbye (a dead path). */
  #abandon(code: number, reason: string): void {
    try {
      this.#socket?.close(code, reason);
    } catch {
      // Already closed.
    }
    this.#finish(code, reason);
  }

  /** Nothing heard within `PING_TIMEOUT_SEC` ends the attempt. */
  #armDeadline(): void {
    const { clock, logger } = this.#h;
    clock.clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = clock.setTimeout(() => {
      this.#h.emit({ type: "heartbeat_timeout" });
      logger.warn("rendezvous stopped answering; reconnecting", {
        worker_id: this.#h.workerId,
        timeout_ms: this.#h.pingTimeoutMs,
        opened: this.#opened,
      });
      this.#abandon(CloseCode.HEARTBEAT_TIMEOUT, CloseReason.HEARTBEAT_TIMEOUT);
    }, this.#h.pingTimeoutMs);
  }

  #heard(): void {
    this.#h.clock.clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = undefined;
  }

  /** The next heartbeat (`echo_request`), and the deadline for its answer. */
  #scheduleHeartbeat(): void {
    const { clock } = this.#h;
    this.#heartbeatTimer = clock.setTimeout(() => {
      if (this.#finished) return;
      this.#heartbeatSeq++;
      this.#h.heartbeat(this.#heartbeatSeq, clock.now());
      this.#h.send(this.#socket!, {
        type: "echo_request",
        payload: { heartbeat: this.#heartbeatSeq },
      });
      if (this.#deadlineTimer === undefined) this.#armDeadline();
      this.#scheduleHeartbeat();
    }, this.#h.pingIntervalMs);
  }

  #opening(): void {
    const { clock, logger } = this.#h;
    this.#opened = true;
    this.#openedAt = clock.now();
    this.#h.opened(this.#socket!, this.#openedAt);
    this.#heard();
    this.#h.emit({ type: "connected" });
    logger.info("connected to rendezvous", { worker_id: this.#h.workerId });
    this.#scheduleHeartbeat();
    void this.#h.reportPublicIp(this.#socket!, this.#abort.signal);
  }

  #message(event: MessageEvent): void {
    this.#heard(); // Any frame proves the path is alive.
    const data = event.data;
    if (data instanceof ArrayBuffer) return this.#h.relayFrame(data);
    if (typeof data !== "string") return;
    let message: ServerMessage;
    try {
      message = parseServerMessage(data);
    } catch (error) {
      const level = error instanceof ProtocolError && error.code === "unknown_type"
        ? "debug"
        : "warn";
      this.#h.logger[level]("ignored a message from the rendezvous", {
        worker_id: this.#h.workerId,
        error: (error as Error).message,
      });
      return;
    }
    if (message.type === "going_away") return this.#goQuiet(message.reason);
    if (message.type === "challenge") return void this.#proveKey(message.nonce);
    this.#h.serverMessage(message);
  }

  /**
   * The rendezvous closes this session next: stop sending (a frame that
   * crosses its close frame would cost us the clean 1001) and wait for the
   * close, within the heartbeat bound.
   */
  #goQuiet(reason: string): void {
    this.#h.clock.clearTimeout(this.#heartbeatTimer);
    this.#heartbeatTimer = undefined;
    this.#h.quiet(this.#socket!);
    this.#h.logger.info("rendezvous going away", { worker_id: this.#h.workerId, reason });
    this.#armDeadline();
  }

  /** Answers the rendezvous's challenge with our key's signature. */
  async #proveKey(nonce: string): Promise<void> {
    const { identity, workerId } = this.#h;
    if (!identity) {
      this.#h.logger.warn("rendezvous challenged a worker without a key", { worker_id: workerId });
      return;
    }
    const signature = await identity.proveRegistration(this.#url.host, workerId, nonce);
    if (!this.#finished) this.#h.send(this.#socket!, { type: "prove_key", signature });
  }

  /** Our worker stops: a clean close, waited for briefly, never on a dead path. */
  #stop(): void {
    try {
      this.#socket?.close(CloseCode.NORMAL, CloseReason.WORKER_STOPPING);
    } catch {
      // Already closed.
    }
    const { clock } = this.#h;
    clock.clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = clock.setTimeout(
      () => this.#finish(CloseCode.NORMAL, CloseReason.WORKER_STOPPING),
      Math.min(this.#h.pingTimeoutMs, 2000),
    );
  }
}
