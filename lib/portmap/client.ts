/**
 * Asking a gateway for a UDP port mapping: NAT-PMP and PCP over one
 * ephemeral UDP socket, each request sent a few times (250 ms, then
 * doubling, as RFC 6886 §3.1 and RFC 6887 §8.1.1 say, but 3 tries, not 9:
 * a gateway that says nothing costs under two seconds). Only an answer from
 * the gateway's address and port that answers this request is taken;
 * anything else is ignored and counted. One request in flight per call:
 * nothing a gateway (or anyone) sends makes us send more.
 *
 * @module
 */

import type { MappingProtocol } from "../protocol/messages.ts";
import {
  encodeMapRequest as encodeNatPmp,
  encodePublicAddressRequest,
  NATPMP_PORT,
  NATPMP_RESULTS,
  type NatPmpMapping,
  parseMapResponse as parseNatPmp,
  parsePublicAddressResponse,
} from "./natpmp.ts";
import {
  encodeAnnounceRequest,
  encodeMapRequest as encodePcp,
  parseAnnounceResponse,
  parseMapResponse as parsePcp,
  PCP_MAX_BYTES,
  PCP_RESULTS,
  type PcpMapResponse,
} from "./pcp.ts";

/** Retransmission waits (ms): three tries. */
export const PORTMAP_WAITS_MS: readonly number[] = [250, 500, 1000];

/** A mapping a gateway made. */
export interface PortMapping {
  /** How it was mapped. */
  protocol: MappingProtocol;
  /** The public address and port peers can reach us at. */
  externalIp: string;
  /** The public port. */
  externalPort: number;
  /** Our socket's port it leads to. */
  internalPort: number;
  /** Seconds it lives: renew at half. */
  lifetime: number;
  /** The gateway's epoch, for the restart check. */
  epoch: number;
  /** PCP: the request's nonce (its renewals and its deletion carry the same). */
  nonce?: Uint8Array;
}

/** Why no mapping: the gateway's refusal (with its code), silence, or an error here. */
export class PortMapError extends Error {
  /** Always `"PortMapError"`. */
  override name = "PortMapError";
  /** The protocol's result code, for a refusal. */
  readonly result?: number;
  /** `message` says why; `result` is the gateway's code, for a refusal. */
  constructor(message: string, result?: number) {
    super(message);
    this.result = result;
  }
}

/** Where to ask and how patiently. */
export interface PortMapTarget {
  /** The gateway's IPv4 address. */
  gateway: string;
  /** Its port. @default {5351} */
  port?: number;
  /** Retransmission waits. @default {PORTMAP_WAITS_MS} */
  waitsMs?: readonly number[];
  /** Stops between tries. */
  signal?: AbortSignal;
}

/** Datagrams that came and were not the answer (another sender, garbage, another request's). */
export interface PortMapCounts {
  ignored: number;
}

/**
 * Sends `request` and waits for the first datagram `accept` takes, trying
 * again after each wait; throws {@linkcode PortMapError} on silence.
 */
async function exchange<T>(
  target: PortMapTarget,
  request: Uint8Array,
  accept: (bytes: Uint8Array) => T | undefined,
  counts: PortMapCounts,
): Promise<T> {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const to = {
    transport: "udp",
    hostname: target.gateway,
    port: target.port ?? NATPMP_PORT,
  } as const;
  const buffer = new Uint8Array(PCP_MAX_BYTES + 1);
  const answered = Promise.withResolvers<T>();
  let done = false;
  const receiving = (async () => {
    while (!done) {
      let data: Uint8Array;
      let from: Deno.NetAddr;
      try {
        const [bytes, addr] = await socket.receive(buffer);
        data = bytes;
        from = addr as Deno.NetAddr;
      } catch {
        return; // closed, or an ICMP error: the next try, or silence
      }
      const value = from.hostname === to.hostname && from.port === to.port
        ? accept(data)
        : undefined;
      if (value === undefined) counts.ignored++;
      else answered.resolve(value);
    }
  })();
  try {
    for (const wait of target.waitsMs ?? PORTMAP_WAITS_MS) {
      if (target.signal?.aborted) throw new PortMapError("cancelled");
      await socket.send(request, to).catch(() => {});
      let timer: ReturnType<typeof setTimeout> | undefined;
      const value = await Promise.race([
        answered.promise,
        new Promise<undefined>((resolve) => timer = setTimeout(() => resolve(undefined), wait)),
      ]);
      clearTimeout(timer);
      if (value !== undefined) return value;
    }
    throw new PortMapError(`no answer from ${target.gateway}:${to.port}`);
  } finally {
    done = true;
    socket.close();
    await receiving;
  }
}

/**
 * Maps UDP `internalPort` with NAT-PMP for `lifetime` seconds (0 deletes):
 * the gateway's public address first, then the mapping.
 *
 * @throws {PortMapError} when the gateway refuses or says nothing
 */
export async function mapNatPmp(
  target: PortMapTarget,
  internalPort: number,
  lifetime: number,
  counts: PortMapCounts = { ignored: 0 },
): Promise<PortMapping> {
  const externalIp = await probeNatPmp(target, counts);
  const mapped: NatPmpMapping = await exchange(
    target,
    encodeNatPmp(internalPort, lifetime === 0 ? 0 : internalPort, lifetime),
    (bytes) => {
      const answer = parseNatPmp(bytes);
      return answer?.internalPort === internalPort ? answer : undefined;
    },
    counts,
  );
  if (mapped.result !== 0) {
    throw new PortMapError(
      `NAT-PMP: ${NATPMP_RESULTS[mapped.result] ?? `result ${mapped.result}`}`,
      mapped.result,
    );
  }
  return {
    protocol: "nat-pmp",
    externalIp,
    externalPort: mapped.externalPort,
    internalPort,
    lifetime: mapped.lifetime,
    epoch: mapped.epoch,
  };
}

/**
 * Maps UDP `internalPort` with PCP for `lifetime` seconds (0 deletes);
 * `clientIp` is our address on the gateway's network (the request's source).
 * A renewal or a deletion passes the mapping's `nonce` (RFC 6887 §11.2.1).
 *
 * @throws {PortMapError} when the gateway refuses or says nothing
 */
export async function mapPcp(
  target: PortMapTarget,
  clientIp: string,
  internalPort: number,
  lifetime: number,
  counts: PortMapCounts = { ignored: 0 },
  nonce: Uint8Array = crypto.getRandomValues(new Uint8Array(12)),
): Promise<PortMapping> {
  const request = { nonce, clientIp, internalPort, lifetime };
  const answer: PcpMapResponse = await exchange(
    target,
    encodePcp(request),
    (bytes) => parsePcp(bytes, request),
    counts,
  );
  if (answer.result !== 0) {
    throw new PortMapError(
      `PCP: ${PCP_RESULTS[answer.result] ?? `result ${answer.result}`}`,
      answer.result,
    );
  }
  return {
    protocol: "pcp",
    externalIp: answer.externalIp,
    externalPort: answer.externalPort,
    internalPort,
    lifetime: answer.lifetime,
    epoch: answer.epoch,
    nonce,
  };
}

/**
 * Whether the gateway speaks NAT-PMP (its public-address answer), without
 * mapping anything. Resolves with the public address; throws on silence or refusal.
 */
export async function probeNatPmp(
  target: PortMapTarget,
  counts: PortMapCounts = { ignored: 0 },
): Promise<string> {
  const address = await exchange(
    target,
    encodePublicAddressRequest(),
    parsePublicAddressResponse,
    counts,
  );
  if (address.result !== 0) {
    throw new PortMapError(
      `NAT-PMP: ${NATPMP_RESULTS[address.result] ?? `result ${address.result}`}`,
      address.result,
    );
  }
  return address.ip;
}

/**
 * Whether the gateway speaks PCP (its answer to an ANNOUNCE request, RFC
 * 6887 §14.1), without mapping anything. Throws on silence or refusal.
 */
export async function probePcp(
  target: PortMapTarget,
  clientIp: string,
  counts: PortMapCounts = { ignored: 0 },
): Promise<void> {
  const answer = await exchange(
    target,
    encodeAnnounceRequest(clientIp),
    parseAnnounceResponse,
    counts,
  );
  if (answer.result !== 0) {
    throw new PortMapError(
      `PCP: ${PCP_RESULTS[answer.result] ?? `result ${answer.result}`}`,
      answer.result,
    );
  }
}
