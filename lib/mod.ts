/**
 * holepunch: workers behind NAT find each other through a rendezvous and
 * talk over direct UDP paths, falling back to the rendezvous's relay.
 *
 * This module is what an application or an operator script may use: start
 * a whole worker or a whole rendezvous in-process, watch and reach peers,
 * and speak the wire protocol. Everything else under `lib/` is internal and
 * may change.
 *
 * @example Start a worker in-process and send bytes to a peer over an encrypted stream
 * ```ts
 * import { loadWorkerConfig, startWorker } from "@holepunch/holepunch";
 *
 * const worker = await startWorker(
 *   loadWorkerConfig({ RENDEZVOUS_SERVICE_URL: "http://localhost:8080", PORT: "0" }),
 * );
 * const peer = worker.peers.peers[0];
 * if (peer) {
 *   const connection = await worker.connect(peer.worker_id);
 *   const stream = await connection.openStream();
 *   const writer = stream.writable.getWriter();
 *   await writer.write(new TextEncoder().encode("hello"));
 *   await writer.close();
 *   console.log(peer.worker_id, connection.path, connection.rttMs);
 * }
 * await worker.close();
 * ```
 *
 * @module
 */

// A whole worker.
export { startWorker, type StartWorkerOptions, Worker } from "./worker/worker.ts";
export { loadWorkerConfig, WORKER_VARIABLES, type WorkerConfig } from "./worker/config.ts";
export type { WorkerLimits, WorkerStatus } from "./worker/health.ts";
export { PingTimeoutError, type Pong } from "./worker/ping.ts";
export type { PeerView } from "./worker/control.ts";
export type { ClientEvent, ClientSnapshot, ClientStatus } from "./worker/client.ts";
export type { UdpEndpointReport } from "./stun/discovery.ts";

// Port mapping: PCP, NAT-PMP and UPnP-IGD on the default gateway.
export {
  DEFAULT_MAPPING_LIFETIME_SEC,
  PortMapper,
  type PortMapperOptions,
  type PortMapStatus,
} from "./portmap/mapper.ts";
export { PortMapError, type PortMapping, type PortMapTarget } from "./portmap/client.ts";
export type { Gateway } from "./portmap/gateway.ts";
export type { UpnpTarget } from "./portmap/upnp_client.ts";

// Peers: links, punching, relay, messages.
export { PeerManager } from "./peer/manager.ts";
export {
  ForwardRefusedError,
  type ForwardRequest,
  type PathInfo,
  type PeerCloseInfo,
  PeerConnection,
  PeerConnections,
  type PeerStream,
} from "./peer/connection.ts";
export {
  type CongestionControl,
  TransportClose,
  TransportError,
  type TransportStats,
} from "./peer/transport.ts";
export { type ExposeSpec, type ForwardSpec, type ForwardStats } from "./worker/forward.ts";

// A whole rendezvous.
export {
  RendezvousService,
  startRendezvous,
  type StartRendezvousOptions,
} from "./rendezvous/service.ts";
export {
  type FleetConfig,
  loadRendezvousConfig,
  RENDEZVOUS_VARIABLES,
  type RendezvousConfig,
} from "./rendezvous/config.ts";
export { type Refused } from "./rendezvous/admission.ts";
export { type Ban, type BanListener, type BanStore } from "./rendezvous/revocations.ts";
export { BansFile, BansFileError } from "./rendezvous/bans_file.ts";
export {
  Fleet,
  type FleetHost,
  type FleetOptions,
  FleetRegistry,
  type RemoteWorker,
} from "./rendezvous/fleet.ts";
export { Rendezvous, type RendezvousState } from "./rendezvous/server.ts";
export {
  defaultPerClient,
  RENDEZVOUS_DEFAULTS,
  type RendezvousOptions,
  type ResolvedOptions,
} from "./rendezvous/options.ts";
export {
  type KeyClaim,
  MemoryRegistry,
  type Registry,
  type WorkerPatch,
  type WorkerRecord,
} from "./rendezvous/registry.ts";

// The wire protocol between workers and the rendezvous.
export {
  type Candidate,
  type ChallengeMessage,
  type ClientMessage,
  type ConnectMessage,
  type EchoRequestMessage,
  type EchoResponseMessage,
  type ErrorCode,
  type ErrorMessage,
  type GoingAwayMessage,
  isValidWorkerId,
  type LeaveReason,
  type ListPeersMessage,
  type MappedEndpoint,
  MAPPING_PROTOCOLS,
  type MappingProtocol,
  type NatMapping,
  type PathKind,
  type PathUpdateMessage,
  type PeerInfo,
  type PeerJoinedMessage,
  type PeerLeftMessage,
  type PeerPathRecord,
  type PeerServerMessage,
  type PeersMessage,
  type PeerUpdatedMessage,
  ProtocolError,
  type ProveKeyMessage,
  type PublicIpRegisteredMessage,
  type PunchMessage,
  type RegisteredMessage,
  type RegisterPublicIpMessage,
  type RegisterTransportMessage,
  type RegisterUdpEndpointMessage,
  type RelayedMessage,
  type RelayMessage,
  type ServerMessage,
  type TransportCredentials,
  type UdpAddress,
  type UdpEndpointRecord,
  type UdpEndpointRegisteredMessage,
  type WorkerListing,
  type WorkerListingEntry,
} from "./protocol/messages.ts";
export { encodeMessage, parseClientMessage, parseServerMessage } from "./protocol/parse.ts";
export { CloseCode, CloseReason } from "./protocol/close_codes.ts";
export { fingerprint, Identity, IdentityError } from "./protocol/identity.ts";
export { KeyFileError, loadIdentity } from "./worker/key_file.ts";
export { UdpIoError } from "./worker/udp.ts";

// STUN: the server a rendezvous runs beside it.
export {
  type DropReason,
  StunServer,
  type StunServerOptions,
  type StunServerStats,
} from "./stun/server.ts";
export type { TransportAddress } from "./stun/attributes.ts";

// Logging, time and configuration plumbing the options above refer to.
export {
  type LogFields,
  type LogFormat,
  Logger,
  type LoggerOptions,
  type LogLevel,
  silentLogger,
} from "./core/log.ts";
export type { Clock, TimerId } from "./core/clock.ts";
export type { Env, LogConfig, VariableDoc } from "./core/env.ts";
export { Counter, Histogram, type Labels, Metrics, METRICS_CONTENT_TYPE } from "./core/metrics.ts";
