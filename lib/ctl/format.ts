/**
 * What `deno task ctl` prints, from a worker's status JSON (`GET /`): pure
 * functions, so the layout is tested without a worker.
 *
 * @module
 */

import { MAPPING_PROTOCOL_NAMES } from "../protocol/messages.ts";
import { formatTable } from "../core/table.ts";
import type { PeerView } from "../worker/control.ts";
import type { WorkerStatus } from "../worker/health.ts";
import type { Pong } from "../worker/ping.ts";

/** One peer link as the status shows it. */
interface LinkView {
  path?: string;
  direct_to?: string | null;
  rtt_ms?: number | null;
  nat?: string | null;
}

/** Bytes, readable: 0 B, 1.2 KB, 3.4 MB, 5.6 GB. */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = n / 1000;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** The gateway's port mapping in a line: held, or what the gateway answered. */
export function portMapLine(pm: NonNullable<WorkerStatus["port_mapping"]>): string {
  if (pm.gateway === null) return "no gateway to ask";
  const m = pm.mapping;
  if (m) {
    const name = MAPPING_PROTOCOL_NAMES[m.protocol];
    const behind = pm.double_nat ? ", but the gateway is behind another NAT" : "";
    return `${m.externalIp}:${m.externalPort} by ${name} on ${pm.gateway}, ${m.lifetime} s${behind}`;
  }
  const answered = Object.values(pm.offered).some((o) => o === true);
  const probing = Object.values(pm.offered).some((o) => o === null);
  return probing
    ? `asking ${pm.gateway}`
    : answered
    ? `none: ${pm.gateway} refused (${pm.counts.failed} refusals)`
    : `none: ${pm.gateway} answered no probe`;
}

/** `ctl status`: the worker, its rendezvous session and UDP endpoint, then a line per peer. */
export function formatStatus(status: WorkerStatus): string {
  const udp = status.udp as {
    public?: { ip: string; port: number } | null;
    nat?: { mapping?: string };
  } | null;
  const lines = [
    `worker   ${status.worker_id} (${status.version})`,
    `key      ${status.key.fingerprint}`,
    `rendezvous ${status.rendezvous.status}${
      status.rendezvous.observed_ip ? `, seen from ${status.rendezvous.observed_ip}` : ""
    }`,
    `udp      ${udp?.public ? `${udp.public.ip}:${udp.public.port}` : "none"}, NAT ${
      udp?.nat?.mapping ?? "unknown"
    }${status.udp_io === "ffi" ? ", batched" : status.udp_io === "deno" ? ", Deno's sockets" : ""}`,
    ...(status.port_mapping ? [`portmap  ${portMapLine(status.port_mapping)}`] : []),
    "",
  ];
  const peers = Object.entries(status.peers) as [string, LinkView & Record<string, unknown>][];
  if (peers.length === 0) return lines.join("\n") + "no peers yet";
  const rows = [["peer", "path", "rtt", "sent", "received", "idle"]];
  for (const [id, link] of peers.sort(([a], [b]) => a.localeCompare(b))) {
    const bytes = link.bytes as { sent?: number; received?: number } | undefined;
    const idle = typeof link.idle_ms === "number" ? `${(link.idle_ms / 1000).toFixed(0)} s` : "-";
    rows.push([
      id,
      link.path === "direct" ? `direct ${link.direct_to ?? ""}`.trim() : String(link.path ?? "-"),
      typeof link.rtt_ms === "number" ? `${link.rtt_ms} ms` : "-",
      bytes?.sent === undefined ? "-" : formatBytes(bytes.sent),
      bytes?.received === undefined ? "-" : formatBytes(bytes.received),
      idle,
    ]);
  }
  return lines.join("\n") + formatTable(rows);
}

/** `ctl peers`: the group as this worker knows it. */
export function formatPeers(peers: PeerView[]): string {
  if (peers.length === 0) return "no peers known";
  const rows = [["peer", "nat", "endpoint", "key", "path"]];
  for (const p of peers.sort((a, b) => a.worker_id.localeCompare(b.worker_id))) {
    const path = p.path === "direct" ? `direct ${p.direct_to ?? ""}`.trim() : p.path ?? "-";
    rows.push([p.worker_id, p.nat_mapping ?? "-", p.public ?? "-", p.fingerprint ?? "-", path]);
  }
  return formatTable(rows);
}

/** `ctl forwards`: each `PEER_FORWARD` and `PEER_EXPOSE` with its connections and bytes. */
export function formatForwards(status: WorkerStatus): string {
  const rows = [["kind", "what", "open", "total", "refused", "to peer", "from peer"]];
  for (
    const [kind, entries] of [["forward", status.forwards], ["expose", status.exposes]] as const
  ) {
    for (const [what, s] of Object.entries(entries)) {
      const stats = s as unknown as Record<string, number>;
      rows.push([
        kind,
        what,
        String(stats.open ?? 0),
        String(stats.connections ?? 0),
        String(stats.refused ?? 0),
        formatBytes(stats.bytes_out ?? 0),
        formatBytes(stats.bytes_in ?? 0),
      ]);
    }
  }
  return rows.length === 1 ? "no PEER_FORWARD or PEER_EXPOSE" : formatTable(rows);
}

/** One line of `ctl ping`, as `tailscale ping` says it. */
export function formatPong(peerId: string, pong: Pong & { to: string | null }): string {
  const via = pong.path === "direct" && pong.to ? pong.to : pong.path;
  return `pong from ${peerId} via ${via} in ${pong.ms.toFixed(1)} ms`;
}
