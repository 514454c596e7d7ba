// The mandate verifier (core/mandate, with the coordinator's rules on top) against the test STS
// over loopback: real keys, a real JWKS endpoint, real HTTP fetches counted per zone.
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { generateKeyPair, importJWK, SignJWT } from "jose"
import { randomBytes } from "node:crypto"
import net from "node:net"
import { makeMandateVerifier as makeCoreVerifier } from "../../core/mandate/verify.ts"
import { type MandateAlg, type MintClaims, startTestSts, type TestSts } from "../../core/testing/index.ts"
import {
  actsFor,
  authenticate,
  type CoordinatorVerifierOptions,
  makeMandateVerifier,
  requireActsFor
} from "../../services/coordinator/auth.ts"
import { rejected } from "../fixtures/auth.ts"

let sts: TestSts
beforeAll(async () => {
  sts = await startTestSts()
})
afterAll(() => sts.stop())

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const now = () => Math.floor(Date.now() / 1000)
/** A zone of its own per test, so the STS's request counter is the test's alone. */
const freshZone = async (alg?: MandateAlg) => {
  const zone = `z-${randomBytes(5).toString("hex")}`
  await sts.addZone(zone, alg === undefined ? {} : { alg })
  return zone
}
const verifierFor = (o: Partial<CoordinatorVerifierOptions> = {}) => makeMandateVerifier({ stsUrl: sts.url, issuer: sts.issuer, ...o })
const lifecycle = (zone: string, over: Partial<MintClaims> = {}): MintClaims => ({
  zone_id: zone,
  client_id: "app-1",
  scope: "agent:lifecycle",
  ...over
})

const expectError = async (p: Promise<unknown>, status: number, code: string) => {
  const e = await rejected(p)
  assert.deepStrictEqual([e.status, e.code], [status, code], e.description)
  return e
}

describe("when the mandate is valid", () => {
  it("yields the mandate's claims", async () => {
    const zone = await freshZone()
    const exp = now() + 120
    const token = await sts.mint(lifecycle(zone, {
      sub: "agent:7",
      jti: "jti-1",
      exp,
      scope: "agent:lifecycle agent:act-for:app-2",
      agent_session_id: "sess-1",
      delegation_edge_id: "edge-1"
    }))
    const m = await verifierFor().verify(token, zone)
    assert.deepStrictEqual(
      [m.zoneId, m.clientId, m.subject, [...m.scopes], m.jti, m.expiresAt.getTime(), m.agentSessionId, m.delegationEdgeId],
      [zone, "app-1", "agent:7", ["agent:lifecycle", "agent:act-for:app-2"], "jti-1", exp * 1000, "sess-1", "edge-1"]
    )
    const plain = await verifierFor().verifyAuthorization(`Bearer ${await sts.mint(lifecycle(zone))}`, zone)
    assert.isFalse("agentSessionId" in plain || "delegationEdgeId" in plain)
  })

  for (const alg of ["EdDSA", "RS256"] as const) {
    it(`accepts ${alg} when the zone's JWKS key says so`, async () => {
      const zone = await freshZone(alg)
      const m = await verifierFor().verify(await sts.mint(lifecycle(zone)), zone)
      assert.strictEqual(m.zoneId, zone)
    })
  }

  it("tolerates 5 s of clock skew on exp, not more", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    await v.verify(await sts.mint(lifecycle(zone, { iat: now() - 60, exp: now() - 2 })), zone)
    await expectError(v.verify(await sts.mint(lifecycle(zone, { iat: now() - 60, exp: now() - 30 })), zone), 401, "invalid_token")
  })

  it("is usable as an Effect", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    const m = await Effect.runPromise(authenticate(v, `Bearer ${await sts.mint(lifecycle(zone))}`, zone))
    assert.strictEqual(m.clientId, "app-1")
    const e = await Effect.runPromise(Effect.flip(authenticate(v, undefined, zone)))
    assert.deepStrictEqual([e._tag, e.status, e.code], ["AuthError", 401, "invalid_token"])
  })
})

describe("when the mandate is not valid", () => {
  it("is 401 when expired or not yet valid", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    const e = await expectError(v.verify(await sts.mint(lifecycle(zone, { iat: now() - 600, exp: now() - 60 })), zone), 401, "invalid_token")
    assert.strictEqual(e.description, "mandate expired")
    await expectError(v.verify(await sts.mint(lifecycle(zone, { nbf: now() + 60 })), zone), 401, "invalid_token")
  })

  it("is 401 when signed by a key the JWKS does not serve, even under a served kid", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    const forged = await sts.mint(lifecycle(zone), { foreignKey: true, kid: sts.currentKid(zone) })
    const e = await expectError(v.verify(forged, zone), 401, "invalid_token")
    assert.strictEqual(e.description, "mandate signature invalid")
    assert.notInclude(JSON.stringify(e), forged)
    await expectError(v.verify(await sts.mint(lifecycle(zone), { foreignKey: true }), zone), 401, "invalid_token")
  })

  it("is 401 when signed by another zone's key: keys are looked up in the claimed zone only", async () => {
    const [a, b] = [await freshZone(), await freshZone()]
    const token = await sts.mint(lifecycle(a), { signWithZone: b, kid: sts.currentKid(b) })
    await expectError(verifierFor().verify(token, a), 401, "invalid_token")
  })

  it("is 401 when the signature is tampered with", async () => {
    const zone = await freshZone()
    const token = await sts.mint(lifecycle(zone))
    const [h, p, s] = token.split(".") as [string, string, string]
    const bytes = Buffer.from(s, "base64url")
    bytes[5] = (bytes[5] ?? 0) ^ 0x01
    await expectError(verifierFor().verify(`${h}.${p}.${bytes.toString("base64url")}`, zone), 401, "invalid_token")
  })

  it("is 401 for an HS256 mandate keyed with the zone's public key (algorithm confusion)", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    await v.verify(await sts.mint(lifecycle(zone)), zone)
    const jwks = (await (await fetch(`${sts.url}/.well-known/jwks.json?zone_id=${zone}`)).json()) as { keys: Array<{ x: string }> }
    const secret = new TextEncoder().encode(JSON.stringify(jwks.keys[0]))
    const token = await new SignJWT({ iss: sts.issuer, use: "ambient", aud: sts.issuer, sub: "a", zone_id: zone, client_id: "app-1", scope: "agent:lifecycle", jti: "j", iat: now(), exp: now() + 60 })
      .setProtectedHeader({ alg: "HS256", kid: sts.currentKid(zone) })
      .sign(secret)
    await expectError(v.verify(token, zone), 401, "invalid_token")
  })

  it("is 401 when a required claim is missing", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    for (const claim of ["zone_id", "client_id", "scope", "sub", "jti", "exp", "iat", "iss", "use", "aud"]) {
      const e = await expectError(v.verify(await sts.mint(lifecycle(zone), { omit: [claim] }), zone), 401, "invalid_token")
      assert.include(e.description, claim)
    }
    await expectError(v.verify(await sts.mint(lifecycle(zone), { noKid: true }), zone), 401, "invalid_token")
    await expectError(v.verify(await sts.mint(lifecycle(zone, { extra: { agent_session_id: 42 } })), zone), 401, "invalid_token")
  })

  it("is 401 for a token from another issuer, even one serving the same zone", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    await expectError(v.verify(await sts.mint(lifecycle(zone, { iss: "http://elsewhere" })), zone), 401, "invalid_token")
    const other = await startTestSts({ zones: [zone], issuer: "http://other-issuer" })
    try {
      const before = sts.jwksRequests(zone)
      const e = await expectError(v.verify(await other.mint(lifecycle(zone)), zone), 401, "invalid_token")
      assert.strictEqual(e.description, "mandate issuer not accepted")
      // refused on its claims: it cost no key fetch
      assert.strictEqual(sts.jwksRequests(zone), before)
      assert.strictEqual(other.jwksRequests(zone), 0)
      // the other issuer's own verifier takes it, ours does not
      await makeMandateVerifier({ stsUrl: other.url, issuer: other.issuer }).verify(await other.mint(lifecycle(zone)), zone)
    } finally {
      await other.stop()
    }
    await v.verify(await sts.mint(lifecycle(zone)), zone)
  })

  it("is 401 for a per-call mandate: the coordinator takes ambient ones only", async () => {
    const zone = await freshZone()
    const token = await sts.mint(lifecycle(zone, { use: "per_call", resources: ["mcp:files"] }))
    const e = await expectError(verifierFor().verify(token, zone), 401, "invalid_token")
    assert.strictEqual(e.description, "per_call mandate not accepted here")
    // where per-call mandates for that resource are accepted, it is one
    const gatewayLike = makeCoreVerifier({ jwksBaseUrl: sts.url, issuer: sts.issuer, accept: { use: "per_call", resource: "mcp:files" } })
    assert.strictEqual((await gatewayLike.verify(token, zone)).use, "per_call")
    await expectError(
      makeCoreVerifier({ jwksBaseUrl: sts.url, issuer: sts.issuer, accept: { use: "per_call", resource: "mcp:other" } }).verify(token, zone),
      401,
      "invalid_token"
    )
  })

  it("is 401 when the Authorization header is absent or malformed", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    const token = await sts.mint(lifecycle(zone))
    for (const header of [undefined, "", token, `Basic ${token}`, `Bearer ${token} extra`, "Bearer not-a-jwt"]) {
      await expectError(v.verifyAuthorization(header, zone), 401, "invalid_token")
    }
    await v.verifyAuthorization(`bearer ${token}`, zone)
  })

  it("is 401 for a zone the STS does not know, asking it once per cooldown", async () => {
    const zone = `ghost-${randomBytes(4).toString("hex")}`
    const v = verifierFor({ cooldownMs: 60_000 })
    for (let i = 0; i < 5; i++) {
      await expectError(v.verify(await sts.mint(lifecycle(zone), { foreignKey: true }), zone), 401, "invalid_token")
    }
    assert.strictEqual(sts.jwksRequests(zone), 1)
  })
})

describe("when the mandate is valid but not for this route", () => {
  it("is 403 zone_mismatch for a zone-B mandate on a zone-A route", async () => {
    const [a, b] = [await freshZone(), await freshZone()]
    await expectError(verifierFor().verify(await sts.mint(lifecycle(b)), a), 403, "zone_mismatch")
  })

  it("is 403 missing_scope without agent:lifecycle", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    for (const scope of ["", "agent:read", "agent:lifecycle:admin", "agent:lifecyclex"]) {
      await expectError(v.verify(await sts.mint(lifecycle(zone, { scope })), zone), 403, "missing_scope")
    }
  })

  it("acts for another application only with its act-for scope", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    const m = await v.verify(await sts.mint(lifecycle(zone, { scope: "agent:lifecycle agent:act-for:app-2" })), zone)
    assert.deepStrictEqual([actsFor(m, "app-1"), actsFor(m, "app-2"), actsFor(m, "app-3")], [true, true, false])
    requireActsFor(m, "app-2")
    const plain = await v.verify(await sts.mint(lifecycle(zone)), zone)
    const e = await rejected(Promise.resolve().then(() => requireActsFor(plain, "app-2")))
    assert.deepStrictEqual([e.status, e.code], [403, "forbidden"])
  })
})

describe("the zone key cache", () => {
  it("fetches a zone's JWKS once for many verifications, concurrent ones included", async () => {
    const zone = await freshZone()
    const v = verifierFor()
    const tokens = await Promise.all(Array.from({ length: 20 }, () => sts.mint(lifecycle(zone))))
    await Promise.all(tokens.map((t) => v.verify(t, zone)))
    for (const t of tokens) await v.verify(t, zone)
    assert.strictEqual(sts.jwksRequests(zone), 1)
  })

  it("after a rotation, refetches once for the new kid, and not for a flood of unknown kids within the cooldown", async () => {
    const zone = await freshZone()
    const cooldownMs = 400
    const v = verifierFor({ cooldownMs })
    const old = await sts.mint(lifecycle(zone))
    await v.verify(old, zone)
    assert.strictEqual(sts.jwksRequests(zone), 1)

    await sts.rotate(zone)
    const rotated = await sts.mint(lifecycle(zone))
    // within the cooldown of the first fetch, the new kid is not looked up yet
    await expectError(v.verify(rotated, zone), 401, "invalid_token")
    assert.strictEqual(sts.jwksRequests(zone), 1)

    await sleep(cooldownMs + 100)
    await v.verify(rotated, zone)
    await v.verify(rotated, zone)
    await v.verify(old, zone)
    assert.strictEqual(sts.jwksRequests(zone), 2)

    const flood = await Promise.all(Array.from({ length: 50 }, () => sts.mint(lifecycle(zone), { foreignKey: true })))
    for (const token of flood) await expectError(v.verify(token, zone), 401, "invalid_token")
    await Promise.all(flood.map((t) => rejected(v.verify(t, zone))))
    assert.strictEqual(sts.jwksRequests(zone), 2)

    // once the cooldown has passed, a concurrent flood still costs a single fetch
    await sleep(cooldownMs + 100)
    await Promise.all(flood.map((t) => rejected(v.verify(t, zone))))
    assert.strictEqual(sts.jwksRequests(zone), 3)
  })

  it("stops accepting a withdrawn key once the JWKS is refetched", async () => {
    const zone = await freshZone()
    const v = verifierFor({ cooldownMs: 0 })
    const old = await sts.mint(lifecycle(zone))
    await v.verify(old, zone)
    await sts.rotate(zone, { keepOld: false })
    await v.verify(await sts.mint(lifecycle(zone)), zone)
    await expectError(v.verify(old, zone), 401, "invalid_token")
  })

  it("refetches when the cached set is older than cacheMaxAge", async () => {
    const zone = await freshZone()
    const v = verifierFor({ cacheMaxAgeMs: 200 })
    const token = await sts.mint(lifecycle(zone))
    await v.verify(token, zone)
    await v.verify(token, zone)
    assert.strictEqual(sts.jwksRequests(zone), 1)
    await sleep(300)
    await v.verify(token, zone)
    assert.strictEqual(sts.jwksRequests(zone), 2)
  })

  it("keeps at most maxZones key sets, dropping the least recently used", async () => {
    const [a, b] = [await freshZone(), await freshZone()]
    const v = verifierFor({ maxZones: 1 })
    const [ta, tb] = [await sts.mint(lifecycle(a)), await sts.mint(lifecycle(b))]
    await v.verify(ta, a)
    await v.verify(ta, a)
    await v.verify(tb, b)
    await v.verify(ta, a)
    assert.deepStrictEqual([sts.jwksRequests(a), sts.jwksRequests(b)], [2, 1])
  })
})

describe("JWKS fetches for unknown zones", () => {
  /** Mandates that look right in every claim, for zones the STS has never heard of. */
  const forgedForZones = async (zones: ReadonlyArray<string>) => {
    const { privateKey } = await generateKeyPair("ES256")
    const iat = now()
    return Promise.all(zones.map((zone) =>
      new SignJWT({ iss: sts.issuer, use: "ambient", aud: sts.issuer, sub: "agent:x", zone_id: zone, client_id: "app-1", scope: "agent:lifecycle", jti: zone, iat, exp: iat + 300 })
        .setProtectedHeader({ alg: "ES256", kid: `k-${zone}` })
        .sign(privateKey)
    ))
  }

  it("stay bounded for 1,000 requests with fresh random zone ids, and none is accepted", async () => {
    const v = verifierFor()
    const zones = Array.from({ length: 1_000 }, () => `rnd-${randomBytes(8).toString("hex")}`)
    const tokens = await forgedForZones(zones)
    const before = sts.jwksRequestsTotal()
    const started = performance.now()
    const statuses = new Map<number, number>()
    // 20 clients at a time, as fast as they can
    for (let i = 0; i < tokens.length; i += 20) {
      const batch = tokens.slice(i, i + 20).map((t, j) => rejected(v.verify(t, zones[i + j] as string)))
      for (const e of await Promise.all(batch)) statuses.set(e.status, (statuses.get(e.status) ?? 0) + 1)
    }
    const seconds = (performance.now() - started) / 1000
    const fetches = sts.jwksRequestsTotal() - before
    // the defaults: a burst of 50, then 20 per second
    const bound = 50 + Math.ceil(20 * seconds) + 1
    console.log(`1,000 requests for fresh unknown zones in ${seconds.toFixed(2)} s: ${fetches} JWKS fetches (bound ${bound}); answers ${JSON.stringify(Object.fromEntries(statuses))}`)
    assert.isAtMost(fetches, bound)
    assert.isAtMost(fetches, 200)
    assert.strictEqual((statuses.get(401) ?? 0) + (statuses.get(503) ?? 0), 1_000)
    assert.strictEqual(statuses.get(401), fetches)
  })

  it("share one fetch among concurrent requests for one unknown zone", async () => {
    const zone = `ghost-${randomBytes(4).toString("hex")}`
    const v = verifierFor()
    const tokens = await forgedForZones(Array.from({ length: 40 }, () => zone))
    const errors = await Promise.all(tokens.map((t) => rejected(v.verify(t, zone))))
    assert.deepStrictEqual([...new Set(errors.map((e) => `${e.status} ${e.description}`))], ["401 unknown zone"])
    assert.strictEqual(sts.jwksRequests(zone), 1)
  })

  it("past the budget, answer 503 for unknown zones while known zones keep verifying", async () => {
    const zone = await freshZone()
    const v = verifierFor({ fetchBurst: 3, fetchesPerSecond: 1 })
    const token = await sts.mint(lifecycle(zone))
    await v.verify(token, zone)
    const ghosts = Array.from({ length: 10 }, () => `rnd-${randomBytes(8).toString("hex")}`)
    const tokens = await forgedForZones(ghosts)
    const errors = await Promise.all(tokens.map((t, i) => rejected(v.verify(t, ghosts[i] as string))))
    assert.deepStrictEqual(errors.map((e) => e.status).sort(), [401, 401, 503, 503, 503, 503, 503, 503, 503, 503])
    assert.deepStrictEqual(errors.filter((e) => e.status === 503).map((e) => e.code), Array(8).fill("temporarily_unavailable"))
    await v.verify(token, zone)
    assert.strictEqual(sts.jwksRequests(zone), 1)
  })
})

describe("when the STS cannot answer", () => {
  it("is 503 temporarily_unavailable when it is down, and never accepts", async () => {
    const down = await startTestSts({ zones: ["zone-a"] })
    const token = await down.mint(lifecycle("zone-a"))
    await down.stop()
    await expectError(makeMandateVerifier({ stsUrl: down.url, issuer: down.issuer }).verify(token, "zone-a"), 503, "temporarily_unavailable")
  })

  it("keeps verifying from cached keys while fresh, then fails closed with 503", async () => {
    const own = await startTestSts({ zones: ["zone-a"] })
    const v = makeMandateVerifier({ stsUrl: own.url, issuer: own.issuer, cacheMaxAgeMs: 300 })
    const token = await own.mint(lifecycle("zone-a"))
    await v.verify(token, "zone-a")
    await own.stop()
    await v.verify(token, "zone-a")
    await sleep(400)
    await expectError(v.verify(token, "zone-a"), 503, "temporarily_unavailable")
  })

  it("is 503 when the STS answers 5xx or a body that is no key set", async () => {
    const zone = await freshZone()
    const token = await sts.mint(lifecycle(zone))
    sts.outage(500)
    try {
      const e = await expectError(verifierFor().verify(token, zone), 503, "temporarily_unavailable")
      assert.include(e.description, "500")
    } finally {
      sts.outage(undefined)
    }
    await verifierFor().verify(token, zone)
    const garbage = makeMandateVerifier({
      stsUrl: sts.url,
      issuer: sts.issuer,
      fetch: async () => new Response(JSON.stringify({ keys: "nope" }), { status: 200 })
    })
    await expectError(garbage.verify(token, zone), 503, "temporarily_unavailable")
  })

  it("is 503 when the STS accepts the connection but never answers", async () => {
    const sockets = new Set<net.Socket>()
    const silent = net.createServer((socket) => void sockets.add(socket))
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", () => r()))
    const port = (silent.address() as net.AddressInfo).port
    try {
      const v = makeMandateVerifier({ stsUrl: `http://127.0.0.1:${port}`, issuer: sts.issuer, timeoutMs: 200 })
      const token = await sts.mint(lifecycle("zone-a"), { foreignKey: true })
      const e = await expectError(v.verify(token, "zone-a"), 503, "temporarily_unavailable")
      assert.include(e.description, "in time")
    } finally {
      for (const socket of sockets) socket.destroy()
      silent.close()
    }
  })
})

it("the test STS serves public keys only, 400 without a zone and 404 for an unknown one", async () => {
  const zone = await freshZone()
  const res = await fetch(`${sts.url}/.well-known/jwks.json?zone_id=${zone}`)
  const { keys } = (await res.json()) as { keys: Array<Record<string, unknown>> }
  assert.strictEqual(keys.length, 1)
  assert.isUndefined(keys[0]?.d)
  assert.deepStrictEqual([keys[0]?.kid, keys[0]?.alg], [sts.currentKid(zone), "ES256"])
  await importJWK(keys[0] as Parameters<typeof importJWK>[0], "ES256")
  assert.strictEqual((await fetch(`${sts.url}/.well-known/jwks.json`)).status, 400)
  assert.strictEqual((await fetch(`${sts.url}/.well-known/jwks.json?zone_id=nope`)).status, 404)
})
