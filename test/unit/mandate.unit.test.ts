import { assert, describe, it } from "@effect/vitest"
import { SignJWT } from "jose"
import {
  actsFor,
  AuthError,
  authErrorAnswer,
  isZoneId,
  type Mandate,
  makeMandateVerifier,
  MAX_TOKEN_BYTES,
  parseBearer,
  requireActsFor,
  scopesOf
} from "../../services/coordinator/auth.ts"
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
const claims = (over: Record<string, unknown> = {}) => ({
  iss: "http://sts",
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
  scopes: scopesOf(scope),
  jti: "j1",
  expiresAt: new Date(Date.now() + 60_000)
})

/** A verifier whose STS must never be asked: every case here is decided before any fetch. */
const offline = () => {
  const fetched: Array<string> = []
  const verifier = makeMandateVerifier({
    stsUrl: "http://sts.invalid",
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
