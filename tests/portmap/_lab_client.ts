/**
 * The port-mapping side of `miniupnpd_test.ts`, run inside the lab's LAN
 * namespace: each step prints one JSON line, then waits for a line on stdin
 * (the test checks the gateway's rules in between).
 */
import { Logger } from "../../lib/core/log.ts";
import { mapNatPmp, mapPcp, PortMapError } from "../../lib/portmap/client.ts";
import { findGateway } from "../../lib/portmap/gateway.ts";
import { PortMapper } from "../../lib/portmap/mapper.ts";
import { discoverIgd, mapUpnp, unmapUpnp } from "../../lib/portmap/upnp_client.ts";

const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
async function step(value: Record<string, unknown>): Promise<void> {
  console.log(JSON.stringify(value));
  await lines.read();
}
const refusal = async (p: Promise<unknown>) => {
  try {
    await p;
    return "mapped";
  } catch (error) {
    return error instanceof PortMapError ? error.result ?? error.message : String(error);
  }
};

const gateway = (await findGateway())!;
const target = { gateway: gateway.gateway };
// The mapper: probes, maps with PCP, deletes at stop.
const mapper = new PortMapper({
  internalPort: 41641,
  lifetimeSec: 120,
  logger: new Logger({ sink: () => {} }),
});
const t0 = performance.now();
const mapping = await mapper.start();
const mappedMs = performance.now() - t0;
await mapper.probed;
await step({
  step: "mapper",
  gateway,
  mapping: mapping && { ...mapping, nonce: undefined },
  mapped_ms: mappedMs,
  offered: mapper.status.offered,
});
await mapper.stop();
await step({ step: "mapper stopped" });
// Each protocol on its own, then deleted.
const natpmp = await mapNatPmp(target, 41700, 120);
await step({ step: "nat-pmp", mapping: natpmp });
await mapNatPmp(target, 41700, 0);
const nonce = crypto.getRandomValues(new Uint8Array(12));
const pcp = await mapPcp(target, gateway.clientIp, 41701, 120, undefined, nonce);
await step({ step: "pcp", mapping: { ...pcp, nonce: undefined } });
await mapPcp(target, gateway.clientIp, 41701, 0, undefined, nonce);
const control = await discoverIgd(target);
const upnp = await mapUpnp(control, gateway.clientIp, 41702, 120);
await step({ step: "upnp", mapping: { ...upnp, control: control.url.href } });
await unmapUpnp(control, 41702);
// Refusals with their codes: a PCP request naming another client address
// (ADDRESS_MISMATCH), a UPnP mapping to another host (secure mode: 718).
await step({
  step: "refused",
  pcp: await refusal(mapPcp(target, "10.9.0.99", 41703, 120)),
  upnp: await refusal(mapUpnp(control, "10.9.0.99", 41704, 120)),
});
// The test has stopped miniupnpd: a silent gateway costs one short probe.
const silent = new PortMapper({
  internalPort: 41641,
  lifetimeSec: 120,
  logger: new Logger({ sink: () => {} }),
});
const t1 = performance.now();
const none = await silent.start();
await silent.probed;
await step({
  step: "silent",
  mapping: none,
  ms: performance.now() - t1,
  offered: silent.status.offered,
});
await silent.stop();
Deno.exit(0);
