import assert from "node:assert/strict";
import { loadRendezvousConfig } from "../../lib/rendezvous/config.ts";
import { startRendezvous } from "../../lib/rendezvous/service.ts";
import { StunClient } from "../../lib/stun/client.ts";
import { UdpEndpoint } from "../../lib/peer/udp_endpoint.ts";
import { TestClient, within } from "../_helpers.ts";

Deno.test("startRendezvous() serves WebSockets and STUN in-process and drains on close()", async () => {
  const service = startRendezvous(
    loadRendezvousConfig({ PORT: "0", HOST: "127.0.0.1", STUN_PORT: "0", STUN_HOST: "127.0.0.1" }),
  );
  const udp = UdpEndpoint.bind({ hostname: "127.0.0.1" });
  try {
    const { port } = await service.addr;
    const ready = await fetch(`http://127.0.0.1:${port}/ready`);
    assert.equal(ready.status, 200);
    await ready.body?.cancel();

    const stun = new StunClient((bytes, to) => udp.send(bytes, to));
    udp.onStun = (bytes, from) => stun.handle(bytes, from);
    const result = await stun.binding(service.stun!.addresses[0]);
    assert.deepEqual(result.mapped, udp.local);

    const client = await TestClient.connect(`ws://127.0.0.1:${port}/ws/register/svc-1`);
    const closing = service.close();
    assert.equal((await client.next()).type, "going_away");
    const closed = await within(client.closed, 5000, "the drain's close");
    assert.equal(closed.code, 1001);
    await closing;
    assert.equal(service.close(), closing, "close() is idempotent");
  } finally {
    await service.close();
    await udp.close();
  }
});

Deno.test("startRendezvous() throws when its STUN port is taken and leaves nothing running", () => {
  const taken = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    const port = String((taken.addr as Deno.NetAddr).port);
    assert.throws(
      () =>
        startRendezvous(
          loadRendezvousConfig({ PORT: "0", STUN_PORT: port, STUN_HOST: "127.0.0.1" }),
        ),
      Deno.errors.AddrInUse,
    );
  } finally {
    taken.close();
  }
});
