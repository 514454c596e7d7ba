// The token endpoint on its own Node handler (token-route.ts) with the audit stream on the
// budgets' Redis (the default): an issued mandate's budget is counted and its record written
// in one script. Two replicas share one budget; a refusal is recorded on its own; the
// endpoint keeps the kernel's rules (body limit, request id, request metrics).
import http from "node:http"
import { decodeJwt } from "jose"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { internalCall } from "../../core/internal-call.ts"
import { freePort, type RunningService, startService } from "../../core/testing/index.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"
import { jsonCall, type JsonReply, until } from "../fixtures/harness.ts"

const POLICY = `package caracal.authz

default result := {"allow": true, "reason": "allowed"}
`
const RATE = 10
const EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
const JWT = "urn:ietf:params:oauth:token-type:jwt"

let h: ApiHarness
let second: RunningService
let zone: string
let app: { id: string; secret: string }
// its own budget: the metrics check does not spend the tested app's
let counted: { id: string; secret: string }

const tokenAt = (base: string, params: Record<string, string>, headers: Record<string, string> = {}): Promise<JsonReply> =>
  jsonCall(`${base}/oauth/2/token`, "POST", {
    raw: new URLSearchParams(params).toString(),
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers }
  })
const ambient = async (as = app) => {
  const r = await tokenAt(h.sts.url, { grant_type: "client_credentials", zone_id: zone, application_id: as.id, client_secret: as.secret, ttl_seconds: "3600" })
  expect(r.status, r.text).toBe(200)
  return r.body.access_token as string
}
const records = async () =>
  (await h.redis.xrange(h.keys.stream("audit"), "-", "+")).map(([, f]) => JSON.parse(f[f.indexOf("e") + 1]!) as Record<string, unknown>)

beforeAll(async () => {
  h = await startApi("sts_budget", {}, 1, { TOKEN_RATE_PER_MINUTE: String(RATE) })
  second = await startService("sts", { ...h.stsEnv, PORT: String(await freePort()) })
  const post = async (path: string, body: unknown) => {
    const r = await h.call("POST", path, { body })
    expect(r.status, `${path}: ${r.text}`).toBe(201)
    return r.body
  }
  zone = (await post("/v1/zones", { slug: "budget" })).id
  const created = await post(`/v1/zones/${zone}/applications`, { name: "budget" })
  app = { id: created.id, secret: created.client_secret }
  const counting = await post(`/v1/zones/${zone}/applications`, { name: "metrics" })
  counted = { id: counting.id, secret: counting.client_secret }
  for (const identifier of ["one", "two", "three"]) {
    const r = await post(`/v1/zones/${zone}/resources`, { identifier, scopes: ["read"] })
    await post(`/v1/zones/${zone}/bindings`, { resource_id: r.id, application_id: app.id })
  }
  const policy = await post(`/v1/zones/${zone}/policies`, { name: "allow", rego: POLICY })
  const set = await post(`/v1/zones/${zone}/policy-sets`, { name: "default" })
  const version = await post(`/v1/zones/${zone}/policy-sets/${set.id}/versions`, { manifest: { policies: [{ policy_id: policy.id }] } })
  await post(`/v1/zones/${zone}/policy-sets/${set.id}/activate`, { version_id: version.versions[0].id }).catch(() => undefined)
  // asked through the signed decide route, which counts against no budget
  const key = Buffer.from(h.stsEnv.SERVICE_HMAC_KEY!, "hex")
  await until(async () => {
    const r = await internalCall({ baseUrl: h.sts.url, key, timeoutMs: 5_000 }, "POST", "/internal/v1/decide", {
      zone_id: zone,
      input: { zone_id: zone, action: { use: "ambient", scopes: ["agent:lifecycle"] } }
    })
    return r.status === 200 && (r.body as { allow?: boolean }).allow === true
  }, 60_000, "the policy in OPA")
}, 120_000)
afterAll(async () => {
  await second?.stop()
  await h?.close()
})

describe("budget and record in one script, two replicas", () => {
  it(`${3 * RATE} concurrent exchanges over two replicas: exactly ${RATE} issued, each recorded with its jti; every refusal recorded as slow_down`, async () => {
    const subject = await ambient()
    const replies = await Promise.all(Array.from({ length: 3 * RATE }, (_, i) =>
      tokenAt(i % 2 === 0 ? h.sts.url : second.url, { grant_type: EXCHANGE, subject_token: subject, subject_token_type: JWT, resource: "one" })))
    const issued = replies.filter((r) => r.status === 200)
    const refused = replies.filter((r) => r.status === 429)
    expect(issued).toHaveLength(RATE)
    expect(refused).toHaveLength(2 * RATE)
    for (const r of refused) expect(r.body.error).toBe("slow_down")
    expect(issued.some((r) => r.headers.get("x-request-id") === null)).toBe(false)

    const mine = (await records()).filter((r) => r.client_id === app.id && r.resource === "one")
    const allowed = mine.filter((r) => r.decision === "allow")
    // one record per issued mandate, naming its jti; none for a mandate that never left
    expect(allowed.map((r) => r.jti).sort()).toEqual(issued.map((r) => decodeJwt(r.body.access_token as string).jti).sort())
    const denied = mine.filter((r) => r.decision === "deny")
    expect(denied).toHaveLength(2 * RATE)
    for (const r of denied) expect(r).toMatchObject({ reason: "slow_down", status: 429, jti: null })
  })

  it("one replica killed: the other goes on counting the same window (the budget lives in Redis)", async () => {
    const subject = await ambient()
    const at = (base: string) => tokenAt(base, { grant_type: EXCHANGE, subject_token: subject, subject_token_type: JWT, resource: "two" })
    for (let i = 0; i < RATE - 1; i++) expect((await at(second.url)).status).toBe(200)
    await second.stop("SIGKILL")
    expect((await at(h.sts.url)).status).toBe(200)
    const over = await at(h.sts.url)
    expect(over.status).toBe(429)
    expect((await records()).filter((r) => r.client_id === app.id && r.resource === "two" && r.decision === "allow")).toHaveLength(RATE)
  })
})

describe("the token endpoint keeps the kernel's rules", () => {
  const rawPost = (path: string, body: Buffer, headers: Record<string, string>) =>
    new Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }>((resolve, reject) => {
      const url = new URL(path, h.sts.url)
      const req = http.request(url, { method: "POST", headers }, (res) => {
        let text = ""
        res.setEncoding("utf8")
        res.on("data", (c: string) => (text += c))
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }))
      })
      // the server may answer and close before it has read everything
      req.on("error", reject)
      req.end(body)
    })

  it("a body over 64 KiB is 413 invalid_request, announced or chunked, and recorded; the request id is echoed", async () => {
    const big = Buffer.alloc(70 * 1024, "a")
    const announced = await rawPost("/oauth/2/token", big, { "content-type": "application/x-www-form-urlencoded", "content-length": String(big.length), "x-request-id": "req-announced" })
    expect(announced.status).toBe(413)
    expect(JSON.parse(announced.text).error).toBe("invalid_request")
    expect(announced.headers["x-request-id"]).toBe("req-announced")
    const chunked = await rawPost("/oauth/2/token", big, { "content-type": "application/x-www-form-urlencoded", "transfer-encoding": "chunked", "x-request-id": "req-chunked" })
    expect(chunked.status).toBe(413)
    expect(JSON.parse(chunked.text).error).toBe("invalid_request")
    const recorded = (await records()).filter((r) => r.request_id === "req-announced" || r.request_id === "req-chunked")
    expect(recorded.map((r) => [r.request_id, r.status])).toEqual([["req-announced", 413], ["req-chunked", 413]])
  })

  it("exchanges are counted in the request metrics; other routes still go through the router", async () => {
    const count = async () => {
      const text = await (await fetch(`${h.sts.url}/metrics`)).text()
      const line = text.split("\n").find((l) => l.startsWith("http_requests_total{") && l.includes(`service="sts"`) && l.includes(`method="POST"`) && l.includes(`status="200"`))
      return line === undefined ? 0 : Number(line.split(" ").at(-1))
    }
    const before = await count()
    await ambient(counted)
    expect(await count()).toBe(before + 1)
    // the router still answers what the endpoint does not claim
    expect((await jsonCall(`${h.sts.url}/oauth/2/token`, "GET")).status).toBe(404)
    expect((await jsonCall(`${h.sts.url}/.well-known/jwks.json?zone_id=${zone}`, "GET")).status).toBe(200)
  })
})
