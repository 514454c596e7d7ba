// The api's conventions: the admin token (uniform 401s, constant-time, rate limited per
// address in Redis db1), bad input answered with its 4xx and nothing written, idempotent
// POSTs, and the OpenAPI document matching the routes served.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type ApiHarness, startApi } from "../fixtures/api.ts"

let h: ApiHarness
let zone: string
beforeAll(async () => {
  h = await startApi("api_conv")
  zone = (await h.call("POST", "/v1/zones", { body: { slug: "conv" } })).body.id
})
afterAll(() => h.close())

const count = async (sql: string) => Number((await h.rows(sql))[0].n)
// the api's own writes: the sts shares the database and provisions zone keys on its own schedule
const written = async () => ({
  events: await count("select count(*) as n from events where aggregate_type <> 'zone_key'"),
  outbox: await count("select count(*) as n from outbox where producer = 'api'")
})

describe("admin token", () => {
  it("wrong, missing, shorter, longer and off-by-one-byte tokens get identical 401s; the 21st bad attempt within a minute is 429", async () => {
    // each address has its own window: clear this one's so that earlier runs do not count
    for (const k of await h.redis.keys(`${h.keys.prefix}:rl:*`)) await h.redis.del(k)
    const t = h.adminToken
    const flipped = t.slice(0, -1) + (t.endsWith("a") ? "b" : "a")
    const bad: Array<string | null> = [null, "wrong", t.slice(0, -1), `${t}x`, flipped, "", t.toUpperCase(), "x".repeat(5000)]
    const answers = []
    for (let i = 0; i < 20; i++) {
      const token = bad[i % bad.length]!
      const r = await h.call("GET", "/v1/zones", { token, ...(token === "" ? { headers: { authorization: "Bearer" } } : {}) })
      answers.push({ status: r.status, body: r.text, auth: r.headers.get("www-authenticate") })
    }
    expect([...new Set(answers.map((a) => JSON.stringify(a)))]).toEqual([JSON.stringify(answers[0])])
    expect(answers[0]).toMatchObject({ status: 401 })
    expect(JSON.parse(answers[0]!.body).error).toBe("invalid_admin_token")
    const limited = await h.call("GET", "/v1/zones", { token: "wrong" })
    expect(limited.status).toBe(429)
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(0)
    // locked out: even the right token from this address waits, so a guesser learns nothing
    expect((await h.call("GET", "/v1/zones")).status).toBe(429)
    // the counter lives in Redis db1 under the rate-limit key
    const db1 = h.redis.duplicate({ db: 1 })
    const keys = await db1.keys(`${h.keys.prefix}:rl:*`)
    db1.disconnect()
    expect(keys.length).toBe(1)
    await h.redis.select(1)
    for (const k of keys) await h.redis.del(k)
    await h.redis.select(0)
    expect((await h.call("GET", "/v1/zones")).status).toBe(200)
    expect(h.logs()).not.toContain(h.adminToken)
  })

  it("records the admin credential's id as the actor, never the token", async () => {
    const r = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "actor-check" } })
    const rows = await h.rows("select actor from events where aggregate_id = $1", [r.body.id])
    expect(rows[0].actor.kind).toBe("admin")
    expect(rows[0].actor.id).toMatch(/^admin:[0-9a-f]{16}$/)
    expect(JSON.stringify(rows)).not.toContain(h.adminToken)
  })
})

describe("bad input: its 4xx, and nothing written", () => {
  const cases: Array<[string, () => Promise<{ status: number; body: any }>, number, string]> = [
    ["wrong content type", () => h.call("POST", "/v1/zones", { raw: JSON.stringify({ slug: "ct" }), headers: { "content-type": "text/plain" } }), 415, "unsupported_media_type"],
    ["no content type", () => h.call("POST", "/v1/zones", { raw: JSON.stringify({ slug: "ct" }) }), 415, "unsupported_media_type"],
    ["malformed JSON", () => h.call("POST", "/v1/zones", { raw: "{\"slug\": ", headers: { "content-type": "application/json" } }), 400, "invalid_request"],
    ["unknown field", () => h.call("POST", "/v1/zones", { body: { slug: "uf", colour: "red" } }), 400, "invalid_request"],
    ["invalid slug", () => h.call("POST", "/v1/zones", { body: { slug: "Not A Slug" } }), 400, "invalid_request"],
    ["invalid identifier", () => h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "UPPER case", scopes: [] } }), 400, "invalid_request"],
    ["invalid scope", () => h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "ok", scopes: ["no spaces"] } }), 400, "invalid_request"],
    ["oversize body", () => h.call("POST", "/v1/zones", { body: { slug: "big", description: "x".repeat(2 * 1024 * 1024) } }), 413, "payload_too_large"],
    ["oversize metadata", () => h.call("POST", "/v1/zones", { body: { slug: "meta", metadata: { x: "y".repeat(20_000) } } }), 400, "invalid_request"],
    ["bad cursor", () => h.call("GET", "/v1/zones?cursor=%%%"), 400, "invalid_request"],
    ["forged cursor", () => h.call("GET", `/v1/zones?cursor=${Buffer.from("x' or 1=1").toString("base64url")}`), 400, "invalid_request"],
    ["limit over 1000", () => h.call("GET", "/v1/zones?limit=1001"), 400, "invalid_request"],
    ["bad If-Match", () => h.call("PATCH", `/v1/zones/${zone}`, { body: { name: "x" }, headers: { "if-match": "garbage" } }), 412, "precondition_failed"],
    ["bad Idempotency-Key", () => h.call("POST", "/v1/zones", { body: { slug: "ik" }, headers: { "idempotency-key": "has space" } }), 400, "invalid_request"],
    ["unknown zone", () => h.call("POST", "/v1/zones/00000000-0000-0000-0000-000000000000/applications", { body: { name: "x" } }), 404, "zone_not_found"],
    ["list under an unknown zone", () => h.call("GET", "/v1/zones/00000000-0000-0000-0000-000000000000/resources"), 404, "zone_not_found"],
    ["list past the end under an unknown zone", () => h.call("GET", "/v1/zones/00000000-0000-0000-0000-000000000000/bindings?limit=5&status=archived"), 404, "zone_not_found"],
    ["unknown route", () => h.call("GET", "/v1/nothing"), 404, "not_found"]
  ]
  for (const [name, send, status, code] of cases) {
    it(`${name} → ${status} ${code}`, async () => {
      const before = await written()
      const r = await send()
      expect(r.status).toBe(status)
      expect(r.body.error).toBe(code)
      expect(JSON.stringify(r.body)).not.toMatch(/\bat .*\.ts:\d+/)
      expect(await written()).toEqual(before)
    })
  }

  it("a validation error lists its issues with paths", async () => {
    const r = await h.call("POST", "/v1/zones", { body: { slug: 5, extra: true } })
    expect(r.status).toBe(400)
    expect(r.body.issues).toEqual(expect.arrayContaining([expect.objectContaining({ path: "slug" }), expect.objectContaining({ path: "extra" })]))
  })
})

describe("Idempotency-Key", () => {
  it("the same POST twice: one entity, one set of events, the same response", async () => {
    const send = () => h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "idem", scopes: ["r"] }, headers: { "idempotency-key": "res-1" } })
    const first = await send()
    const before = await written()
    const again = await send()
    expect(first.status).toBe(201)
    expect(again.status).toBe(first.status)
    expect(again.body).toEqual(first.body)
    expect(await written()).toEqual(before)
    const other = await h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "idem2", scopes: ["r"] }, headers: { "idempotency-key": "res-1" } })
    expect(other).toMatchObject({ status: 422, body: { error: "idempotency_key_reused" } })
  })

  it("a zone's create replays too (its id is new on every try)", async () => {
    const send = () => h.call("POST", "/v1/zones", { body: { slug: "idem-zone" }, headers: { "idempotency-key": "zone-1" } })
    const first = await send()
    const again = await send()
    expect(again.body).toEqual(first.body)
  })

  it("a replayed create-application answers without the secret", async () => {
    const send = () => h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "idem-app" }, headers: { "idempotency-key": "app-1" } })
    const first = await send()
    const again = await send()
    expect(first.body.client_secret).toMatch(/^cs_/)
    expect(again.status).toBe(201)
    expect(again.body.id).toBe(first.body.id)
    expect(again.body.client_secret).toBeUndefined()
    const rows = await h.rows("select result::text as r from command_results")
    expect(rows.map((r) => r.r).join("")).not.toContain(first.body.client_secret)
  })
})

describe("token pass-through", () => {
  it("hands POST /oauth/2/token to the sts unchanged and answers what the sts answered", async () => {
    const form = "grant_type=client_credentials&application_id=nope&client_secret=nope"
    const headers = { "content-type": "application/x-www-form-urlencoded" }
    const direct = await h.call("POST", "/oauth/2/token", { token: null, raw: form, headers, base: h.sts.url })
    const passed = await h.call("POST", "/oauth/2/token", { token: null, raw: form, headers })
    expect(passed.status).toBe(direct.status)
    expect(passed.body).toEqual(direct.body)
    expect(passed.headers.get("content-type")).toBe(direct.headers.get("content-type"))
  })
})

describe("OpenAPI", () => {
  it("documents every route it serves, and serves every route it documents", async () => {
    const doc = (await h.call("GET", "/v1/openapi.json")).body
    expect(doc.openapi).toBe("3.1.0")
    const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([path, ops]) =>
      Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)
    )
    const { apiRouteList } = await import("../../services/api/http.ts")
    const served = apiRouteList({ commands: {} as never, queries: {} as never, sts: {} as never, development: false })
      .map((r) => `${r.method} ${r.path}`)
    expect(documented.sort()).toEqual(served.sort())
    // each documented route exists on the running api: without a token it is a 401, never a 404
    for (const entry of documented) {
      const [method, path] = entry.split(" ") as [string, string]
      const concrete = path.replace(/\{[a-z_]+\}/g, "00000000-0000-0000-0000-000000000000")
      const r = await h.call(method, concrete, { token: null, ...(method === "GET" || method === "DELETE" ? {} : { body: {} }) })
      // the token route is the sts's, passed through (tested below); every other one is the admin's
      if (path !== "/oauth/2/token") expect(r.status, entry).toBe(401)
      // keep under the failure limit: this address's counter is cleared as we go
      await h.redis.select(1)
      for (const k of await h.redis.keys(`${h.keys.prefix}:rl:*`)) await h.redis.del(k)
      await h.redis.select(0)
    }
    const create = doc.paths["/v1/zones/{zone}/resources"].post
    expect(create.requestBody.content["application/json"].schema.properties).toHaveProperty("identifier")
  })
})
