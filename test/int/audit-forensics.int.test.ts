// The forensic routes on the api over what the audit service chained: the api's own events
// (their correlation id is the request id) and the sts's decision records, one request's
// story across both, filters, cursor, redaction, verification; `caracal audit timeline`.
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { v7 as uuidv7 } from "uuid"
import { makeAuditLog } from "../../core/audit-log.ts"
import { signingKey } from "../../core/signing.ts"
import { type RunningService, runScript, stackEnv, startService } from "../../core/testing/index.ts"
import { checkpointSigner } from "../../services/audit/checkpoint.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"
import { until } from "../fixtures/harness.ts"

describe("forensics on the api", () => {
  let h: ApiHarness
  let audit: RunningService
  let zone: string
  const requestId = `req-${randomUUID()}`
  const hmac = randomBytes(32).toString("hex")
  const seed = randomBytes(32)
  const publicKey = checkpointSigner(seed).publicKeyHex

  beforeAll(async () => {
    h = await startApi("auditforensics", { AUDIT_HMAC_KEY: hmac, AUDIT_CHECKPOINT_PUBLIC_KEY: publicKey })
    audit = await startService("audit", {
      DATABASE_URL: h.dbUrl, REDIS_URL: stackEnv().REDIS_URL, REDIS_KEY_PREFIX: h.keys.prefix, INSECURE_HTTP: "true",
      STREAMS_HMAC_KEY: h.env.STREAMS_HMAC_KEY!, AUDIT_HMAC_KEY: hmac, AUDIT_CHECKPOINT_KEY: seed.toString("hex"), AUDIT_CHECKPOINT_INTERVAL_S: "1"
    })
    const z = await h.call("POST", "/v1/zones", { body: { slug: "forensics" }, headers: { "x-request-id": requestId } })
    assert.strictEqual(z.status, 201)
    zone = z.body.id
    const app = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: "agent-app" } })
    assert.strictEqual(app.status, 201)
    // the sts's decision for the same request, on the audit stream as the sts writes it
    const log = makeAuditLog(h.redis, h.keys, signingKey(Buffer.from(h.env.STREAMS_HMAC_KEY!, "hex")))
    for (const decision of ["allow", "deny"] as const) {
      await Effect.runPromise(log.append({
        id: uuidv7(), zone_id: zone, source: "sts", kind: "token_exchange", decision, reason: decision === "deny" ? "policy_denied" : null,
        request_id: requestId, trace_id: null, client_id: app.body.id, agent_session_id: "sess-1", delegation_edge_id: null, resource: "api",
        scope: "read", jti: `jti-${decision}`, status: decision === "allow" ? 200 : 403, latency_ms: 3
      }))
    }
    await until(async () => {
      const r = await h.call("GET", `/v1/zones/${zone}/audit?request_id=${requestId}`)
      return r.status === 200 && r.body.items.length >= 3
    }, 90_000, "the request's records chained")
  }, 180_000)
  afterAll(async () => {
    await audit?.stop("SIGKILL")
    await h?.close()
  })

  it("one request's story across the api's events and the sts's decisions", async () => {
    const r = await h.call("GET", `/v1/zones/${zone}/audit/requests/${requestId}`)
    assert.strictEqual(r.status, 200, r.text)
    assert.includeMembers(r.body.sources, ["zone", "sts"])
    assert.includeMembers(r.body.records.map((x: { kind: string }) => x.kind), ["ZoneCreated", "token_exchange"])
    const missing = await h.call("GET", `/v1/zones/${zone}/audit/requests/nope`)
    assert.strictEqual(missing.status, 404)
    assert.strictEqual(missing.body.error, "audit_request_not_found")
  }, 30_000)

  it("filters, pages with a cursor, and redacts sensitive metadata", async () => {
    const denied = await h.call("GET", `/v1/zones/${zone}/audit?decision=deny`)
    assert.deepStrictEqual(denied.body.items.map((x: { jti: string }) => x.jti), ["jti-deny"])
    const byJti = await h.call("GET", `/v1/zones/${zone}/audit?jti=jti-allow&event_type=token_exchange`)
    assert.lengthOf(byJti.body.items, 1)
    const seen: Array<number> = []
    let cursor: string | null = null
    do {
      const page: { body: { items: Array<{ seq: number }>; next_cursor: string | null } } = await h.call("GET",
        `/v1/zones/${zone}/audit?limit=1${cursor ? `&cursor=${cursor}` : ""}`)
      seen.push(...page.body.items.map((x) => x.seq))
      cursor = page.body.next_cursor
    } while (cursor !== null)
    assert.deepStrictEqual(seen, Array.from({ length: seen.length }, (_, i) => i + 1))
    assert.isAtLeast(seen.length, 4)
    const all = await h.call("GET", `/v1/zones/${zone}/audit?event_type=ApplicationCreated`)
    assert.lengthOf(all.body.items, 1)
    assert.include(all.text, "[redacted]")
    assert.notMatch(all.text, /"secretVerifiers":\[/)
  }, 30_000)

  it("verifies the zone's chain with MACs and signed checkpoints", async () => {
    await until(async () => (await h.call("GET", `/v1/zones/${zone}/audit/verify`)).body.checkpoints_verified > 0, 30_000, "a checkpoint")
    const r = await h.call("GET", `/v1/zones/${zone}/audit/verify`)
    assert.strictEqual(r.status, 200)
    assert.include(r.body, { ok: true, macs_checked: true, signatures_checked: true, first_broken: null })
    await h.rows("update audit_records set decision = 'allow' where zone = $1 and jti = 'jti-deny'", [zone])
    const broken = await h.call("GET", `/v1/zones/${zone}/audit/verify`)
    assert.isFalse(broken.body.ok)
    assert.match(broken.body.first_broken.reason, /decision column/)
  }, 60_000)

  it("answers bad input with 400 and stable codes, unknown zones with 404, no token with 401", async () => {
    for (const q of ["limit=0", "limit=5000", "cursor=!!", "cursor=c2VxOmFiYw", "decision=maybe", "from=yesterday"]) {
      const r = await h.call("GET", `/v1/zones/${zone}/audit?${q}`)
      assert.strictEqual(r.status, 400, q)
      assert.strictEqual(r.body.error, "invalid_request", q)
    }
    assert.strictEqual((await h.call("GET", `/v1/zones/${zone}/audit/proofs/inclusion?seq=x&tree_size=1`)).status, 400)
    assert.strictEqual((await h.call("GET", "/v1/zones/no-such-zone/audit")).body.error, "zone_not_found")
    assert.strictEqual((await h.call("GET", `/v1/zones/${zone}/audit`, { token: null })).status, 401)
  }, 30_000)

  it("caracal audit timeline renders the request's story", async () => {
    const r = await runScript("cli/main.ts", ["audit", "timeline", "--request", requestId], { DATABASE_URL: h.dbUrl }, 60_000)
    assert.strictEqual(r.code, 0, r.stderr)
    assert.match(r.stdout, new RegExp(`request ${requestId}: \\d+ records`))
    assert.match(r.stdout, /zone\s+ZoneCreated/)
    assert.match(r.stdout, /sts\s+token_exchange DENY\s+reason=policy_denied/)
    const none = await runScript("cli/main.ts", ["audit", "timeline", "--request", "nope"], { DATABASE_URL: h.dbUrl }, 60_000)
    assert.strictEqual(none.code, 1)
    assert.match(none.stderr, /no audit records for request nope/)
  }, 60_000)
})
