/**
 * One validating parser per direction: {@linkcode parseClientMessage} on the
 * rendezvous for what workers send, {@linkcode parseServerMessage} on the
 * worker for what the rendezvous sends. Both ignore extra fields (so either
 * side can grow) and throw `ProtocolError` for anything else. And the
 * encoder both sides send with.
 *
 * @module
 */

import { normalizeIp } from "./ip.ts";
import {
  type Candidate,
  type ClientMessage,
  isValidWorkerId,
  type MappedEndpoint,
  MAPPING_PROTOCOLS,
  MAX_LOCAL_CANDIDATES,
  MAX_RELAY_DATA,
  NAT_MAPPINGS,
  type NatMapping,
  type PeerInfo,
  PROTOCOL_VERSION,
  ProtocolError,
  type RegisterUdpEndpointMessage,
  type ServerMessage,
  type TransportCredentials,
  type UdpAddress,
} from "./messages.ts";

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
  const fields: Omit<RegisterUdpEndpointMessage, "type"> = {
    public: publicAddress,
    local: local.map((entry, i) => udpAddress(entry, type, `local[${i}]`)),
    nat: { mapping: mapping as NatMapping },
  };
  if (record.mapped !== undefined) fields.mapped = mappedEndpoint(record.mapped, type);
  if (record.public6 !== undefined && record.public6 !== null) {
    const address = udpAddress(record.public6, type, "public6");
    if (!address.ip.includes(":")) {
      throw new ProtocolError(
        "invalid_message",
        `Cannot parse "${type}": "public6" must be an IPv6 endpoint: current value is ${address.ip}`,
      );
    }
    fields.public6 = address;
  } else if (record.public6 === null) fields.public6 = null;
  return fields;
}

/** Longest mapping lifetime taken (a day; gateways give hours). */
const MAX_MAPPING_LIFETIME_SEC = 86_400;

/** A port mapping's endpoint, or null. @throws {ProtocolError} naming what is wrong */
function mappedEndpoint(value: unknown, type: string): MappedEndpoint | null {
  if (value === null) return null;
  const address = udpAddress(value, type, "mapped");
  const { protocol, lifetime_sec: lifetime } = value as Record<string, unknown>;
  if (
    typeof protocol !== "string" || !(MAPPING_PROTOCOLS as readonly string[]).includes(protocol) ||
    typeof lifetime !== "number" || !Number.isInteger(lifetime) || lifetime < 0 ||
    lifetime > MAX_MAPPING_LIFETIME_SEC
  ) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot parse "${type}": "mapped" must be {ip, port, protocol: ${
        MAPPING_PROTOCOLS.join(" | ")
      }, lifetime_sec: 0-${MAX_MAPPING_LIFETIME_SEC}}`,
    );
  }
  return {
    ...address,
    protocol: protocol as MappedEndpoint["protocol"],
    lifetime_sec: lifetime,
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
    mapped: mappedOrNull(record.mapped),
    key: keyOrNull(record.key),
    transport: transportOrNull(record.transport),
  };
}

/** A well-formed port mapping, else null (a peer's: read, never refused). */
function mappedOrNull(value: unknown): MappedEndpoint | null {
  try {
    return value === undefined ? null : mappedEndpoint(value, "peer");
  } catch {
    return null;
  }
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
      // An unknown reason is read as none: a newer rendezvous may say more.
      return record.reason === "revoked"
        ? { type: "peer_left", peer_id: requireWorkerId(record, "peer_id"), reason: "revoked" }
        : { type: "peer_left", peer_id: requireWorkerId(record, "peer_id") };
    case "punch": {
      const sessionId = requireString(record, "session_id");
      const key = requireString(record, "key");
      // 44 base64 characters ending in one "=" are exactly 32 bytes.
      if (!/^[0-9a-f]{16}$/.test(sessionId) || !/^[A-Za-z0-9+/]{43}=$/.test(key)) {
        throw new ProtocolError("invalid_message", 'Cannot parse "punch": bad session_id or key');
      }
      const list = Array.isArray(record.candidates) ? record.candidates : [];
      // Locals, then the STUN-mapped ones (IPv4, IPv6) and the gateway-mapped one.
      const candidates = list.slice(0, MAX_LOCAL_CANDIDATES + 3).map((c, i) => {
        const address = udpAddress(c, "punch", `candidates[${i}]`);
        const given = (c as Record<string, unknown>).kind;
        const kind = given === "local" || given === "mapped" ? given : "public";
        const vouched = (c as Record<string, unknown>).vouched;
        return (typeof vouched === "boolean"
          ? { ...address, kind, vouched }
          : { ...address, kind }) as Candidate;
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
