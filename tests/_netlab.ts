/**
 * A NAT lab on one machine: network namespaces joined by veth pairs and
 * bridges, with real Linux NAT (iptables) in front of private hosts, and
 * routers between the NATs as on the internet.
 *
 *   core ns "pub": bridge 198.51.100.1/24, routes to every transit segment
 *   (rendezvous, STUN servers)
 *     ├─ transit router ns: 198.51.100.(200+j), segment 203.0.113.(16j)/28
 *     │    └─ NAT router ns: wan 203.0.113.(16j+2…), LAN 192.168.(10+i).1/24, NAT of a kind
 *     │         └─ host ns (one or more): 192.168.(10+i).2…
 *     ├─ transit router ns ─ carrier NAT ns (LAN 100.64.k.1/24) ─ home NAT ns ─ host ns
 *     └─ public host ns: 198.51.100.(100+i), no NAT
 *
 * Each NAT gets a transit router of its own unless it is given one to share,
 * so between two NATs there are three routers (its transit, the core, the
 * peer's transit): a packet that leaves its NAT with a TTL of 3 or less dies
 * before the peer's NAT. Two NATs that share a transit router have one
 * router between them. Routers drop unsolicited input to themselves
 * (`filtering`, as home gateways and Cloud NAT do) or not (Docker/Kubernetes
 * SNAT, VPS hosts without a firewall).
 *
 * Every address lives inside namespaces the lab made; nothing is routed to
 * the machine's own network. `destroy()` removes every namespace (and with
 * them every interface and rule), also after a failure.
 */

import { DENO, Proc } from "./_helpers.ts";
import { redisServerArgs } from "./_redis.ts";

/** NAT behaviours the lab can build. */
export type NatKind =
  /** MASQUERADE: endpoint-independent mapping, address-and-port-dependent filtering. */
  | "eim"
  /** MASQUERADE --random-fully: a new port per destination (symmetric). */
  | "edm"
  /** NAT that forwards no UDP at all: only the relay can work. */
  | "block-udp"
  /** 1:1 NAT (DNAT + SNAT): endpoint-independent mapping and filtering. */
  | "fullcone";

/** Why the lab cannot run here, or undefined when it can. */
export async function netlabUnavailable(): Promise<string | undefined> {
  if (Deno.uid() !== 0) return "the NAT lab needs root (network namespaces, iptables)";
  for (const tool of ["ip", "iptables"]) {
    try {
      const out = await new Deno.Command(tool, { args: ["-V"], stdout: "null", stderr: "null" })
        .output();
      if (!out.success && tool === "ip") return `${tool} does not run`;
    } catch {
      return `${tool} not found (Debian packages iproute2, iptables)`;
    }
  }
  return undefined;
}

export const PUBLIC_IP = "198.51.100.1";

export interface LabHost {
  ns: string;
  /** The host's own address. */
  ip: string;
  /** The address the public side sees (the router's, behind a NAT). */
  publicIp: string;
  /** Its global IPv6 address, on a dual-stack LAN. */
  ip6?: string;
  /** Where its UDP leaves from, when not `publicIp` (`NatOptions.splitUdp`). */
  udpPublicIp?: string;
  /** The namespace of the NAT router in front of it, if any. */
  router?: string;
}

/** A segment routers attach their WAN to: a transit router's, or a carrier NAT's LAN. */
export interface Segment {
  /** The namespace that holds the segment's bridge (`seg`) and routes for it. */
  ns: string;
  /** The gateway's address on the segment: the WAN's default route. */
  gateway: string;
  /** The addresses handed out on it, in order. */
  addresses: string[];
  /** Its prefix length. */
  prefix: number;
  /** The public address of what is behind it, for a carrier NAT (else the WAN's own). */
  publicIp?: string;
  /** A transit segment's IPv6: its /48 (`2001:db8:j`), routed to it by the core. */
  v6?: string;
  /** A transit segment's router's address on the core (where the core routes to it). */
  core?: string;
}

/** Options for {@linkcode NetLab.addNatted}. */
export interface NatOptions {
  /** The router drops unsolicited input to itself. @default {true} */
  filtering?: boolean;
  /** Attach the WAN to this segment (a shared transit router, a carrier NAT) instead of a new transit router. */
  segment?: Segment;
  /**
   * IPv6 too (on a transit segment): global addresses for the LAN's hosts,
   * no NAT, and a stateful firewall on the router that lets in only what
   * answers traffic from inside (as home routers do).
   */
  ipv6?: boolean;
  /** With `ipv6`: the router also rewrites its LAN's IPv6 source addresses to its own (NAT66). */
  nat66?: boolean;
  /**
   * Two public addresses, as Cloud NAT with several IPs: UDP leaves from the
   * second (`LabHost.udpPublicIp`), everything else from the first, so the
   * rendezvous sees the WebSocket come from another address than STUN's.
   */
  splitUdp?: boolean;
  /**
   * The router runs miniupnpd (NAT-PMP, PCP and UPnP-IGD for its LAN) with
   * a public address of its own, `11.0.i.1` (miniupnpd maps nothing on a
   * documentation or private address): everything the LAN sends leaves from
   * it, and the core routes it back; `"upnp"` serves UPnP-IGD only,
   * `"nat-pmp"` NAT-PMP and PCP only, `"refuse"` UPnP-IGD that refuses every
   * mapping (miniupnpd answers a refused NAT-PMP or PCP request only after
   * trying every other port, about 100 s). (Transit segments only.)
   */
  portMapping?: boolean | "upnp" | "nat-pmp" | "refuse";
}

/** The DNAT rules miniupnpd holds in namespace `ns` now: one `host:port` per mapping. */
export async function miniupnpdMappings(ns: string): Promise<string[]> {
  const out = await new Deno.Command("ip", {
    args: ["netns", "exec", ns, "nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  return [...text.matchAll(/dport (\d+) dnat ip to (\S+)/g)].map((m) => `${m[1]} -> ${m[2]}`);
}

/** Why a mapping router cannot run here (root and the lab aside), or undefined. */
export async function portMappingUnavailable(): Promise<string | undefined> {
  for (const [tool, pkg] of [["miniupnpd", "miniupnpd"], ["nft", "nftables"]]) {
    try {
      await new Deno.Command(tool, { args: ["--version"], stdout: "null", stderr: "null" })
        .output();
    } catch {
      return `${tool} is not installed (Debian: apt-get install ${pkg})`;
    }
  }
  return undefined;
}

/** miniupnpd's chains (its nftables backend's defaults); NAT itself stays iptables'. */
export const MINIUPNPD_RULES = `table inet filter {
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }
  chain miniupnpd {
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
}
`;

export class NetLab {
  readonly prefix: string;
  readonly pub: string;
  #namespaces: string[] = [];
  #procs: Proc[] = [];
  /** Directories of the lab's daemons (miniupnpd's), removed on destroy. */
  #dirs: string[] = [];
  #next = 0;
  #transits = 0;
  #carriers = 0;

  private constructor(prefix: string) {
    this.prefix = prefix;
    this.pub = `${prefix}-pub`;
  }

  static async create(): Promise<NetLab> {
    const prefix = `hp${crypto.getRandomValues(new Uint16Array(1))[0].toString(16)}`;
    const lab = new NetLab(prefix);
    try {
      await lab.#addNamespace(lab.pub);
      await lab.#sh("ip", "-n", lab.pub, "link", "add", "br0", "type", "bridge");
      await lab.#sh("ip", "-n", lab.pub, "addr", "add", `${PUBLIC_IP}/24`, "dev", "br0");
      await lab.#sh("ip", "-n", lab.pub, "link", "set", "br0", "up");
      await lab.#sh("ip", "netns", "exec", lab.pub, "sysctl", "-qw", "net.ipv4.ip_forward=1");
      await lab.#v6router(lab.pub);
      await lab.#sh(
        "ip",
        "-n",
        lab.pub,
        "addr",
        "add",
        "2001:db8:ffff::1/64",
        "dev",
        "br0",
        "nodad",
      );
    } catch (error) {
      await lab.destroy();
      throw error;
    }
    return lab;
  }

  async #sh(...args: string[]): Promise<void> {
    const out = await new Deno.Command(args[0], {
      args: args.slice(1),
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    if (!out.success) {
      throw new Error(`netlab: ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
    }
  }

  async #addNamespace(ns: string): Promise<void> {
    await this.#sh("ip", "netns", "add", ns);
    this.#namespaces.push(ns);
    await this.#sh("ip", "-n", ns, "link", "set", "lo", "up");
    // No duplicate address detection: a fresh interface's link-local address
    // stays tentative for a second or two, and neighbour discovery waits for
    // it (the first IPv6 packets of a brand-new lab sat 2 s in a queue).
    for (const scope of ["all", "default"]) {
      // deno-fmt-ignore
      await this.#sh("ip", "netns", "exec", ns, "sysctl", "-qw",
        `net.ipv6.conf.${scope}.accept_dad=0`);
    }
  }

  /** A veth from `ns` (named `name`, address `cidr`) into the bridge `bridge` of `into`. */
  async #wire(ns: string, name: string, cidr: string, into = this.pub, bridge = "br0") {
    const peer = `${name}p`;
    // deno-fmt-ignore
    await this.#sh("ip", "link", "add", name, "netns", ns, "type", "veth", "peer", "name", peer,
      "netns", into);
    await this.#sh("ip", "-n", into, "link", "set", peer, "master", bridge, "up");
    await this.#sh("ip", "-n", ns, "addr", "add", cidr, "dev", name);
    await this.#sh("ip", "-n", ns, "link", "set", name, "up");
  }

  /** IPv6 forwarding on in `ns`. */
  async #v6router(ns: string): Promise<void> {
    await this.#sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1");
  }

  /** Makes `ns` a router and gives it a bridge `seg` with `cidr`. */
  async #router(ns: string, cidr: string): Promise<void> {
    await this.#sh("ip", "-n", ns, "link", "add", "seg", "type", "bridge");
    await this.#sh("ip", "-n", ns, "addr", "add", cidr, "dev", "seg");
    await this.#sh("ip", "-n", ns, "link", "set", "seg", "up");
    await this.#sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1");
  }

  /**
   * A transit router on the core bridge with a segment of its own for NAT
   * WANs (203.0.113.(16j)/28; the core routes it there).
   */
  async addTransit(): Promise<Segment> {
    const j = ++this.#transits;
    if (j > 15) throw new Error("netlab: at most 15 transit routers");
    const ns = `${this.prefix}-t${j}`;
    await this.#addNamespace(ns);
    await this.#wire(ns, `c${j}`, `198.51.100.${200 + j}/24`);
    await this.#sh("ip", "-n", ns, "route", "add", "default", "via", PUBLIC_IP);
    const base = 16 * j;
    await this.#router(ns, `203.0.113.${base + 1}/28`);
    // deno-fmt-ignore
    await this.#sh("ip", "-n", this.pub, "route", "add", `203.0.113.${base}/28`, "via",
      `198.51.100.${200 + j}`);
    const addresses = Array.from({ length: 13 }, (_, k) => `203.0.113.${base + 2 + k}`);
    // IPv6: 2001:db8:j::/48, the segment its first /64, routed here by the core.
    const v6 = `2001:db8:${j}`;
    await this.#v6router(ns);
    // deno-fmt-ignore
    await this.#sh("ip", "-n", ns, "addr", "add", `2001:db8:ffff::${200 + j}/64`, "dev", `c${j}`, "nodad");
    await this.#sh("ip", "-n", ns, "addr", "add", `${v6}::1/64`, "dev", "seg", "nodad");
    await this.#sh("ip", "-n", ns, "-6", "route", "add", "default", "via", "2001:db8:ffff::1");
    // deno-fmt-ignore
    await this.#sh("ip", "-n", this.pub, "-6", "route", "add", `${v6}::/48`, "via",
      `2001:db8:ffff::${200 + j}`);
    return {
      ns,
      gateway: `203.0.113.${base + 1}`,
      addresses,
      prefix: 28,
      v6,
      core: `198.51.100.${200 + j}`,
    };
  }

  /**
   * A carrier-grade NAT (endpoint-independent, as RFC 6888 asks) on a
   * transit router of its own; home NATs attach behind it (its segment,
   * 100.64.k.0/24 as RFC 6598 reserves for it).
   */
  async addCarrierNat(options: { filtering?: boolean } = {}): Promise<Segment> {
    const k = ++this.#carriers;
    const transit = await this.addTransit();
    const ns = `${this.prefix}-cg${k}`;
    await this.#addNamespace(ns);
    const wan = transit.addresses.shift()!;
    await this.#wire(ns, `cw${k}`, `${wan}/${transit.prefix}`, transit.ns, "seg");
    await this.#sh("ip", "-n", ns, "route", "add", "default", "via", transit.gateway);
    await this.#router(ns, `100.64.${k}.1/24`);
    await this.#nat(ns, `cw${k}`, "eim", options.filtering ?? true);
    const addresses = Array.from({ length: 200 }, (_, m) => `100.64.${k}.${2 + m}`);
    return { ns, gateway: `100.64.${k}.1`, addresses, prefix: 24, publicIp: wan };
  }

  /**
   * IPv6 for router `router` (number `i`) on `segment` and its `hosts`: the
   * LAN gets 2001:db8:j:i::/64, routed by the transit router to the WAN's
   * address; no NAT; the router forwards inward only what answers traffic
   * from inside.
   */
  async #dualStack(router: string, wan: string, i: number, segment: Segment, hosts: LabHost[]) {
    if (!segment.v6) throw new Error("netlab: IPv6 needs a transit segment");
    const sh = (ns: string, ...args: string[]) => this.#sh("ip", "-n", ns, ...args);
    const wan6 = `${segment.v6}::${(10 + i).toString(16)}`;
    const lan6 = `${segment.v6}:${i.toString(16)}`;
    await this.#v6router(router);
    await sh(router, "addr", "add", `${wan6}/64`, "dev", wan, "nodad");
    await sh(router, "-6", "route", "add", "default", "via", `${segment.v6}::1`);
    await sh(router, "addr", "add", `${lan6}::1/64`, "dev", "lan", "nodad");
    await sh(segment.ns, "-6", "route", "add", `${lan6}::/64`, "via", wan6);
    for (const [h, host] of hosts.entries()) {
      host.ip6 = `${lan6}::${(2 + h).toString(16)}`;
      await sh(host.ns, "addr", "add", `${host.ip6}/64`, "dev", "eth0", "nodad");
      await sh(host.ns, "-6", "route", "add", "default", "via", `${lan6}::1`);
    }
    const fw = (...args: string[]) => this.#sh("ip", "netns", "exec", router, "ip6tables", ...args);
    // deno-fmt-ignore
    await fw("-A", "FORWARD", "-i", wan, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
      "-j", "ACCEPT");
    await fw("-A", "FORWARD", "-i", wan, "-p", "ipv6-icmp", "-j", "ACCEPT");
    await fw("-A", "FORWARD", "-i", wan, "-j", "DROP");
  }

  /** NAT rules on router `ns` for traffic out of `wan`. */
  async #nat(ns: string, wan: string, kind: NatKind, filtering: boolean, fullconeTo?: string) {
    const inRouter = (...args: string[]) => this.#sh("ip", "netns", "exec", ns, ...args);
    if (kind === "fullcone") {
      // deno-fmt-ignore
      await inRouter("iptables", "-t", "nat", "-A", "PREROUTING", "-i", wan, "-j", "DNAT",
        "--to-destination", fullconeTo!);
      await inRouter("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE");
    } else {
      const masquerade = [
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        wan,
        "-j",
        "MASQUERADE",
      ];
      await inRouter(...masquerade, ...(kind === "edm" ? ["--random-fully"] : []));
    }
    if (kind === "block-udp") {
      await inRouter("iptables", "-A", "FORWARD", "-p", "udp", "-j", "DROP");
    }
    // A filtering router drops unsolicited traffic to itself, as NAT
    // gateways do. Without it, a peer's early probe is delivered to the
    // router's own stack, conntrack confirms an entry for it, and the router
    // then remaps the host's own packets to that peer to a new port (a tuple
    // clash) — what punching must survive on Docker/Kubernetes/VPS hosts.
    // A packet dropped in INPUT never confirms its conntrack entry.
    if (filtering) {
      // deno-fmt-ignore
      await inRouter("iptables", "-A", "INPUT", "-i", wan, "-m", "conntrack", "--ctstate", "NEW",
        "-j", "DROP");
    }
  }

  /**
   * `hosts` private hosts on one LAN behind a NAT router of `kind`, whose
   * WAN sits on a transit router of its own (or `options.segment`).
   */
  async addNatted(kind: NatKind, hosts = 1, options: NatOptions = {}): Promise<LabHost[]> {
    const i = ++this.#next;
    const segment = options.segment ?? await this.addTransit();
    const wan = segment.addresses.shift();
    if (wan === undefined) throw new Error("netlab: the segment has no address left");
    const router = `${this.prefix}-r${i}`;
    const lan = `192.168.${10 + i}`;
    await this.#addNamespace(router);
    await this.#wire(router, `w${i}`, `${wan}/${segment.prefix}`, segment.ns, "seg");
    await this.#sh("ip", "-n", router, "route", "add", "default", "via", segment.gateway);
    await this.#sh("ip", "-n", router, "link", "add", "lan", "type", "bridge");
    await this.#sh("ip", "-n", router, "addr", "add", `${lan}.1/24`, "dev", "lan");
    await this.#sh("ip", "-n", router, "link", "set", "lan", "up");
    const out: LabHost[] = [];
    for (let h = 1; h <= hosts; h++) {
      const ns = `${this.prefix}-h${i}x${h}`;
      const ip = `${lan}.${1 + h}`;
      await this.#addNamespace(ns);
      // deno-fmt-ignore
      await this.#sh("ip", "link", "add", `l${h}`, "netns", router, "type", "veth", "peer", "name",
        "eth0", "netns", ns);
      await this.#sh("ip", "-n", router, "link", "set", `l${h}`, "master", "lan", "up");
      await this.#sh("ip", "-n", ns, "addr", "add", `${ip}/24`, "dev", "eth0");
      await this.#sh("ip", "-n", ns, "link", "set", "eth0", "up");
      await this.#sh("ip", "-n", ns, "route", "add", "default", "via", `${lan}.1`);
      out.push({ ns, ip, publicIp: segment.publicIp ?? wan, router });
    }
    await this.#sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1");
    await this.#nat(router, `w${i}`, kind, options.filtering ?? true, out[0].ip);
    if (options.portMapping) {
      const only = options.portMapping === true ? undefined : options.portMapping;
      const ext = await this.#mapping(router, i, wan, lan, kind, segment, only);
      for (const host of out) host.publicIp = ext;
    }
    if (options.splitUdp) {
      const udpIp = segment.addresses.shift();
      if (udpIp === undefined) throw new Error("netlab: the segment has no address left");
      await this.#sh(
        "ip",
        "-n",
        router,
        "addr",
        "add",
        `${udpIp}/${segment.prefix}`,
        "dev",
        `w${i}`,
      );
      // deno-fmt-ignore
      await this.#sh("ip", "netns", "exec", router, "iptables", "-t", "nat", "-I", "POSTROUTING",
        "-o", `w${i}`, "-p", "udp", "-j", "SNAT", "--to-source", udpIp);
      for (const host of out) host.udpPublicIp = udpIp;
    }
    if (options.ipv6) await this.#dualStack(router, `w${i}`, i, segment, out);
    if (options.ipv6 && options.nat66) {
      // deno-fmt-ignore
      await this.#sh("ip", "netns", "exec", router, "ip6tables", "-t", "nat", "-A", "POSTROUTING",
        "-o", `w${i}`, "-j", "MASQUERADE");
    }
    return out;
  }

  /**
   * miniupnpd on router `ns` (number `i`): its own public address, SNAT to
   * it (a new port per destination for `edm`), routes back to it, the
   * chains, and the daemon, listening when this resolves. Returns the address.
   */
  async #mapping(
    ns: string,
    i: number,
    wan: string,
    lan: string,
    kind: NatKind,
    segment: Segment,
    only?: "upnp" | "nat-pmp" | "refuse",
  ): Promise<string> {
    if (!segment.core) throw new Error("netlab: a mapping router needs a transit segment");
    const ext = `11.0.${i}.1`;
    const inRouter = (...args: string[]) => this.#sh("ip", "netns", "exec", ns, ...args);
    await this.#sh("ip", "-n", ns, "addr", "add", `${ext}/32`, "dev", `w${i}`);
    // deno-fmt-ignore
    await inRouter("iptables", "-t", "nat", "-I", "POSTROUTING", "-o", `w${i}`, "-j", "SNAT",
      "--to-source", ext, ...(kind === "edm" ? ["--random-fully"] : []));
    await this.#sh("ip", "-n", segment.ns, "route", "add", `${ext}/32`, "via", wan);
    await this.#sh("ip", "-n", this.pub, "route", "add", `${ext}/32`, "via", segment.core);
    const dir = await Deno.makeTempDir({ prefix: "netlab-miniupnpd-" });
    this.#dirs.push(dir);
    await Deno.writeTextFile(`${dir}/rules.nft`, MINIUPNPD_RULES);
    await inRouter("nft", "-f", `${dir}/rules.nft`);
    await Deno.writeTextFile(
      `${dir}/miniupnpd.conf`,
      [
        `ext_ifname=w${i}`,
        `ext_ip=${ext}`,
        "listening_ip=lan",
        `enable_natpmp=${only === "upnp" || only === "refuse" ? "no" : "yes"}`,
        `enable_upnp=${only === "nat-pmp" ? "no" : "yes"}`,
        "secure_mode=yes",
        `lease_file=${dir}/leases`,
        "uuid=1a0e8d0b-c2d7-4cf2-bf43-8dfe1392fe2e",
        // Lifetimes as short as a test wants (miniupnpd's default floor is 120 s).
        "min_lifetime=2",
        only === "refuse"
          ? "deny 0-65535 0.0.0.0/0 0-65535"
          : `allow 1024-65535 ${lan}.0/24 1024-65535`,
        "",
      ].join("\n"),
    );
    const daemon = new Proc(
      "ip",
      ["netns", "exec", ns, "miniupnpd", "-f", `${dir}/miniupnpd.conf`, "-P", `${dir}/pid`, "-d"],
      {},
    );
    this.#procs.push(daemon);
    const ready = only === "upnp" || only === "refuse"
      ? "HTTP listening on port"
      : "Listening for NAT-PMP/PCP traffic";
    await daemon.waitForLine((l) => l.message.includes(ready));
    return ext;
  }

  /** A host with a public address, no NAT: on the core segment, or on `segment` (a transit router's). */
  async addPublicHost(options: { segment?: Segment } = {}): Promise<LabHost> {
    const i = ++this.#next;
    const ns = `${this.prefix}-p${i}`;
    await this.#addNamespace(ns);
    const segment = options.segment;
    if (segment) {
      // Behind routers of its own, as a server on the internet is.
      const ip = segment.addresses.shift()!;
      await this.#wire(ns, `v${i}`, `${ip}/${segment.prefix}`, segment.ns, "seg");
      await this.#sh("ip", "-n", ns, "route", "add", "default", "via", segment.gateway);
      return { ns, ip, publicIp: ip };
    }
    const ip = `198.51.100.${100 + i}`;
    await this.#wire(ns, `v${i}`, `${ip}/24`);
    await this.#sh("ip", "-n", ns, "route", "add", "default", "via", PUBLIC_IP);
    return { ns, ip, publicIp: ip };
  }

  /** Runs `iptables <args>` inside `ns` (one of the lab's namespaces). */
  async iptables(ns: string, ...args: string[]): Promise<void> {
    await this.#sh("ip", "netns", "exec", ns, "iptables", ...args);
  }

  /** Blocks (`-A`) or unblocks (`-D`) UDP between hosts `a` and `b`, both ways, at `a`. */
  async udpBetween(op: "-A" | "-D", a: LabHost, b: LabHost): Promise<void> {
    for (const [chain, flag] of [["INPUT", "-s"], ["OUTPUT", "-d"]]) {
      await this.iptables(a.ns, op, chain, "-p", "udp", flag, b.ip, "-j", "DROP");
    }
  }

  /**
   * A hashing TCP service on `host`'s 127.0.0.1:`port` (`tests/_stream_tools.ts
   * hash-server`), listening when this resolves.
   */
  async hashServer(host: LabHost, port = 9000): Promise<Proc> {
    const service = this.deno(host.ns, [
      "run",
      "--allow-all",
      "tests/_stream_tools.ts",
      "hash-server",
      String(port),
    ]);
    await service.waitForLog("listening", () => true, 20_000);
    return service;
  }

  /**
   * A host on its own with two working IPv4 addresses besides loopback: a
   * veth pair whose two ends both live in it (192.0.2.1 and 192.0.2.2).
   * Nothing is routed outside it: services and workers all run on it, as
   * several workers on one machine do.
   */
  async addIsolatedHost(): Promise<LabHost> {
    const ns = `${this.prefix}-solo${++this.#next}`;
    await this.#addNamespace(ns);
    await this.#sh("ip", "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb");
    for (const [dev, cidr] of [["va", "192.0.2.1/24"], ["vb", "192.0.2.2/24"]]) {
      await this.#sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev);
      await this.#sh("ip", "-n", ns, "link", "set", dev, "up");
    }
    return { ns, ip: "192.0.2.1", publicIp: "127.0.0.1" };
  }

  /** Runs `deno <args>` inside `ns`; the lab stops it on destroy. */
  deno(ns: string, args: string[], env: Record<string, string> = {}): Proc {
    const proc = new Proc("ip", ["netns", "exec", ns, DENO, ...args], env);
    this.#procs.push(proc);
    return proc;
  }

  /**
   * The public services: a rendezvous (port 8080, STUN 3478) and a second
   * STUN server (3479) on the public segment. Returns the rendezvous. With
   * `fleet`, a redis-server on the public host too and a second rendezvous
   * instance on 8081 sharing it (`REDIS_URL`), in `fleetInstances`.
   */
  async startServices(options: { fleet?: boolean } = {}): Promise<Proc> {
    const fleetEnv: Record<string, string> = {};
    if (options.fleet) {
      const redis = new Proc("ip", [
        "netns",
        "exec",
        this.pub,
        "redis-server",
        ...redisServerArgs(6379),
      ], {});
      this.#procs.push(redis);
      await redis.waitForStdout(/Ready to accept connections/, 10_000);
      Object.assign(fleetEnv, { REDIS_URL: "redis://127.0.0.1:6379", FLEET_TTL_SEC: "3" });
    }
    const rendezvous = this.deno(this.pub, ["run", "--allow-net", "--allow-env", "rendezvous.ts"], {
      PORT: "8080",
      STUN_PORT: "3478",
      ...fleetEnv,
    });
    const stun = this.deno(this.pub, ["run", "--allow-net", "--allow-env", "stun.ts"], {
      STUN_PORT: "3479",
    });
    await rendezvous.waitForLog("stun server listening", () => true, 20_000);
    await stun.waitForLog("stun server listening", () => true, 20_000);
    this.fleetInstances = [rendezvous];
    if (options.fleet) {
      await rendezvous.waitForLog("fleet synced", () => true, 20_000);
      const second = this.deno(this.pub, ["run", "--allow-net", "--allow-env", "rendezvous.ts"], {
        PORT: "8081",
        ...fleetEnv,
      });
      await second.waitForLog("fleet synced", () => true, 20_000);
      this.fleetInstances.push(second);
    }
    return rendezvous;
  }

  /** The rendezvous instances `startServices` started (two with `fleet`: ports 8080, 8081). */
  fleetInstances: Proc[] = [];

  /** A worker on `host`, registered with the lab's services. */
  worker(host: LabHost, id: string, env: Record<string, string> = {}): Proc {
    return this.deno(host.ns, [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-sys=networkInterfaces",
      "--allow-read",
      "--allow-write",
      "--allow-ffi",
      "worker.ts",
    ], {
      RENDEZVOUS_SERVICE_URL: `http://${PUBLIC_IP}:8080`,
      WORKER_ID: id,
      PORT: "0",
      IP_ECHO_URL: "off",
      STUN_SERVERS: `${PUBLIC_IP}:3478,${PUBLIC_IP}:3479`,
      // Unix sockets live in the file system, which the lab's namespaces share.
      CONTROL_DIR: "off",
      ...env,
    });
  }

  /** A STUN server on the core's IPv6 address, `[2001:db8:ffff::1]:port`, answering when this resolves. */
  async startStun6(port = 3480): Promise<string> {
    const stun = this.deno(this.pub, ["run", "--allow-net", "--allow-env", "stun.ts"], {
      STUN_PORT: String(port),
      STUN_HOST: "::",
    });
    await stun.waitForLog("stun server listening", () => true, 20_000);
    return `[2001:db8:ffff::1]:${port}`;
  }

  /** Stops every process and deletes every namespace. */
  async destroy(): Promise<void> {
    await Promise.all(this.#procs.map((p) => p.stop()));
    for (const ns of this.#namespaces.reverse()) {
      await new Deno.Command("ip", { args: ["netns", "del", ns], stdout: "null", stderr: "null" })
        .output();
    }
    for (const dir of this.#dirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
