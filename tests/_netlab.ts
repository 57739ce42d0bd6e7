/**
 * A NAT lab on one machine: network namespaces joined by veth pairs and a
 * bridge, with real Linux NAT (iptables) in front of private hosts.
 *
 *   public ns "pub": bridge 198.51.100.1/24 (rendezvous, STUN servers)
 *     ├─ router ns: wan 198.51.100.(10+i), LAN bridge 192.168.(10+i).1, NAT of a kind
 *     │    └─ host ns (one or more): 192.168.(10+i).2…, default route via the router
 *     └─ public host ns: 198.51.100.(100+i), no NAT
 *
 * Every address lives inside namespaces the lab made; nothing is routed to
 * the machine's own network. `destroy()` removes every namespace (and with
 * them every interface and rule), also after a failure.
 */

import { DENO, Proc } from "./_helpers.ts";

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
}

export class NetLab {
  readonly prefix: string;
  readonly pub: string;
  #namespaces: string[] = [];
  #procs: Proc[] = [];
  #next = 0;

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
  }

  /** A veth from `ns` (named `name`, address `cidr`) into the public bridge. */
  async #wire(ns: string, name: string, cidr: string): Promise<void> {
    const peer = `${name}p`;
    await this.#sh(
      "ip",
      "link",
      "add",
      name,
      "netns",
      ns,
      "type",
      "veth",
      "peer",
      "name",
      peer,
      "netns",
      this.pub,
    );
    await this.#sh("ip", "-n", this.pub, "link", "set", peer, "master", "br0", "up");
    await this.#sh("ip", "-n", ns, "addr", "add", cidr, "dev", name);
    await this.#sh("ip", "-n", ns, "link", "set", name, "up");
  }

  /** `hosts` private hosts on one LAN behind a NAT router of `kind`. */
  async addNatted(kind: NatKind, hosts = 1): Promise<LabHost[]> {
    const i = ++this.#next;
    const router = `${this.prefix}-r${i}`;
    const wan = `198.51.100.${10 + i}`;
    const lan = `192.168.${10 + i}`;
    await this.#addNamespace(router);
    await this.#wire(router, `w${i}`, `${wan}/24`);
    await this.#sh("ip", "-n", router, "link", "add", "lan", "type", "bridge");
    await this.#sh("ip", "-n", router, "addr", "add", `${lan}.1/24`, "dev", "lan");
    await this.#sh("ip", "-n", router, "link", "set", "lan", "up");
    const out: LabHost[] = [];
    for (let h = 1; h <= hosts; h++) {
      const ns = `${this.prefix}-h${i}x${h}`;
      const ip = `${lan}.${1 + h}`;
      await this.#addNamespace(ns);
      await this.#sh(
        "ip",
        "link",
        "add",
        `l${h}`,
        "netns",
        router,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
      );
      await this.#sh("ip", "-n", router, "link", "set", `l${h}`, "master", "lan", "up");
      await this.#sh("ip", "-n", ns, "addr", "add", `${ip}/24`, "dev", "eth0");
      await this.#sh("ip", "-n", ns, "link", "set", "eth0", "up");
      await this.#sh("ip", "-n", ns, "route", "add", "default", "via", `${lan}.1`);
      out.push({ ns, ip, publicIp: wan });
    }
    const inRouter = (...args: string[]) => this.#sh("ip", "netns", "exec", router, ...args);
    await inRouter("sysctl", "-qw", "net.ipv4.ip_forward=1");
    if (kind === "fullcone") {
      await inRouter(
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        `w${i}`,
        "-j",
        "DNAT",
        "--to-destination",
        out[0].ip,
      );
      await inRouter(
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        `w${i}`,
        "-j",
        "SNAT",
        "--to-source",
        wan,
      );
    } else {
      const masquerade = [
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        `w${i}`,
        "-j",
        "MASQUERADE",
      ];
      await inRouter(...masquerade, ...(kind === "edm" ? ["--random-fully"] : []));
    }
    if (kind === "block-udp") {
      await inRouter("iptables", "-A", "FORWARD", "-p", "udp", "-j", "DROP");
    }
    // Like every NAT gateway, the router drops unsolicited traffic to itself.
    // Without this, a peer's early probe is delivered to the router's own
    // stack, conntrack confirms an entry for it, and the router then remaps
    // the host's own packets to that peer to a new port (a tuple clash): an
    // artefact of a bare Linux box, not of NAT behaviour. A packet dropped in
    // INPUT never confirms its conntrack entry.
    await inRouter(
      "iptables",
      "-A",
      "INPUT",
      "-i",
      `w${i}`,
      "-m",
      "conntrack",
      "--ctstate",
      "NEW",
      "-j",
      "DROP",
    );
    return out;
  }

  /** A host on the public segment, no NAT. */
  async addPublicHost(): Promise<LabHost> {
    const i = ++this.#next;
    const ns = `${this.prefix}-p${i}`;
    const ip = `198.51.100.${100 + i}`;
    await this.#addNamespace(ns);
    await this.#wire(ns, `v${i}`, `${ip}/24`);
    return { ns, ip, publicIp: ip };
  }

  /** Runs `iptables <args>` inside `ns` (one of the lab's namespaces). */
  async iptables(ns: string, ...args: string[]): Promise<void> {
    await this.#sh("ip", "netns", "exec", ns, "iptables", ...args);
  }

  /** Runs `deno <args>` inside `ns`; the lab stops it on destroy. */
  deno(ns: string, args: string[], env: Record<string, string> = {}): Proc {
    const proc = new Proc("ip", ["netns", "exec", ns, DENO, ...args], env);
    this.#procs.push(proc);
    return proc;
  }

  /**
   * The public services: a rendezvous (port 8080, STUN 3478) and a second
   * STUN server (3479) on the public segment. Returns the rendezvous.
   */
  async startServices(): Promise<Proc> {
    const rendezvous = this.deno(this.pub, ["run", "--allow-net", "--allow-env", "rendezvous.ts"], {
      PORT: "8080",
      STUN_PORT: "3478",
    });
    const stun = this.deno(this.pub, ["run", "--allow-net", "--allow-env", "stun.ts"], {
      STUN_PORT: "3479",
    });
    await rendezvous.waitForLog("stun server listening", () => true, 20_000);
    await stun.waitForLog("stun server listening", () => true, 20_000);
    return rendezvous;
  }

  /** A worker on `host`, registered with the lab's services. */
  worker(host: LabHost, id: string, env: Record<string, string> = {}): Proc {
    return this.deno(host.ns, [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-sys=networkInterfaces",
      "--allow-read",
      "--allow-write",
      "worker.ts",
    ], {
      RENDEZVOUS_SERVICE_URL: `http://${PUBLIC_IP}:8080`,
      WORKER_ID: id,
      PORT: "0",
      IP_ECHO_URL: "off",
      STUN_SERVERS: `${PUBLIC_IP}:3478,${PUBLIC_IP}:3479`,
      ...env,
    });
  }

  /** Stops every process and deletes every namespace. */
  async destroy(): Promise<void> {
    await Promise.all(this.#procs.map((p) => p.stop()));
    for (const ns of this.#namespaces.reverse()) {
      await new Deno.Command("ip", { args: ["netns", "del", ns], stdout: "null", stderr: "null" })
        .output();
    }
  }
}
