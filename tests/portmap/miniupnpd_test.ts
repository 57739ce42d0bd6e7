/**
 * Port mapping against Debian's miniupnpd (NAT-PMP, PCP and UPnP-IGD) in
 * a lab of network namespaces: a LAN host, its gateway (miniupnpd, nftables
 * NAT) and the WAN. Real sockets end to end: the mapper maps with PCP and
 * deletes at stop; each protocol maps and deletes on its own; refusals come
 * back with their codes; the gateway's
 * own rule set is checked after each step; a gateway that went silent
 * costs one short probe.
 */
import assert from "node:assert/strict";
import { DENO, requireOrSkip, ROOT, toolMissing, within } from "../_helpers.ts";
import { MINIUPNPD_RULES, miniupnpdMappings, netlabUnavailable } from "../_netlab.ts";

async function unavailable(): Promise<string | undefined> {
  return await netlabUnavailable() ??
    await toolMissing("miniupnpd", ["--version"], "miniupnpd") ??
    await toolMissing("nft", ["--version"], "nftables");
}
const skip = requireOrSkip(await unavailable(), "miniupnpd lab tests");

async function run(...args: string[]): Promise<string> {
  const out = await new Deno.Command(args[0], {
    args: args.slice(1),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${args.join(" ")}: ${text}`);
  return text;
}

/** The lab: LAN host 10.9.0.2 → gateway 10.9.0.1 / 11.0.0.1 (miniupnpd) → WAN 11.0.0.2. */
async function lab() {
  const tag = crypto.randomUUID().slice(0, 6);
  const ns = { lan: `mu-lan-${tag}`, gw: `mu-gw-${tag}`, wan: `mu-wan-${tag}` };
  const dir = await Deno.makeTempDir();
  const inNs = (n: string, ...args: string[]) => run("ip", "netns", "exec", n, ...args);
  const removeAll = async () => {
    for (const n of Object.values(ns)) await run("ip", "netns", "del", n).catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    return await build();
  } catch (error) {
    await removeAll();
    throw error;
  }
  async function build() {
    for (const n of Object.values(ns)) await run("ip", "netns", "add", n);
    await run("ip", "link", "add", `l${tag}`, "type", "veth", "peer", "name", `g${tag}`);
    await run("ip", "link", "add", `w${tag}`, "type", "veth", "peer", "name", `v${tag}`);
    await run("ip", "link", "set", `l${tag}`, "netns", ns.lan);
    await run("ip", "link", "set", `g${tag}`, "netns", ns.gw);
    await run("ip", "link", "set", `w${tag}`, "netns", ns.gw);
    await run("ip", "link", "set", `v${tag}`, "netns", ns.wan);
    await inNs(ns.gw, "ip", "link", "set", `g${tag}`, "name", "lan");
    await inNs(ns.gw, "ip", "link", "set", `w${tag}`, "name", "wan");
    for (
      const [n, dev, addr] of [[ns.lan, `l${tag}`, "10.9.0.2/24"], [ns.gw, "lan", "10.9.0.1/24"], [
        ns.gw,
        "wan",
        "11.0.0.1/24",
      ], [ns.wan, `v${tag}`, "11.0.0.2/24"]]
    ) {
      await inNs(n, "ip", "addr", "add", addr, "dev", dev);
      await inNs(n, "ip", "link", "set", dev, "up");
      await inNs(n, "ip", "link", "set", "lo", "up");
    }
    await inNs(ns.lan, "ip", "route", "add", "default", "via", "10.9.0.1");
    await Deno.writeTextFile(`${dir}/rules.nft`, MINIUPNPD_RULES);
    await inNs(ns.gw, "nft", "-f", `${dir}/rules.nft`);
    await Deno.writeTextFile(
      `${dir}/miniupnpd.conf`,
      [
        "ext_ifname=wan",
        "listening_ip=lan",
        "enable_natpmp=yes",
        "enable_upnp=yes",
        "secure_mode=yes",
        `lease_file=${dir}/leases`,
        "uuid=1a0e8d0b-c2d7-4cf2-bf43-8dfe1392fe2e",
        "allow 1024-65535 10.9.0.0/24 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
        "",
      ].join("\n"),
    );
    const daemon = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        ns.gw,
        "miniupnpd",
        "-f",
        `${dir}/miniupnpd.conf`,
        "-P",
        `${dir}/pid`,
        "-d",
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const log: string[] = [];
    const listening = Promise.withResolvers<void>();
    void (async () => {
      for await (const chunk of daemon.stderr.pipeThrough(new TextDecoderStream())) {
        log.push(chunk);
        if (log.join("").includes("Listening for NAT-PMP/PCP traffic")) listening.resolve();
      }
    })();
    await within(listening.promise, 10_000, `miniupnpd listening (${log.join("")})`);
    return {
      ns,
      log,
      /** The gateway's DNAT rules now, one "port -> host:port" each. */
      dnat: () => miniupnpdMappings(ns.gw),
      async stopDaemon() {
        try {
          daemon.kill("SIGTERM");
        } catch { /* gone */ }
        await daemon.status;
      },
      async destroy() {
        await this.stopDaemon();
        await removeAll();
      },
    };
  }
}

Deno.test({
  name:
    "miniupnpd: the mapper maps with PCP at once and deletes at stop; NAT-PMP, PCP and UPnP each map and delete; refusals keep their codes; silence costs a short probe",
  ignore: skip !== undefined,
  async fn() {
    const l = await lab();
    const client = new Deno.Command("ip", {
      args: [
        "netns",
        "exec",
        l.ns.lan,
        DENO,
        "run",
        "-A",
        "--unstable-net",
        "tests/portmap/_lab_client.ts",
      ],
      cwd: ROOT.pathname,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = client.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const writer = client.stdin.getWriter();
    let buffered = "";
    const next = async (): Promise<Record<string, unknown>> => {
      while (!buffered.includes("\n")) {
        const { value, done } = await within(out.read(), 15_000, "the lab client's next step");
        if (done) {
          throw new Error(
            `the lab client ended: ${new TextDecoder().decode((await client.output()).stderr)}`,
          );
        }
        buffered += value;
      }
      const i = buffered.indexOf("\n");
      const line = buffered.slice(0, i);
      buffered = buffered.slice(i + 1);
      return JSON.parse(line);
    };
    const go = () => writer.write(new TextEncoder().encode("next\n"));
    try {
      const mapper = await next();
      assert.equal(mapper.step, "mapper");
      assert.deepEqual(mapper.gateway, { gateway: "10.9.0.1", clientIp: "10.9.0.2" });
      const m = mapper.mapping as Record<string, unknown>;
      assert.deepEqual([m.protocol, m.externalIp, m.externalPort, m.lifetime], [
        "pcp",
        "11.0.0.1",
        41641,
        120,
      ]);
      assert.deepEqual(mapper.offered, { pcp: true, "nat-pmp": true, upnp: true });
      console.log(`mapped with PCP in ${Math.round(mapper.mapped_ms as number)} ms`);
      assert.deepEqual(await l.dnat(), ["41641 -> 10.9.0.2:41641"]);
      await go();
      assert.equal((await next()).step, "mapper stopped");
      assert.deepEqual(await l.dnat(), [], "deleted at stop");
      await go();
      for (
        const [protocol, port] of [["nat-pmp", 41700], ["pcp", 41701], ["upnp", 41702]] as const
      ) {
        const each = await next();
        assert.equal(each.step, protocol);
        const mapping = each.mapping as Record<string, unknown>;
        assert.deepEqual([mapping.externalIp, mapping.externalPort], ["11.0.0.1", port]);
        assert.deepEqual(await l.dnat(), [`${port} -> 10.9.0.2:${port}`]);
        await go();
      }
      const refused = await next();
      assert.deepEqual(await l.dnat(), [], "every mapping deleted, none made for the refused ones");
      assert.equal(refused.pcp, 12, "PCP ADDRESS_MISMATCH");
      assert.equal(refused.upnp, 718, "UPnP ConflictInMappingEntry (secure mode)");
      await l.stopDaemon();
      await go();
      const silent = await next();
      assert.equal(silent.mapping, null);
      assert.deepEqual(silent.offered, { pcp: false, "nat-pmp": false, upnp: false });
      assert.ok((silent.ms as number) < 3000, `a silent gateway took ${silent.ms} ms`);
      await go();
      assert.equal((await client.status).code, 0);
    } finally {
      await writer.close().catch(() => {});
      try {
        client.kill();
      } catch { /* ended */ }
      await client.status;
      await out.cancel().catch(() => {});
      await client.stderr.cancel().catch(() => {});
      await l.destroy();
    }
  },
});
