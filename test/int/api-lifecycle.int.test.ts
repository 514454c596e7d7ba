// The api's aggregates through HTTP: create, get, list (cursor pages), update under
// If-Match, archive; their events in the log and on their streams, the outbox drained,
// and a rebuild of the api's tables equal to the live ones.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { until } from "../fixtures/harness.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"

let h: ApiHarness
let zone: string
beforeAll(async () => {
  h = await startApi("api_life")
  const z = await h.call("POST", "/v1/zones", { body: { slug: "life", name: "Lifecycle" } })
  expect(z.status).toBe(201)
  zone = z.body.id
})
afterAll(() => h.close())

const query = (text: string, values: Array<unknown> = []) => h.rows(text, values)

describe("zones", () => {
  it("creates a zone with a server-generated id; the slug is unique among live zones", async () => {
    const got = await h.call("GET", `/v1/zones/${zone}`)
    expect(got.status).toBe(200)
    expect(got.body).toMatchObject({ id: zone, slug: "life", name: "Lifecycle", status: "active", version: 1 })
    expect(["pending", "active"]).toContain(got.body.key_status)
    expect(got.headers.get("etag")).toBe(`"1"`)
    // the sts provisions the zone's signing key from the zone event: the zone becomes usable
    const started = Date.now()
    // a list answered while the key was pending (kept by this replica) is not answered again once it is active
    const listed = async () => (await h.call("GET", "/v1/zones?slug=life")).body.items[0].key_status
    expect(["pending", "active"]).toContain(await listed())
    await until(async () => (await h.call("GET", `/v1/zones/${zone}`)).body.key_status === "active", 60_000, "the zone's key")
    expect(await listed()).toBe("active")
    const jwks = await fetch(`${h.sts.url}/.well-known/jwks.json?zone_id=${zone}`)
    expect(jwks.status).toBe(200)
    expect(((await jwks.json()) as { keys: Array<{ alg: string }> }).keys.map((k) => k.alg)).toEqual(["ES256"])
    console.log(`zone usable (key active, JWKS served) ${Date.now() - started} ms after its creation answered`)
    const dup = await h.call("POST", "/v1/zones", { body: { slug: "life" } })
    expect(dup.status).toBe(409)
    expect(dup.body.error).toBe("zone_slug_taken")
  })

  it("updates under If-Match and refuses a stale ETag with 412", async () => {
    const z = await h.call("POST", "/v1/zones", { body: { slug: "upd" } })
    const id = z.body.id
    const ok = await h.call("PATCH", `/v1/zones/${id}`, { body: { description: "d1" }, headers: { "if-match": `"1"` } })
    expect(ok.status).toBe(200)
    expect(ok.body).toMatchObject({ description: "d1", version: 2 })
    expect(ok.headers.get("etag")).toBe(`"2"`)
    const stale = await h.call("PATCH", `/v1/zones/${id}`, { body: { description: "d2" }, headers: { "if-match": `"1"` } })
    expect(stale.status).toBe(412)
    expect(stale.body.error).toBe("precondition_failed")
    expect((await h.call("GET", `/v1/zones/${id}`)).body.description).toBe("d1")
  })

  it("archives: the zone stays readable, marked archived, and refuses writes under it", async () => {
    const z = await h.call("POST", "/v1/zones", { body: { slug: "gone" } })
    const del = await h.call("DELETE", `/v1/zones/${z.body.id}`, { body: { reason: "decommissioned" } })
    expect(del.status).toBe(200)
    expect(del.body).toMatchObject({ status: "archived", archive_reason: "decommissioned" })
    const app = await h.call("POST", `/v1/zones/${z.body.id}/applications`, { body: { name: "late" } })
    expect(app.status).toBe(409)
    expect(app.body.error).toBe("zone_archived")
    // the slug is free again once its zone is archived
    expect((await h.call("POST", "/v1/zones", { body: { slug: "gone" } })).status).toBe(201)
  })

  it("lists in cursor pages", async () => {
    for (let i = 0; i < 5; i++) await h.call("POST", "/v1/zones", { body: { slug: `page-${i}` } })
    const seen: Array<string> = []
    let cursor: string | null = null
    do {
      const r: { status: number; body: any } = await h.call("GET", `/v1/zones?limit=2${cursor ? `&cursor=${cursor}` : ""}`)
      expect(r.status).toBe(200)
      expect(r.body.items.length).toBeLessThanOrEqual(2)
      seen.push(...r.body.items.map((z: { id: string }) => z.id))
      cursor = r.body.next_cursor
    } while (cursor !== null)
    expect(new Set(seen).size).toBe(seen.length)
    const all = await h.call("GET", "/v1/zones?limit=1000")
    expect(seen).toEqual(all.body.items.map((z: { id: string }) => z.id))
    const bySlug = await h.call("GET", "/v1/zones?slug=page-3")
    expect(bySlug.body.items.map((z: { slug: string }) => z.slug)).toEqual(["page-3"])
  })

  it("answers (assembled as JSON text by Postgres) carry any text exactly: quotes, backslashes, controls, non-BMP; an empty page is []", async () => {
    const name = "q\"uote \\ back\nline\ttab \u0001\u001f é 😀 </script>"
    const reason = "why \"not\"\n\u0002"
    const z = await h.call("POST", "/v1/zones", { body: { slug: "text-1", name, metadata: { "k\"ey": ["v\\", null, 1.5, true] } } })
    expect(z.status).toBe(201)
    const del = await h.call("DELETE", `/v1/zones/${z.body.id}`, { body: { reason } })
    for (const got of [del.body, (await h.call("GET", `/v1/zones/${z.body.id}`)).body, (await h.call("GET", "/v1/zones?slug=text-1&status=archived")).body.items[0]]) {
      expect(got).toMatchObject({ id: z.body.id, slug: "text-1", name, metadata: { "k\"ey": ["v\\", null, 1.5, true] }, status: "archived", archive_reason: reason })
      expect(got.archived_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    }
    const none = await h.call("GET", "/v1/zones?slug=no-such-slug")
    expect(none.body).toEqual({ items: [], next_cursor: null })
  })
})

describe("applications", () => {
  it("generates a 256-bit secret, shows it once, and stores only a verifier", async () => {
    const r = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "agent-1", traits: ["batch"] } })
    expect(r.status).toBe(201)
    expect(r.body.client_secret).toMatch(/^cs_[A-Za-z0-9_-]{43}$/)
    expect(r.body).toMatchObject({ name: "agent-1", allowed_scopes: ["agent:lifecycle"], traits: ["batch"], zone_id: zone })
    expect(r.body.secret_verifiers).toBeUndefined()
    const got = await h.call("GET", `/v1/zones/${zone}/applications/${r.body.id}`)
    expect(got.body.client_secret).toBeUndefined()
    const log = await query(`select data::text as data from events where aggregate_id = $1`, [r.body.id])
    expect(log.map((e) => e.data).join("")).not.toContain(r.body.client_secret)
  })

  it("rotates the secret with an overlap window in which both verify", async () => {
    const { verifySecret } = await import("../../services/api/secrets.ts")
    const r = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "agent-rot" } })
    const first = r.body.client_secret as string
    const rot = await h.call("POST", `/v1/zones/${zone}/applications/${r.body.id}/secret`, { body: { overlap_seconds: 60 } })
    expect(rot.status).toBe(200)
    const second = rot.body.client_secret as string
    expect(second).not.toBe(first)
    const [row] = await query(`select record from api_records where id = $1`, [r.body.id])
    const now = new Date()
    expect(verifySecret(row.record.secretVerifiers, first, now)).toBe(true)
    expect(verifySecret(row.record.secretVerifiers, second, now)).toBe(true)
    expect(verifySecret(row.record.secretVerifiers, first, new Date(now.getTime() + 61_000))).toBe(false)
    expect(verifySecret(row.record.secretVerifiers, second, new Date(now.getTime() + 61_000))).toBe(true)
    expect(verifySecret(row.record.secretVerifiers, "cs_wrong", now)).toBe(false)
  })

  it("accepts a caller-chosen secret of at least 32 characters, stored with scrypt, never echoed", async () => {
    const secret = "my-own-secret-which-is-long-enough-1234"
    const r = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "legacy", client_secret: secret } })
    expect(r.status).toBe(201)
    expect(r.body.client_secret).toBeUndefined()
    const [row] = await query(`select record from api_records where id = $1`, [r.body.id])
    expect(row.record.secretVerifiers[0].alg).toBe("scrypt")
    const short = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "legacy", client_secret: "short" } })
    expect(short.status).toBe(400)
    expect(short.body.issues[0].path).toBe("client_secret")
  })
})

describe("resources, providers, bindings and grants", () => {
  it("creates a resource; an unknown provider is 404 provider_not_found; identifiers are unique in the zone", async () => {
    const bad = await h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "api", scopes: ["read"], credential_provider_id: "nope" } })
    expect(bad.status).toBe(404)
    expect(bad.body.error).toBe("provider_not_found")
    const p = await h.call("POST", `/v1/zones/${zone}/providers`, { body: { name: "upstream key", header: "x-api-key", value_prefix: "" } })
    expect(p.status).toBe(201)
    const ok = await h.call("POST", `/v1/zones/${zone}/resources`, {
      body: { identifier: "api", scopes: ["read", "write"], upstream_url: "http://127.0.0.1:9999", prefix: "/v2", credential_provider_id: p.body.id }
    })
    expect(ok.status).toBe(201)
    expect(ok.body).toMatchObject({ identifier: "api", scopes: ["read", "write"], upstream_url: "http://127.0.0.1:9999", prefix: "/v2" })
    const dup = await h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "api", scopes: ["read"] } })
    expect(dup.status).toBe(409)
    expect(dup.body.error).toBe("resource_identifier_taken")
    const badScope = await h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "x", scopes: ["Read Me"] } })
    expect(badScope.status).toBe(400)
  })

  it("binds an application to a resource once; deleting the binding publishes a revocation", async () => {
    const app = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "binder" } })
    const res = await h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "bound", scopes: ["read"] } })
    const b = await h.call("POST", `/v1/zones/${zone}/bindings`, { body: { resource_id: res.body.id, application_id: app.body.id } })
    expect(b.status).toBe(201)
    expect(b.body).toMatchObject({ resource_id: res.body.id, application_id: app.body.id, credential_id: null })
    const dup = await h.call("POST", `/v1/zones/${zone}/bindings`, { body: { resource_id: res.body.id, application_id: app.body.id } })
    expect(dup.status).toBe(409)
    const missing = await h.call("POST", `/v1/zones/${zone}/bindings`, { body: { resource_id: "nope", application_id: app.body.id } })
    expect(missing).toMatchObject({ status: 404, body: { error: "resource_not_found" } })
    const list = await h.call("GET", `/v1/zones/${zone}/bindings?application_id=${app.body.id}`)
    expect(list.body.items.map((x: { id: string }) => x.id)).toEqual([b.body.id])
    expect((await h.call("DELETE", `/v1/zones/${zone}/bindings/${b.body.id}`)).body.status).toBe("archived")
    await until(async () => {
      const entries = await h.redis.xrange(h.keys.stream("revocation"), "-", "+")
      return entries.some(([, fields]) => fields.join(" ").includes("BindingDeleted") && fields.join(" ").includes(b.body.id))
    }, 20_000)
  })

  it("grants within the resource's scopes only (403 grant_scopes_exceed_resource)", async () => {
    const app = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "granted" } })
    const res = await h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "mail", scopes: ["mail:read", "mail:send"], requires_grant: true } })
    const beyond = await h.call("POST", `/v1/zones/${zone}/grants`, {
      body: { application_id: app.body.id, user_id: "u-1", resource_id: res.body.id, scopes: ["mail:read", "mail:delete"] }
    })
    expect(beyond).toMatchObject({ status: 403, body: { error: "grant_scopes_exceed_resource" } })
    const g = await h.call("POST", `/v1/zones/${zone}/grants`, {
      body: { application_id: app.body.id, user_id: "u-1", resource_id: res.body.id, scopes: ["mail:read"] }
    })
    expect(g.status).toBe(201)
    const widen = await h.call("PATCH", `/v1/zones/${zone}/grants/${g.body.id}`, { body: { scopes: ["mail:read", "mail:delete"] } })
    expect(widen.status).toBe(403)
    const revoke = await h.call("DELETE", `/v1/zones/${zone}/grants/${g.body.id}`, { body: { reason: "user withdrew consent" } })
    expect(revoke.body).toMatchObject({ status: "archived", archive_reason: "user withdrew consent" })
  })
})

describe("every aggregate's lifecycle", () => {
  it("create, get, list, update under If-Match, archive — for each of them", async () => {
    const post = async (path: string, body: unknown) => {
      const r = await h.call("POST", `/v1/zones/${zone}/${path}`, { body })
      expect(r.status, `${path}: ${r.text}`).toBe(201)
      return r.body
    }
    const provider = await post("providers", { name: "p-life" })
    const app = await post("applications", { name: "app-life" })
    const resource = await post("resources", { identifier: "res-life", scopes: ["a", "b"] })
    const credential = await post("credentials", { provider_id: provider.id, material: "s3cr3t-material-value" })
    const policy = await post("policies", { name: "pol-life" })
    const cases: Array<[segment: string, create: unknown, patch: Record<string, unknown>]> = [
      ["applications", { name: "a2" }, { name: "a2 renamed" }],
      ["resources", { identifier: "r2", scopes: ["x"] }, { scopes: ["x", "y"] }],
      ["providers", { name: "p2" }, { header: "x-key" }],
      ["credentials", { provider_id: provider.id, material: "another-secret-value" }, { name: "renamed" }],
      ["bindings", { resource_id: resource.id, application_id: app.id, credential_id: credential.id }, { credential_id: null }],
      ["policies", { name: "p3", description: "one" }, { description: "two" }],
      ["policy-sets", { name: "s2" }, { description: "two" }],
      ["grants", { application_id: app.id, user_id: "u-9", resource_id: resource.id, scopes: ["a"] }, { scopes: ["a", "b"] }]
    ]
    for (const [segment, create, patch] of cases) {
      const made = await post(segment, create)
      const url = `/v1/zones/${zone}/${segment}/${made.id}`
      const got = await h.call("GET", url)
      const { client_secret: _shownOnce, ...record } = made
      expect(got.body, segment).toEqual(record)
      const listed = await h.call("GET", `/v1/zones/${zone}/${segment}?limit=1000`)
      expect(listed.body.items.map((x: { id: string }) => x.id), segment).toContain(made.id)
      const patched = await h.call("PATCH", url, { body: patch, headers: { "if-match": got.headers.get("etag")! } })
      expect(patched.status, `${segment}: ${patched.text}`).toBe(200)
      expect(patched.body, segment).toMatchObject({ ...patch, version: 2 })
      const stale = await h.call("PATCH", url, { body: patch, headers: { "if-match": got.headers.get("etag")! } })
      expect(stale.status, segment).toBe(412)
      const ended = await h.call("DELETE", url)
      expect(ended.body, segment).toMatchObject({ status: "archived", version: 3 })
      const archived = await h.call("GET", `/v1/zones/${zone}/${segment}?status=archived&limit=1000`)
      expect(archived.body.items.map((x: { id: string }) => x.id), segment).toContain(made.id)
      const late = await h.call("PATCH", url, { body: patch })
      expect(late.status, segment).toBe(409)
    }
    expect(policy.versions).toEqual([])
  })
})

describe("the log", () => {
  it("every command's events are in the log, the outbox drains, and a rebuild gives the same tables", async () => {
    await until(async () => (await query(`select count(*)::int as n from outbox where status <> 'sent'`))[0].n === 0, 30_000)
    const types = (await query(`select distinct type from events`)).map((r) => r.type)
    expect(types).toEqual(expect.arrayContaining(["ZoneCreated", "ZoneUpdated", "ZoneArchived", "ApplicationCreated", "ApplicationSecretRotated", "ResourceCreated", "BindingCreated", "BindingDeleted", "GrantCreated", "GrantRevoked", "ProviderCreated"]))
    // the zone's events through `caracal events replay`: in the log, on their stream, signed
    const { runScript } = await import("../../core/testing/index.ts")
    const cliEnv = { DATABASE_URL: h.dbUrl, REDIS_URL: h.env.REDIS_URL!, STREAMS_HMAC_KEY: h.env.STREAMS_HMAC_KEY!, CARACAL_STREAM_PREFIX: h.env.REDIS_KEY_PREFIX! }
    const replay = await runScript("cli/main.ts", ["events", "replay", "--aggregate", `zone/${zone}`, "--json"], cliEnv, 60_000)
    expect(replay.code, replay.stderr).toBe(0)
    const replayed = replay.stdout.trim().split("\n").map((l) => JSON.parse(l) as { type: string; signature: string })
    expect(replayed.map((e) => `${e.type} ${e.signature}`)).toEqual(["ZoneCreated valid"])
    const before = await query(`select * from api_records order by id`)
    const out = await runScript("cli/main.ts", ["projections", "rebuild", "api"], { DATABASE_URL: h.dbUrl, REDIS_URL: h.env.REDIS_URL!, STREAMS_HMAC_KEY: h.env.STREAMS_HMAC_KEY! }, 60_000)
    expect(out.code, out.stderr).toBe(0)
    expect(await query(`select * from api_records order by id`)).toEqual(before)
  })
})
