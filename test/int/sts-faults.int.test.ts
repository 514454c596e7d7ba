// The sts failing closed: rate limits per (zone, resource, application) and per failed
// client authentication; OPA stopped (503, no token, the decision recorded as an error);
// the audit stream unreachable (503, no token); no issuer in production (no start).
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freePort, type PrivateOpa, runToExit, spareRedisServer, startOpa, stopOpa } from "../../core/testing/index.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"
import { jsonCall, type JsonReply, until } from "../fixtures/harness.ts"

const POLICY = `package caracal.authz

default result := {"allow": true, "reason": "allowed"}
`
const RATE = 6
const FAILURES = 3

let h: ApiHarness
let opa: PrivateOpa
let audit: Awaited<ReturnType<typeof spareRedisServer>> | undefined
let auditRedis: Redis
let zone: string
const apps: Record<string, { id: string; secret: string }> = {}

const token = (params: Record<string, string>): Promise<JsonReply> =>
  jsonCall(`${h.sts.url}/oauth/2/token`, "POST", {
    raw: new URLSearchParams(params).toString(),
    headers: { "content-type": "application/x-www-form-urlencoded" }
  })
const credentials = (app: string, secret = apps[app]!.secret) => ({ grant_type: "client_credentials", zone_id: zone, application_id: apps[app]!.id, client_secret: secret })
const perCall = (subject: string, resource: string) =>
  token({ grant_type: "urn:ietf:params:oauth:grant-type:token-exchange", subject_token: subject, subject_token_type: "urn:ietf:params:oauth:token-type:jwt", resource })
const records = async () =>
  (await auditRedis.xrange(h.keys.stream("audit"), "-", "+")).map(([, f]) => JSON.parse(f[f.indexOf("e") + 1]!) as Record<string, unknown>)

beforeAll(async () => {
  opa = await startOpa(await freePort())
  audit = await spareRedisServer(["--maxmemory-policy", "noeviction"])
  auditRedis = new Redis(audit.url, { maxRetriesPerRequest: 1 })
  auditRedis.on("error", () => {})
  h = await startApi("sts_faults", {}, 1, {
    OPA_URL: opa.url,
    AUDIT_STREAM_URL: audit!.url,
    TOKEN_RATE_PER_MINUTE: String(RATE),
    CLIENT_AUTH_FAILURES_PER_MINUTE: String(FAILURES)
  })
  const post = async (path: string, body: unknown) => {
    const r = await h.call("POST", path, { body })
    expect(r.status, `${path}: ${r.text}`).toBe(201)
    return r.body
  }
  zone = (await post("/v1/zones", { slug: "faults" })).id
  for (const name of ["rate", "guess", "opa", "audit"]) {
    const app = await post(`/v1/zones/${zone}/applications`, { name })
    apps[name] = { id: app.id, secret: app.client_secret }
  }
  for (const identifier of ["one", "two"]) {
    const r = await post(`/v1/zones/${zone}/resources`, { identifier, scopes: ["read"] })
    await post(`/v1/zones/${zone}/bindings`, { resource_id: r.id, application_id: apps.rate!.id })
  }
  const policy = await post(`/v1/zones/${zone}/policies`, { name: "allow", rego: POLICY })
  const set = await post(`/v1/zones/${zone}/policy-sets`, { name: "default" })
  const version = await post(`/v1/zones/${zone}/policy-sets/${set.id}/versions`, { manifest: { policies: [{ policy_id: policy.id }] } })
  await post(`/v1/zones/${zone}/policy-sets/${set.id}/activate`, { version_id: version.versions[0].id }).catch(() => undefined)
  await until(async () => (await token(credentials("opa"))).status === 200, 60_000, "the policy in the private OPA")
}, 120_000)
afterAll(async () => {
  await h?.close()
  auditRedis?.disconnect()
  await audit?.stop()
  audit = undefined
  if (opa) await stopOpa(opa)
})

describe("rate limits (Redis db1)", () => {
  it(`the ${RATE + 1}th mandate within a minute for one (zone, resource, application) is 429; another resource is not affected`, async () => {
    const subject = (await token(credentials("rate"))).body.access_token as string
    for (let i = 0; i < RATE; i++) expect((await perCall(subject, "one")).status).toBe(200)
    const over = await perCall(subject, "one")
    expect(over.status).toBe(429)
    expect(over.body.error).toBe("slow_down")
    expect((await perCall(subject, "two")).status).toBe(200)
  })

  it(`after ${FAILURES} failed client authentications, even the right secret is 429 for the rest of the window`, async () => {
    for (let i = 0; i < FAILURES; i++) expect((await token(credentials("guess", "cs_wrong"))).status).toBe(401)
    const locked = await token(credentials("guess"))
    expect(locked.status).toBe(429)
    expect(locked.headers.get("retry-after")).toBe("60")
    // others are not locked out
    expect((await token(credentials("opa"))).status).toBe(200)
  })
})

describe("dependencies down: never a token", () => {
  it("OPA stopped: 503, no token, and the decision recorded as an error, not an allow", async () => {
    await stopOpa(opa)
    const r = await token(credentials("opa"))
    expect(r.status).toBe(503)
    expect(r.body.error).toBe("temporarily_unavailable")
    expect(r.body.access_token).toBeUndefined()
    const mine = (await records()).filter((x) => x.client_id === apps.opa!.id)
    expect(mine.at(-1)).toMatchObject({ decision: "error", status: 503, jti: null })
  })

  it("the audit stream unreachable: 503 and no token", async () => {
    await audit!.stop()
    audit = undefined
    const r = await token(credentials("audit"))
    expect(r.status).toBe(503)
    expect(r.body.error).toBe("temporarily_unavailable")
    expect(r.text).not.toContain("access_token")
  })
})

describe("configuration", () => {
  it("refuses to start in production without ISSUER_URL", async () => {
    const { ISSUER_URL: _issuer, PORT: _port, AUDIT_STREAM_URL: _audit, ...env } = h.stsEnv
    const out = await runToExit("sts", env, 60_000)
    expect(out.code).not.toBe(0)
    expect(out.stderr).toContain("ISSUER_URL")
  })
})
