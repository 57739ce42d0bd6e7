/**
 * The hole-punching lab shared by the test and the benchmark: eleven
 * workers behind every kind of NAT the lab builds, all connecting to all,
 * and what each pair ended with. Routers filter unsolicited input or not
 * (`RouterKind`); every NAT sits behind a transit router of its own but
 * eim-2 and eim-3, which share one (one router between them, three between
 * any other two NATs); double-1 is behind a home NAT behind a carrier NAT.
 */

import { type LogLine, type Proc, waitFor } from "./_helpers.ts";
import { type LabHost, type NatKind, NetLab, PUBLIC_IP } from "./_netlab.ts";

/** Routers that drop unsolicited input, routers that do not, or both (alternating). */
export type RouterKind = "filtering" | "non-filtering" | "mixed";

/** Where each worker sits. */
export const LAB_WORKERS: {
  id: string;
  kind: NatKind | "public" | "double" | "split" | "mapped" | "home";
  /** Dual-stack: a global IPv6 address behind a stateful firewall too. */
  v6?: true;
}[] = [
  { id: "eim-1", kind: "eim", v6: true },
  { id: "eim-2", kind: "eim" },
  { id: "eim-3", kind: "eim" },
  { id: "double-1", kind: "double" },
  { id: "edm-1", kind: "edm", v6: true },
  { id: "edm-2", kind: "edm", v6: true },
  { id: "cone-1", kind: "fullcone" },
  { id: "public-1", kind: "public" },
  { id: "shared-1", kind: "eim" },
  { id: "shared-2", kind: "eim" },
  { id: "blocked-1", kind: "block-udp" },
];

/**
 * Workers built only when a run names them: split-1 is behind an
 * endpoint-independent NAT whose UDP leaves from another public address
 * than its TCP (Cloud NAT with several IPs), so the rendezvous cannot vouch
 * for its public candidate.
 */
export const EXTRA_LAB_WORKERS: typeof LAB_WORKERS = [
  { id: "split-1", kind: "split" },
  // Behind endpoint-dependent routers that map ports (miniupnpd: PCP, NAT-PMP, UPnP-IGD).
  { id: "mapped-1", kind: "mapped" },
  { id: "mapped-2", kind: "mapped" },
  // Two homes (endpoint-independent) behind one carrier NAT of their own.
  { id: "home-1", kind: "home" },
  { id: "home-2", kind: "home" },
];

/** The workers of the lab test: the bench's eleven but eim-3 and double-1 (two cores, a whole suite beside it). */
export const TEST_WORKERS = LAB_WORKERS.map((w) => w.id).filter((id) =>
  id !== "eim-3" && id !== "double-1"
);

/**
 * What the pair can reach at best, from the NAT behaviours alone. eim-2 and
 * eim-3 share a segment, so even a TTL-2 packet of one reaches the other's
 * router: when neither router filters its input, whichever side's packet
 * comes first is taken by the other router, and its own side's mapping then
 * clashes with it and moves (a Linux NAT that accepts input on the link the
 * two share cannot be punched); with one router that filters, the rerolled
 * round where the other side opens first goes direct.
 */
export function expectedPath(
  a: string,
  b: string,
  routers: RouterKind = "filtering",
): "direct" | "relay" {
  const worker = (id: string) => [...LAB_WORKERS, ...EXTRA_LAB_WORKERS].find((w) => w.id === id)!;
  const [ka, kb] = [worker(a).kind, worker(b).kind];
  if (ka === "block-udp" || kb === "block-udp") return "relay";
  // A side whose router maps: reachable from anywhere.
  if (ka === "mapped" || kb === "mapped") return "direct";
  // Two homes behind one carrier NAT that does not hairpin.
  if (ka === "home" && kb === "home") return "relay";
  // Not vouched for: no hard side opens toward it, so an endpoint-dependent peer stays relayed.
  if ((ka === "split" && kb === "edm") || (ka === "edm" && kb === "split")) return "relay";
  const shared = new Set([a, b]);
  if (routers === "non-filtering" && shared.has("eim-2") && shared.has("eim-3")) return "relay";
  // Two endpoint-dependent NATs: relayed over IPv4, direct over IPv6 when both have it.
  if (ka === "edm" && kb === "edm") return worker(a).v6 && worker(b).v6 ? "direct" : "relay";
  return "direct";
}

/** `lines` (a worker's log) say it heard `peer` over the direct path (a hello). */
export function hearsDirect(lines: readonly LogLine[], peer: string): boolean {
  return lines.some((l) =>
    l.message === "peer message received" && l.peer_id === peer && l.path === "direct"
  );
}

/**
 * `lines` (a worker's log) on its link to `peer` going direct: ms from its
 * first punch, and on which introduction (1: the first); null if it did not.
 */
export function directPath(
  lines: readonly LogLine[],
  peer: string,
): { ms: number; attempts: number; round: number } | null {
  const direct = lines.find((l) => l.message === "peer path direct" && l.peer_id === peer);
  return direct
    ? {
      ms: Number(direct.ms_since_punch),
      attempts: Number(direct.attempts),
      round: Number(direct.round ?? 0),
    }
    : null;
}

/**
 * A pair of lab workers: direct both ways (each heard the other directly),
 * how long after the punch the later side's link went direct, and on which
 * introduction; null while not.
 */
export function pairDirect(
  a: { lines: readonly LogLine[] },
  b: { lines: readonly LogLine[] },
  [idA, idB]: readonly [string, string],
): { ms: number; attempts: number } | null {
  const [ab, ba] = [directPath(a.lines, idB), directPath(b.lines, idA)];
  if (!ab || !ba || !hearsDirect(a.lines, idB) || !hearsDirect(b.lines, idA)) return null;
  return { ms: Math.max(ab.ms, ba.ms), attempts: Math.max(ab.attempts, ba.attempts) };
}

/** One pair's outcome, seen from `from`. */
export interface PairResult {
  from: string;
  to: string;
  expected: "direct" | "relay";
  /** The path the last messages from `to` arrived on. */
  path: "direct" | "relay" | "none";
  messages: number;
  /** ms from the first punch to the direct path, if it went direct. */
  directMs: number | null;
  /** Punch attempts before the direct path (1 = first try). */
  attempts: number | null;
  /** The round of that attempt that went direct (0: the introduction's, then rerolls). */
  round: number | null;
  /** ms from this side's connect request to its first relayed frame. */
  firstRelayMs: number | null;
  strategy: string | null;
  /** Times this side lost a direct path to the peer. */
  lost: number;
  /** This side's link events for the pair (for failure messages). */
  events: string[];
  /** With a transfer: whether bytes sent through `PEER_FORWARD` came back hashed the same, and how long it took. */
  transfer?: { ok: boolean; ms: number | null; error?: string };
}

export interface LabRun {
  results: PairResult[];
  seconds: number;
  /** The rendezvous's warnings and errors, and how it ended, for failure messages. */
  rendezvousTrouble: string[];
}

/**
 * Builds the lab, runs every worker for `seconds`, and reads each pair's
 * outcome from the workers' logs. With `holdMs`, a pair that goes direct
 * is settled only once it still receives on the direct path `holdMs` after
 * its first direct message (so keepalives and loss detection have run).
 */
export async function runPunchLab(
  seconds: number,
  holdMs = 0,
  transferBytes = 0,
  routers: RouterKind = "filtering",
  env: Record<string, string> = {},
  only?: string[],
  /** Two rendezvous instances over one Redis: workers alternate between them. */
  fleet = false,
): Promise<LabRun> {
  const WORKERS = only
    ? [...LAB_WORKERS, ...EXTRA_LAB_WORKERS].filter((w) => only.includes(w.id))
    : LAB_WORKERS;
  const lab = await NetLab.create();
  const procs = new Map<string, Proc>();
  const started = Date.now();
  try {
    const hosts = new Map<string, LabHost>();
    let n = 0;
    const filtering = () => routers === "filtering" || (routers === "mixed" && n++ % 2 === 0);
    const nat = (kind: NatKind, hosts = 1, options = {}) =>
      lab.addNatted(kind, hosts, { filtering: filtering(), ...options });
    const [e1] = await nat("eim", 1, { ipv6: true });
    const segment = await lab.addTransit();
    const [e2] = await nat("eim", 1, { segment });
    const [e3] = await nat("eim", 1, { segment });
    const carrier = await lab.addCarrierNat({ filtering: filtering() });
    const [x1] = await nat("eim", 1, { segment: carrier });
    const [d1] = await nat("edm", 1, { ipv6: true });
    const [d2] = await nat("edm", 1, { ipv6: true });
    const [c1] = await nat("fullcone");
    const p1 = await lab.addPublicHost({ segment: await lab.addTransit() });
    const [s1, s2] = await nat("eim", 2);
    const [u1] = await nat("block-udp");
    const split = WORKERS.some((w) => w.kind === "split")
      ? (await nat("eim", 1, { splitUdp: true }))[0]
      : undefined;
    const extra: Record<string, LabHost> = {};
    for (const w of WORKERS.filter((w) => w.kind === "mapped")) {
      extra[w.id] = (await nat("edm", 1, { portMapping: true }))[0];
    }
    const homes = WORKERS.filter((w) => w.kind === "home");
    if (homes.length > 0) {
      const homeCarrier = await lab.addCarrierNat({ filtering: filtering() });
      for (const w of homes) extra[w.id] = (await nat("eim", 1, { segment: homeCarrier }))[0];
    }
    for (
      const [id, host] of Object.entries({
        "eim-1": e1,
        "eim-2": e2,
        "eim-3": e3,
        "double-1": x1,
        "edm-1": d1,
        "edm-2": d2,
        "cone-1": c1,
        "public-1": p1,
        "shared-1": s1,
        "shared-2": s2,
        "blocked-1": u1,
        ...(split ? { "split-1": split } : {}),
        ...extra,
      })
    ) hosts.set(id, host);

    const rendezvous = await lab.startServices({ fleet });
    // With a transfer, each host runs a hashing TCP service on 9000 that its
    // worker exposes, and forwards 9100 + i to peer i's 9000.
    const forwardPort = (peer: string) => 9100 + WORKERS.findIndex((w) => w.id === peer);
    if (transferBytes > 0) {
      const services = WORKERS.map(({ id }) =>
        lab.deno(hosts.get(id)!.ns, [
          "run",
          "--allow-all",
          "tests/_stream_tools.ts",
          "hash-server",
          "9000",
        ])
      );
      for (const service of services) await service.waitForLog("listening", () => true, 20_000);
    }
    for (const { id } of WORKERS) {
      const forwards = WORKERS.filter((w) => w.id !== id)
        .map((w) => `${forwardPort(w.id)}:${w.id}:9000`).join(",");
      procs.set(
        id,
        lab.worker(hosts.get(id)!, id, {
          PEER_AUTOCONNECT: "true",
          PEER_HELLO_SEC: "0.5",
          ...(fleet
            ? { RENDEZVOUS_SERVICE_URL: `http://${PUBLIC_IP}:${8080 + (procs.size % 2)}` }
            : {}),
          ...env,
          ...(transferBytes > 0 ? { PEER_EXPOSE: "9000", PEER_FORWARD: forwards } : {}),
        }),
      );
    }
    // Everyone registered, then the lab runs for `seconds`.
    for (const [id] of procs) {
      await Promise.any(
        lab.fleetInstances.map((r) =>
          r.waitForLog("worker registered", (l) => l.worker_id === id, 20_000)
        ),
      );
    }
    // Until every pair got where it can (three messages each way, the last
    // on the expected path) or the time is up; the caller judges the rest.
    const settled = () =>
      WORKERS.every((a) =>
        WORKERS.every((b) => {
          if (a.id === b.id) return true;
          const mine = procs.get(a.id)!.lines.filter((l) => l.peer_id === b.id);
          const received = mine.filter((l) => l.message === "peer message received");
          const last = received.at(-1);
          if (received.length < 3 || last!.path !== expectedPath(a.id, b.id, routers)) return false;
          const firstDirect = received.find((l) => l.path === "direct");
          return !firstDirect ||
            Date.parse(String(last!.time)) - Date.parse(String(firstDirect.time)) >= holdMs;
        })
      );
    await waitFor(settled, "every pair to settle", seconds * 1000, 250).catch(() => {});
    // Every worker sends to every other at once, through its forwards.
    const transfers = new Map<string, { ok: boolean; ms: number | null; error?: string }>();
    if (transferBytes > 0) {
      const senders = WORKERS.map(({ id }) => {
        const ports = WORKERS.filter((w) => w.id !== id).map((w) => forwardPort(w.id));
        return {
          id,
          proc: lab.deno(hosts.get(id)!.ns, [
            "run",
            "--allow-all",
            "tests/_stream_tools.ts",
            "send-many",
            ports.join(","),
            String(transferBytes),
          ]),
        };
      });
      for (const { id, proc } of senders) {
        await proc.waitForLog("transfers done", () => true, 120_000).catch(() => {});
        for (const line of proc.lines.filter((l) => l.message === "transfer")) {
          const peer = WORKERS[(line.port as number) - 9100].id;
          transfers.set(`${id}>${peer}`, {
            ok: line.ok === true,
            ms: typeof line.ms === "number" ? Math.round(line.ms) : null,
            error: (line.error ?? (line.ok ? undefined : `answer "${line.answer}"`)) as
              | string
              | undefined,
          });
        }
      }
    }
    const results: PairResult[] = [];
    for (const a of WORKERS) {
      const lines = procs.get(a.id)!.lines;
      for (const b of WORKERS) {
        if (a.id === b.id) continue;
        const mine = lines.filter((l) => l.peer_id === b.id);
        const received = mine.filter((l) => l.message === "peer message received");
        const direct = directPath(mine, b.id);
        const firstRelay = mine.find((l) => l.message === "peer first relayed frame sent");
        const punch = mine.find((l) => l.message === "peer punch started");
        results.push({
          from: a.id,
          to: b.id,
          expected: expectedPath(a.id, b.id, routers),
          path: (received.at(-1)?.path as "direct" | "relay" | undefined) ?? "none",
          messages: received.length,
          directMs: direct?.ms ?? null,
          attempts: direct?.attempts ?? null,
          round: direct?.round ?? null,
          firstRelayMs: typeof firstRelay?.ms_since_connect === "number"
            ? firstRelay.ms_since_connect
            : null,
          strategy: punch ? String(punch.strategy) : null,
          lost: mine.filter((l) => l.message === "peer direct path lost").length,
          // The pair's link events, then both workers' own trouble (sessions, errors).
          events: [
            ...mine.filter((l) => l.message !== "peer message received"),
            ...[a.id, b.id].flatMap((id) =>
              procs.get(id)!.lines.filter((l) =>
                l.peer_id === undefined &&
                (l.severity !== "INFO" || /rendezvous|stopped|exit/.test(String(l.message)))
              ).map((l): Record<string, unknown> => ({ ...l, of: id }))
            ),
          ].map((l) => {
            const { severity: _s, service: _v, worker_id: _w, peer_id: _p, ...rest } = l;
            return JSON.stringify(rest);
          }),
          ...(transferBytes > 0
            ? {
              transfer: transfers.get(`${a.id}>${b.id}`) ??
                { ok: false, ms: null, error: "no result" },
            }
            : {}),
        });
      }
    }
    const rendezvousTrouble = rendezvous.lines
      .filter((l) => l.severity !== "INFO" || /stopped|closing/.test(l.message))
      .map((l) => JSON.stringify(l));
    const status = await Promise.race([rendezvous.status, Promise.resolve(undefined)]);
    if (status) rendezvousTrouble.push(`rendezvous exited early: ${JSON.stringify(status)}`);
    return { results, seconds: (Date.now() - started) / 1000, rendezvousTrouble };
  } finally {
    await lab.destroy();
  }
}
