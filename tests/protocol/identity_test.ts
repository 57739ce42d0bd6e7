import assert from "node:assert/strict";
import {
  fingerprint,
  fromBase64Url,
  Identity,
  IdentityError,
  newNonce,
  parsePublicKey,
  registrationPayload,
  toBase64Url,
  verifySignature,
} from "../../lib/protocol/identity.ts";

Deno.test("Identity signs and verifySignature() checks under its public key", async () => {
  const identity = await Identity.generate();
  assert.equal(fromBase64Url(identity.publicKey).length, 32);
  const data = new TextEncoder().encode("hello");
  const signature = toBase64Url(await identity.sign(data));
  assert.equal(await verifySignature(identity.publicKey, data, signature), true);
  const other = await Identity.generate();
  assert.equal(await verifySignature(other.publicKey, data, signature), false);
  assert.equal(
    await verifySignature(identity.publicKey, new TextEncoder().encode("hellO"), signature),
    false,
  );
  // Junk and wrong lengths are a plain "no", never a throw.
  assert.equal(await verifySignature(identity.publicKey, data, "!!"), false);
  assert.equal(await verifySignature(identity.publicKey, data, signature.slice(4)), false);
});

Deno.test("Identity survives a JWK round trip and refuses a JWK whose x is not d's", async () => {
  const identity = await Identity.generate();
  const again = await Identity.fromJwk(identity.toJwk());
  assert.equal(again.publicKey, identity.publicKey);
  assert.equal(again.fingerprint, identity.fingerprint);
  const other = await Identity.generate();
  await assert.rejects(
    () => Identity.fromJwk({ ...identity.toJwk(), x: other.publicKey }),
    IdentityError,
  );
  await assert.rejects(() => Identity.fromJwk({ kty: "EC", crv: "P-256" }), /Ed25519/);
  await assert.rejects(() => Identity.fromJwk({ ...identity.toJwk(), d: "AAAA" }), IdentityError);
});

Deno.test("a registration proof is bound to the authority, the worker id and the nonce", async () => {
  const identity = await Identity.generate();
  const nonce = newNonce();
  const proof = await identity.proveRegistration("Rendezvous.example:443", "w1", nonce);
  const check = (authority: string, id: string, n: string) =>
    verifySignature(identity.publicKey, registrationPayload(authority, id, n), proof);
  assert.equal(await check("rendezvous.example:443", "w1", nonce), true, "authority is case-blind");
  assert.equal(await check("evil.example:443", "w1", nonce), false, "another rendezvous");
  assert.equal(await check("rendezvous.example:443", "w2", nonce), false, "another id");
  assert.equal(await check("rendezvous.example:443", "w1", newNonce()), false, "another nonce");
  assert.notEqual(newNonce(), nonce);
});

Deno.test("parsePublicKey() accepts 32 bytes of base64url and names what is wrong otherwise", async () => {
  const identity = await Identity.generate();
  assert.equal(parsePublicKey(identity.publicKey), identity.publicKey);
  assert.equal(parsePublicKey(`${identity.publicKey}=`), identity.publicKey);
  assert.throws(() => parsePublicKey("abc"), /32 bytes: current length is 2/);
  assert.throws(() => parsePublicKey("not base64!"), /not base64url/);
  assert.throws(() => parsePublicKey(toBase64Url(new Uint8Array(33))), IdentityError);
});

Deno.test("fingerprint() is a short, stable digest of the key", async () => {
  const identity = await Identity.generate();
  const fp = await fingerprint(identity.publicKey);
  assert.match(fp, /^[0-9a-f]{4}(:[0-9a-f]{4}){3}$/);
  assert.equal(fp, identity.fingerprint);
  assert.notEqual(fp, (await Identity.generate()).fingerprint);
});
