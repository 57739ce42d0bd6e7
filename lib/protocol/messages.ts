/**
 * The rendezvous wire protocol: JSON text frames over the WebSocket at
 * `/ws/register/{worker_id}`, with the seed's message names kept so the
 * seed's Python worker and rendezvous interoperate with ours.
 *
 * This module holds the messages' types, bounds and errors; `parse.ts`
 * holds one validating parser per direction and the encoder.
 *
 * @module
 */

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
  /** A port mapping its gateway made for the socket (absent from older workers). */
  mapped?: MappedEndpoint | null;
  /**
   * The IPv6 socket's endpoint as an IPv6 STUN server saw it: a NAT66 or a
   * rewriting firewall shows here (absent from older workers, and without IPv6).
   */
  public6?: UdpAddress | null;
}

/** The port-mapping protocols a gateway may speak, in the order a worker prefers them. */
export const MAPPING_PROTOCOLS = ["pcp", "nat-pmp", "upnp"] as const;
/** One of {@linkcode MAPPING_PROTOCOLS}. */
export type MappingProtocol = (typeof MAPPING_PROTOCOLS)[number];

/** Each port-mapping protocol's name, for people. */
export const MAPPING_PROTOCOL_NAMES: Readonly<Record<MappingProtocol, string>> = {
  pcp: "PCP",
  "nat-pmp": "NAT-PMP",
  upnp: "UPnP",
};

/**
 * The public address a worker's gateway mapped to its UDP socket (PCP,
 * NAT-PMP or UPnP-IGD): reachable by any peer, whatever its NAT does to
 * other flows — unless the gateway itself is behind another NAT (the address
 * is then private or shared, and no candidate).
 */
export interface MappedEndpoint extends UdpAddress {
  /** How it was mapped. */
  protocol: MappingProtocol;
  /** Seconds the gateway gave it at its last renewal. */
  lifetime_sec: number;
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
  /** A port mapping its gateway made, if any (absent from older rendezvous). */
  mapped?: MappedEndpoint | null;
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

/**
 * Why a peer left, when it was not simply its session ending: `revoked`,
 * an administrator revoked its key or id (close every connection to it).
 */
export type LeaveReason = "revoked";

/** A peer de-registered. */
export interface PeerLeftMessage {
  /** The message type. */
  type: "peer_left";
  /** The peer that left. */
  peer_id: string;
  /** Why, when it matters to the peers (absent: its session ended). */
  reason?: LeaveReason;
}

/** A candidate address of a peer, in the order to try it. */
export interface Candidate extends UdpAddress {
  /**
   * A host candidate (an interface address), server-reflexive (STUN-mapped),
   * or mapped by the peer's gateway (PCP, NAT-PMP, UPnP: reachable from
   * anywhere). Older workers read any kind but `local` as `public`.
   */
  kind: "local" | "public" | "mapped";
  /**
   * A public candidate's IP is the one the rendezvous sees the peer's session
   * come from: only such an address may get a birthday spray or a hard
   * side's sockets, anything else only paced checks. Absent from
   * rendezvous versions before it (then trusted, as they were).
   */
  vouched?: boolean;
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
  /** A port mapping its gateway made, if any. */
  mapped?: MappedEndpoint | null;
  /** The IPv6 socket's endpoint as IPv6 STUN saw it, if any. */
  public6?: UdpAddress | null;
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
