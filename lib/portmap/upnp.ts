/**
 * UPnP-IGD messages: the SSDP search a client multicasts for an Internet
 * Gateway Device, the gateway's answer, its device description (where the
 * WANIPConnection or WANPPPConnection service's control URL is), and the
 * SOAP calls that map a port (`AddPortMapping`, `DeletePortMapping`,
 * `GetExternalIPAddress`) with their answers. Pure: text in, values out;
 * the gateway is on the network, so anything malformed, oversized or
 * pointing elsewhere is `undefined`, never an exception. No XML parser:
 * these documents are small and flat, and only a few named elements are
 * read (bounded inputs, no backtracking-prone patterns).
 *
 * @module
 */

import { checkMapping } from "./_mapping.ts";

/** SSDP's multicast group and port (UPnP Device Architecture 1.1 §1.3). */
export const SSDP_ADDRESS = "239.255.255.250";
export const SSDP_PORT = 1900;
/** What we search for: an IGD, version 1 (version 2 gateways answer it too). */
export const IGD_SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
/** Largest SSDP answer, description and SOAP answer read. */
export const UPNP_MAX_SSDP_BYTES = 2048;
export const UPNP_MAX_DOCUMENT_BYTES = 64 * 1024;

/** The services that map ports, best first. */
export const WAN_SERVICES: readonly string[] = [
  "urn:schemas-upnp-org:service:WANIPConnection:2",
  "urn:schemas-upnp-org:service:WANIPConnection:1",
  "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/** UPnP error codes an `AddPortMapping` may answer (IGD WANIPConnection:2 §2.5). */
export const UPNP_ERRORS: Readonly<Record<number, string>> = {
  401: "invalid action",
  402: "invalid arguments",
  501: "action failed",
  606: "action not authorized",
  714: "no such entry in array",
  715: "wildcard not permitted in source IP",
  716: "wildcard not permitted in external port",
  718: "conflict in mapping entry",
  724: "same port values required",
  725: "only permanent leases supported",
  726: "remote host only supports wildcard",
  727: "external port only supports wildcard",
  728: "no port maps available",
  729: "conflict with other mechanism",
};

const encoder = new TextEncoder();

/** The M-SEARCH request (UDA 1.1 §1.3.2), `mx` seconds for answers. */
export function encodeSearch(mx = 1): Uint8Array {
  return encoder.encode(
    "M-SEARCH * HTTP/1.1\r\n" +
      `HOST: ${SSDP_ADDRESS}:${SSDP_PORT}\r\n` +
      'MAN: "ssdp:discover"\r\n' +
      `MX: ${mx}\r\n` +
      `ST: ${IGD_SEARCH_TARGET}\r\n` +
      "\r\n",
  );
}

/**
 * The description URL an SSDP answer from `from` gives, when it is an IGD's
 * answer and the URL is plain HTTP on `from` itself (a LOCATION elsewhere —
 * another host, another scheme — is not followed: an answer must not send
 * us to a third party).
 */
export function parseSearchResponse(bytes: Uint8Array, from: string): URL | undefined {
  if (bytes.length === 0 || bytes.length > UPNP_MAX_SSDP_BYTES) return undefined;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
  const lines = text.split("\r\n");
  if (!/^HTTP\/1\.[01] 200\b/.test(lines[0] ?? "")) return undefined;
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) {
      headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
  }
  const st = headers.get("st") ?? "";
  if (!st.startsWith("urn:schemas-upnp-org:device:InternetGatewayDevice:")) return undefined;
  let location: URL;
  try {
    location = new URL(headers.get("location") ?? "");
  } catch {
    return undefined;
  }
  if (location.protocol !== "http:" || location.hostname !== from) return undefined;
  return location;
}

/** The control URL of a port-mapping service, and which service it is. */
export interface IgdControl {
  /** Absolute URL of the service's control endpoint (on the gateway). */
  url: URL;
  /** One of {@linkcode WAN_SERVICES}. */
  serviceType: string;
}

/** The text of the first `<name>` element in `xml` (no attributes expected), trimmed. */
function element(xml: string, name: string): string | undefined {
  const open = xml.indexOf(`<${name}>`);
  if (open < 0) return undefined;
  const start = open + name.length + 2;
  const close = xml.indexOf(`</${name}>`, start);
  if (close < 0) return undefined;
  return unescapeXml(xml.slice(start, close).trim());
}

function unescapeXml(text: string): string {
  return text.replace(
    /&(lt|gt|quot|apos|amp);/g,
    (_, e: string) => ({ lt: "<", gt: ">", quot: '"', apos: "'", amp: "&" })[e]!,
  );
}

function escapeXml(text: string): string {
  return text.replace(
    /[<>&'"]/g,
    (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&apos;", '"': "&quot;" })[c]!,
  );
}

/**
 * The best port-mapping service a device description names, its control
 * URL resolved against `location` (or the description's `URLBase`). Only a
 * control URL on the description's own host and port is taken.
 */
export function parseDescription(xml: string, location: URL): IgdControl | undefined {
  if (xml.length > UPNP_MAX_DOCUMENT_BYTES) return undefined;
  const base = element(xml, "URLBase");
  let baseUrl = location;
  if (base) {
    try {
      baseUrl = new URL(base);
    } catch {
      return undefined;
    }
  }
  const services: { type: string; control: string }[] = [];
  let at = 0;
  while (services.length < 64) {
    const open = xml.indexOf("<service>", at);
    if (open < 0) break;
    const close = xml.indexOf("</service>", open);
    if (close < 0) break;
    const body = xml.slice(open, close);
    const type = element(body, "serviceType");
    const control = element(body, "controlURL");
    if (type && control) services.push({ type, control });
    at = close + 10;
  }
  for (const wanted of WAN_SERVICES) {
    const found = services.find((s) => s.type === wanted);
    if (!found) continue;
    let url: URL;
    try {
      url = new URL(found.control, baseUrl);
    } catch {
      return undefined;
    }
    if (url.protocol !== "http:" || url.host !== location.host) return undefined;
    return { url, serviceType: wanted };
  }
  return undefined;
}

/** A SOAP call: its `SOAPAction` header and body. */
export interface SoapCall {
  action: string;
  body: string;
}

function soap(serviceType: string, action: string, args: [string, string | number][]): SoapCall {
  const params = args.map(([k, v]) => `<${k}>${escapeXml(String(v))}</${k}>`).join("");
  return {
    action: `"${serviceType}#${action}"`,
    body: '<?xml version="1.0"?>\r\n' +
      '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" ' +
      's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">' +
      `<s:Body><u:${action} xmlns:u="${serviceType}">${params}</u:${action}></s:Body>` +
      "</s:Envelope>\r\n",
  };
}

/** A UDP mapping to check and encode. */
export interface UpnpMapRequest {
  serviceType: string;
  /** Our address on the gateway's network: where the mapping points. */
  internalClient: string;
  internalPort: number;
  /** The public port asked for (the gateway may say 718: taken). */
  externalPort: number;
  /** Seconds; 0 asks for a permanent one (avoided: a crashed worker's would stay). */
  lifetime: number;
  description?: string;
}

/**
 * `AddPortMapping` for UDP.
 *
 * @throws {RangeError} when a port or the lifetime is out of range
 */
export function encodeAddPortMapping(r: UpnpMapRequest): SoapCall {
  checkMapping("an AddPortMapping", r.internalPort, r.externalPort, r.lifetime);
  return soap(r.serviceType, "AddPortMapping", [
    ["NewRemoteHost", ""],
    ["NewExternalPort", r.externalPort],
    ["NewProtocol", "UDP"],
    ["NewInternalPort", r.internalPort],
    ["NewInternalClient", r.internalClient],
    ["NewEnabled", 1],
    ["NewPortMappingDescription", (r.description ?? "holepunch").slice(0, 64)],
    ["NewLeaseDuration", r.lifetime],
  ]);
}

/** `DeletePortMapping` for UDP `externalPort`. */
export function encodeDeletePortMapping(serviceType: string, externalPort: number): SoapCall {
  checkMapping("a DeletePortMapping", 0, externalPort, 0);
  return soap(serviceType, "DeletePortMapping", [
    ["NewRemoteHost", ""],
    ["NewExternalPort", externalPort],
    ["NewProtocol", "UDP"],
  ]);
}

/** `GetExternalIPAddress`. */
export function encodeGetExternalIp(serviceType: string): SoapCall {
  return soap(serviceType, "GetExternalIPAddress", []);
}

/** A SOAP answer: success (with the values read), or the UPnP error code. */
export type SoapAnswer =
  | { ok: true; values: Record<string, string> }
  | { ok: false; code: number; description: string };

/**
 * Reads a SOAP answer to `action` (HTTP `status`): the named `fields` of a
 * success, or a fault's UPnP error code. Undefined when it is neither.
 */
export function parseSoapAnswer(
  status: number,
  xml: string,
  action: string,
  fields: readonly string[] = [],
): SoapAnswer | undefined {
  if (xml.length > UPNP_MAX_DOCUMENT_BYTES) return undefined;
  if (status === 200) {
    if (!new RegExp(`<([A-Za-z0-9_]+:)?${action}Response[\\s>]`).test(xml)) return undefined;
    const values: Record<string, string> = {};
    for (const field of fields) {
      const value = element(xml, field);
      if (value === undefined) return undefined;
      values[field] = value;
    }
    return { ok: true, values };
  }
  if (status !== 500) return undefined;
  const code = Number(element(xml, "errorCode"));
  if (!Number.isInteger(code) || code < 0) return undefined;
  return { ok: false, code, description: (element(xml, "errorDescription") ?? "").slice(0, 200) };
}

/** An IPv4 address in dotted form, or undefined. */
export function parseIpv4(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
  }
  return parts.map(Number).join(".");
}
