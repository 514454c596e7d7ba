// The sts's internal routes against the real stack (Postgres, Redis, OPA), called as the api
// calls them: HMAC-signed (core/internal-call.ts). Refusals of the signature, sealed
// credentials that open only where they were sealed, and policy checks by OPA itself.
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type DatabaseShape, makeDatabase, makeKysely } from "../../core/db/database.ts"
import { internalCall, signRequest } from "../../core/internal-call.ts"
import {
  emptyDatabase,
  freePort,
  redisPrefix,
  type RunningService,
  spareRedisServer,
  stackEnv,
  startService,
  type TestDatabase,
  testRedis,
  type TestRedis
} from "../../core/testing/index.ts"
import { openCredential } from "../../services/sts/credentials.ts"

const hmacKey = randomBytes(32)
const previousKey = randomBytes(32)
const kek = randomBytes(32)
// distinctive, so that finding it anywhere (a log line, the ciphertext) cannot be chance
const SECRET = `sk_live_${randomBytes(12).toString("hex")}`

let db: TestDatabase
let database: DatabaseShape
let redis: TestRedis
let sts: RunningService

const baseEnv = () => ({
  DATABASE_URL: db.url,
  REDIS_URL: stackEnv().REDIS_URL,
  REDIS_KEY_PREFIX: redis.keys.prefix,
  INSECURE_HTTP: "true",
  ISSUER_URL: "http://sts.test",
  ZONE_KEK: kek.toString("hex"),
  OPA_URL: stackEnv().OPA_URL,
  SERVICE_HMAC_KEY: hmacKey.toString("hex"),
  SERVICE_HMAC_PREVIOUS_KEYS: previousKey.toString("hex"),
  // every log line the service can write is written, so that the secret test sees them all
  LOG_LEVEL: "debug"
})

beforeAll(async () => {
  db = await emptyDatabase("sts_internal")
  redis = await testRedis("stsint")
  sts = await startService("sts", baseEnv())
  database = makeDatabase(makeKysely(db.url, 2))
})

afterAll(async () => {
  await sts?.stop()
  await database?.db.destroy()
  await redis?.close()
  await db?.drop()
})

const signed = (method: string, path: string, body?: unknown, key = hmacKey) =>
  internalCall({ baseUrl: sts.url, key }, method, path, body)

/** A request sent exactly as given: for headers the client would never produce. */
const raw = async (path: string, body: string, header?: string) => {
  const res = await fetch(`${sts.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(header === undefined ? {} : { "x-caracal-signature": header }) },
    body
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

const nowSeconds = () => Math.floor(Date.now() / 1000)
const COMPILE = "/internal/v1/policies/compile"
const CREDENTIALS = "/internal/v1/credentials"
const VALID = `package caracal.authz\n\nresult := {"allow": true, "reason": "ok"}\n`

const opaPolicyIds = async () => {
  const res = await fetch(`${stackEnv().OPA_URL}/v1/policies`)
  const body = (await res.json()) as { result: Array<{ id: string }> }
  return body.result.map((p) => p.id)
}

describe("when an internal call is not properly signed", () => {
  // a zone of its own: a signature over the same request in the same second would be the same nonce
  const body = JSON.stringify({ zone_id: "z-signing", modules: { main: VALID } })

  it("an unsigned call is refused with 401 invalid_signature", async () => {
    const r = await raw(COMPILE, body)
    expect(r.status).toBe(401)
    expect(r.body.error).toBe("invalid_signature")
  })

  it("a call whose signature has one flipped character is refused", async () => {
    const header = signRequest(hmacKey, "POST", COMPILE, body, nowSeconds())
    const flipped = header.slice(0, -1) + (header.endsWith("0") ? "1" : "0")
    expect((await raw(COMPILE, body, flipped)).status).toBe(401)
  })

  it("a call signed by an unknown key is refused", async () => {
    expect((await raw(COMPILE, body, signRequest(randomBytes(32), "POST", COMPILE, body, nowSeconds()))).status).toBe(401)
  })

  it("a signed body changed in transit is refused", async () => {
    const header = signRequest(hmacKey, "POST", COMPILE, body, nowSeconds())
    expect((await raw(COMPILE, body.replace("z-signing", "z-signinG"), header)).status).toBe(401)
  })

  it("a signature made for another route is refused", async () => {
    const header = signRequest(hmacKey, "POST", CREDENTIALS, body, nowSeconds())
    expect((await raw(COMPILE, body, header)).status).toBe(401)
  })

  it("a signature older than 30 s is refused", async () => {
    const r = await raw(COMPILE, body, signRequest(hmacKey, "POST", COMPILE, body, nowSeconds() - 45))
    expect(r.status).toBe(401)
    expect(r.body.error).toBe("invalid_signature")
  })

  it("a signature dated more than 30 s ahead is refused", async () => {
    expect((await raw(COMPILE, body, signRequest(hmacKey, "POST", COMPILE, body, nowSeconds() + 45))).status).toBe(401)
  })

  it("a replayed call is refused the second time, with the same answer as any other refusal", async () => {
    const header = signRequest(hmacKey, "POST", COMPILE, body, nowSeconds())
    expect((await raw(COMPILE, body, header)).status).toBe(200)
    const again = await raw(COMPILE, body, header)
    expect(again.status).toBe(401)
    expect(again.body).toEqual((await raw(COMPILE, body)).body)
    // the nonce sits in db1 under the service's prefix
    await redis.redis.select(1)
    expect(await redis.redis.exists(`${redis.keys.prefix}:internal-nonce:${header.split("sig=")[1]}`)).toBe(1)
    await redis.redis.select(0)
  })

  it("a call signed with a previous key (SERVICE_HMAC_PREVIOUS_KEYS) is accepted", async () => {
    expect((await signed("POST", COMPILE, { zone_id: "z1", modules: { main: VALID } }, previousKey)).status).toBe(200)
  })

  it("the same request sent twice at once by the client is accepted both times (distinct signatures)", async () => {
    const twice = await Promise.all([1, 2].map(() => signed("POST", COMPILE, { zone_id: "z-twice", modules: { main: VALID } })))
    expect(twice.map((r) => r.status)).toEqual([200, 200])
  })
})

describe("when the api checks a policy", () => {
  it("a valid module compiles: 200 {ok: true}, and nothing is left in OPA", async () => {
    const before = await opaPolicyIds()
    const r = await signed("POST", COMPILE, { zone_id: "z1", modules: { main: VALID } })
    expect(r).toEqual({ status: 200, body: { ok: true } })
    const after = await opaPolicyIds()
    expect(after.filter((id) => id.startsWith(`${redis.keys.prefix}-validate-`))).toEqual(before.filter((id) => id.startsWith(`${redis.keys.prefix}-validate-`)))
  })

  it("a module with a parse error is 422 invalid_policy with OPA's message, naming the module", async () => {
    const broken = `package caracal.authz\n\nresult := {"allow": true\n`
    const r = await signed("POST", COMPILE, { zone_id: "z1", modules: { "authz.rego": broken } })
    expect(r.status).toBe(422)
    const body = r.body as Record<string, string>
    expect(body.error).toBe("invalid_policy")
    expect(body.message).toContain("rego_parse_error")
    expect(body.message).toContain("non-terminated object")
    expect(body.message).toMatch(/^authz\.rego:\d+:\d+: rego_parse_error: /)
    expect(body.error_description).toBe(body.message)
    expect((await opaPolicyIds()).some((id) => id.startsWith(`${redis.keys.prefix}-validate-`))).toBe(false)
  })

  it("a module that parses but does not compile is 422 with OPA's compile error", async () => {
    const unsafe = `package caracal.authz\n\nresult := {"allow": allowed_by_nobody}\n`
    const r = await signed("POST", COMPILE, { zone_id: "z1", modules: { main: unsafe } })
    expect(r.status).toBe(422)
    expect((r.body as { message: string }).message).toContain("var allowed_by_nobody is unsafe")
  })

  it("a module in another package is 422, saying which package is required", async () => {
    const other = `package caracal.other\n\nresult := {"allow": true}\n`
    const r = await signed("POST", COMPILE, { zone_id: "z1", modules: { main: other } })
    expect(r.status).toBe(422)
    expect(r.body).toMatchObject({ error: "invalid_policy" })
    expect((r.body as { message: string }).message).toMatch(/main must declare package caracal\.authz/)
  })

  it("a policy without a result rule is 422", async () => {
    const r = await signed("POST", COMPILE, { zone_id: "z1", modules: { main: "package caracal.authz\n\nallow := true\n" } })
    expect(r.status).toBe(422)
    expect((r.body as { message: string }).message).toMatch(/result rule/)
  })

  it("modules that use each other's rules compile, whatever their order", async () => {
    const main = `package caracal.authz\n\nresult := {"allow": allowed, "reason": "helper"}\n`
    const helper = `# helpers\npackage caracal.authz\n\nallowed if input.ok == true\n\ndefault allowed := false\n`
    expect((await signed("POST", COMPILE, { zone_id: "z1", modules: { a_main: main, b_helper: helper } })).status).toBe(200)
    expect((await signed("POST", COMPILE, { zone_id: "z1", modules: { a_helper: helper, b_main: main } })).status).toBe(200)
    // a helper another module uses is deleted after it
    expect((await opaPolicyIds()).some((id) => id.startsWith(`${redis.keys.prefix}-validate-`))).toBe(false)
  })

  it("more than 32 modules are refused", async () => {
    const modules = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`m${i}`, VALID]))
    expect((await signed("POST", COMPILE, { zone_id: "z1", modules })).status).toBe(422)
  })

  it("a body that is not the contract's shape is 400", async () => {
    expect((await signed("POST", COMPILE, { zone_id: "z1", modules: ["x"] })).status).toBe(400)
  })
})

const rows = async (text: string, params: Array<unknown> = []) => {
  const client = new pg.Client({ connectionString: db.url })
  await client.connect()
  try {
    return (await client.query(text, params)).rows
  } finally {
    await client.end()
  }
}

const credentialRow = async (id: string) =>
  (await rows("select * from sts_credentials where id = $1", [id]))[0] as
    | { zone_id: string; provider_id: string; nonce: Buffer; ciphertext: Buffer; tag: Buffer; kek_id: string; revoked_at: Date | null }
    | undefined

const open = (id: string, key = kek) => Effect.runPromise(Effect.result(openCredential(database, key, id)))

describe("when the api stores a credential", () => {
  it("it is sealed: 201 with a UUIDv7 id, a row whose ciphertext does not contain the material, that opens to it", async () => {
    const r = await signed("POST", CREDENTIALS, { zone_id: "z1", provider_id: "p1", material: SECRET })
    expect(r.status).toBe(201)
    const id = (r.body as { credential_id: string }).credential_id
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(JSON.stringify(r.body)).not.toContain(SECRET)
    const row = await credentialRow(id)
    expect(row).toMatchObject({ zone_id: "z1", provider_id: "p1", revoked_at: null })
    expect(row!.nonce.length).toBe(12)
    expect(row!.tag.length).toBe(16)
    expect(row!.ciphertext.includes(Buffer.from(SECRET))).toBe(false)
    expect(row!.ciphertext.includes(Buffer.from(SECRET.slice(8)))).toBe(false)
    const opened = await open(id)
    expect(opened._tag).toBe("Success")
    if (opened._tag === "Success") expect(opened.success).toEqual({ id, zoneId: "z1", providerId: "p1", material: SECRET })
  })

  it("an object of strings is sealed and opens to the same object", async () => {
    const material = { username: "svc", password: SECRET }
    const r = await signed("POST", CREDENTIALS, { zone_id: "z1", provider_id: "p2", material })
    expect(r.status).toBe(201)
    const opened = await open((r.body as { credential_id: string }).credential_id)
    expect(opened._tag === "Success" && opened.success.material).toEqual(material)
  })

  it("a row moved to another zone no longer opens", async () => {
    const r = await signed("POST", CREDENTIALS, { zone_id: "z1", provider_id: "p1", material: SECRET })
    const id = (r.body as { credential_id: string }).credential_id
    await rows("update sts_credentials set zone_id = 'z2' where id = $1", [id])
    const opened = await open(id)
    expect(opened._tag).toBe("Failure")
    if (opened._tag === "Failure") expect(opened.failure).toMatchObject({ _tag: "CredentialUnavailable", reason: "unsealable" })
  })

  it("a ciphertext copied onto another credential's row does not open there", async () => {
    const a = ((await signed("POST", CREDENTIALS, { zone_id: "z1", provider_id: "p1", material: SECRET })).body as { credential_id: string }).credential_id
    const b = ((await signed("POST", CREDENTIALS, { zone_id: "z1", provider_id: "p1", material: "other" })).body as { credential_id: string }).credential_id
    await rows(
      "update sts_credentials t set nonce = s.nonce, ciphertext = s.ciphertext, tag = s.tag from sts_credentials s where t.id = $1 and s.id = $2",
      [b, a]
    )
    expect((await open(b))._tag).toBe("Failure")
  })

  it("another KEK does not open it", async () => {
    const id = ((await signed("POST", CREDENTIALS, { zone_id: "z1", provider_id: "p1", material: SECRET })).body as { credential_id: string }).credential_id
    expect((await open(id, randomBytes(32)))._tag).toBe("Failure")
  })

  it("an unknown id is not found", async () => {
    const opened = await open("00000000-0000-7000-8000-000000000000")
    expect(opened._tag === "Failure" && opened.failure).toMatchObject({ reason: "not_found" })
  })

  it("bad material is 400 and the answer does not repeat it", async () => {
    const cases: Array<unknown> = ["", {}, { password: 12345678 }, [SECRET], `${SECRET}${"x".repeat(16 * 1024)}`, { password: `${SECRET}${"x".repeat(16 * 1024)}` }]
    for (const material of cases) {
      const r = await signed("POST", CREDENTIALS, { zone_id: "z1", provider_id: "p1", material })
      expect(r.status, JSON.stringify(material).slice(0, 40)).toBe(400)
      expect(JSON.stringify(r.body)).not.toContain(SECRET)
      expect(JSON.stringify(r.body)).not.toContain("12345678")
    }
  })

  it("a malformed or missing id is 400, and the answer does not repeat the material", async () => {
    for (const body of [{ zone_id: "../z", provider_id: "p1", material: SECRET }, { zone_id: "z1", material: SECRET }, { zone_id: 7, provider_id: "p1", material: { password: SECRET } }]) {
      const r = await signed("POST", CREDENTIALS, body)
      expect(r.status).toBe(400)
      expect(JSON.stringify(r.body)).not.toContain(SECRET)
    }
  })

  it("the material never reaches the service's output", () => {
    // every request above (including refused ones) has been logged by now: the access log is written before the answer
    expect(sts.stdout()).toContain("credential sealed")
    expect(sts.stdout() + sts.stderr()).not.toContain(SECRET)
    expect(sts.stdout() + sts.stderr()).not.toContain("12345678")
  })
})

describe("when a dependency is down", () => {
  let spare: Awaited<ReturnType<typeof spareRedisServer>> | undefined
  let other: RunningService | undefined
  afterAll(async () => {
    await other?.stop()
    await spare?.stop()
  })

  it("OPA unreachable is 503, and Redis unreachable refuses every call with 503 (fail closed)", async () => {
    spare = await spareRedisServer([])
    const deadOpa = `http://127.0.0.1:${await freePort()}`
    other = await startService("sts", { ...baseEnv(), REDIS_URL: spare.url, REDIS_KEY_PREFIX: redisPrefix("stsdown"), OPA_URL: deadOpa })
    const call = (path: string, body: unknown) => internalCall({ baseUrl: other!.url, key: hmacKey }, "POST", path, body)
    const compile = await call(COMPILE, { zone_id: "z1", modules: { main: VALID } })
    expect(compile).toMatchObject({ status: 503, body: { error: "temporarily_unavailable" } })
    const before = await rows("select count(*)::int as n from sts_credentials")
    await spare.stop()
    spare = undefined
    const r = await call(CREDENTIALS, { zone_id: "z1", provider_id: "p1", material: SECRET })
    expect(r).toMatchObject({ status: 503, body: { error: "temporarily_unavailable" } })
    expect(await rows("select count(*)::int as n from sts_credentials")).toEqual(before)
  })
})
