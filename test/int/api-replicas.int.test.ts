// The api with two replicas and faults: uniqueness and idempotency hold across replicas
// under concurrent writes; a replica killed mid-load loses no acknowledged command, and
// the survivor's relay publishes every event; the development bootstrap is idempotent.
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { until } from "../fixtures/harness.ts"
import { type ApiHarness, startApi } from "../fixtures/api.ts"

let h: ApiHarness
beforeAll(async () => {
  h = await startApi("api_repl", { CARACAL_MODE: "development" }, 2)
})
afterAll(() => h.close())

const rows = (text: string, values: Array<unknown> = []) => h.rows(text, values)
const on = (i: number) => ({ base: h.replicas[i]!.url })

describe("two replicas", () => {
  it("failed admin authentications count across replicas: the 21st within a minute, on either, is 429", async () => {
    for (let i = 0; i < 20; i++) expect((await h.call("GET", "/v1/zones", { token: "wrong", ...on(i % 2) })).status).toBe(401)
    expect((await h.call("GET", "/v1/zones", { token: "wrong", ...on(0) })).status).toBe(429)
    expect((await h.call("GET", "/v1/zones", on(1))).status).toBe(429)
    // the window is cleared so that the tests below are not locked out
    const db1 = h.redis.duplicate({ db: 1 })
    for (const k of await db1.keys(`${h.keys.prefix}:rl:*`)) await db1.del(k)
    db1.disconnect()
    expect((await h.call("GET", "/v1/zones", on(1))).status).toBe(200)
  })

  it("the same slug created on both at once: exactly one zone, the other 409", async () => {
    for (let round = 0; round < 5; round++) {
      const slug = `race-${round}`
      const answers = await Promise.all([0, 1, 0, 1].map((i) => h.call("POST", "/v1/zones", { body: { slug }, ...on(i) })))
      expect(answers.map((a) => a.status).sort()).toEqual([201, 409, 409, 409])
      expect((await rows("select count(*)::int as n from api_records where type = 'zone' and record->>'slug' = $1", [slug]))[0].n).toBe(1)
    }
  })

  it("a list a replica answered before shows a change made through the other one (its answers are kept per version)", async () => {
    const zone = (await h.call("POST", "/v1/zones", { body: { slug: "cache-repl" } })).body.id
    const created = await h.call("POST", `/v1/zones/${zone}/providers`, { body: { name: "before" }, ...on(0) })
    const list = async () => (await h.call("GET", `/v1/zones/${zone}/providers`, on(0))).body.items
    expect((await list()).map((p: { name: string }) => p.name)).toEqual(["before"])
    const patched = await h.call("PATCH", `/v1/zones/${zone}/providers/${created.body.id}`, { body: { name: "after" }, headers: { "if-match": `"1"` }, ...on(1) })
    expect(patched.status).toBe(200)
    expect(await list()).toMatchObject([{ id: created.body.id, name: "after", version: 2 }])
    expect((await h.call("DELETE", `/v1/zones/${zone}/providers/${created.body.id}`, { body: { reason: "gone" }, ...on(1) })).status).toBe(200)
    expect(await list()).toMatchObject([{ name: "after", status: "archived", archive_reason: "gone", version: 3 }])
  })

  it("one Idempotency-Key sent to both replicas at once: one entity, one set of events", async () => {
    const zone = (await h.call("POST", "/v1/zones", { body: { slug: "idem-repl" } })).body.id
    const send = (i: number) =>
      h.call("POST", `/v1/zones/${zone}/resources`, { body: { identifier: "once", scopes: ["r"] }, headers: { "idempotency-key": "both" }, ...on(i) })
    const answers = await Promise.all([send(0), send(1), send(0), send(1)])
    expect(new Set(answers.map((a) => a.body.id)).size).toBe(1)
    expect(answers.every((a) => a.status === 201)).toBe(true)
    expect((await rows("select count(*)::int as n from events where type = 'ResourceCreated' and zone_id = $1", [zone]))[0].n).toBe(1)
  })

  it("a replica killed under load: every acknowledged command is in the log and on its stream", async () => {
    const zone = (await h.call("POST", "/v1/zones", { body: { slug: "killed" } })).body.id
    const acknowledged: Array<string> = []
    let stop = false
    const writer = async (i: number) => {
      for (let n = 0; !stop; n++) {
        const r = await h.call("POST", `/v1/zones/${zone}/applications`, { body: { name: `w${i}-${n}` }, ...on(i) }).catch(() => undefined)
        if (r?.status === 201) acknowledged.push(r.body.id)
        if (r === undefined && i === 0) return // its replica is gone
      }
    }
    const writers = [writer(0), writer(1), writer(1)]
    await until(() => acknowledged.length >= 30, 30_000)
    await h.replicas[0]!.stop("SIGKILL")
    await until(() => acknowledged.length >= 60, 30_000)
    stop = true
    await Promise.all(writers)
    const logged = new Set((await rows("select aggregate_id from events where type = 'ApplicationCreated' and zone_id = $1", [zone])).map((r) => r.aggregate_id))
    for (const id of acknowledged) expect(logged.has(id)).toBe(true)
    // the survivor's relay takes the lease and publishes everything, including what the dead one left
    await until(async () => (await rows("select count(*)::int as n from outbox where status <> 'sent'"))[0].n === 0, 40_000)
    const streamed = (await h.redis.xrange(h.keys.stream("application"), "-", "+")).map(([, f]) => f.join(" "))
    for (const id of acknowledged) expect(streamed.some((s) => s.includes(id))).toBe(true)
    await h.startReplica()
  })

  it("the development bootstrap is idempotent: the second call finds what the first made, without the secret", async () => {
    const first = await h.call("POST", "/v1/local/bootstrap", { body: {}, base: h.replicas[2]!.url })
    expect(first.status).toBe(200)
    expect(first.body.client_secret).toMatch(/^cs_/)
    const second = await h.call("POST", "/v1/local/bootstrap", { body: {}, base: h.replicas[1]!.url })
    expect(second.body).toEqual({ ...first.body, client_secret: null })
    const set = await h.call("GET", `/v1/zones/${first.body.zone_id}/policy-sets/${first.body.policy_set_id}`, on(1))
    expect(set.body.active_version_id).not.toBeNull()
    const bindings = await h.call("GET", `/v1/zones/${first.body.zone_id}/bindings?application_id=${first.body.application_id}`, on(1))
    expect(bindings.body.items).toHaveLength(1)
  })
})
