/**
 * The worker's configuration, read from the seed's environment variables
 * plus a few of our own.
 *
 * @module
 */

import { DEFAULT_MAPPING_LIFETIME_SEC } from "../portmap/mapper.ts";
import { defaultControlDir } from "./control.ts";
import { parseSocks } from "./socks.ts";
import {
  boolVar,
  ConfigError,
  type Env,
  LOG_VARIABLES,
  type LogConfig,
  logConfig,
  numberVar,
  portVar,
  stringVar,
  type VariableDoc,
} from "../core/env.ts";
import { normalizeIp } from "../protocol/ip.ts";
import { isValidWorkerId, REGISTER_PATH_PREFIX } from "../protocol/messages.ts";
import { parseServerSpec } from "../stun/client.ts";
import { DEFAULT_STUN_SERVERS } from "../stun/config.ts";
import { type ExposeSpec, type ForwardSpec, parseExposes, parseForwards } from "./forward.ts";
import type { CongestionControl } from "../peer/transport.ts";
import { DEFAULT_OPENING_TTL } from "../peer/manager.ts";

/** Everything `worker.ts` needs to start. */
export interface WorkerConfig {
  /** This worker's id (`WORKER_ID`, default a new UUID). */
  workerId: string;
  /** The rendezvous base as a ws:/wss: URL (no trailing slash). */
  rendezvousBase: URL;
  /** Set when the base URL had no scheme and ws: was assumed. */
  rendezvousWarning?: string;
  /** Bearer token for the rendezvous (`RENDEZVOUS_TOKEN`). */
  token?: string;
  /** `undefined` when IP_ECHO_URL=off. */
  ipEchoUrl?: string;
  /** How long the IP echo service may take (`IP_ECHO_TIMEOUT_SEC`). */
  ipEchoTimeoutMs: number;
  /** Health server port (`PORT`); 0 picks a free one. */
  port: number;
  /** Health server address (`HOST`). */
  hostname: string;
  /** Heartbeat period (`PING_INTERVAL_SEC`). */
  pingIntervalMs: number;
  /** A heartbeat unanswered this long ends the session (`PING_TIMEOUT_SEC`). */
  pingTimeoutMs: number;
  /** First reconnect delay after an abnormal close (`RECONNECT_BASE_SEC`). */
  reconnectBaseMs: number;
  /** Longest reconnect delay (`RECONNECT_MAX_SEC`). */
  reconnectMaxMs: number;
  /** UDP socket for STUN (and later hole punching). */
  udpHost: string;
  /** Port of the UDP socket (`UDP_PORT`); 0 picks a free one. */
  udpPort: number;
  /** Empty when STUN_SERVERS=off: no UDP discovery. */
  stunServers: string[];
  /** How often the NAT mapping is refreshed and rechecked (`STUN_KEEPALIVE_SEC`). */
  stunKeepaliveMs: number;
  /** Peers see only workers of the same group. */
  group: string;
  /** Where the worker's key is kept (`WORKER_KEY_FILE`); unset: a fresh key each start. */
  keyFile?: string;
  /** Where its control socket for `deno task ctl` goes (`CONTROL_DIR`); unset: none. */
  controlDir?: string;
  /**
   * A secret every worker of the group shares (`GROUP_SECRET`): peers'
   * keys must be vouched for by it, so the rendezvous cannot substitute them.
   */
  groupSecret?: string;
  /** Local TCP ports peers may reach (`PEER_EXPOSE`). */
  peerExpose: ExposeSpec[];
  /** Local listeners carried to peers' ports (`PEER_FORWARD`). */
  peerForward: ForwardSpec[];
  /** `PEER_SOCKS`: where the SOCKS5 door to the peers listens; unset: none. */
  peerSocks?: { hostname: string; port: number };
  /** How long a forwarded connection waits for an unreachable peer (`PEER_FORWARD_WAIT_SEC`). */
  peerForwardWaitMs: number;
  /** QUIC's congestion controller for peer connections (`PEER_CONGESTION_CONTROL`). */
  peerCongestionControl: CongestionControl;
  /** How the transport's UDP sockets are read and written (`PEER_UDP_IO`). */
  peerUdpIo: "auto" | "ffi" | "deno";
  /** Introduce ourselves to every peer of the group as it appears. */
  peerAutoConnect: boolean;
  /** Send a hello to every peer this often (0: never); for demos and the lab. */
  peerHelloMs: number;
  /** IP TTL of a punch's opening packets (`PUNCH_OPENING_TTL`); 0: none. */
  punchOpeningTtl: number;
  /** Ask the gateway for a port mapping of the UDP socket (`PORT_MAPPING`). */
  portMapping: "auto" | "off";
  /** The lifetime to ask for, seconds (`PORT_MAPPING_LIFETIME_SEC`); renewed at half. */
  portMappingLifetimeSec: number;
  /** Log level and format (`LOG_LEVEL`, `LOG_FORMAT`). */
  log: LogConfig;
}

/** The worker's environment variables. */
export const WORKER_VARIABLES: readonly VariableDoc[] = [
  {
    name: "RENDEZVOUS_SERVICE_URL",
    fallback: "(required)",
    meaning: "rendezvous base URL: http(s):// or ws(s)://; no scheme means ws:// (with a warning)",
  },
  {
    name: "WORKER_ID",
    fallback: "a new UUID",
    meaning: "this worker's id: 1-128 of [A-Za-z0-9._-]",
  },
  { name: "RENDEZVOUS_TOKEN", fallback: "(unset)", meaning: "bearer token sent to the rendezvous" },
  {
    name: "IP_ECHO_URL",
    fallback: "https://api.ipify.org",
    meaning: "HTTP service answering with our public IP; off to skip",
  },
  { name: "IP_ECHO_TIMEOUT_SEC", fallback: "10", meaning: "how long to wait for the echo service" },
  {
    name: "PORT",
    fallback: "8080",
    meaning: "health server port (/health, /); 0 picks a free one",
  },
  { name: "HOST", fallback: "0.0.0.0", meaning: "health server address" },
  {
    name: "PING_INTERVAL_SEC",
    fallback: "25",
    meaning: "seconds between heartbeats (echo_request) to the rendezvous",
  },
  {
    name: "PING_TIMEOUT_SEC",
    fallback: "25",
    meaning: "reconnect when a heartbeat gets no answer within this",
  },
  {
    name: "RECONNECT_BASE_SEC",
    fallback: "0.5",
    meaning: "first reconnect backoff window (full jitter)",
  },
  { name: "RECONNECT_MAX_SEC", fallback: "30", meaning: "largest reconnect backoff window" },
  {
    name: "UDP_PORT",
    fallback: "0 (any free port)",
    meaning: "UDP port for STUN and peer traffic",
  },
  { name: "UDP_HOST", fallback: "0.0.0.0", meaning: "UDP address (:: for IPv6)" },
  {
    name: "STUN_SERVERS",
    fallback: DEFAULT_STUN_SERVERS,
    meaning:
      "comma-separated host:port list (an IPv6 server as [addr]:port: asked by the IPv6 socket, to see a NAT66), two or more to classify the NAT; off to skip UDP",
  },
  {
    name: "STUN_KEEPALIVE_SEC",
    fallback: "20",
    meaning: "refresh the NAT mapping this often (Cloud NAT forgets idle UDP after 30 s)",
  },
  { name: "WORKER_GROUP", fallback: "default", meaning: "peers see only workers of their group" },
  {
    name: "GROUP_SECRET",
    fallback: "(unset)",
    meaning: "secret shared by the group (16+ characters): only keys it vouches for are accepted",
  },
  {
    name: "PEER_EXPOSE",
    fallback: "(none)",
    meaning:
      "local TCP ports peers of the group may reach; PORT@GLOB|GLOB names who, e.g. 5432@db-*,8080",
  },
  {
    name: "PEER_FORWARD",
    fallback: "(none)",
    meaning: "[HOST:]PORT:PEER:PORT,...: listen on HOST:PORT (127.0.0.1), carry to PEER's PORT",
  },
  {
    name: "PEER_SOCKS",
    fallback: "off",
    meaning: "[HOST:]PORT of a SOCKS5 proxy whose host names are peer ids (HOST 127.0.0.1)",
  },
  {
    name: "PEER_FORWARD_WAIT_SEC",
    fallback: "30",
    meaning: "how long a forwarded connection waits for its peer before it is refused",
  },
  {
    name: "PEER_UDP_IO",
    fallback: "auto",
    meaning:
      "ffi: batched UDP (recvmmsg/sendmmsg through FFI; Linux, --allow-ffi); deno: Deno's own sockets; auto: ffi where it can be had",
  },
  {
    name: "PEER_CONGESTION_CONTROL",
    fallback: "default",
    meaning:
      "default (most on clean paths) or low-latency (far better under random loss); throughput",
  },
  {
    name: "CONTROL_DIR",
    fallback: "$XDG_RUNTIME_DIR/holepunch, else /tmp/holepunch-$USER",
    meaning: "directory (0700) of the control socket deno task ctl talks to; off for none",
  },
  {
    name: "WORKER_KEY_FILE",
    fallback: "(a new key each start)",
    meaning: "file keeping this worker's Ed25519 key (JWK, created with mode 0600 if missing)",
  },
  {
    name: "PEER_AUTOCONNECT",
    fallback: "false",
    meaning: "connect (punch) to every peer of the group as it appears",
  },
  {
    name: "PUNCH_OPENING_TTL",
    fallback: "3",
    meaning:
      "highest TTL of the opening packets a punch sends first (past your own NATs, short of the peer's); 0: none",
  },
  {
    name: "PORT_MAPPING",
    fallback: "auto",
    meaning:
      "auto: ask the default gateway for a mapping of the UDP socket (PCP, NAT-PMP, UPnP-IGD, probed at once) and offer it to peers; off: never",
  },
  {
    name: "PORT_MAPPING_LIFETIME_SEC",
    fallback: "7200",
    meaning:
      "the lifetime a port mapping is asked for (renewed at half; what the router keeps after a crash)",
  },
  {
    name: "PEER_HELLO_SEC",
    fallback: "0 (off)",
    meaning: "send a small hello to every known peer this often (demo, lab)",
  },
  ...LOG_VARIABLES,
];

/**
 * Turns the seed's `RENDEZVOUS_SERVICE_URL` into a WebSocket base URL:
 * http→ws, https→wss, ws/wss kept, no scheme → ws with a warning, anything
 * else an error.
 *
 * @throws {ConfigError}
 */
export function rendezvousBaseUrl(text: string): { url: URL; warning?: string } {
  const name = "RENDEZVOUS_SERVICE_URL";
  let warning: string | undefined;
  let candidate = text;
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text)?.[1]?.toLowerCase();
  if (scheme === undefined) {
    if (/^[A-Za-z][A-Za-z0-9+.-]*:(?!\d)/.test(text)) {
      throw new ConfigError(
        name,
        `Cannot read ${name}: unsupported URL "${text}": use http://, https://, ws:// or wss://`,
      );
    }
    warning = `${name} ("${text}") has no scheme: assuming ws://`;
    candidate = `ws://${text}`;
  }
  let url: URL;
  try {
    url = new URL(candidate);
  } catch (cause) {
    throw new ConfigError(
      name,
      `Cannot read ${name}: it is not a valid URL: current value is "${text}"`,
      { cause },
    );
  }
  const mapped: Record<string, string> = {
    "http:": "ws:",
    "https:": "wss:",
    "ws:": "ws:",
    "wss:": "wss:",
  };
  const protocol = mapped[url.protocol];
  if (protocol === undefined) {
    throw new ConfigError(
      name,
      `Cannot read ${name}: unsupported scheme "${url.protocol}" in "${text}": use http://, https://, ws:// or wss://`,
    );
  }
  if (url.hostname === "") {
    throw new ConfigError(name, `Cannot read ${name}: no host in "${text}"`);
  }
  if (url.username || url.password) {
    throw new ConfigError(
      name,
      `Cannot read ${name}: credentials in the URL are not supported: use RENDEZVOUS_TOKEN`,
    );
  }
  // new URL() only switches between "special" schemes via href.
  url = new URL(url.href.replace(/^[a-z]+:/, protocol));
  url.hash = "";
  url.pathname = url.pathname.replace(/\/+$/, "");
  return { url, warning };
}

/** The registration URL of `workerId` (in `group`) under a base from {@linkcode rendezvousBaseUrl}. */
export function registrationUrl(base: URL, workerId: string, group = "default"): URL {
  const url = new URL(base.href);
  if (group !== "default") url.searchParams.set("group", group);
  url.pathname = `${base.pathname.replace(/\/+$/, "")}${REGISTER_PATH_PREFIX}${
    encodeURIComponent(workerId)
  }`;
  return url;
}

function portMapping(env: Env): "auto" | "off" {
  const value = stringVar(env, "PORT_MAPPING", "auto");
  if (value !== "auto" && value !== "off") {
    throw new ConfigError(
      "PORT_MAPPING",
      `Cannot read PORT_MAPPING: it must be auto or off: current value is "${value}"`,
    );
  }
  return value;
}

function udpIo(env: Env): "auto" | "ffi" | "deno" {
  const value = stringVar(env, "PEER_UDP_IO", "auto");
  if (value !== "auto" && value !== "ffi" && value !== "deno") {
    throw new ConfigError(
      "PEER_UDP_IO",
      `Cannot read PEER_UDP_IO: it must be auto, ffi or deno: current value is "${value}"`,
    );
  }
  return value;
}

function congestionControl(env: Env): CongestionControl {
  const value = stringVar(env, "PEER_CONGESTION_CONTROL", "default");
  if (value !== "default" && value !== "throughput" && value !== "low-latency") {
    throw new ConfigError(
      "PEER_CONGESTION_CONTROL",
      `Cannot read PEER_CONGESTION_CONTROL: it must be default, throughput or low-latency: current value is "${value}"`,
    );
  }
  return value;
}

function groupSecret(env: Env): string | undefined {
  const secret = stringVar(env, "GROUP_SECRET");
  if (secret !== undefined && secret.length < 16) {
    throw new ConfigError(
      "GROUP_SECRET",
      `Cannot read GROUP_SECRET: it must be at least 16 characters (e.g. openssl rand -base64 32): current length is ${secret.length}`,
    );
  }
  return secret;
}

function listVar<T>(env: Env, name: string, parse: (text: string) => T[]): T[] {
  const text = stringVar(env, name);
  if (text === undefined) return [];
  try {
    return parse(text);
  } catch (error) {
    throw new ConfigError(name, `Cannot read ${name}: ${(error as Error).message}`);
  }
}

function seconds(env: Env, name: string, fallback: number, min: number, max: number): number {
  return Math.round(numberVar(env, name, fallback, { min, max }) * 1000);
}

/** `PEER_SOCKS`: where the SOCKS5 door listens, or nowhere. */
function socksVar(env: Env): { hostname: string; port: number } | undefined {
  try {
    return parseSocks(stringVar(env, "PEER_SOCKS"));
  } catch (error) {
    throw new ConfigError("PEER_SOCKS", `Cannot read PEER_SOCKS: ${(error as Error).message}`);
  }
}

/** `CONTROL_DIR`: a directory, the default one, or none (`off`). */
function controlDir(env: Env): string | undefined {
  const value = stringVar(env, "CONTROL_DIR");
  if (value === "off") return undefined;
  if (value !== undefined && !value.startsWith("/")) {
    throw new ConfigError(
      "CONTROL_DIR",
      `Cannot read CONTROL_DIR: it must be an absolute path or off: current value is "${value}"`,
    );
  }
  return value ?? defaultControlDir((name) => stringVar(env, name));
}

/**
 * Reads the worker configuration.
 *
 * @throws {ConfigError} naming the first bad variable.
 */
export function loadWorkerConfig(env: Env, isTerminal = false): WorkerConfig {
  const urlText = stringVar(env, "RENDEZVOUS_SERVICE_URL");
  if (urlText === undefined) {
    throw new ConfigError(
      "RENDEZVOUS_SERVICE_URL",
      "RENDEZVOUS_SERVICE_URL is not set: set it to the rendezvous URL, e.g. https://rendezvous-xyz.a.run.app",
    );
  }
  const { url, warning } = rendezvousBaseUrl(urlText);
  const workerId = stringVar(env, "WORKER_ID") ?? crypto.randomUUID();
  if (!isValidWorkerId(workerId)) {
    throw new ConfigError(
      "WORKER_ID",
      `Cannot read WORKER_ID: it must be 1-128 characters of [A-Za-z0-9._-]: current value is "${workerId}"`,
    );
  }
  const echo = stringVar(env, "IP_ECHO_URL", "https://api.ipify.org");
  let ipEchoUrl: string | undefined;
  if (echo.toLowerCase() !== "off") {
    let parsed: URL | undefined;
    try {
      parsed = new URL(echo);
    } catch {
      parsed = undefined;
    }
    if (parsed === undefined || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
      throw new ConfigError(
        "IP_ECHO_URL",
        `Cannot read IP_ECHO_URL: it must be an http:// or https:// URL, or off: current value is "${echo}"`,
      );
    }
    ipEchoUrl = parsed.href;
  }
  const reconnectBaseMs = seconds(env, "RECONNECT_BASE_SEC", 0.5, 0.01, 60);
  const reconnectMaxMs = seconds(env, "RECONNECT_MAX_SEC", 30, 0.01, 3600);
  if (reconnectMaxMs < reconnectBaseMs) {
    throw new ConfigError(
      "RECONNECT_MAX_SEC",
      `Cannot read RECONNECT_MAX_SEC: it must be at least RECONNECT_BASE_SEC (${
        reconnectBaseMs / 1000
      })`,
    );
  }
  const stunText = stringVar(env, "STUN_SERVERS", DEFAULT_STUN_SERVERS);
  const stunServers = stunText.toLowerCase() === "off"
    ? []
    : stunText.split(",").map((s) => s.trim()).filter((s) => s !== "");
  for (const server of stunServers) {
    try {
      parseServerSpec(server);
    } catch {
      throw new ConfigError(
        "STUN_SERVERS",
        `Cannot read STUN_SERVERS: "${server}" is not host:port (or set STUN_SERVERS=off)`,
      );
    }
  }
  const group = stringVar(env, "WORKER_GROUP", "default");
  if (!isValidWorkerId(group)) {
    throw new ConfigError(
      "WORKER_GROUP",
      `Cannot read WORKER_GROUP: it must be 1-128 characters of [A-Za-z0-9._-]: current value is "${group}"`,
    );
  }
  const udpHost = stringVar(env, "UDP_HOST", "0.0.0.0");
  if (normalizeIp(udpHost) === null) {
    throw new ConfigError(
      "UDP_HOST",
      `Cannot read UDP_HOST: it must be an IP address: current value is "${udpHost}"`,
    );
  }
  return {
    workerId,
    rendezvousBase: url,
    rendezvousWarning: warning,
    token: stringVar(env, "RENDEZVOUS_TOKEN"),
    ipEchoUrl,
    ipEchoTimeoutMs: seconds(env, "IP_ECHO_TIMEOUT_SEC", 10, 0.1, 120),
    port: portVar(env, "PORT", 8080),
    hostname: stringVar(env, "HOST", "0.0.0.0"),
    pingIntervalMs: seconds(env, "PING_INTERVAL_SEC", 25, 0.05, 3600),
    pingTimeoutMs: seconds(env, "PING_TIMEOUT_SEC", 25, 0.05, 3600),
    reconnectBaseMs,
    reconnectMaxMs,
    udpHost,
    udpPort: portVar(env, "UDP_PORT", 0),
    stunServers,
    stunKeepaliveMs: seconds(env, "STUN_KEEPALIVE_SEC", 20, 0.05, 3600),
    keyFile: stringVar(env, "WORKER_KEY_FILE"),
    controlDir: controlDir(env),
    groupSecret: groupSecret(env),
    peerExpose: listVar(env, "PEER_EXPOSE", parseExposes),
    peerForward: listVar(env, "PEER_FORWARD", parseForwards),
    peerSocks: socksVar(env),
    peerForwardWaitMs: seconds(env, "PEER_FORWARD_WAIT_SEC", 30, 0.1, 3600),
    peerCongestionControl: congestionControl(env),
    peerUdpIo: udpIo(env),
    portMapping: portMapping(env),
    portMappingLifetimeSec: numberVar(
      env,
      "PORT_MAPPING_LIFETIME_SEC",
      DEFAULT_MAPPING_LIFETIME_SEC,
      { min: 2, max: 86_400, integer: true },
    ),
    group,
    peerAutoConnect: boolVar(env, "PEER_AUTOCONNECT", false),
    peerHelloMs: seconds(env, "PEER_HELLO_SEC", 0, 0, 3600),
    punchOpeningTtl: numberVar(env, "PUNCH_OPENING_TTL", DEFAULT_OPENING_TTL, {
      min: 0,
      max: 255,
      integer: true,
    }),
    log: logConfig(env, isTerminal),
  };
}
