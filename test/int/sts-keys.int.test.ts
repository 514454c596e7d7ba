// Zone signing keys against the real stack: the api creates zones (ZoneCreated on the zone
// stream), the sts process provisions and rotates keys and serves the JWKS; a second replica
// of ZoneKeys runs in this process (same layer, same database and Redis) so that what it
// signs with can be seen. Short key durations: a next key signs 2 s after the rotation, a
// retired key stays 3 s, verifiers may cache the JWKS 1 s.
import { ConfigProvider, Context, Effect, Exit, Layer, References, Scope } from "effect"
import { createLocalJWKSet, type JWK, jwtVerify, SignJWT } from "jose"
import { randomBytes, randomUUID } from "node:crypto"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type DomainEvent, execute } from "../../core/command.ts"
import { Database, type DatabaseShape, makeDatabase, makeKysely } from "../../core/db/database.ts"
import { rebuildPostgres } from "../../core/projection.ts"
import { signingKey, Verifier } from "../../core/signing.ts"
import { events as allEvents } from "../../services/events.ts"
import { zoneKeysProjection } from "../../services/sts/key-projection.ts"
import { zonesProjection } from "../../services/sts/key-provisioning.ts"
import { events as apiEvents } from "../../services/api/events.ts"
import { internalCall } from "../../core/internal-call.ts"
import { makeJwksCache } from "../../core/mandate/jwks.ts"
import { Producer } from "../../core/producer.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { freePort, runToExit, startService, waitFor } from "../../core/testing/index.ts"
import { stsSpec } from "../../services/sts/config.ts"
import { kekIdOf } from "../../services/sts/credentials.ts"
import { ZoneKeys, type ZoneKeysShape } from "../../services/sts/keys.ts"
import { stsProducer } from "../../services/sts/main.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"

const LEAD_S = 2
const KEEP_S = 3
const MAX_AGE_S = 1

let h: ApiHarness
let pool: pg.Pool
let database: DatabaseShape
const closers: Array<() => Promise<unknown>> = []

beforeAll(async () => {
  h = await startApi("sts_keys", {}, 1, {
    JWKS_MAX_AGE_S: String(MAX_AGE_S),
    ZONE_KEY_NEXT_LEAD_S: String(LEAD_S),
    ZONE_KEY_RETIRED_KEEP_S: String(KEEP_S)
  })
  pool = new pg.Pool({ connectionString: h.dbUrl, max: 2 })
  database = makeDatabase(makeKysely(h.dbUrl, 2))
})

afterAll(async () => {
  for (const close of closers.reverse()) await close().catch(() => {})
  await pool?.end()
  await database?.db.destroy()
  await h?.close()
})

const q = async <T = any>(text: string, values: ReadonlyArray<unknown> = []) => (await pool.query(text, [...values])).rows as Array<T>

/** Another sts replica's ZoneKeys, in this process: its own cache, its own stream reader. */
const replica = async (env: Record<string, string>): Promise<ZoneKeysShape> => {
  const infra = Layer.mergeAll(
    Database.layerFromUrl(env.DATABASE_URL!, 4),
    RedisClient.layerWith({ url: env.REDIS_URL!, prefix: env.REDIS_KEY_PREFIX!, strict: false })
  )
  const layer = ZoneKeys.layer.pipe(
    Layer.provideMerge(Producer.layer(stsSpec, stsProducer)),
    Layer.provideMerge(infra),
    Layer.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env))),
    Layer.provide(Layer.succeed(References.MinimumLogLevel, "Error"))
  )
  const scope = await Effect.runPromise(Scope.make())
  closers.push(() => Effect.runPromise(Scope.close(scope, Exit.void)))
  const context = await Effect.runPromise(Layer.buildWithScope(layer, scope))
  return Context.get(context, ZoneKeys)
}

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const jwksOf = async (base: string, zone: string | undefined) => {
  const res = await fetch(`${base}/.well-known/jwks.json${zone === undefined ? "" : `?zone_id=${encodeURIComponent(zone)}`}`, {
    signal: AbortSignal.timeout(20_000)
  })
  return { status: res.status, cacheControl: res.headers.get("cache-control"), body: (await res.json()) as { keys: Array<JWK>; error?: string } }
}

const kidsOf = async (zone: string) => (await jwksOf(h.sts.url, zone)).body.keys?.map((k) => k.kid) ?? []

const createZone = async (slug: string) => {
  const r = await h.call("POST", "/v1/zones", { body: { slug } })
  expect(r.status).toBe(201)
  return r.body.id as string
}

const keyRows = (zone: string) =>
  q<{ kid: string; status: string; activates_at: Date; remove_at: Date | null }>(
    "select kid, status, activates_at, remove_at from sts_zone_keys where zone_id = $1 order by created_at", [zone])

const sign = (zone: string, key: { kid: string; privateKey: Parameters<SignJWT["sign"]>[0] }) =>
  new SignJWT({ zone_id: zone }).setProtectedHeader({ alg: "ES256", kid: key.kid }).setIssuedAt().setExpirationTime("5m").sign(key.privateKey)

const verifies = async (token: string, zone: string) => {
  const { body } = await jwksOf(h.sts.url, zone)
  if (!Array.isArray(body.keys)) return false
  return jwtVerify(token, createLocalJWKSet({ keys: body.keys })).then(() => true, () => false)
}

/** Writes events to the log as a producer would (MACs included) without outbox rows: never published. */
const unpublished = { type: "zone", initialState: null, decide: (c: ReadonlyArray<DomainEvent>) => Effect.succeed(c), evolve: () => null }

/** A zone the api's log knows but no consumer has seen (its events were never published). */
const zoneOnlyInLog = async (archived = false) => {
  const id = randomUUID()
  const created = { type: "ZoneCreated", data: { slug: `log-${id.slice(0, 8)}`, name: "log", description: "", metadata: {} } }
  const events = archived ? [created, { type: "ZoneArchived", data: { reason: "test" } }] : [created]
  await run(execute(database, apiEvents, {
    aggregate: unpublished,
    id,
    command: events,
    meta: { zoneId: id, actor: { kind: "test", id: "t" }, now: new Date(), correlationId: randomUUID() },
    producer: "test",
    streams: () => [],
    signer: signingKey(Buffer.from(h.stsEnv.STREAMS_HMAC_KEY!, "hex")),
    result: () => null
  }))
  return id
}

describe("when the api creates a zone", () => {
  let zone: string

  it("the sts provisions its key without being asked (zone stream → sts-zones → ticker), and publishes it", async () => {
    const started = Date.now()
    zone = await createZone(`keys-${randomBytes(3).toString("hex")}`)
    await waitFor(async () => (await q("select 1 from sts_zone_keys where zone_id = $1", [zone])).length > 0, 30_000, 100)
    console.log(`zone key provisioned ${Date.now() - started} ms after POST /v1/zones`)
    // the ticker notes the provisioning in a statement after the key's own: wait for it too
    await waitFor(async () => (await q("select provisioned_at from sts_zone_key_provisioning where zone_id = $1", [zone]))[0]?.provisioned_at != null, 30_000, 100)

    const jwks = await jwksOf(h.sts.url, zone)
    expect(jwks.status).toBe(200)
    expect(jwks.cacheControl).toBe(`public, max-age=${MAX_AGE_S}`)
    expect(jwks.body.keys).toHaveLength(1)
    expect(jwks.body.keys[0]).toEqual({ kty: "EC", crv: "P-256", x: expect.any(String), y: expect.any(String), kid: expect.any(String), alg: "ES256", use: "sig" })
  })

  it("a JWT signed with signingKey verifies against the JWKS, through the verifiers' own JWKS cache", async () => {
    const keys = await replica(h.stsEnv)
    const key = await run(keys.signingKey(zone))
    expect(key).toBeDefined()
    const token = await sign(zone, key!)
    const cache = makeJwksCache({
      baseUrl: h.sts.url, cooldownMs: 1000, cacheMaxAgeMs: 60_000, unknownZoneTtlMs: 1000, timeoutMs: 5000,
      maxZones: 10, maxUnknownZones: 10, fetchesPerSecond: 10, fetchBurst: 10, fetch, now: Date.now
    })
    const found = await cache.keysFor(zone, key!.kid)
    expect(found._tag).toBe("Keys")
    if (found._tag !== "Keys") return
    const { payload, protectedHeader } = await jwtVerify(token, found.keys)
    expect(payload.zone_id).toBe(zone)
    expect(protectedHeader.kid).toBe(key!.kid)
    // and an unknown zone is unknown to the verifiers too (404, not an outage)
    expect((await cache.keysFor(randomUUID(), "x"))._tag).toBe("UnknownZone")
  })
})

describe("when a zone is asked for before any consumer has seen it", () => {
  it("the JWKS route provisions a zone the log has (read-your-writes)", async () => {
    const zone = await zoneOnlyInLog()
    expect(await keyRows(zone)).toEqual([])
    const jwks = await jwksOf(h.sts.url, zone)
    expect(jwks.status).toBe(200)
    expect(jwks.body.keys).toHaveLength(1)
    expect((await keyRows(zone)).map((k) => k.status)).toEqual(["active"])
  })

  it("signingKeyOrProvision provisions it too; signingKey alone does not", async () => {
    const keys = await replica(h.stsEnv)
    const zone = await zoneOnlyInLog()
    expect(await run(keys.signingKey(zone))).toBeUndefined()
    const key = await run(keys.signingKeyOrProvision(zone))
    expect(key?.kid).toBe((await keyRows(zone))[0]?.kid)
    // idempotent: asked again, and ensureZone, give the same key
    expect((await run(keys.signingKeyOrProvision(zone)))?.kid).toBe(key?.kid)
    expect((await run(keys.ensureZone(zone))).kid).toBe(key?.kid)
    expect(await keyRows(zone)).toHaveLength(1)
  })

  it("an unknown zone, an archived zone without keys and a malformed id are 404 zone_not_found; no zone_id is 400", async () => {
    const keys = await replica(h.stsEnv)
    const archived = await zoneOnlyInLog(true)
    for (const zone of [randomUUID(), archived, "x".repeat(200), "bad zone"]) {
      const r = await jwksOf(h.sts.url, zone)
      expect(r.status).toBe(404)
      expect(r.body.error).toBe("zone_not_found")
      expect(r.cacheControl).toBe("no-store")
    }
    expect(await run(keys.signingKeyOrProvision(archived))).toBeUndefined()
    expect(await run(keys.signingKeyOrProvision(randomUUID()))).toBeUndefined()
    expect(await keyRows(archived)).toEqual([])
    for (const query of [undefined, ""]) {
      const r = await jwksOf(h.sts.url, query)
      expect(r.status).toBe(400)
      expect(r.body.error).toBe("invalid_request")
    }
  })

  it("the rotate route refuses unsigned calls (401) and unknown zones (404)", async () => {
    const path = (zone: string) => `/internal/v1/zones/${zone}/keys/rotate`
    expect((await fetch(`${h.sts.url}${path(randomUUID())}`, { method: "POST", body: "{}" })).status).toBe(401)
    const r = await internalCall({ baseUrl: h.sts.url, key: Buffer.from(h.stsEnv.SERVICE_HMAC_KEY!, "hex") }, "POST", path(randomUUID()), {})
    expect(r.status).toBe(404)
  })
})

describe("when a zone's key is rotated (lead 2 s, keep 3 s, JWKS max-age 1 s), with two replicas", () => {
  it("the next key is published before it signs, old tokens verify until their key is removed, and the other replica follows", async () => {
    const other = await replica(h.stsEnv)
    const zone = await createZone(`rot-${randomBytes(3).toString("hex")}`)
    const k1 = await run(other.signingKeyOrProvision(zone))
    expect(k1).toBeDefined()
    const oldToken = await sign(zone, k1!)
    expect(await verifies(oldToken, zone)).toBe(true)
    const evictionsBefore = other.stats().evictions

    // the api asks the sts (signed internal call) on the sts process, not this replica
    const rotated = await h.call("POST", `/v1/zones/${zone}/keys/rotate`, { body: {} })
    expect(rotated.status).toBe(200)
    const k2 = rotated.body.kid as string
    const activatesAt = Date.parse(rotated.body.activates_at)
    const publishedAt = Date.now()
    expect(k2).not.toBe(k1!.kid)
    expect(activatesAt - publishedAt).toBeGreaterThanOrEqual(LEAD_S * 1000 - 1000)
    expect(await kidsOf(zone)).toEqual([k1!.kid, k2])

    // the other replica's cached key is evicted by the zone_key stream
    await waitFor(async () => other.stats().evictions > evictionsBefore, 15_000, 50)
    // before activation it still signs with k1 (reading the ring again)
    const before = await run(other.signingKey(zone))
    if (Date.now() < activatesAt) expect(before?.kid).toBe(k1!.kid)

    // it signs with k2 once k2 is active, and never before
    let firstK2 = 0
    await waitFor(async () => {
      const k = await run(other.signingKey(zone))
      if (k?.kid === k2) firstK2 = Date.now()
      else expect(Date.now()).toBeLessThan(activatesAt + 15_000)
      return k?.kid === k2
    }, 30_000, 100)
    expect(firstK2).toBeGreaterThanOrEqual(activatesAt)
    expect(firstK2 - publishedAt).toBeGreaterThanOrEqual(MAX_AGE_S * 1000)
    console.log(`k2 first signed ${firstK2 - activatesAt} ms after activatesAt (published ${firstK2 - publishedAt} ms earlier)`)
    const newToken = await sign(zone, (await run(other.signingKey(zone)))!)

    // k1 is retired: still published, so tokens it signed still verify
    const retired = (await keyRows(zone)).find((k) => k.kid === k1!.kid)!
    expect(retired.status).toBe("retired")
    const removeAt = retired.remove_at!.getTime()
    if (Date.now() < removeAt) {
      expect(await kidsOf(zone)).toContain(k1!.kid)
      expect(await verifies(oldToken, zone)).toBe(true)
    }
    expect(await verifies(newToken, zone)).toBe(true)

    // and leaves the JWKS on schedule (the ticker, about a second after removeAt), never before
    let removedSeen = 0
    await waitFor(async () => {
      const gone = !(await kidsOf(zone)).includes(k1!.kid)
      if (gone) removedSeen = Date.now()
      return gone
    }, 30_000, 100)
    expect(removedSeen).toBeGreaterThanOrEqual(removeAt)
    console.log(`k1 left the JWKS ${removedSeen - removeAt} ms after removeAt`)
    expect((await keyRows(zone)).map((k) => [k.kid, k.status])).toEqual([[k1!.kid, "removed"], [k2, "active"]])
    expect(await verifies(oldToken, zone)).toBe(false)
    expect(await verifies(newToken, zone)).toBe(true)
  }, 90_000)

  it("a second rotation while one is pending answers the pending key", async () => {
    const zone = await createZone(`rot2-${randomBytes(3).toString("hex")}`)
    const first = await h.call("POST", `/v1/zones/${zone}/keys/rotate`, { body: {} })
    const second = await h.call("POST", `/v1/zones/${zone}/keys/rotate`, { body: {} })
    expect(first.status).toBe(200)
    if (Date.now() < Date.parse(first.body.activates_at)) expect(second.body.kid).toBe(first.body.kid)
  })
})

describe("the key events", () => {
  it("are on caracal:{zone_key}:events, signed, with public material only", async () => {
    const keys = await replica(h.stsEnv)
    const zone = await createZone(`ev-${randomBytes(3).toString("hex")}`)
    const key = await run(keys.signingKeyOrProvision(zone))
    const d = key!.privateKey.export({ format: "jwk" }).d!
    const stream = h.keys.stream("zone_key")
    expect(stream).toMatch(/:\{zone_key\}:events$/)
    let entries: Array<[string, Array<string>]> = []
    await waitFor(async () => {
      entries = (await h.redis.xrange(stream, "-", "+")) as Array<[string, Array<string>]>
      return entries.some(([, f]) => f.join(" ").includes(zone))
    }, 15_000, 100)
    const text = entries.map(([, f]) => f.join(" ")).join("\n")
    expect(text).toContain("ZoneKeyCreated")
    expect(text).not.toContain(d)
    for (const [, fields] of entries) {
      const payload = JSON.parse(fields[fields.indexOf("e") + 1]!) as { aggregate: { type: string }; data: { publicJwk?: object } }
      expect(payload.aggregate.type).toBe("zone_key")
      if (payload.data.publicJwk) expect(Object.keys(payload.data.publicJwk).sort()).toEqual(["alg", "crv", "kid", "kty", "use", "x", "y"])
    }
    const logged = await q<{ data: unknown }>("select data from events where aggregate_type = 'zone_key'")
    expect(JSON.stringify(logged)).not.toContain(d)
    expect(h.logs()).not.toContain(d)
    // the sealed row holds no plaintext either
    const secret = await q<{ ciphertext: Buffer }>("select ciphertext from sts_zone_key_secrets where kid = $1", [key!.kid])
    expect(secret[0]!.ciphertext.toString("latin1")).not.toContain(Buffer.from(d, "base64url").toString("latin1"))
  })
})

describe("when sts_zone_keys is rebuilt from the log", () => {
  it("it equals the live table (rotations, retirements and removals included), and the sealed keys are untouched", async () => {
    const live = "select kid, zone_id, status, public_jwk, activates_at, remove_at, due_at, created_at from sts_zone_keys order by kid"
    const secrets = "select kid, kek_id, nonce, ciphertext, tag from sts_zone_key_secrets order by kid"
    const before = await q(live)
    const sealedBefore = await q(secrets)
    expect(before.map((r) => r.status)).toEqual(expect.arrayContaining(["active", "removed"]))
    // with the producer's key: every log row's MAC is checked as it is replayed
    const verifier = new Verifier([signingKey(Buffer.from(h.stsEnv.STREAMS_HMAC_KEY!, "hex"))])
    await rebuildPostgres(database.db, allEvents, zoneKeysProjection, { verifier })
    expect(await q(live)).toEqual(before)
    expect(await q(secrets)).toEqual(sealedBefore)
  })

  it("sts_zone_key_provisioning rebuilt notes every zone of the log, those with keys as provisioned", async () => {
    const zones = "select zone_id, archived from sts_zone_key_provisioning order by zone_id"
    const before = await q(zones)
    expect(before.length).toBeGreaterThan(0)
    await rebuildPostgres(database.db, allEvents, zonesProjection)
    // the same zones, and also those this file wrote to the log without publishing them
    const after = await q(zones)
    expect(after).toEqual(expect.arrayContaining(before))
    expect(after.length).toBe(Number((await q("select count(distinct aggregate_id) from events where aggregate_type = 'zone'"))[0].count))
    const pendingWithKeys = await q(`select zone_id from sts_zone_key_provisioning p where provisioned_at is null
      and exists (select 1 from sts_zone_keys k where k.zone_id = p.zone_id)`)
    expect(pendingWithKeys).toEqual([])
  })
})

describe("ZONE_KEK", () => {
  const kekEnv = (over: Record<string, string>) => async () => ({ ...h.stsEnv, PORT: String(await freePort()), ...over })
  const oldKek = () => h.stsEnv.ZONE_KEK!
  const newKek = randomBytes(32).toString("hex")

  it("a wrong ZONE_KEK stops the sts at start with a message naming ZONE_KEK", async () => {
    const out = await runToExit("sts", await kekEnv({ ZONE_KEK: randomBytes(32).toString("hex") })(), 60_000)
    expect(out.code).not.toBe(0)
    expect(out.stderr).toMatch(/ZONE_KEK: zone signing keys are sealed under a KEK/)
  })

  it("a lead shorter than the JWKS max-age stops the sts at start", async () => {
    const out = await runToExit("sts", await kekEnv({ JWKS_MAX_AGE_S: "300", ZONE_KEY_NEXT_LEAD_S: "60" })(), 60_000)
    expect(out.code).not.toBe(0)
    expect(out.stderr).toContain("ZONE_KEY_NEXT_LEAD_S: must be at least JWKS_MAX_AGE_S")
  })

  it("with the old key in ZONE_KEK_PREVIOUS, every key is re-sealed under the new ZONE_KEK; then the old key alone is refused", async () => {
    // the running sts keeps the old KEK: stopped, as every replica is restarted in a KEK rotation
    await h.sts.stop()
    const total = Number((await q("select count(*) from sts_zone_key_secrets"))[0].count)
    expect(total).toBeGreaterThan(3)
    const rotated = await startService("sts", await kekEnv({ ZONE_KEK: newKek, ZONE_KEK_PREVIOUS: oldKek() })())
    try {
      const newId = kekIdOf(Buffer.from(newKek, "hex"))
      await waitFor(async () => Number((await q("select count(*) from sts_zone_key_secrets where kek_id = $1", [newId]))[0].count) === total, 30_000, 100)
      await waitFor(async () => rotated.stdout().includes("zone keys re-sealed under ZONE_KEK"), 10_000, 50)
    } finally {
      await rotated.stop()
    }
    const out = await runToExit("sts", await kekEnv({ ZONE_KEK: oldKek() })(), 60_000)
    expect(out.code).not.toBe(0)
    expect(out.stderr).toContain("ZONE_KEK")

    // the new KEK alone opens everything
    const keys = await replica({ ...h.stsEnv, ZONE_KEK: newKek })
    const zones = await q<{ zone_id: string }>("select distinct zone_id from sts_zone_keys where status = 'active'")
    for (const { zone_id } of zones) expect((await run(keys.signingKey(zone_id)))?.kid).toBeDefined()
  }, 120_000)

  it("two zones' ciphertexts swapped in Postgres open in neither zone; the others still sign and the sts still starts", async () => {
    const rows = await q<{ kid: string; zone_id: string }>(`select s.kid, s.zone_id from sts_zone_key_secrets s
      join sts_zone_keys k on k.kid = s.kid where k.status = 'active' order by s.created_at limit 3`)
    const [a, b, untouched] = rows
    await q(`update sts_zone_key_secrets s set nonce = o.nonce, ciphertext = o.ciphertext, tag = o.tag
      from sts_zone_key_secrets o where (s.kid, o.kid) in (($1, $2), ($2, $1))`, [a!.kid, b!.kid])
    const keys = await replica({ ...h.stsEnv, ZONE_KEK: newKek })
    for (const zone of [a!.zone_id, b!.zone_id]) {
      const exit = await Effect.runPromiseExit(keys.signingKey(zone))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(JSON.stringify(exit)).toContain("unsealable")
      // never answered by minting another key
      expect(Exit.isFailure(await Effect.runPromiseExit(keys.signingKeyOrProvision(zone)))).toBe(true)
      // the public half stays published; nothing new was minted
      expect((await keyRows(zone)).filter((k) => k.status === "active")).toHaveLength(1)
    }
    expect((await run(keys.signingKey(untouched!.zone_id)))?.kid).toBe(untouched!.kid)
    const restarted = await startService("sts", await kekEnv({ ZONE_KEK: newKek })())
    try {
      expect((await jwksOf(restarted.url, a!.zone_id)).status).toBe(200)
    } finally {
      await restarted.stop()
    }
  }, 90_000)
})
