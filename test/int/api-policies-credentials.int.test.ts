// Policies checked by the real OPA (through the sts) before they can be activated, and
// credentials whose material goes to the sts to be sealed: no response, log line, event,
// outbox row or idempotency record of the api ever holds it.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { randomBytes } from "node:crypto"
import { until } from "../fixtures/harness.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"

let h: ApiHarness
let zone: string
beforeAll(async () => {
  h = await startApi("api_polcred")
  zone = (await h.call("POST", "/v1/zones", { body: { slug: "pc" } })).body.id
})
afterAll(() => h.close())

const GOOD = `package caracal.authz

default result := {"allow": false, "reason": "default deny"}

result := {"allow": true, "reason": "reader"} if {
  input.scope == "read"
}
`
const BROKEN = `package caracal.authz

result := {"allow": true if {
`

const rows = (text: string, values: Array<unknown> = []) => h.rows(text, values)

describe("policies", () => {
  it("refuses a Rego text OPA rejects with OPA's message, and creates nothing", async () => {
    const before = (await rows("select count(*)::int as n from events where aggregate_type <> 'zone_key'"))[0].n
    const r = await h.call("POST", `/v1/zones/${zone}/policies`, { body: { name: "broken", rego: BROKEN } })
    expect(r.status).toBe(422)
    expect(r.body.error).toBe("invalid_policy")
    expect(r.body.error_description).toMatch(/parse|unexpected|rego/i)
    expect((await rows("select count(*)::int as n from events where aggregate_type <> 'zone_key'"))[0].n).toBe(before)
  })

  it("adds accepted versions, refuses a broken one, and activates a set only with accepted versions", async () => {
    const p = await h.call("POST", `/v1/zones/${zone}/policies`, { body: { name: "readers", rego: GOOD } })
    expect(p.status).toBe(201)
    expect(p.body.versions).toHaveLength(1)
    const v2bad = await h.call("POST", `/v1/zones/${zone}/policies/${p.body.id}/versions`, { body: { rego: BROKEN } })
    expect(v2bad).toMatchObject({ status: 422, body: { error: "invalid_policy" } })
    const wrongPackage = await h.call("POST", `/v1/zones/${zone}/policies/${p.body.id}/versions`, { body: { rego: "package other\n\nresult := {}\n" } })
    expect(wrongPackage.status).toBe(422)
    const v2 = await h.call("POST", `/v1/zones/${zone}/policies/${p.body.id}/versions`, { body: { rego: GOOD.replace("reader", "reader v2") } })
    expect(v2.status).toBe(201)
    expect(v2.body.versions.map((v: { number: number }) => v.number)).toEqual([1, 2])
    const texts = await rows("select number, rego from api_policy_versions where policy_id = $1 order by number", [p.body.id])
    expect(texts.map((t) => t.number)).toEqual([1, 2])

    const set = await h.call("POST", `/v1/zones/${zone}/policy-sets`, { body: { name: "main" } })
    const sv = await h.call("POST", `/v1/zones/${zone}/policy-sets/${set.body.id}/versions`, { body: { manifest: { policies: [{ policy_id: p.body.id }] } } })
    expect(sv.status).toBe(201)
    expect(sv.body.versions[0].manifest.policies[0]).toEqual({ policy_id: p.body.id, version_id: v2.body.versions[1].id })
    const act = await h.call("POST", `/v1/zones/${zone}/policy-sets/${set.body.id}/activate`, { body: { version_id: sv.body.versions[0].id } })
    expect(act.status).toBe(200)
    expect(act.body.active_version_id).toBe(sv.body.versions[0].id)
    const unknown = await h.call("POST", `/v1/zones/${zone}/policy-sets/${set.body.id}/activate`, { body: { version_id: "nope" } })
    expect(unknown).toMatchObject({ status: 404, body: { error: "policy_set_version_not_found" } })
  })
})

describe("credentials", () => {
  it("seals the material in the sts; no response, log line, event, outbox row or idempotency record holds it", async () => {
    const material = `sk_live_${randomBytes(24).toString("hex")}`
    const objectSecret = `pw_${randomBytes(16).toString("hex")}`
    const provider = await h.call("POST", `/v1/zones/${zone}/providers`, { body: { name: "stripe", header: "authorization", value_prefix: "Bearer " } })
    const answers = [provider]
    const c1 = await h.call("POST", `/v1/zones/${zone}/credentials`, {
      body: { provider_id: provider.body.id, name: "prod key", material },
      headers: { "idempotency-key": "cred-1" }
    })
    answers.push(c1)
    expect(c1.status).toBe(201)
    expect(c1.body).toMatchObject({ provider_id: provider.body.id, name: "prod key", sealed_by: "sts", status: "active" })
    // a replay neither seals a second copy nor shows the material
    const again = await h.call("POST", `/v1/zones/${zone}/credentials`, {
      body: { provider_id: provider.body.id, name: "prod key", material },
      headers: { "idempotency-key": "cred-1" }
    })
    answers.push(again)
    expect(again.body.id).toBe(c1.body.id)
    expect((await rows("select count(*)::int as n from sts_credentials"))[0].n).toBe(1)
    const c2 = await h.call("POST", `/v1/zones/${zone}/credentials`, { body: { provider_id: provider.body.id, material: { username: "svc", password: objectSecret } } })
    answers.push(c2)
    expect(c2.status).toBe(201)
    // bad input that carries the secret: the error must not echo it
    const bad = await h.call("POST", `/v1/zones/${zone}/credentials`, { body: { provider_id: provider.body.id, material, colour: "x" } })
    answers.push(bad)
    expect(bad.status).toBe(400)
    const unknownProvider = await h.call("POST", `/v1/zones/${zone}/credentials`, { body: { provider_id: "nope", material } })
    answers.push(unknownProvider)
    expect(unknownProvider).toMatchObject({ status: 404, body: { error: "provider_not_found" } })
    answers.push(await h.call("GET", `/v1/zones/${zone}/credentials/${c1.body.id}`))
    answers.push(await h.call("GET", `/v1/zones/${zone}/credentials`))
    const revoked = await h.call("DELETE", `/v1/zones/${zone}/credentials/${c1.body.id}`)
    answers.push(revoked)
    expect(revoked.body.status).toBe("archived")
    await until(async () => (await rows("select count(*)::int as n from outbox where status <> 'sent'"))[0].n === 0, 30_000)

    const stored = JSON.stringify([
      await rows("select * from events"),
      await rows("select * from outbox"),
      await rows("select * from command_results"),
      await rows("select * from api_records")
    ])
    const streamed = JSON.stringify(await Promise.all(["credential", "provider", "revocation"].map((t) => h.redis.xrange(h.keys.stream(t), "-", "+"))))
    const everything = [answers.map((a) => a.text).join("\n"), h.logs(), stored, streamed].join("\n")
    expect(streamed).toContain(c1.body.id)
    for (const secret of [material, objectSecret]) {
      expect(everything).not.toContain(secret)
      // nor any long piece of it (a truncated echo is still a leak)
      expect(everything).not.toContain(secret.slice(8, 32))
    }
  })
})
