// The credential release (POST /internal/v1/credentials/{id}/release) against the real api,
// OPA, Postgres and Redis: the gateway's call, signed, with a per-call mandate from the token
// endpoint. The value for string and Basic material; every refusal with its status and
// reason; two replicas; the audit stream down (503, nothing released); a ZONE_KEK rotation
// (the credential still released, its row re-sealed); the material nowhere but the answer.
import { Effect } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { makeDatabase, makeKysely } from "../../core/db/database.ts"
import { internalCall, type InternalResponse, signRequest } from "../../core/internal-call.ts"
import { type RunningService, spareRedisServer, startService } from "../../core/testing/index.ts"
import { createCredential, makeKeks, openCredential } from "../../services/sts/credentials.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"
import { jsonCall, type JsonReply, until } from "../fixtures/harness.ts"

const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
const JWT = "urn:ietf:params:oauth:token-type:jwt"
const ALLOW = `package caracal.authz\n\nresult := {"allow": true, "reason": "allowed"}\n`

// distinctive, so that finding one anywhere (a log line, an event, the audit stream) cannot be chance
const SECRET = `sk_live_${randomBytes(12).toString("hex")}`
const PASSWORD = `pw_${randomBytes(12).toString("hex")}`
const API_KEY = `ak_${randomBytes(12).toString("hex")}`
const TOKEN_MATERIAL = `tm_${randomBytes(12).toString("hex")}`
const OTHER_SECRET = `sk_other_${randomBytes(12).toString("hex")}`
const LATE_SECRET = `sk_late_${randomBytes(12).toString("hex")}`
const REVOCABLE_SECRET = `sk_rev_${randomBytes(12).toString("hex")}`
const MATERIALS = [SECRET, PASSWORD, API_KEY, TOKEN_MATERIAL, OTHER_SECRET, LATE_SECRET, REVOCABLE_SECRET]

let h: ApiHarness
let stsUrl: string
const started: Array<RunningService> = []
let zone: string
let otherZone: string
const apps: Record<string, { id: string; secret: string; zone: string }> = {}
const creds: Record<string, string> = {}
const resources: Record<string, string> = {}
const providers: Record<string, string> = {}

const kekId = (hex: string) => createHash("sha256").update(Buffer.from(hex, "hex")).digest("hex").slice(0, 16)

const post = async (path: string, body: unknown) => {
  const r = await h.call("POST", path, { body })
  expect(r.status, `${path}: ${r.text}`).toBe(201)
  return r.body
}
const token = (params: Record<string, string>, url = stsUrl): Promise<JsonReply> =>
  jsonCall(`${url}/oauth/2/token`, "POST", {
    raw: new URLSearchParams(params).toString(),
    headers: { "content-type": "application/x-www-form-urlencoded" }
  })
const ambient = async (app: string, extra: Record<string, string> = {}, url = stsUrl) => {
  const a = apps[app]!
  const r = await token({ grant_type: "client_credentials", zone_id: a.zone, application_id: a.id, client_secret: a.secret, ...extra }, url)
  expect(r.status, r.text).toBe(200)
  return r.body.access_token as string
}
const perCall = async (app: string, resource: string, extra: Record<string, string> = {}, url = stsUrl) => {
  const r = await token({ grant_type: EXCHANGE, subject_token: await ambient(app, {}, url), subject_token_type: JWT, resource, ...extra }, url)
  expect(r.status, r.text).toBe(200)
  return r.body.access_token as string
}
const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString("utf8")) as Record<string, any>
const hmacKey = () => Buffer.from(h.env.SERVICE_HMAC_KEY!, "hex")
const releasePath = (credentialId: string) => `/internal/v1/credentials/${credentialId}/release`
const release = (credentialId: string, mandate: string, url = stsUrl): Promise<InternalResponse> =>
  internalCall({ baseUrl: url, key: hmacKey() }, "POST", releasePath(credentialId), { mandate })
const refused = (r: InternalResponse, status: number, reason?: string) => {
  expect(r.status, JSON.stringify(r.body)).toBe(status)
  const body = r.body as Record<string, unknown>
  if (reason !== undefined) expect(body).toMatchObject({ error: "forbidden", reason })
  expect(JSON.stringify(body)).not.toContain("value")
}
const auditRecords = async () =>
  (await h.redis.xrange(h.keys.stream("audit"), "-", "+")).map(([, f]) => JSON.parse(f[f.indexOf("e") + 1]!) as Record<string, unknown>)
const releaseRecord = async (jti: string) => (await auditRecords()).filter((r) => r.kind === "credential_release" && r.jti === jti)

beforeAll(async () => {
  h = await startApi("sts_release")
  stsUrl = h.sts.url
  zone = (await post("/v1/zones", { slug: "release" })).id
  otherZone = (await post("/v1/zones", { slug: "release-other" })).id
  for (const [name, z] of [["a", zone], ["b", zone], ["other", otherZone]] as const) {
    const app = await post(`/v1/zones/${z}/applications`, { name })
    apps[name] = { id: app.id, secret: app.client_secret, zone: z }
  }
  const bearer = providers.bearer = (await post(`/v1/zones/${zone}/providers`, { name: "bearer" })).id
  const apiKey = providers.apiKey = (await post(`/v1/zones/${zone}/providers`, { name: "api-key", header: "x-api-key", value_prefix: "" })).id
  const otherProvider = (await post(`/v1/zones/${otherZone}/providers`, { name: "bearer" })).id
  const credential = async (z: string, provider: string, material: unknown) => (await post(`/v1/zones/${z}/credentials`, { provider_id: provider, material })).id as string
  creds.main = await credential(zone, bearer, SECRET)
  creds.basic = await credential(zone, bearer, { username: "svc", password: PASSWORD })
  creds.apiKey = await credential(zone, apiKey, API_KEY)
  creds.odd = await credential(zone, bearer, { token: TOKEN_MATERIAL })
  creds.other = await credential(otherZone, otherProvider, OTHER_SECRET)
  for (const identifier of ["upstream", "basic", "keyed", "odd", "plain"]) {
    resources[identifier] = (await post(`/v1/zones/${zone}/resources`, { identifier, scopes: ["read"] })).id
  }
  resources.otherUpstream = (await post(`/v1/zones/${otherZone}/resources`, { identifier: "upstream", scopes: ["read"] })).id
  const bind = (z: string, app: string, resource: string, credentialId?: string) =>
    post(`/v1/zones/${z}/bindings`, { resource_id: resource, application_id: apps[app]!.id, ...(credentialId === undefined ? {} : { credential_id: credentialId }) })
  await bind(zone, "a", resources.upstream!, creds.main)
  await bind(zone, "a", resources.basic!, creds.basic)
  await bind(zone, "a", resources.keyed!, creds.apiKey)
  await bind(zone, "a", resources.odd!, creds.odd)
  await bind(zone, "a", resources.plain!)
  // b is bound to the same resource, without the credential
  await bind(zone, "b", resources.upstream!)
  await bind(otherZone, "other", resources.otherUpstream!, creds.other)
  for (const z of [zone, otherZone]) {
    const policy = await post(`/v1/zones/${z}/policies`, { name: "main", rego: ALLOW })
    const set = await post(`/v1/zones/${z}/policy-sets`, { name: "default" })
    const version = await post(`/v1/zones/${z}/policy-sets/${set.id}/versions`, { manifest: { policies: [{ policy_id: policy.id }] } })
    expect((await h.call("POST", `/v1/zones/${z}/policy-sets/${set.id}/activate`, { body: { version_id: version.versions[0].id } })).status).toBe(200)
  }
  // decisions start once the policies reached OPA through the sts's sync
  for (const app of ["a", "other"]) {
    const a = apps[app]!
    await until(async () =>
      (await token({ grant_type: "client_credentials", zone_id: a.zone, application_id: a.id, client_secret: a.secret })).status === 200, 60_000, `a first mandate for ${app}`)
  }
}, 120_000)

afterAll(async () => {
  for (const s of started) await s.stop()
  await h?.close()
})

describe("when the mandate is per-call for a resource bound to the credential", () => {
  it("a string is served behind the provider's prefix, until the mandate's exp; the release is audited without the value", async () => {
    const mandate = await perCall("a", "upstream")
    const r = await release(creds.main!, mandate)
    expect(r.status, JSON.stringify(r.body)).toBe(200)
    const exp = claims(mandate).exp as number
    expect(r.body).toEqual({ header: "authorization", value: `Bearer ${SECRET}`, expires_at: new Date(exp * 1000).toISOString() })
    const records = await releaseRecord(claims(mandate).jti)
    expect(records).toHaveLength(1)
    expect(records[0]).toMatchObject({
      source: "sts", kind: "credential_release", decision: "allow", reason: null, status: 200,
      zone_id: zone, client_id: apps.a!.id, resource: "upstream", credential_id: creds.main
    })
    expect(JSON.stringify(records)).not.toContain(SECRET)
  })

  it("the answer is not cacheable", async () => {
    const mandate = await perCall("a", "upstream")
    const path = releasePath(creds.main!)
    const body = JSON.stringify({ mandate })
    const res = await fetch(`${stsUrl}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-caracal-signature": signRequest(hmacKey(), "POST", path, body) },
      body
    })
    expect(res.status).toBe(200)
    expect(res.headers.get("cache-control")).toBe("no-store")
  })

  it("{username, password} is HTTP Basic; a provider's own header and an empty prefix are kept", async () => {
    const basic = await release(creds.basic!, await perCall("a", "basic"))
    expect(basic.status).toBe(200)
    expect(basic.body).toMatchObject({ header: "authorization", value: `Basic ${Buffer.from(`svc:${PASSWORD}`).toString("base64")}` })
    const keyed = await release(creds.apiKey!, await perCall("a", "keyed"))
    expect(keyed.status).toBe(200)
    expect(keyed.body).toMatchObject({ header: "x-api-key", value: API_KEY })
  })

  it("a mandate naming several resources is served for the one bound to the credential", async () => {
    const form = new URLSearchParams({ grant_type: EXCHANGE, subject_token: await ambient("a"), subject_token_type: JWT })
    form.append("resource", "plain")
    form.append("resource", "upstream")
    const t = await jsonCall(`${stsUrl}/oauth/2/token`, "POST", { raw: form.toString(), headers: { "content-type": "application/x-www-form-urlencoded" } })
    expect(t.status, t.text).toBe(200)
    const mandate = t.body.access_token as string
    expect(claims(mandate).aud).toEqual(["plain", "upstream"])
    expect((await release(creds.main!, mandate)).status).toBe(200)
    expect(await releaseRecord(claims(mandate).jti)).toMatchObject([{ decision: "allow", resource: "upstream" }])
  })

  it("object material that is not {username, password} is 422 unsupported_material, echoing nothing", async () => {
    const r = await release(creds.odd!, await perCall("a", "odd"))
    expect(r.status).toBe(422)
    expect(r.body).toMatchObject({ error: "unsupported_material" })
    expect(JSON.stringify(r.body)).not.toContain(TOKEN_MATERIAL)
  })
})

describe("when the release is refused", () => {
  it("an ambient mandate is not_per_call", async () => {
    const mandate = await ambient("a")
    refused(await release(creds.main!, mandate), 403, "not_per_call")
    expect(await releaseRecord(claims(mandate).jti)).toMatchObject([{ decision: "deny", reason: "not_per_call", status: 403, zone_id: zone }])
  })

  it("an expired mandate is mandate_invalid (no tolerance past exp)", async () => {
    const mandate = await perCall("a", "upstream", { ttl_seconds: "1" })
    const exp = claims(mandate).exp as number
    await until(() => Date.now() > exp * 1000 + 50, 5_000, "the mandate's exp")
    refused(await release(creds.main!, mandate), 403, "mandate_invalid")
  })

  it("a forged or tampered mandate is mandate_invalid; a body that is not {mandate} is 400", async () => {
    const good = await perCall("a", "upstream")
    const [head, body, sig] = good.split(".")
    const tampered = `${head}.${Buffer.from(JSON.stringify({ ...claims(good), client_id: apps.b!.id })).toString("base64url")}.${sig}`
    refused(await release(creds.main!, tampered), 403, "mandate_invalid")
    const other = internalCall({ baseUrl: stsUrl, key: hmacKey() }, "POST", releasePath(creds.main!), { token: good })
    expect((await other).status).toBe(400)
  })

  it("a mandate for another resource is not_bound: one bound without a credential, one bound to another credential", async () => {
    refused(await release(creds.main!, await perCall("a", "plain")), 403, "not_bound")
    refused(await release(creds.main!, await perCall("a", "basic")), 403, "not_bound")
  })

  it("a client bound to the resource without that credential is not_bound", async () => {
    const mandate = await perCall("b", "upstream")
    refused(await release(creds.main!, mandate), 403, "not_bound")
    expect(await releaseRecord(claims(mandate).jti)).toMatchObject([{ decision: "deny", reason: "not_bound", client_id: apps.b!.id }])
  })

  it("another zone's mandate is zone_mismatch, both ways", async () => {
    const otherMandate = await perCall("other", "upstream")
    expect((await release(creds.other!, otherMandate)).status).toBe(200)
    refused(await release(creds.main!, otherMandate), 403, "zone_mismatch")
    refused(await release(creds.other!, await perCall("a", "upstream")), 403, "zone_mismatch")
  })

  it("an unknown credential is 404 credential_not_found", async () => {
    const r = await release("00000000-0000-7000-8000-000000000000", await perCall("a", "upstream"))
    expect(r).toMatchObject({ status: 404, body: { error: "credential_not_found" } })
  })

  it("an unsigned call, or one signed with another key, is 401 invalid_signature", async () => {
    const body = JSON.stringify({ mandate: await perCall("a", "upstream") })
    const path = releasePath(creds.main!)
    const unsigned = await jsonCall(`${stsUrl}${path}`, "POST", { raw: body, headers: { "content-type": "application/json" } })
    expect(unsigned.status).toBe(401)
    expect(unsigned.body.error).toBe("invalid_signature")
    const forged = await jsonCall(`${stsUrl}${path}`, "POST", {
      raw: body,
      headers: { "content-type": "application/json", "x-caracal-signature": signRequest(randomBytes(32), "POST", path, body) }
    })
    expect(forged.status).toBe(401)
    expect(forged.text).not.toContain(SECRET)
  })

  it("a deleted binding counts at once for the release, and within moments for the token endpoint: one directory, fed by the consumer", async () => {
    const bindTo = async (identifier: string) => {
      const resource = (await post(`/v1/zones/${zone}/resources`, { identifier, scopes: ["read"] })).id
      return (await post(`/v1/zones/${zone}/bindings`, { resource_id: resource, application_id: apps.a!.id, credential_id: creds.main })).id as string
    }
    const [released, exchanged] = [await bindTo("ephemeral"), await bindTo("ephemeral-2")]
    const mandate = await perCall("a", "ephemeral")
    expect((await release(creds.main!, mandate)).status).toBe(200)
    // the token endpoint knows the second binding (a hit from now on: only the stream updates it)
    await perCall("a", "ephemeral-2")
    expect((await h.call("DELETE", `/v1/zones/${zone}/bindings/${exchanged}`)).status).toBe(200)
    const exchange = async () =>
      (await token({ grant_type: EXCHANGE, subject_token: await ambient("a"), subject_token_type: JWT, resource: "ephemeral-2" })).status
    await until(async () => (await exchange()) === 400, 5_000, "the token endpoint sees the deletion")
    // the release reads the binding it matched again from the log
    expect((await h.call("DELETE", `/v1/zones/${zone}/bindings/${released}`)).status).toBe(200)
    refused(await release(creds.main!, mandate), 403, "not_bound")
    // routes and background work share their layers: one zone key cache
    expect(h.sts.stdout().match(/"zone keys ready"/g)).toHaveLength(1)
  })

  it("a revoked credential is credential_revoked as soon as the api answered, and marked revoked in sts_credentials", async () => {
    const revocable = (await post(`/v1/zones/${zone}/credentials`, { provider_id: providers.apiKey, material: REVOCABLE_SECRET })).id as string
    const resource = (await post(`/v1/zones/${zone}/resources`, { identifier: "revocable", scopes: ["read"] })).id
    await post(`/v1/zones/${zone}/bindings`, { resource_id: resource, application_id: apps.a!.id, credential_id: revocable })
    const mandate = await perCall("a", "revocable")
    expect((await release(revocable, mandate)).body).toMatchObject({ value: REVOCABLE_SECRET })
    expect((await h.call("DELETE", `/v1/zones/${zone}/credentials/${revocable}`)).status).toBe(200)
    refused(await release(revocable, mandate), 403, "credential_revoked")
    const [row] = await h.rows<{ revoked_at: Date | null }>("select revoked_at from sts_credentials where id = $1", [revocable])
    expect(row!.revoked_at).not.toBeNull()
  })
})

describe("with two replicas", () => {
  it("both release; a credential created after both started is released by either at once (read from the log)", async () => {
    const second = await startService("sts", { ...h.stsEnv, PORT: "" })
    started.push(second)
    for (const url of [stsUrl, second.url]) {
      const r = await release(creds.main!, await perCall("a", "upstream", {}, url), url)
      expect(r.status, JSON.stringify(r.body)).toBe(200)
      expect(r.body).toMatchObject({ value: `Bearer ${SECRET}` })
    }
    // mandates of one replica are released by the other
    const fromFirst = await perCall("a", "upstream")
    expect((await release(creds.main!, fromFirst, second.url)).status).toBe(200)
    const provider = (await post(`/v1/zones/${zone}/providers`, { name: "late" })).id
    const late = (await post(`/v1/zones/${zone}/credentials`, { provider_id: provider, material: LATE_SECRET })).id as string
    const resource = (await post(`/v1/zones/${zone}/resources`, { identifier: "late", scopes: ["read"] })).id
    await post(`/v1/zones/${zone}/bindings`, { resource_id: resource, application_id: apps.a!.id, credential_id: late })
    const mandate = await perCall("a", "late")
    for (const url of [second.url, stsUrl]) expect((await release(late, mandate, url)).body).toMatchObject({ value: `Bearer ${LATE_SECRET}` })
    await second.stop()
  }, 60_000)
})

describe("when the audit stream is unreachable", () => {
  it("the release is 503 and nothing is released", async () => {
    const spare = await spareRedisServer([])
    let spareUp = true
    try {
      const replica = await startService("sts", { ...h.stsEnv, PORT: "", AUDIT_STREAM_URL: spare.url })
      started.push(replica)
      const mandate = await perCall("a", "upstream")
      expect((await release(creds.main!, mandate, replica.url)).status).toBe(200)
      await spare.stop()
      spareUp = false
      const r = await release(creds.main!, mandate, replica.url)
      expect(r.status).toBe(503)
      expect(r.body).toMatchObject({ error: "temporarily_unavailable" })
      expect(JSON.stringify(r.body)).not.toContain(SECRET)
      await replica.stop()
    } finally {
      if (spareUp) await spare.stop()
    }
  }, 60_000)
})

describe("when ZONE_KEK is rotated", () => {
  it("credentials sealed under the previous KEK are released, and re-sealed under the new one (zone keys too)", async () => {
    const oldKek = h.stsEnv.ZONE_KEK!
    const newKek = randomBytes(32).toString("hex")
    const before = await h.rows<{ kek_id: string }>("select distinct kek_id from sts_credentials")
    expect(before).toEqual([{ kek_id: kekId(oldKek) }])
    await h.sts.stop()
    // the same port: the api's STS_URL and the issuer stay what they were
    const restarted = await startService("sts", { ...h.stsEnv, PORT: String(h.sts.port), ZONE_KEK: newKek, ZONE_KEK_PREVIOUS: oldKek })
    started.push(restarted)
    stsUrl = restarted.url
    const r = await release(creds.main!, await perCall("a", "upstream"))
    expect(r.status, JSON.stringify(r.body)).toBe(200)
    expect(r.body).toMatchObject({ value: `Bearer ${SECRET}` })
    const [row] = await h.rows<{ kek_id: string }>("select kek_id from sts_credentials where id = $1", [creds.main])
    expect(row!.kek_id).toBe(kekId(newKek))
    // every other row (revoked ones included), and the zone keys, in the background
    await until(async () => {
      const kekIds = await h.rows<{ kek_id: string }>("select kek_id from sts_credentials union select kek_id from sts_zone_key_secrets")
      return kekIds.length === 1 && kekIds[0]!.kek_id === kekId(newKek)
    }, 30_000, "every row re-sealed under the new ZONE_KEK")
    // and without the previous KEK now: still released
    await restarted.stop()
    const plain = await startService("sts", { ...h.stsEnv, PORT: String(h.sts.port), ZONE_KEK: newKek })
    started.push(plain)
    const again = await release(creds.basic!, await perCall("a", "basic"))
    expect(again.body).toMatchObject({ value: `Basic ${Buffer.from(`svc:${PASSWORD}`).toString("base64")}` })
  }, 90_000)
})

describe("when a credential is opened", () => {
  it("one sealed under a previous KEK opens with it and is re-sealed under ZONE_KEK; one under an unknown KEK does not open", async () => {
    const database = makeDatabase(makeKysely(h.dbUrl, 1))
    try {
      const oldKek = randomBytes(32)
      const newKek = randomBytes(32)
      const id = await Effect.runPromise(createCredential(database, oldKek, { zoneId: "z-direct", providerId: "p", material: SECRET }))
      expect((await Effect.runPromise(Effect.result(openCredential(database, makeKeks(newKek, []), id))))._tag).toBe("Failure")
      const opened = await Effect.runPromise(openCredential(database, makeKeks(newKek, [oldKek]), id))
      expect(opened.material).toBe(SECRET)
      const [row] = await h.rows<{ kek_id: string }>("select kek_id from sts_credentials where id = $1", [id])
      expect(row!.kek_id).toBe(kekId(newKek.toString("hex")))
      expect((await Effect.runPromise(openCredential(database, newKek, id))).material).toBe(SECRET)
    } finally {
      await database.db.destroy()
    }
  })
})

describe("the material", () => {
  it("is in no sts or api output, no audit record, no event and no stream entry", async () => {
    const output = h.logs() + started.map((s) => s.stdout() + s.stderr()).join("\n")
    expect(output).toContain("credential released")
    const events = JSON.stringify([await h.rows("select * from events"), await h.rows("select * from outbox")])
    const streams: Array<string> = []
    for (const key of await h.redis.keys(`${h.keys.prefix}:*`)) {
      if ((await h.redis.type(key)) === "stream") streams.push(JSON.stringify(await h.redis.xrange(key, "-", "+")))
    }
    expect(streams.join("").length).toBeGreaterThan(0)
    expect(streams.join("")).toContain("credential_release")
    const base64Basic = Buffer.from(`svc:${PASSWORD}`).toString("base64")
    for (const m of [...MATERIALS, base64Basic]) {
      expect(output).not.toContain(m)
      expect(events).not.toContain(m)
      for (const s of streams) expect(s).not.toContain(m)
    }
  })
})
