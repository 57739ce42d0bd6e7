/**
 * A registrant cannot aim its peers' probes at special-purpose addresses:
 * never metadata, multicast, broadcast or unspecified; loopback and
 * link-local only when the rendezvous sees the worker at such an address
 * itself (the quick start and tests on one host keep working).
 */
import assert from "node:assert/strict";
import { startRendezvous, TestClient } from "../_helpers.ts";

const endpoint = (pub: string, local: string[]) => ({
  type: "register_udp_endpoint",
  public: { ip: pub, port: 4000 },
  local: local.map((ip) => ({ ip, port: 4000 })),
  nat: { mapping: "endpoint-independent" },
});

/** What the rendezvous kept of one report, and its error if any. */
async function report(client: TestClient, pub: string, local: string[]) {
  client.send(endpoint(pub, local));
  let error: string | undefined;
  let answer = await client.next();
  if (answer.type === "error") {
    error = String(answer.message);
    answer = await client.next();
  }
  assert.equal(answer.type, "udp_endpoint_registered");
  return { public: (answer.public as { ip: string } | null)?.ip ?? null, error };
}

Deno.test("special-purpose candidates are refused, loopback only for a worker seen on loopback", async () => {
  const rv = await startRendezvous({ trustProxyHops: 1 });
  try {
    // Seen at a public address (behind a proxy that says so).
    const remote = await TestClient.connect(`${rv.ws}/ws/register/remote`, {
      "x-forwarded-for": "203.0.113.50",
    });
    for (
      const victim of [
        "169.254.169.254",
        "224.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "127.0.0.1",
        "169.254.7.7",
      ]
    ) {
      const kept = await report(remote, victim, ["10.0.0.5", victim]);
      assert.equal(kept.public, null, victim);
      assert.match(kept.error!, new RegExp(`Cannot use ${victim.replaceAll(".", "\\.")}`));
    }
    const fine = await report(remote, "198.51.100.7", ["10.0.0.5", "100.64.1.2"]);
    assert.deepEqual(fine, { public: "198.51.100.7", error: undefined });
    const listed = await (await fetch(`${rv.http}/debug/list_workers`)).json();
    assert.deepEqual(
      listed.workers.remote.udp_endpoint.local.map((c: { ip: string }) => c.ip),
      ["10.0.0.5", "100.64.1.2"],
    );
    // Seen on loopback itself: loopback is its address (the quick start), metadata still is not.
    const here = await TestClient.connect(`${rv.ws}/ws/register/here`, {
      "x-forwarded-for": "127.0.0.1",
    });
    assert.deepEqual(await report(here, "127.0.0.1", ["127.0.0.1"]), {
      public: "127.0.0.1",
      error: undefined,
    });
    assert.equal((await report(here, "169.254.169.254", [])).public, null);
    const metrics = await (await fetch(`${rv.http}/metrics`)).text();
    assert.match(metrics, /holepunch_rendezvous_candidates_refused_total 13/);
    await remote.close();
    await here.close();
  } finally {
    await rv.close();
  }
});

Deno.test("a punch vouches for a peer's public candidate only at the IP its session comes from", async () => {
  const rv = await startRendezvous({ trustProxyHops: 1 });
  try {
    const honest = await TestClient.connect(`${rv.ws}/ws/register/honest`, {
      "x-forwarded-for": "203.0.113.50",
    });
    const liar = await TestClient.connect(`${rv.ws}/ws/register/liar`, {
      "x-forwarded-for": "203.0.113.60",
    });
    const asker = await TestClient.connect(`${rv.ws}/ws/register/asker`, {
      "x-forwarded-for": "198.51.100.1",
    });
    await report(honest, "203.0.113.50", []); // where it is seen
    await report(liar, "192.0.2.99", []); // someone else's address
    await report(asker, "198.51.100.1", []);
    const publicOf = async (peer: string) => {
      asker.send({ type: "connect", peer_id: peer });
      let punch = await asker.next();
      while (punch.type !== "punch") punch = await asker.next();
      return (punch.candidates as { kind: string; vouched?: boolean }[]).find((c) =>
        c.kind === "public"
      );
    };
    assert.equal((await publicOf("honest"))?.vouched, true);
    assert.equal((await publicOf("liar"))?.vouched, false);
    await Promise.all([honest.close(), liar.close(), asker.close()]);
  } finally {
    await rv.close();
  }
});

Deno.test("a gateway's port mapping is kept, shown to peers and offered as a candidate only where it is public (a private or shared one: a second NAT)", async () => {
  const rv = await startRendezvous({ trustProxyHops: 1 });
  try {
    const home = await TestClient.connect(`${rv.ws}/ws/register/home`, {
      "x-forwarded-for": "203.0.113.50",
    });
    const cgnat = await TestClient.connect(`${rv.ws}/ws/register/cgnat`, {
      "x-forwarded-for": "203.0.113.70",
    });
    const asker = await TestClient.connect(`${rv.ws}/ws/register/asker`, {
      "x-forwarded-for": "198.51.100.1",
    });
    const mapped = (ip: string) => ({ ip, port: 41641, protocol: "pcp", lifetime_sec: 7200 });
    home.send({ ...endpoint("203.0.113.50", []), mapped: mapped("203.0.113.50") });
    assert.equal((await home.next()).type, "udp_endpoint_registered");
    cgnat.send({ ...endpoint("203.0.113.70", []), mapped: mapped("100.64.3.9") });
    assert.equal((await cgnat.next()).type, "udp_endpoint_registered");
    await report(asker, "198.51.100.1", []);
    asker.send({ type: "list_peers", watch: false });
    let list = await asker.next();
    while (list.type !== "peers") list = await asker.next();
    const peers = list.peers as { worker_id: string; mapped: unknown }[];
    assert.deepEqual(peers.find((p) => p.worker_id === "home")?.mapped, mapped("203.0.113.50"));
    assert.deepEqual(peers.find((p) => p.worker_id === "cgnat")?.mapped, mapped("100.64.3.9"));
    const candidatesOf = async (peer: string) => {
      asker.send({ type: "connect", peer_id: peer });
      let punch = await asker.next();
      while (punch.type !== "punch") punch = await asker.next();
      return punch.candidates as { ip: string; port: number; kind: string; vouched?: boolean }[];
    };
    assert.deepEqual((await candidatesOf("home")).at(-1), {
      ip: "203.0.113.50",
      port: 41641,
      kind: "mapped",
      vouched: true,
    });
    assert.equal((await candidatesOf("cgnat")).some((c) => c.kind === "mapped"), false);
    // A malformed mapping is refused with the reason, and nothing is stored.
    home.send({
      ...endpoint("203.0.113.50", []),
      mapped: { ...mapped("203.0.113.50"), protocol: "upnp2" },
    });
    let refused = await home.next();
    while (refused.type === "punch") refused = await home.next(); // the asker's introductions
    assert.equal(refused.type, "error");
    assert.match(String(refused.message), /"mapped" must be/);
    await Promise.all([home.close(), cgnat.close(), asker.close()]);
  } finally {
    await rv.close();
  }
});

Deno.test("an IPv6 endpoint STUN saw is offered as a public candidate, once: not when it is one of the locals already", async () => {
  const rv = await startRendezvous({ trustProxyHops: 1 });
  try {
    const nat66 = await TestClient.connect(`${rv.ws}/ws/register/nat66`, {
      "x-forwarded-for": "203.0.113.50",
    });
    const plain6 = await TestClient.connect(`${rv.ws}/ws/register/plain6`, {
      "x-forwarded-for": "203.0.113.60",
    });
    const asker = await TestClient.connect(`${rv.ws}/ws/register/asker`, {
      "x-forwarded-for": "198.51.100.1",
    });
    // Behind a NAT66: its interface address is not what STUN saw.
    nat66.send({
      ...endpoint("203.0.113.50", ["2001:db8:1:1::2"]),
      public6: { ip: "2001:db8:1::10", port: 6000 },
    });
    assert.equal((await nat66.next()).type, "udp_endpoint_registered");
    // Without one: STUN saw its own address and port.
    plain6.send({
      ...endpoint("203.0.113.60", []),
      local: [{ ip: "2001:db8:2:1::2", port: 4000 }],
      public6: { ip: "2001:db8:2:1::2", port: 4000 },
    });
    assert.equal((await plain6.next()).type, "udp_endpoint_registered");
    await report(asker, "198.51.100.1", []);
    const candidatesOf = async (peer: string) => {
      asker.send({ type: "connect", peer_id: peer });
      let punch = await asker.next();
      while (punch.type !== "punch") punch = await asker.next();
      return (punch.candidates as { ip: string; port: number; kind: string }[])
        .map((c) => `${c.kind} ${c.ip}:${c.port}`);
    };
    assert.deepEqual(await candidatesOf("nat66"), [
      "local 2001:db8:1:1::2:4000",
      "public 203.0.113.50:4000",
      "public 2001:db8:1::10:6000",
    ]);
    assert.deepEqual(await candidatesOf("plain6"), [
      "local 2001:db8:2:1::2:4000",
      "public 203.0.113.60:4000",
    ]);
    await Promise.all([nat66.close(), plain6.close(), asker.close()]);
  } finally {
    await rv.close();
  }
});
