// The zone key ring: given events, when a command, then events or a rejection; and the key
// material at rest (sealed under ZONE_KEK, bound to zone and kid) with no I/O.
import { SignJWT, createLocalJWKSet, jwtVerify } from "jose"
import { randomBytes } from "node:crypto"
import { describe, expect, it } from "vitest"
import { given, testMeta } from "../../core/testing/decider.ts"
import { events } from "../../services/sts/events.ts"
import { keyChangesFor } from "../../services/sts/key-projection.ts"
import { activeKey, keyRing, type KeyRingEvent, type NewKey, nextKey, type PublicJwk } from "../../services/sts/key-ring.ts"
import { generateZoneKey, makeKeks, openSecret, resealSecret, SecretNotOpened, sealZoneKey, type SecretRow } from "../../services/sts/key-store.ts"

const T0 = "2026-01-01T00:00:00.000Z"
const at = (seconds: number) => new Date(Date.parse(T0) + seconds * 1000).toISOString()
const jwk = (kid: string): PublicJwk => ({ kty: "EC", crv: "P-256", x: `x-${kid}`, y: `y-${kid}`, kid, alg: "ES256", use: "sig" })
const key = (kid: string): NewKey => ({ kid, publicJwk: jwk(kid) })

const created = (kid: string, status: "next" | "active", activatesAt: string): KeyRingEvent => ({
  type: "ZoneKeyCreated", data: { kid, publicJwk: jwk(kid), status, activatesAt }
})
const activated = (kid: string): KeyRingEvent => ({ type: "ZoneKeyActivated", data: { kid } })
const retired = (kid: string, removeAt: string): KeyRingEvent => ({ type: "ZoneKeyRetired", data: { kid, removeAt } })
const removed = (kid: string): KeyRingEvent => ({ type: "ZoneKeyRemoved", data: { kid } })

const provision = (kid: string) => ({ _tag: "ProvisionKey", key: key(kid) }) as const
const rotate = (kid: string, leadSeconds = 600) => ({ _tag: "RotateKey", key: key(kid), leadSeconds }) as const
const advance = (retiredKeepSeconds = 3900) => ({ _tag: "AdvanceRing", retiredKeepSeconds }) as const

describe("when a zone has no key", () => {
  it("provisioning creates its first key, active at once", () => {
    expect(given(keyRing).when(provision("k1"), testMeta(T0)).events()).toEqual([created("k1", "active", T0)])
  })
  it("a rotation is refused (the caller provisions first)", () => {
    expect(given(keyRing).when(rotate("k1"), testMeta(T0)).error()).toMatchObject({ reason: "ring_empty" })
  })
  it("advancing does nothing", () => {
    expect(given(keyRing).when(advance(), testMeta(T0)).events()).toEqual([])
  })
  it("a key whose public JWK names another kid is refused", () => {
    const bad = { _tag: "ProvisionKey", key: { kid: "k1", publicJwk: jwk("k2") } } as const
    expect(given(keyRing).when(bad, testMeta(T0)).error()).toMatchObject({ reason: "kid_mismatch" })
  })
})

describe("when a zone has an active key", () => {
  const history = [created("k1", "active", T0)]
  it("provisioning again does nothing (idempotent)", () => {
    expect(given(keyRing, history).when(provision("k2"), testMeta(at(5))).events()).toEqual([])
  })
  it("a rotation publishes a next key that activates after the lead time", () => {
    expect(given(keyRing, history).when(rotate("k2", 600), testMeta(at(10))).events()).toEqual([created("k2", "next", at(610))])
  })
  it("a rotation with a kid already in the ring is refused", () => {
    expect(given(keyRing, history).when(rotate("k1"), testMeta(at(10))).error()).toMatchObject({ reason: "duplicate_kid" })
  })
  it("advancing does nothing", () => {
    expect(given(keyRing, history).when(advance(), testMeta(at(100_000))).events()).toEqual([])
  })
})

describe("when a rotation is pending", () => {
  const history = [created("k1", "active", T0), created("k2", "next", at(600))]
  it("a second rotation adds nothing: the pending key is the answer", () => {
    const w = given(keyRing, history).when(rotate("k3"), testMeta(at(100)))
    expect(w.events()).toEqual([])
    expect(nextKey(w.state())?.kid).toBe("k2")
  })
  it("before activatesAt, advancing does nothing and the old key still signs", () => {
    const w = given(keyRing, history).when(advance(), testMeta(at(599)))
    expect(w.events()).toEqual([])
    expect(activeKey(w.state())?.kid).toBe("k1")
  })
  it("at activatesAt the next key activates and the active one retires until now + keep", () => {
    const w = given(keyRing, history).when(advance(3900), testMeta(at(601)))
    expect(w.events()).toEqual([activated("k2"), retired("k1", at(601 + 3900))])
    expect(w.state().keys.map((k) => [k.kid, k.status])).toEqual([["k1", "retired"], ["k2", "active"]])
  })
})

describe("when a key is retired", () => {
  const history = [created("k1", "active", T0), created("k2", "next", at(600)), activated("k2"), retired("k1", at(4500))]
  it("before removeAt it stays published", () => {
    expect(given(keyRing, history).when(advance(), testMeta(at(4499))).events()).toEqual([])
  })
  it("at removeAt it is removed, and leaves the ring", () => {
    const w = given(keyRing, history).when(advance(), testMeta(at(4500)))
    expect(w.events()).toEqual([removed("k1")])
    expect(w.state().keys.map((k) => k.kid)).toEqual(["k2"])
  })
  it("a removal and a due activation happen in one advance", () => {
    const more = [...history, created("k3", "next", at(5000))]
    expect(given(keyRing, more).when(advance(60), testMeta(at(5000))).events())
      .toEqual([removed("k1"), activated("k3"), retired("k2", at(5060))])
  })
})

describe("the key events", () => {
  it("carry public material only, and validate against the registry", () => {
    for (const e of [created("k1", "active", T0), activated("k1"), retired("k1", at(1)), removed("k1")]) {
      const encoded = events.encode(e.type, e.data)
      expect(JSON.stringify(encoded.json)).not.toMatch(/"d"/)
    }
    // defence in depth: a private member slipped into the data is not encoded into the log
    const leaked = { ...created("k1", "active", T0).data, publicJwk: { ...jwk("k1"), d: "private" } }
    expect(JSON.stringify(events.encode("ZoneKeyCreated", leaked).json)).not.toContain("private")
  })
  it("project to one row per key, the due time set for next and retired keys only", () => {
    const row = (e: KeyRingEvent) => keyChangesFor({ type: e.type, zoneId: "z1", occurredAt: T0, data: e.data })
    expect(row(created("k1", "active", T0))[0]).toMatchObject({ table: "sts_zone_keys", key: ["kid", "k1"], op: "insert" })
    expect(Object.keys(row(retired("k1", at(5)))[0]!.values).sort()).toEqual(["due_at", "remove_at", "status"])
    expect(row({ type: "Unrelated", data: {} } as unknown as KeyRingEvent)).toEqual([])
  })
})

describe("key material at rest", () => {
  const kek = randomBytes(32)
  const keks = makeKeks(kek, [])
  const sealedRow = async (zoneId: string) => {
    const k = await generateZoneKey()
    const s = sealZoneKey(kek, zoneId, k.kid, k.pkcs8)
    const row: SecretRow = { kid: k.kid, zone_id: zoneId, kek_id: s.kekId, nonce: s.nonce, ciphertext: s.ciphertext, tag: s.tag }
    return { k, row }
  }

  it("a generated key is ES256 with its thumbprint as kid, and its public JWK has no private member", async () => {
    const k = await generateZoneKey()
    expect(k.publicJwk).toEqual({ kty: "EC", crv: "P-256", x: expect.any(String), y: expect.any(String), kid: k.kid, alg: "ES256", use: "sig" })
    expect(k.kid).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect("d" in k.publicJwk).toBe(false)
  })

  it("a sealed key opens and signs a JWT that verifies against its public JWK", async () => {
    const { k, row } = await sealedRow("z1")
    const privateKey = openSecret(keks, row, k.publicJwk)
    const jwt = await new SignJWT({ zone_id: "z1" }).setProtectedHeader({ alg: "ES256", kid: k.kid }).sign(privateKey)
    const { payload } = await jwtVerify(jwt, createLocalJWKSet({ keys: [k.publicJwk] }))
    expect(payload.zone_id).toBe("z1")
  })

  it("ciphertexts swapped between two zones' rows open in neither", async () => {
    const a = await sealedRow("zone-a")
    const b = await sealedRow("zone-b")
    const swap = (row: SecretRow, other: SecretRow): SecretRow => ({ ...row, nonce: other.nonce, ciphertext: other.ciphertext, tag: other.tag })
    expect(() => openSecret(keks, swap(a.row, b.row))).toThrow(SecretNotOpened)
    expect(() => openSecret(keks, swap(b.row, a.row))).toThrow(SecretNotOpened)
    // moved to another zone or kid, unchanged
    expect(() => openSecret(keks, { ...a.row, zone_id: "zone-b" })).toThrow(/unsealable/)
    expect(() => openSecret(keks, { ...a.row, kid: b.row.kid })).toThrow(/unsealable/)
  })

  it("a key that opens but is not the published key's private half is refused", async () => {
    const a = await sealedRow("z1")
    const other = await generateZoneKey()
    expect(() => openSecret(keks, a.row, { ...other.publicJwk, kid: a.k.kid })).toThrow(/key_mismatch/)
  })

  it("under another KEK it does not open; with that KEK as previous it opens and re-seals under the current one", async () => {
    const { k, row } = await sealedRow("z1")
    const next = randomBytes(32)
    expect(() => openSecret(makeKeks(next, []), row)).toThrow(/unknown_kek/)
    const rotated = makeKeks(next, [kek])
    expect(() => openSecret(rotated, row, k.publicJwk)).not.toThrow()
    const resealed = resealSecret(rotated, row)
    expect(resealed.kekId).toBe(rotated.currentId)
    const moved = { ...row, kek_id: resealed.kekId, nonce: resealed.nonce, ciphertext: resealed.ciphertext, tag: resealed.tag }
    expect(() => openSecret(makeKeks(next, []), moved, k.publicJwk)).not.toThrow()
  })
})
