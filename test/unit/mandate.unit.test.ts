// Mandate verification without a network: the core verifier (core/mandate) against a key set
// served from memory, and the coordinator's own rules (services/coordinator/auth.ts).
import { assert, describe, it } from "@effect/vitest"
import { Effect, Logger, References } from "effect"
import { exportJWK, generateKeyPair, SignJWT } from "jose"
import { makeTokenBucket } from "../../core/mandate/jwks.ts"
import {
  type Accept,
  authenticate,
  AuthError,
  authErrorAnswer,
  isCanonicalBase64url,
  isZoneId,
  type Mandate,
  makeMandateVerifier,
  type MandateVerifierOptions,
  MAX_TOKEN_BYTES,
  parseBearer,
  scopesOf
} from "../../core/mandate/verify.ts"
import { actsFor, makeMandateVerifier as makeCoordinatorVerifier, requireActsFor } from "../../services/coordinator/auth.ts"
import { rejected } from "../fixtures/auth.ts"

const thrown = (f: () => unknown): AuthError => {
  try {
    f()
  } catch (e) {
    assert.instanceOf(e, AuthError)
    return e as AuthError
  }
  return assert.fail("expected an AuthError")
}


const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url")
const now = () => Math.floor(Date.now() / 1000)
const ISSUER = "http://sts"
const AMBIENT: Accept = { use: "ambient", audience: ISSUER }
const claims = (over: Record<string, unknown> = {}) => ({
  iss: ISSUER,
  use: "ambient",
  aud: ISSUER,
  sub: "agent:1",
  zone_id: "zone-a",
  client_id: "app-1",
  scope: "agent:lifecycle",
  iat: now(),
  exp: now() + 300,
  jti: "j1",
  ...over
})
/** A compact JWS with any header and a junk signature: enough for every check before the key lookup. */
const unsigned = (header: Record<string, unknown>, payload: Record<string, unknown>) => `${b64(header)}.${b64(payload)}.c2ln`

const mandate = (clientId: string, scope: string): Mandate => ({
  zoneId: "zone-a",
  clientId,
  subject: "agent:1",
  issuer: ISSUER,
  use: "ambient",
  audience: [ISSUER],
  scopes: scopesOf(scope),
  jti: "j1",
  issuedAt: new Date(),
  expiresAt: new Date(Date.now() + 60_000)
})

/** A verifier whose STS must never be asked: every case here is decided before any fetch. */
const offline = () => {
  const fetched: Array<string> = []
  const verifier = makeMandateVerifier({
    jwksBaseUrl: "http://sts.invalid",
    issuer: ISSUER,
    accept: AMBIENT,
    fetch: async (url) => {
      fetched.push(url)
      throw new Error("no fetch expected")
    }
  })
  return { verifier, fetched }
}

describe("the Authorization header", () => {
  it("yields the bearer token, whatever the scheme's case", () => {
    assert.strictEqual(parseBearer("Bearer abc.def.ghi"), "abc.def.ghi")
    assert.strictEqual(parseBearer("bearer abc.def.ghi"), "abc.def.ghi")
    assert.strictEqual(parseBearer("BEARER  abc-_.d+/f.g=="), "abc-_.d+/f.g==")
  })

  it("is 401 invalid_token when absent, of another scheme or malformed", () => {
    for (const header of [undefined, null, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer a b", "Bearer a,b", "Token abc", "Bearerabc"]) {
      const e = thrown(() => parseBearer(header))
      assert.deepStrictEqual([e.status, e.code], [401, "invalid_token"], String(header))
    }
  })

  it("refuses an oversized header before looking into it", () => {
    const e = thrown(() => parseBearer(`Bearer ${"a".repeat(MAX_TOKEN_BYTES + 100)}`))
    assert.strictEqual(e.status, 401)
    assert.strictEqual(e.description, "mandate too large")
  })
})

describe("zone ids", () => {
  it("accept the documented alphabet up to 128 characters", () => {
    for (const zone of ["zone-a", "Z", "org:zone.a_b-1", "a".repeat(128)]) assert.isTrue(isZoneId(zone), zone)
  })

  it("refuse anything that could change the JWKS URL", () => {
    for (const zone of ["", "a".repeat(129), "../admin", "a/b", "a?x=1", "a&zone_id=b", "a#b", "a b", "zöne", "%2e%2e", 42, null]) {
      assert.isFalse(isZoneId(zone), String(zone))
    }
  })
})

describe("acting for an application", () => {
  it("holds for the mandate's own client", () => {
    assert.isTrue(actsFor(mandate("app-1", "agent:lifecycle"), "app-1"))
    assert.isFalse(actsFor(mandate("app-1", "agent:lifecycle"), "app-2"))
  })

  it("holds for another application only with its explicit act-for scope", () => {
    const m = mandate("app-1", "agent:lifecycle agent:act-for:app-2")
    assert.isTrue(actsFor(m, "app-2"))
    assert.isFalse(actsFor(m, "app-3"))
    // a prefix is not a grant
    assert.isFalse(actsFor(mandate("app-1", "agent:act-for:app-22"), "app-2"))
    assert.isFalse(actsFor(mandate("app-1", "agent:act-for:*"), "app-2"))
  })

  it("is 403 forbidden when required and missing", () => {
    requireActsFor(mandate("app-1", "agent:act-for:app-2"), "app-2")
    const e = thrown(() => requireActsFor(mandate("app-1", "agent:lifecycle"), "app-2"))
    assert.deepStrictEqual([e.status, e.code], [403, "forbidden"])
  })
})

describe("scopes", () => {
  it("split on spaces, ignoring empty parts", () => {
    assert.deepStrictEqual([...scopesOf("  a  b c ")], ["a", "b", "c"])
    assert.strictEqual(scopesOf("").size, 0)
  })
})

describe("mandates refused before any key is fetched", () => {
  const malformed = "malformed mandate"
  const badAlg = "mandate algorithm not allowed"
  const cases: ReadonlyArray<[string, string, string]> = [
    ["not a JWT", "abc", malformed],
    ["an unparseable payload", "e30.bm90IGpzb24.c2ln", malformed],
    ["no zone_id", unsigned({ alg: "ES256", kid: "k" }, claims({ zone_id: undefined })), "mandate claim zone_id missing"],
    ["a zone_id that would rewrite the URL", unsigned({ alg: "ES256", kid: "k" }, claims({ zone_id: "a/../../admin" })), "mandate claim zone_id invalid"],
    ["a zone_id that is not a string", unsigned({ alg: "ES256", kid: "k" }, claims({ zone_id: 7 })), "mandate claim zone_id invalid"],
    ["no kid", unsigned({ alg: "ES256" }, claims()), "mandate header kid missing"],
    ["alg none", unsigned({ alg: "none", kid: "k" }, claims()), badAlg],
    ["alg HS256", unsigned({ alg: "HS256", kid: "k" }, claims()), badAlg],
    ["alg ES384", unsigned({ alg: "ES384", kid: "k" }, claims()), badAlg],
    ["more than 8 KiB", unsigned({ alg: "ES256", kid: "k" }, claims({ pad: "x".repeat(MAX_TOKEN_BYTES) })), "mandate too large"]
  ]
  for (const [name, token, description] of cases) {
    it(`401 invalid_token for ${name}`, async () => {
      const { verifier, fetched } = offline()
      const e = await rejected(verifier.verify(token, "zone-a"))
      assert.deepStrictEqual([e.status, e.code, e.description], [401, "invalid_token", description])
      assert.deepStrictEqual(fetched, [])
      assert.notInclude(JSON.stringify(e), token)
    })
  }

  it("401 for an HMAC mandate signed with a real secret", async () => {
    const { verifier, fetched } = offline()
    const token = await new SignJWT(claims()).setProtectedHeader({ alg: "HS256", kid: "k" }).sign(new Uint8Array(32).fill(7))
    const e = await rejected(verifier.verify(token, "zone-a"))
    assert.deepStrictEqual([e.status, e.code, e.description], [401, "invalid_token", "mandate algorithm not allowed"])
    assert.deepStrictEqual(fetched, [])
  })
})

describe("the error mapping", () => {
  it("answers with the AuthError's own status and code; only 5xx is ours", () => {
    const answer = authErrorAnswer(new AuthError({ status: 403, code: "zone_mismatch", description: "d" }))
    assert.deepStrictEqual(answer, { status: 403, code: "zone_mismatch", description: "d", internal: false })
    assert.isTrue(authErrorAnswer(new AuthError({ status: 503, code: "temporarily_unavailable", description: "d" }))?.internal)
    assert.isUndefined(authErrorAnswer(new Error("other")))
  })
})

/**
 * A key server in memory: zone-a has one ES256 key (kid k1), zone-empty serves an empty set,
 * every other zone is 404. `clock` drives both the verifier and the fetch budget.
 */
const memoryIssuer = async () => {
  const { privateKey, publicKey } = await generateKeyPair("ES256", { extractable: true })
  const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256", use: "sig" }
  const fetched: Array<string> = []
  const clock = { ms: Date.now() }
  const fetch = async (url: string) => {
    const zone = new URL(url).searchParams.get("zone_id") ?? ""
    fetched.push(zone)
    if (zone === "zone-a") return new Response(JSON.stringify({ keys: [jwk] }), { status: 200 })
    if (zone === "zone-empty") return new Response(JSON.stringify({ keys: [] }), { status: 200 })
    return new Response(JSON.stringify({ error: "not_found" }), { status: 404 })
  }
  const verifier = (o: Partial<MandateVerifierOptions> = {}) =>
    makeMandateVerifier({ jwksBaseUrl: "http://sts.test", issuer: ISSUER, accept: AMBIENT, fetch, now: () => clock.ms, ...o })
  const sign = (over: Record<string, unknown> = {}) =>
    new SignJWT(claims({ iat: Math.floor(clock.ms / 1000), exp: Math.floor(clock.ms / 1000) + 300, ...over }))
      .setProtectedHeader({ alg: "ES256", kid: "k1" })
      .sign(privateKey)
  return { verifier, sign, fetch, fetched, clock }
}

const expect401 = async (p: Promise<unknown>, description?: string) => {
  const e = await rejected(p)
  assert.deepStrictEqual([e.status, e.code], [401, "invalid_token"], e.description)
  if (description !== undefined) assert.strictEqual(e.description, description)
  return e
}

describe("a mandate signed by a served key", () => {
  it("is accepted as it is, with its use and audience", async () => {
    const issuer = await memoryIssuer()
    const m = await issuer.verifier().verify(await issuer.sign(), "zone-a")
    assert.deepStrictEqual([m.issuer, m.use, m.audience], [ISSUER, "ambient", [ISSUER]])
  })

  it("is refused with padding or with any character outside base64url, in any part", async () => {
    const issuer = await memoryIssuer()
    const v = issuer.verifier()
    const token = await issuer.sign()
    const [h, p, s] = token.split(".") as [string, string, string]
    const pad = (x: string) => x + "=".repeat((4 - (x.length % 4)) % 4)
    // an ES256 signature is 86 characters: two pad characters make it "valid" padded base64
    assert.strictEqual(s.length % 4, 2)
    const padded = [`${h}.${p}.${pad(s)}`, `${pad(h)}.${p}.${s}`, `${h}.${pad(p)}.${s}`, `${h}.${p}.${s}=`, `${h}=.${p}.${s}`]
    for (const bad of padded.filter((t) => t !== token)) {
      await expect401(v.verify(bad, "zone-a"), "mandate is not canonical base64url")
    }
    const plusSlash = `${h}.${p}.${s.replace(/-/g, "+").replace(/_/g, "/")}`
    if (plusSlash !== token) await expect401(v.verify(plusSlash, "zone-a"), "mandate is not canonical base64url")
    for (const junk of [" ", "\n", "%", "!", "."]) {
      await expect401(v.verify(`${h}.${p}.${s.slice(0, 40)}${junk}${s.slice(40)}`, "zone-a"))
    }
    // the last character of 86 carries 2 bits of the signature and 4 unused ones: another
    // spelling of the same bytes is still refused
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    const last = alphabet.indexOf(s.at(-1) as string)
    const twin = `${h}.${p}.${s.slice(0, -1)}${alphabet[last ^ 0x01]}`
    assert.deepStrictEqual(Buffer.from(twin.split(".")[2] as string, "base64url"), Buffer.from(s, "base64url"))
    await expect401(v.verify(twin, "zone-a"), "mandate is not canonical base64url")
    await v.verify(token, "zone-a")
  })

  it("is decided canonical from its text exactly when decoding and re-encoding gives it back", () => {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    const roundTrip = (x: string) => /^[A-Za-z0-9_-]+$/.test(x) && Buffer.from(x, "base64url").toString("base64url") === x
    let canonical = 0
    for (let i = 0; i < 20_000; i++) {
      const length = 1 + (i % 13)
      let x = ""
      for (let j = 0; j < length; j++) x += alphabet[Math.floor(Math.random() * 64)]
      if (i % 7 === 0) x += "="
      assert.strictEqual(isCanonicalBase64url(x), roundTrip(x), x)
      if (roundTrip(x)) canonical++
    }
    // both answers occur: the comparison above is not one-sided
    assert.isAbove(canonical, 1000)
    assert.isBelow(canonical, 19_000)
  })

  it("is refused when issued in the future beyond the clock tolerance", async () => {
    const issuer = await memoryIssuer()
    const v = issuer.verifier()
    const now = Math.floor(issuer.clock.ms / 1000)
    await v.verify(await issuer.sign({ iat: now + 4 }), "zone-a")
    await expect401(v.verify(await issuer.sign({ iat: now + 60, exp: now + 600 }), "zone-a"), "mandate issued in the future")
    await expect401(v.verify(await issuer.sign({ iat: "soon" }), "zone-a"), "mandate claim iat invalid")
    await expect401(v.verify(await issuer.sign({ iat: undefined }), "zone-a"), "mandate claim iat missing")
  })

  it("is refused when iss is not the configured issuer", async () => {
    const issuer = await memoryIssuer()
    const v = issuer.verifier()
    for (const iss of ["http://elsewhere", "http://sts/", "HTTP://STS", ""]) {
      await expect401(v.verify(await issuer.sign({ iss }), "zone-a"))
    }
    await expect401(v.verify(await issuer.sign({ iss: undefined }), "zone-a"), "mandate claim iss missing")
    // the same key, another configured issuer
    await expect401(issuer.verifier({ issuer: "http://other", accept: { use: "ambient", audience: "http://other" } })
      .verify(await issuer.sign(), "zone-a"), "mandate issuer not accepted")
  })

  it("is refused per-call where ambient is required, and ambient where per-call is", async () => {
    const issuer = await memoryIssuer()
    const ambient = issuer.verifier()
    const perCall = issuer.verifier({ accept: { use: "per_call", resource: "mcp:files" } })
    const perCallToken = await issuer.sign({ use: "per_call", aud: ["mcp:files"] })
    await expect401(ambient.verify(perCallToken, "zone-a"), "per_call mandate not accepted here")
    // even with the issuer in aud, a per-call mandate is no ambient one
    await expect401(ambient.verify(await issuer.sign({ use: "per_call", aud: [ISSUER, "mcp:files"] }), "zone-a"))
    await expect401(perCall.verify(await issuer.sign(), "zone-a"), "ambient mandate not accepted here")
    await expect401(perCall.verify(await issuer.sign({ aud: ["mcp:files"] }), "zone-a"), "ambient mandate not accepted here")
    for (const use of [undefined, "both", "", 1]) await expect401(ambient.verify(await issuer.sign({ use }), "zone-a"))
    const m = await perCall.verify(perCallToken, "zone-a")
    assert.deepStrictEqual([m.use, m.audience], ["per_call", ["mcp:files"]])
  })

  it("is refused per-call when aud does not contain the resource", async () => {
    const issuer = await memoryIssuer()
    const perCall = issuer.verifier({ accept: { use: "per_call", resource: "mcp:files" } })
    for (const aud of [["mcp:other"], "mcp:other", [ISSUER], ["mcp:files:x", "mcp:file"], [], "", [7]]) {
      await expect401(perCall.verify(await issuer.sign({ use: "per_call", aud }), "zone-a"))
    }
    await expect401(perCall.verify(await issuer.sign({ use: "per_call", aud: undefined }), "zone-a"), "mandate claim aud missing")
    await perCall.verify(await issuer.sign({ use: "per_call", aud: ["mcp:other", "mcp:files"] }), "zone-a")
    await perCall.verify(await issuer.sign({ use: "per_call", aud: "mcp:files" }), "zone-a")
  })

  it("is refused ambient when aud is not the issuer", async () => {
    const issuer = await memoryIssuer()
    for (const aud of ["mcp:files", [], undefined]) await expect401(issuer.verifier().verify(await issuer.sign({ aud }), "zone-a"))
  })
})

describe("key set fetches", () => {
  it("remember a zone whose key set is empty or 404 as unknown, until the negative TTL ends", async () => {
    const issuer = await memoryIssuer()
    const v = issuer.verifier({ unknownZoneTtlMs: 10_000 })
    for (const zone of ["zone-empty", "zone-ghost"]) {
      for (let i = 0; i < 3; i++) await expect401(v.verify(await issuer.sign({ zone_id: zone }), zone), "unknown zone")
    }
    assert.deepStrictEqual(issuer.fetched, ["zone-empty", "zone-ghost"])
    issuer.clock.ms += 10_001
    await expect401(v.verify(await issuer.sign({ zone_id: "zone-ghost" }), "zone-ghost"), "unknown zone")
    assert.deepStrictEqual(issuer.fetched, ["zone-empty", "zone-ghost", "zone-ghost"])
  })

  it("are shared by concurrent lookups of one zone", async () => {
    const issuer = await memoryIssuer()
    const v = issuer.verifier()
    const tokens = await Promise.all(Array.from({ length: 20 }, () => issuer.sign({ zone_id: "zone-ghost" })))
    const errors = await Promise.all(tokens.map((t) => rejected(v.verify(t, "zone-ghost"))))
    assert.isTrue(errors.every((e) => e.status === 401))
    assert.deepStrictEqual(issuer.fetched, ["zone-ghost"])
  })

  it("past the global budget answer 503 for zones without keys, while cached zones still verify", async () => {
    const issuer = await memoryIssuer()
    const v = issuer.verifier({ fetchesPerSecond: 2, fetchBurst: 3 })
    const good = await issuer.sign()
    await v.verify(good, "zone-a")
    const statuses: Array<number> = []
    for (let i = 0; i < 10; i++) {
      const zone = `zone-${i}`
      statuses.push((await rejected(v.verify(await issuer.sign({ zone_id: zone }), zone))).status)
    }
    assert.deepStrictEqual(statuses, [401, 401, 503, 503, 503, 503, 503, 503, 503, 503])
    assert.strictEqual(issuer.fetched.length, 3)
    await v.verify(good, "zone-a")
    issuer.clock.ms += 1_000
    const after = await Promise.all([11, 12, 13].map(async (i) => rejected(v.verify(await issuer.sign({ zone_id: `zone-${i}` }), `zone-${i}`))))
    assert.deepStrictEqual(after.map((e) => e.status).sort(), [401, 401, 503])
    assert.strictEqual(issuer.fetched.length, 5)
    assert.deepStrictEqual(v.stats().fetches, 5)
  })

  it("a token bucket refills at its rate up to its burst", () => {
    const clock = { ms: 0 }
    const bucket = makeTokenBucket(10, 3, () => clock.ms)
    assert.deepStrictEqual([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [true, true, true, false])
    clock.ms += 100
    assert.deepStrictEqual([bucket.take(), bucket.take()], [true, false])
    clock.ms += 60_000
    assert.deepStrictEqual([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [true, true, true, false])
  })

  it("a 503 logs why, without the token", async () => {
    const lines: Array<{ message: unknown; annotations: Record<string, unknown> }> = []
    const capture = Logger.make<unknown, void>(({ fiber, message }) => {
      lines.push({ message, annotations: { ...fiber.getRef(References.CurrentLogAnnotations) } })
    })
    const verifier = makeMandateVerifier({
      jwksBaseUrl: "http://sts.invalid",
      issuer: ISSUER,
      accept: AMBIENT,
      fetch: async () => new Response("down", { status: 502 })
    })
    const { privateKey } = await generateKeyPair("ES256")
    const token = await new SignJWT(claims()).setProtectedHeader({ alg: "ES256", kid: "k1" }).sign(privateKey)
    const e = await Effect.runPromise(Effect.flip(authenticate(verifier, `Bearer ${token}`, "zone-a")).pipe(
      Effect.provide(Logger.layer([capture]))
    ))
    assert.deepStrictEqual([e.status, e.code], [503, "temporarily_unavailable"])
    assert.strictEqual(lines.length, 1)
    assert.include(String(lines[0]?.annotations.reason), "HTTP 502")
    assert.include(String(lines[0]?.annotations.reason), "zone-a")
    assert.notInclude(JSON.stringify(lines), token)
    assert.notInclude(JSON.stringify(lines), token.split(".")[2] as string)
  })
})

describe("the coordinator's verifier", () => {
  it("accepts ambient mandates of its issuer with agent:lifecycle only", async () => {
    const issuer = await memoryIssuer()
    const v = makeCoordinatorVerifier({ stsUrl: "http://sts.test", issuer: ISSUER, now: () => issuer.clock.ms, fetch: issuer.fetch })
    await v.verify(await issuer.sign(), "zone-a")
    const e = await rejected(v.verify(await issuer.sign({ scope: "agent:read" }), "zone-a"))
    assert.deepStrictEqual([e.status, e.code], [403, "missing_scope"])
    await expect401(v.verify(await issuer.sign({ use: "per_call", aud: ["mcp:files"] }), "zone-a"))
  })
})
