/**
 * `deno task netcheck [--json] [--stun host:port,…] [--rendezvous URL]`:
 * see {@linkcode runNetcheck}. Defaults come from the worker's own
 * variables (`STUN_SERVERS`, `RENDEZVOUS_SERVICE_URL`, `RENDEZVOUS_TOKEN`).
 *
 * @module
 */

import { DEFAULT_STUN_SERVERS } from "../stun/config.ts";
import { formatReport, runNetcheck } from "./netcheck.ts";

const args = Deno.args;
const flag = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

if (args.includes("--help") || args.includes("-h")) {
  console.log(`holepunch netcheck: what this network lets a worker do

  deno task netcheck [--json] [--stun host:port,...] [--rendezvous URL]

  --stun        STUN servers (default: STUN_SERVERS, else ${DEFAULT_STUN_SERVERS});
                two or more tell the NAT's mapping, one with a second address
                (RFC 5780: holepunch's STUN_ALT_HOST, coturn) its filtering
  --rendezvous  a rendezvous to time WebSocket echoes to (default: RENDEZVOUS_SERVICE_URL;
                RENDEZVOUS_TOKEN is sent if set)
  --json        the report as JSON, for scripts

  It also asks the default gateway which port-mapping protocols it speaks
  (PCP, NAT-PMP, UPnP-IGD; nothing is mapped); PORT_MAPPING=off skips that.`);
  Deno.exit(0);
}

const stunText = flag("--stun") ?? Deno.env.get("STUN_SERVERS") ?? DEFAULT_STUN_SERVERS;
const stunServers = stunText.split(",").map((s) => s.trim()).filter((s) => s && s !== "off");
const report = await runNetcheck({
  stunServers,
  rendezvousUrl: flag("--rendezvous") ?? Deno.env.get("RENDEZVOUS_SERVICE_URL"),
  token: Deno.env.get("RENDEZVOUS_TOKEN"),
  portMapping: Deno.env.get("PORT_MAPPING") === "off" ? false : undefined,
});
console.log(args.includes("--json") ? JSON.stringify(report, null, 2) : formatReport(report));
