/**
 * The rendezvous wire protocol: JSON text frames over the WebSocket at
 * `/ws/register/{worker_id}`, with the seed's message names kept so the
 * seed's Python worker and rendezvous interoperate with ours.
 *
 * One validating parser per direction: {@linkcode parseClientMessage} on the
 * rendezvous for what workers send, {@linkcode parseServerMessage} on the
 * worker for what the rendezvous sends. Both ignore extra fields (so either
 * side can grow) and throw {@linkcode ProtocolError} for anything else.
 *
 * @module
 */

import { normalizeIp } from "./ip.ts";

/** Bumped when a message changes incompatibly. */
export const PROTOCOL_VERSION = 1;

/** Path prefix of the registration WebSocket (the seed's). */
export const REGISTER_PATH_PREFIX = "/ws/register/";

/** A worker id: 1–128 characters of `[A-Za-z0-9._-]`. */
const WORKER_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** True when `id` is a valid worker id. */
export function isValidWorkerId(id: string): boolean {
  return WORKER_ID.test(id);
}

/** Machine-readable codes carried by `error` messages. */
export type ErrorCode =
  | "invalid_json"
  | "invalid_message"
  | "unknown_type"
  | "invalid_ip"
  | "unknown_peer"
  | "rate_limited";

/** Thrown by the parsers; `code` is what an `error` reply carries. */
export class ProtocolError extends Error {
  /** Always `"ProtocolError"`. */
  override name = "ProtocolError";
  /** Machine-readable reason. */
  readonly code: ErrorCode;
  /** Makes an error with its wire `code` and a message that says what was wrong. */
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

// ---- worker → rendezvous ---------------------------------------------------

/** The worker's public IP as an HTTP echo service saw it (seed name). */
export interface RegisterPublicIpMessage {
  /** The message type. */
  type: "register_public_ip";
  /** Canonical text form (see `normalizeIp`). */
  ip: string;
}

/** Asks the rendezvous to echo `payload` back; also the worker's heartbeat. */
export interface EchoRequestMessage {
  /** The message type. */
  type: "echo_request";
  /** Any JSON value; the seed defaults a missing payload to "". */
  payload: unknown;
}

/** How a worker's NAT maps its UDP socket (RFC 4787 terms). */
export type NatMapping =
  /** Every STUN server saw the same public endpoint: peers can reach it. */
  | "endpoint-independent"
  /** Servers saw different endpoints: a "hard" (symmetric) NAT. */
  | "endpoint-dependent"
  /** The mapped endpoint is one of the worker's own addresses. */
  | "no-nat"
  /** No STUN server answered: UDP is blocked (or every server is down). */
  | "no-udp"
  /** Only one server answered, so the mapping could not be compared. */
  | "unknown";

/** The NAT mappings, for validation. */
export const NAT_MAPPINGS: readonly NatMapping[] = [
  "endpoint-independent",
  "endpoint-dependent",
  "no-nat",
  "no-udp",
  "unknown",
];

/** A UDP address. */
export interface UdpAddress {
  /** IPv4 dotted quad or RFC 5952 IPv6. */
  ip: string;
  /** 1-65535. */
  port: number;
}

/** At most this many local candidates are accepted from one worker. */
export const MAX_LOCAL_CANDIDATES = 16;

/** The worker's UDP socket as STUN and its interfaces describe it. */
export interface RegisterUdpEndpointMessage {
  /** The message type. */
  type: "register_udp_endpoint";
  /** The STUN-mapped endpoint; null when no server answered. */
  public: UdpAddress | null;
  /** Interface addresses with the socket's port. */
  local: UdpAddress[];
  /** How the worker's NAT maps its socket. */
  nat: { mapping: NatMapping };
  /** The worker's round trip to the rendezvous, to time introductions. */
  rtt_ms?: number | null;
}

/** Asks for the peers in this worker's group; `watch` subscribes to changes. */
export interface ListPeersMessage {
  /** The message type. */
  type: "list_peers";
  /** Also send `peer_joined`/`peer_updated`/`peer_left` from now on. */
  watch: boolean;
}

/** Asks the rendezvous to introduce this worker and `peer_id` (both get `punch`). */
export interface ConnectMessage {
  /** The message type. */
  type: "connect";
  /** The peer to be introduced to. */
  peer_id: string;
}

/** Largest `data` of a relayed frame, in base64 characters (12 KiB of bytes). */
export const MAX_RELAY_DATA = 16_384;

/** Data for `to`, carried by the rendezvous (the fallback path). */
export interface RelayMessage {
  /** The message type. */
  type: "relay";
  /** The peer it is for. */
  to: string;
  /** Base64. */
  data: string;
}

/** How a worker reaches a peer now. */
export type PathKind = "direct" | "relay";

/** Tells the rendezvous which path a peer link is on (shown in the listing). */
export interface PathUpdateMessage {
  /** The message type. */
  type: "path_update";
  /** The peer the link leads to. */
  peer_id: string;
  /** The path in use now. */
  path: PathKind;
  /** Round trip on that path, if measured. */
  rtt_ms: number | null;
}

/**
 * The answer to `challenge`: the worker's Ed25519 signature over the
 * registration payload (see `identity.ts`), base64url.
 */
export interface ProveKeyMessage {
  /** The message type. */
  type: "prove_key";
  /** 64 bytes, base64url. */
  signature: string;
}

/**
 * Publishes the worker's transport certificate hash, signed by its key, so
 * peers can pin it (see `lib/peer/transport.ts`). Only keyed workers.
 */
export interface RegisterTransportMessage {
  /** The message type. */
  type: "register_transport";
  /** SHA-256 of the certificate, base64url (43 characters). */
  cert_hash: string;
  /** Ed25519 signature over the certificate payload, base64url (86 characters). */
  signature: string;
  /** With `GROUP_SECRET`: the secret's HMAC over group, id and key, base64url (43 characters). */
  vouch?: string;
}

/** Every message a worker may send. */
export type ClientMessage =
  | ProveKeyMessage
  | RegisterTransportMessage
  | RegisterPublicIpMessage
  | EchoRequestMessage
  | RegisterUdpEndpointMessage
  | ListPeersMessage
  | ConnectMessage
  | RelayMessage
  | PathUpdateMessage;

// ---- rendezvous → worker ---------------------------------------------------

/** Sent once a session is registered: what the rendezvous observed. */
export interface RegisteredMessage {
  /** The message type. */
  type: "registered";
  /** The id the session registered as. */
  worker_id: string;
  /** The client address the rendezvous saw (after a trusted proxy). */
  observed_ip: string | null;
  /** `null` when a proxy hides the port. */
  observed_port: number | null;
  /** The protocol version the rendezvous speaks. */
  protocol_version: number;
}

/**
 * Sent first to a worker that registered with a key (`?key=`): sign the
 * registration payload with that key and answer with `prove_key` before
 * anything else counts. The session is registered only once it does.
 */
export interface ChallengeMessage {
  /** The message type. */
  type: "challenge";
  /** Base64url of 32 random bytes, for this connection only. */
  nonce: string;
}

/** Confirms a `register_public_ip`, with the IP as stored. */
export interface PublicIpRegisteredMessage {
  /** The message type. */
  type: "public_ip_registered";
  /** The IP, in canonical form. */
  ip: string;
}

/** The answer to `echo_request` (seed names). */
export interface EchoResponseMessage {
  /** The message type. */
  type: "echo_response";
  /** The `payload` of the request. */
  original_payload: unknown;
  /** The rendezvous's name and version. */
  processed_by_rendezvous: string;
}

/** A message was rejected; the session goes on. */
export interface ErrorMessage {
  /** The message type. */
  type: "error";
  /** An {@linkcode ErrorCode}; a worker must accept codes it does not know. */
  code: string;
  /** What was wrong, for a person. */
  message: string;
}

/**
 * The rendezvous is about to close this session (with 1001: it is shutting
 * down). A worker should send nothing more on it and wait for the close:
 * Deno's server drops a closing connection outright when a frame crosses
 * its close frame, and the worker would see an abnormal close, not 1001.
 */
export interface GoingAwayMessage {
  /** The message type. */
  type: "going_away";
  /** Why, for a person. */
  reason: string;
}

/** Confirms a `register_udp_endpoint`. */
export interface UdpEndpointRegisteredMessage {
  /** The message type. */
  type: "udp_endpoint_registered";
  /** The endpoint as stored. */
  public: UdpAddress | null;
  /** The mapping as stored. */
  mapping: NatMapping;
}

/** What a worker learns about a peer. */
export interface PeerInfo {
  /** The peer's id. */
  worker_id: string;
  /** Its public UDP endpoint as STUN saw it, if known. */
  public: UdpAddress | null;
  /** Its interface addresses with its UDP port. */
  local: UdpAddress[];
  /** Its NAT's mapping behaviour, if known. */
  nat_mapping: NatMapping | null;
  /** Its Ed25519 public key (base64url), proven to the rendezvous; null for a keyless worker. */
  key: string | null;
  /** Its transport certificate hash and the key's signature over it; null until published. */
  transport: TransportCredentials | null;
}

/** A worker's transport certificate hash and its key's signature over it. */
export interface TransportCredentials {
  /** SHA-256 of the certificate (DER), base64url. */
  cert_hash: string;
  /** The worker's Ed25519 signature over the certificate payload, base64url. */
  signature: string;
  /** With `GROUP_SECRET`: the secret's HMAC over the worker's group, id and key, base64url. */
  vouch?: string;
}

/** The answer to `list_peers`. */
export interface PeersMessage {
  /** The message type. */
  type: "peers";
  /** Every other worker of the group. */
  peers: PeerInfo[];
}

/** A peer registered, or reported its UDP endpoint for the first time. */
export interface PeerJoinedMessage {
  /** The message type. */
  type: "peer_joined";
  /** The peer as it is now. */
  peer: PeerInfo;
}

/** A peer's UDP endpoint changed. */
export interface PeerUpdatedMessage {
  /** The message type. */
  type: "peer_updated";
  /** The peer as it is now. */
  peer: PeerInfo;
}

/** A peer de-registered. */
export interface PeerLeftMessage {
  /** The message type. */
  type: "peer_left";
  /** The peer that left. */
  peer_id: string;
}

/** A candidate address of a peer, in the order to try it. */
export interface Candidate extends UdpAddress {
  /** A host candidate (an interface address) or server-reflexive (STUN-mapped). */
  kind: "local" | "public";
}

/** An introduction: punch towards `peer_id` now (after `delay_ms`). */
export interface PunchMessage {
  /** The message type. */
  type: "punch";
  /** The peer to punch towards. */
  peer_id: string;
  /** 16 hex characters; names the punch session in every packet. */
  session_id: string;
  /** Base64 of 32 random bytes: the session's HMAC key. */
  key: string;
  /** The peer's addresses, host candidates first. */
  candidates: Candidate[];
  /** The peer's NAT mapping, if known. */
  peer_nat: NatMapping | null;
  /** This worker's NAT mapping as the rendezvous has it. */
  own_nat: NatMapping | null;
  /** Which side starts; the initiator nominates the path. */
  role: "initiator" | "responder";
  /** Wait this long before the first probe, so both sides start together. */
  delay_ms: number;
}

/** Data a peer sent through the rendezvous. */
export interface RelayedMessage {
  /** The message type. */
  type: "relayed";
  /** The peer that sent it. */
  from: string;
  /** Base64. */
  data: string;
}

/** The server messages about peers: what a worker's peer layer handles. */
export type PeerServerMessage =
  | PeersMessage
  | PeerJoinedMessage
  | PeerUpdatedMessage
  | PeerLeftMessage
  | PunchMessage
  | RelayedMessage;

/** Every message the rendezvous may send. */
export type ServerMessage =
  | PeerServerMessage
  | ChallengeMessage
  | RegisteredMessage
  | PublicIpRegisteredMessage
  | EchoResponseMessage
  | UdpEndpointRegisteredMessage
  | GoingAwayMessage
  | ErrorMessage;

// ---- HTTP ------------------------------------------------------------------

/** What the rendezvous stores of a worker's UDP endpoint. */
export interface UdpEndpointRecord {
  /** The STUN-mapped endpoint; null when no server answered. */
  public: UdpAddress | null;
  /** Interface addresses with the socket's port. */
  local: UdpAddress[];
  /** How the worker's NAT maps its socket. */
  nat_mapping: NatMapping;
  /** ISO time of the last report. */
  updated_at: string;
}

/** One worker in `GET /debug/list_workers` (the seed's fields, then ours). */
export interface WorkerListingEntry {
  /** The address the rendezvous saw the worker connect from. */
  websocket_observed_ip: string | null;
  /** The port it saw; null behind a proxy. */
  websocket_observed_port: number | null;
  /** The public IP the worker reported from its IP echo service. */
  http_reported_public_ip: string | null;
  /** Always true: only connected workers are listed. */
  websocket_connected: boolean;
  /** ISO time of registration. */
  connected_at: string;
  /** ISO time of the last frame, when this instance holds the session. */
  last_seen: string | null;
  /** Null until the worker reports one (the seed's worker never does). */
  udp_endpoint: UdpEndpointRecord | null;
  /** The worker's group (peers see only their group). */
  group: string;
  /** The path to each peer, as the worker last reported it. */
  peer_paths: Record<string, PeerPathRecord>;
  /** The key the worker proved (base64url Ed25519), or null for a keyless worker. */
  key: string | null;
  /** The key's short fingerprint, or null. */
  key_fingerprint: string | null;
}

/** A worker's report of how it reaches one peer. */
export interface PeerPathRecord {
  /** Direct UDP or the rendezvous relay. */
  path: PathKind;
  /** Round trip on that path, if measured. */
  rtt_ms: number | null;
  /** ISO time of the report. */
  updated_at: string;
}

/** The body of `GET /debug/list_workers`, in the seed's shape. */
export interface WorkerListing {
  /** How many workers are listed. */
  connected_workers_count: number;
  /** Each worker by id. */
  workers: Record<string, WorkerListingEntry>;
}

// ---- parsing ---------------------------------------------------------------

function parseObject(text: string): Record<string, unknown> & { type: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw new ProtocolError("invalid_json", "Cannot parse message: it is not valid JSON", {
      cause,
    });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse message: expected a JSON object, got ${describe(value)}`,
    );
  }
  const record = value as Record<string, unknown>;
  if (typeof record.type !== "string") {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse message: "type" must be a string: current value is ${describe(record.type)}`,
    );
  }
  return record as Record<string, unknown> & { type: string };
}

/** A short, bounded description of a value for error messages. */
function describe(value: unknown): string {
  if (value === undefined) return "missing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  const text = JSON.stringify(value);
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}

function requireString(record: Record<string, unknown>, field: string): string {
  const value = record[field];
  if (typeof value !== "string") {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${record.type}": "${field}" must be a string: current value is ${
        describe(value)
      }`,
    );
  }
  return value;
}

function requireIp(record: Record<string, unknown>, field: string): string {
  const text = requireString(record, field);
  const ip = normalizeIp(text.trim());
  if (ip === null) {
    throw new ProtocolError(
      "invalid_ip",
      `Cannot parse "${record.type}": "${field}" must be an IPv4 or IPv6 address: current value is ${
        describe(text)
      }`,
    );
  }
  return ip;
}

function nullable<T>(
  record: Record<string, unknown>,
  field: string,
  check: (value: unknown) => value is T,
  what: string,
): T | null {
  const value = record[field];
  if (value === null || value === undefined) return null;
  if (!check(value)) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${record.type}": "${field}" must be ${what} or null: current value is ${
        describe(value)
      }`,
    );
  }
  return value;
}

function udpAddress(value: unknown, type: string, field: string): UdpAddress {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${type}": "${field}" must be an object {ip, port}: current value is ${
        describe(value)
      }`,
    );
  }
  const record = value as Record<string, unknown>;
  const ip = typeof record.ip === "string" ? normalizeIp(record.ip) : null;
  if (ip === null) {
    throw new ProtocolError(
      "invalid_ip",
      `Cannot parse "${type}": "${field}.ip" must be an IPv4 or IPv6 address: current value is ${
        describe(record.ip)
      }`,
    );
  }
  if (
    !Number.isInteger(record.port) || (record.port as number) < 1 || (record.port as number) > 65535
  ) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${type}": "${field}.port" must be a port number 1-65535: current value is ${
        describe(record.port)
      }`,
    );
  }
  return { ip, port: record.port as number };
}

function udpEndpointFields(
  record: Record<string, unknown>,
): Omit<RegisterUdpEndpointMessage, "type"> {
  const type = String(record.type);
  const publicAddress = record.public === null || record.public === undefined
    ? null
    : udpAddress(record.public, type, "public");
  const local = record.local ?? [];
  if (!Array.isArray(local) || local.length > MAX_LOCAL_CANDIDATES) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${type}": "local" must be an array of at most ${MAX_LOCAL_CANDIDATES} {ip, port}`,
    );
  }
  const nat = record.nat as Record<string, unknown> | undefined;
  const mapping = nat?.mapping;
  if (typeof mapping !== "string" || !(NAT_MAPPINGS as readonly string[]).includes(mapping)) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${type}": "nat.mapping" must be one of ${
        NAT_MAPPINGS.join(", ")
      }: current value is ${describe(mapping)}`,
    );
  }
  return {
    public: publicAddress,
    local: local.map((entry, i) => udpAddress(entry, type, `local[${i}]`)),
    nat: { mapping: mapping as NatMapping },
  };
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** A round-trip time in ms (0 to 10 minutes, 0.1 ms precision), else null. */
function rttOrNull(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 && value < 600_000
    ? Math.round(value * 10) / 10
    : null;
}

function requireWorkerId(record: Record<string, unknown>, field: string): string {
  const id = requireString(record, field);
  if (!isValidWorkerId(id)) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${record.type}": "${field}" must be a worker id: current value is ${
        describe(id)
      }`,
    );
  }
  return id;
}

function peerInfo(value: unknown): PeerInfo {
  if (typeof value !== "object" || value === null) {
    throw new ProtocolError("invalid_message", "Cannot parse peer: expected an object");
  }
  const record = value as Record<string, unknown>;
  const fields = udpEndpointFields({
    type: "peer",
    public: record.public,
    local: record.local,
    nat: { mapping: record.nat_mapping ?? "unknown" },
  });
  return {
    worker_id: requireWorkerId(record, "worker_id"),
    public: fields.public,
    local: fields.local,
    nat_mapping: record.nat_mapping === null || record.nat_mapping === undefined
      ? null
      : fields.nat.mapping,
    key: keyOrNull(record.key),
    transport: transportOrNull(record.transport),
  };
}

/** Well-formed transport credentials, else null. */
function transportOrNull(value: unknown): TransportCredentials | null {
  if (typeof value !== "object" || value === null) return null;
  const { cert_hash: hash, signature, vouch } = value as Record<string, unknown>;
  if (
    typeof hash !== "string" || !/^[A-Za-z0-9_-]{43}$/.test(hash) ||
    typeof signature !== "string" || !/^[A-Za-z0-9_-]{86}$/.test(signature)
  ) {
    return null;
  }
  return typeof vouch === "string" && /^[A-Za-z0-9_-]{43}$/.test(vouch)
    ? { cert_hash: hash, signature, vouch }
    : { cert_hash: hash, signature };
}

/** A well-formed public key, else null: an older rendezvous sends none. */
function keyOrNull(value: unknown): string | null {
  return typeof value === "string" && /^[A-Za-z0-9_-]{43}$/.test(value) ? value : null;
}

function natOrNull(value: unknown): NatMapping | null {
  return typeof value === "string" && (NAT_MAPPINGS as readonly string[]).includes(value)
    ? value as NatMapping
    : null;
}

const isString = (v: unknown): v is string => typeof v === "string";
const isPort = (v: unknown): v is number =>
  Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 65535;

/**
 * Parses a text frame a worker sent to the rendezvous.
 *
 * @throws {ProtocolError} for invalid JSON, a non-object, a missing or unknown
 * `type`, or fields of the wrong type or form.
 *
 * @example
 * ```ts
 * parseClientMessage('{"type":"register_public_ip","ip":"192.0.2.7"}');
 * // { type: "register_public_ip", ip: "192.0.2.7" }
 * ```
 */
export function parseClientMessage(text: string): ClientMessage {
  const record = parseObject(text);
  switch (record.type) {
    case "prove_key": {
      const signature = requireString(record, "signature");
      // 64 bytes are 86 base64url characters without padding.
      if (!/^[A-Za-z0-9_-]{86}$/.test(signature)) {
        throw new ProtocolError(
          "invalid_message",
          'Cannot parse "prove_key": "signature" must be 64 bytes of unpadded base64url',
        );
      }
      return { type: "prove_key", signature };
    }
    case "register_public_ip":
      return { type: "register_public_ip", ip: requireIp(record, "ip") };
    case "register_transport": {
      const credentials = transportOrNull(record);
      if (credentials === null) {
        throw new ProtocolError(
          "invalid_message",
          'Cannot parse "register_transport": "cert_hash" must be 32 bytes and "signature" 64 bytes of unpadded base64url',
        );
      }
      return { type: "register_transport", ...credentials };
    }
    case "echo_request":
      return { type: "echo_request", payload: record.payload === undefined ? "" : record.payload };
    case "register_udp_endpoint":
      return {
        type: "register_udp_endpoint",
        ...udpEndpointFields(record),
        rtt_ms: rttOrNull(record.rtt_ms),
      };
    case "list_peers":
      return { type: "list_peers", watch: record.watch === true };
    case "connect":
      return { type: "connect", peer_id: requireWorkerId(record, "peer_id") };
    case "relay": {
      const to = requireWorkerId(record, "to");
      const data = requireString(record, "data");
      if (data.length > MAX_RELAY_DATA || !BASE64.test(data)) {
        throw new ProtocolError(
          "invalid_message",
          `Cannot parse "relay": "data" must be base64 of at most ${MAX_RELAY_DATA} characters`,
        );
      }
      return { type: "relay", to, data };
    }
    case "path_update": {
      const path = record.path;
      if (path !== "direct" && path !== "relay") {
        throw new ProtocolError(
          "invalid_message",
          `Cannot parse "path_update": "path" must be "direct" or "relay": current value is ${
            describe(path)
          }`,
        );
      }
      return {
        type: "path_update",
        peer_id: requireWorkerId(record, "peer_id"),
        path,
        rtt_ms: rttOrNull(record.rtt_ms),
      };
    }
    default:
      throw new ProtocolError(
        "unknown_type",
        `Cannot handle message: unknown type ${describe(record.type)}`,
      );
  }
}

/**
 * Parses a text frame the rendezvous sent to a worker.
 *
 * @throws {ProtocolError} as {@linkcode parseClientMessage} does. A worker
 * should log and ignore `unknown_type`, so a newer rendezvous can add
 * messages without breaking older workers.
 */
export function parseServerMessage(text: string): ServerMessage {
  const record = parseObject(text);
  switch (record.type) {
    case "registered":
      return {
        type: "registered",
        worker_id: requireString(record, "worker_id"),
        observed_ip: nullable(record, "observed_ip", isString, "a string"),
        observed_port: nullable(record, "observed_port", isPort, "a port number"),
        protocol_version: Number.isInteger(record.protocol_version)
          ? record.protocol_version as number
          : PROTOCOL_VERSION,
      };
    case "public_ip_registered":
      return { type: "public_ip_registered", ip: requireIp(record, "ip") };
    case "challenge": {
      const nonce = requireString(record, "nonce");
      if (!/^[A-Za-z0-9_-]{16,128}$/.test(nonce)) {
        throw new ProtocolError(
          "invalid_message",
          'Cannot parse "challenge": "nonce" must be 16-128 base64url characters',
        );
      }
      return { type: "challenge", nonce };
    }
    case "peers": {
      if (!Array.isArray(record.peers)) {
        throw new ProtocolError(
          "invalid_message",
          'Cannot parse "peers": "peers" must be an array',
        );
      }
      return { type: "peers", peers: record.peers.map(peerInfo) };
    }
    case "peer_joined":
    case "peer_updated":
      return { type: record.type, peer: peerInfo(record.peer) };
    case "peer_left":
      return { type: "peer_left", peer_id: requireWorkerId(record, "peer_id") };
    case "punch": {
      const sessionId = requireString(record, "session_id");
      const key = requireString(record, "key");
      // 44 base64 characters ending in one "=" are exactly 32 bytes.
      if (!/^[0-9a-f]{16}$/.test(sessionId) || !/^[A-Za-z0-9+/]{43}=$/.test(key)) {
        throw new ProtocolError("invalid_message", 'Cannot parse "punch": bad session_id or key');
      }
      const list = Array.isArray(record.candidates) ? record.candidates : [];
      const candidates = list.slice(0, MAX_LOCAL_CANDIDATES + 1).map((c, i) => {
        const address = udpAddress(c, "punch", `candidates[${i}]`);
        const kind = (c as Record<string, unknown>).kind === "local" ? "local" : "public";
        return { ...address, kind } as Candidate;
      });
      const delay = Number(record.delay_ms);
      return {
        type: "punch",
        peer_id: requireWorkerId(record, "peer_id"),
        session_id: sessionId,
        key,
        candidates,
        peer_nat: natOrNull(record.peer_nat),
        own_nat: natOrNull(record.own_nat),
        role: record.role === "responder" ? "responder" : "initiator",
        delay_ms: Number.isFinite(delay) ? Math.min(Math.max(delay, 0), 5000) : 0,
      };
    }
    case "relayed": {
      const data = requireString(record, "data");
      if (!BASE64.test(data)) {
        throw new ProtocolError("invalid_message", 'Cannot parse "relayed": "data" must be base64');
      }
      return { type: "relayed", from: requireWorkerId(record, "from"), data };
    }
    case "udp_endpoint_registered": {
      const { public: address, nat } = udpEndpointFields({
        type: record.type,
        public: record.public,
        nat: { mapping: record.mapping },
      });
      return { type: "udp_endpoint_registered", public: address, mapping: nat.mapping };
    }
    case "going_away":
      return {
        type: "going_away",
        reason: typeof record.reason === "string" ? record.reason.slice(0, 200) : "",
      };
    case "echo_response":
      return {
        type: "echo_response",
        original_payload: record.original_payload,
        processed_by_rendezvous: typeof record.processed_by_rendezvous === "string"
          ? record.processed_by_rendezvous
          : "",
      };
    case "error":
      return {
        type: "error",
        code: requireString(record, "code"),
        message: typeof record.message === "string" ? record.message : "",
      };
    default:
      throw new ProtocolError(
        "unknown_type",
        `Cannot handle message: unknown type ${describe(record.type)}`,
      );
  }
}

/**
 * Serializes a message for sending. Throws (RangeError) only for payloads that
 * JSON cannot express, such as one nested beyond the engine's stack: the
 * rendezvous catches that when echoing a hostile payload.
 */
export function encodeMessage(message: ClientMessage | ServerMessage): string {
  return JSON.stringify(message);
}
