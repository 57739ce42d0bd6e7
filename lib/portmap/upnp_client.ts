/**
 * Asking a UPnP Internet Gateway Device for a UDP port mapping: an SSDP
 * search (to the gateway itself and to the SSDP group; only the gateway's
 * answers are read), its device description, then SOAP calls to its
 * WANIPConnection (or WANPPPConnection) service. Every step is bounded:
 * answers and documents by size, each exchange by time, redirects not
 * followed, URLs only on the gateway. A search is sent three times at most;
 * nothing a gateway says makes us send more.
 *
 * @module
 */

import { readAtMost } from "../core/streams.ts";
import { PORTMAP_WAITS_MS, type PortMapCounts, PortMapError, type PortMapping } from "./client.ts";
import {
  encodeAddPortMapping,
  encodeDeletePortMapping,
  encodeGetExternalIp,
  encodeSearch,
  type IgdControl,
  parseDescription,
  parseIpv4,
  parseSearchResponse,
  parseSoapAnswer,
  type SoapCall,
  SSDP_ADDRESS,
  SSDP_PORT,
  UPNP_ERRORS,
  UPNP_MAX_DOCUMENT_BYTES,
  UPNP_MAX_SSDP_BYTES,
} from "./upnp.ts";

/** How long one HTTP exchange with the gateway may take. */
export const UPNP_HTTP_TIMEOUT_MS = 2000;

/** Where to search and how patiently. */
export interface UpnpTarget {
  /** The gateway's IPv4 address: only its answers are read. */
  gateway: string;
  /** Where searches go. @default {the gateway's port 1900 and the SSDP group} */
  searchTo?: { hostname: string; port: number }[];
  /** Retransmission waits of the search. @default {PORTMAP_WAITS_MS} */
  waitsMs?: readonly number[];
  /** Stops the search and the HTTP exchanges. */
  signal?: AbortSignal;
}

/** A UPnP mapping: with the control endpoint that deletes it. */
export interface UpnpMapping extends PortMapping {
  protocol: "upnp";
  control: IgdControl;
}

/**
 * Finds the gateway's port-mapping service: SSDP, then its description;
 * `onAnswer` hears the gateway's SSDP answer, before the description.
 *
 * @throws {PortMapError} when the gateway does not answer or offers no such service
 */
export async function discoverIgd(
  target: UpnpTarget,
  counts: PortMapCounts = { ignored: 0 },
  onAnswer?: () => void,
): Promise<IgdControl> {
  const location = await search(target, counts);
  onAnswer?.();
  const xml = await httpText(location, { method: "GET" }, target.signal);
  if (xml === null) throw new PortMapError(`UPnP: no description at ${location}`);
  const control = parseDescription(xml.text, location);
  if (!control) throw new PortMapError(`UPnP: ${location} offers no port-mapping service`);
  return control;
}

async function search(target: UpnpTarget, counts: PortMapCounts): Promise<URL> {
  const socket = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const to = target.searchTo ??
    [{ hostname: target.gateway, port: SSDP_PORT }, { hostname: SSDP_ADDRESS, port: SSDP_PORT }];
  const found = Promise.withResolvers<URL>();
  let done = false;
  const buffer = new Uint8Array(UPNP_MAX_SSDP_BYTES + 1);
  const receiving = (async () => {
    while (!done) {
      let bytes: Uint8Array;
      let from: Deno.NetAddr;
      try {
        const [data, addr] = await socket.receive(buffer);
        bytes = data;
        from = addr as Deno.NetAddr;
      } catch {
        return;
      }
      const location = from.hostname === target.gateway
        ? parseSearchResponse(bytes, from.hostname)
        : undefined;
      if (location) found.resolve(location);
      else counts.ignored++;
    }
  })();
  try {
    const request = encodeSearch();
    for (const wait of target.waitsMs ?? PORTMAP_WAITS_MS) {
      if (target.signal?.aborted) throw new PortMapError("cancelled");
      for (const address of to) {
        await socket.send(request, { transport: "udp", ...address }).catch(() => {});
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const location = await Promise.race([
        found.promise,
        new Promise<undefined>((resolve) => timer = setTimeout(() => resolve(undefined), wait)),
      ]);
      clearTimeout(timer);
      if (location) return location;
    }
    throw new PortMapError(`UPnP: no answer to a search from ${target.gateway}`);
  } finally {
    done = true;
    socket.close();
    await receiving;
  }
}

/** A bounded HTTP exchange with the gateway; null when it fails or is too big. */
async function httpText(
  url: URL,
  init: RequestInit,
  signal?: AbortSignal,
): Promise<{ status: number; text: string } | null> {
  const timeout = AbortSignal.timeout(UPNP_HTTP_TIMEOUT_MS);
  try {
    const response = await fetch(url, {
      ...init,
      redirect: "manual",
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
    if (!response.body) return { status: response.status, text: "" };
    const bytes = await readAtMost(response.body, UPNP_MAX_DOCUMENT_BYTES);
    if (bytes === null) return null;
    return { status: response.status, text: new TextDecoder().decode(bytes) };
  } catch {
    return null;
  }
}

async function call(
  control: IgdControl,
  soap: SoapCall,
  action: string,
  fields: readonly string[],
  signal?: AbortSignal,
) {
  const answer = await httpText(control.url, {
    method: "POST",
    headers: { "content-type": 'text/xml; charset="utf-8"', soapaction: soap.action },
    body: soap.body,
  }, signal);
  if (answer === null) throw new PortMapError(`UPnP: ${action}: no answer from ${control.url}`);
  const parsed = parseSoapAnswer(answer.status, answer.text, action, fields);
  if (!parsed) {
    throw new PortMapError(`UPnP: ${action}: an answer that is not one (${answer.status})`);
  }
  if (!parsed.ok) {
    throw new PortMapError(
      `UPnP: ${action}: ${
        UPNP_ERRORS[parsed.code] ?? parsed.description ?? "error"
      } (${parsed.code})`,
      parsed.code,
    );
  }
  return parsed.values;
}

/**
 * Maps UDP `internalPort` (on `internalClient`, our address on the
 * gateway's network) for `lifetime` seconds (more than 0: a permanent
 * mapping would outlive a crashed worker): the same external port first,
 * then, if that one is taken (718), one random port.
 *
 * @throws {PortMapError} when the gateway refuses or does not answer
 */
export async function mapUpnp(
  control: IgdControl,
  internalClient: string,
  internalPort: number,
  lifetime: number,
  signal?: AbortSignal,
  random: () => number = Math.random,
): Promise<UpnpMapping> {
  if (lifetime <= 0) throw new RangeError("Cannot map with UPnP for ever: give a lifetime");
  const address = await call(
    control,
    encodeGetExternalIp(control.serviceType),
    "GetExternalIPAddress",
    ["NewExternalIPAddress"],
    signal,
  );
  const externalIp = parseIpv4(address.NewExternalIPAddress);
  if (!externalIp) throw new PortMapError("UPnP: the gateway has no external IPv4 address");
  const tryPort = async (externalPort: number) => {
    await call(
      control,
      encodeAddPortMapping({
        serviceType: control.serviceType,
        internalClient,
        internalPort,
        externalPort,
        lifetime,
      }),
      "AddPortMapping",
      [],
      signal,
    );
    return externalPort;
  };
  let externalPort: number;
  try {
    externalPort = await tryPort(internalPort);
  } catch (error) {
    if (!(error instanceof PortMapError) || error.result !== 718) throw error;
    externalPort = await tryPort(1024 + Math.floor(random() * (65536 - 1024)));
  }
  return { protocol: "upnp", externalIp, externalPort, internalPort, lifetime, epoch: 0, control };
}

/** Deletes the UDP mapping of `externalPort`. @throws {PortMapError} when it cannot */
export async function unmapUpnp(
  control: IgdControl,
  externalPort: number,
  signal?: AbortSignal,
): Promise<void> {
  await call(
    control,
    encodeDeletePortMapping(control.serviceType, externalPort),
    "DeletePortMapping",
    [],
    signal,
  );
}
