/**
 * The seed's listing (`GET /debug/list_workers`), streamed: a snapshot of
 * the registry serialized in slices with a turn of the event loop between
 * them, so a listing of a whole fleet never stalls the sessions.
 *
 * @module
 */

import type { WorkerListingEntry } from "../protocol/messages.ts";
import { JSON_HEADERS } from "./http.ts";
import type { WorkerRecord } from "./registry.ts";

/** Workers serialized per turn of the event loop. */
const LIST_SLICE = 250;

const encoder = new TextEncoder();

/** What this instance knows of a session of its own beyond its record. */
export interface LocalSession {
  readonly socket: WebSocket;
  readonly lastSeen: number;
}

/** One worker as the listing shows it (`local`: its session, when this instance holds it). */
export function listEntry(record: WorkerRecord, local?: LocalSession): WorkerListingEntry {
  return {
    websocket_observed_ip: record.observed_ip,
    websocket_observed_port: record.observed_port,
    http_reported_public_ip: record.http_reported_public_ip,
    // A record lives only while its session does; a local one can say more.
    websocket_connected: local ? local.socket.readyState === WebSocket.OPEN : true,
    connected_at: new Date(record.connected_at).toISOString(),
    last_seen: local ? new Date(local.lastSeen).toISOString() : null,
    udp_endpoint: record.udp_endpoint,
    group: record.group,
    peer_paths: record.peer_paths,
    key: record.key,
    key_fingerprint: record.key_fingerprint,
  };
}

/** The listing of `records` as a streamed JSON response (`localOf`: this instance's sessions). */
export function listingResponse(
  records: readonly WorkerRecord[],
  localOf: (record: WorkerRecord) => LocalSession | undefined,
): Response {
  let index = 0;
  const body = new ReadableStream<Uint8Array>({
    start: (controller) => {
      controller.enqueue(
        encoder.encode(`{"connected_workers_count":${records.length},"workers":{`),
      );
    },
    // Each slice is pulled after the previous one was written to the
    // socket, an I/O turn in between: other sessions run meanwhile.
    pull: (controller) => {
      const end = Math.min(records.length, index + LIST_SLICE);
      let chunk = "";
      for (; index < end; index++) {
        const record = records[index];
        chunk += `${index === 0 ? "" : ","}${JSON.stringify(record.worker_id)}:${
          JSON.stringify(listEntry(record, localOf(record)))
        }`;
      }
      if (index >= records.length) {
        controller.enqueue(encoder.encode(chunk + "}}"));
        controller.close();
      } else {
        controller.enqueue(encoder.encode(chunk));
      }
    },
  });
  return new Response(body, { headers: JSON_HEADERS });
}
