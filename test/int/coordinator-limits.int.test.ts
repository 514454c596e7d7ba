// Limits under concurrency, through two coordinator replicas sharing one database: the
// counters reserved inside each spawn's write statement make every limit exact, and a refused spawn writes no event.
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { makeKysely } from "../../core/db/database.ts"
import { type CoordinatorHarness, startCoordinator } from "../fixtures/coordinator.ts"

let h: CoordinatorHarness
beforeAll(async () => {
  h = await startCoordinator("co_limits", { MAX_CHILDREN: "7", MAX_PER_ZONE: "30", MAX_PER_APP: "12" }, 2)
})
afterAll(() => h.close())

const spawned = async (where: ReturnType<typeof sql>) => {
  const db = makeKysely(h.dbUrl, 2)
  try {
    return Number((await sql<{ n: string }>`select count(*)::text as n from events where type = 'AgentSpawned' and ${where}`.execute(db)).rows[0]!.n)
  } finally {
    await db.destroy()
  }
}

/** n spawns at once, alternating between the two replicas. */
const burst = async (n: number, token: string, body: Record<string, unknown>) =>
  Promise.all(Array.from({ length: n }, (_, i) =>
    h.call("POST", "/zones/z1/agents", { token, body, base: h.replicas[i % 2]!.url })))

describe("when 50 children are spawned at once under one parent, through two replicas", () => {
  it("exactly MAX_CHILDREN succeed, the rest get 429 max_children_exceeded, and exactly that many AgentSpawned events exist", async () => {
    const token = await h.token("app-c")
    const parent = await h.call("POST", "/zones/z1/agents", { token, body: { application_id: "app-c" } })
    const results = await burst(50, token, { application_id: "app-c", parent_id: parent.body.id })
    expect(results.filter((r) => r.status === 201)).toHaveLength(7)
    expect(results.filter((r) => r.status === 429).every((r) => r.body.error === "max_children_exceeded")).toBe(true)
    expect(results.filter((r) => r.status !== 201 && r.status !== 429)).toEqual([])
    expect(await spawned(sql`data->>'parentId' = ${parent.body.id}`)).toBe(7)
  })
})

describe("when 50 sessions of one application are spawned at once", () => {
  it("exactly MAX_PER_APP are live", async () => {
    const token = await h.token("app-p")
    const results = await burst(50, token, { application_id: "app-p" })
    expect(results.filter((r) => r.status === 201)).toHaveLength(12)
    expect(results.filter((r) => r.status === 429).every((r) => r.body.error === "max_per_app_exceeded")).toBe(true)
    expect(await spawned(sql`data->>'applicationId' = 'app-p'`)).toBe(12)
  })
})

describe("when 50 sessions of several applications are spawned at once in one zone", () => {
  it("exactly MAX_PER_ZONE are live in the zone", async () => {
    const before = await spawned(sql`zone_id = 'z1'`)
    const tokens = await Promise.all(["z-a", "z-b", "z-c", "z-d", "z-e"].map((app) => h.token(app)))
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) =>
      h.call("POST", "/zones/z1/agents", { token: tokens[i % 5], body: { application_id: ["z-a", "z-b", "z-c", "z-d", "z-e"][i % 5] }, base: h.replicas[i % 2]!.url })))
    // 30 allowed in the zone; 1 + 7 + 12 are already live from the tests above
    const room = 30 - before
    expect(results.filter((r) => r.status === 201)).toHaveLength(room)
    expect(results.filter((r) => r.status === 429).every((r) => r.body.error === "max_per_zone_exceeded")).toBe(true)
    expect(await spawned(sql`zone_id = 'z1'`)).toBe(30)
  })
})

describe("with group commit on (the default)", () => {
  it("spawns and suspends of ten sessions at once through two replicas leave each session suspended, its log spawn then suspend", async () => {
    const token = await h.token("pairs", { zone: "z2" })
    const ids = await Promise.all(Array.from({ length: 10 }, async (_, i) => {
      const base = h.replicas[i % 2]!.url
      const spawn = await h.call("POST", "/zones/z2/agents", { token, body: { application_id: "pairs" }, base })
      expect(spawn.status).toBe(201)
      const suspend = await h.call("POST", `/zones/z2/agents/${spawn.body.id}/suspend`, { token, base: h.replicas[(i + 1) % 2]!.url })
      expect(suspend.status).toBe(200)
      return spawn.body.id as string
    }))
    for (const id of ids) {
      expect((await h.call("GET", `/zones/z2/agents/${id}`, { token })).body).toMatchObject({ status: "suspended" })
    }
    const db = makeKysely(h.dbUrl, 2)
    try {
      const logs = await sql<{ types: Array<string> }>`select array_agg(type order by sequence) as types from events
        where aggregate_id in (${sql.join(ids)}) group by aggregate_id`.execute(db)
      expect(logs.rows.map((r) => r.types)).toEqual(ids.map(() => ["AgentSpawned", "AgentSuspended"]))
    } finally {
      await db.destroy()
    }
  })

  it("the bursts above were written in groups: /metrics shows groups of more than one command", async () => {
    // a group of one is counted in the le="1" bucket; every other group is larger
    const larger = async () => {
      let n = 0
      for (const r of h.replicas) {
        const text = await (await fetch(`${r.url}/metrics`)).text()
        const count = Number(text.match(/^caracal_write_group_size_count\{[^}]*\} (\d+)/m)?.[1] ?? 0)
        const ones = Number(text.match(/^caracal_write_group_size_bucket\{[^}]*le="1"[^}]*\} (\d+)/m)?.[1] ?? 0)
        n += count - ones
      }
      return n
    }
    const deadline = Date.now() + 10_000
    while ((await larger()) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200))
    expect(await larger()).toBeGreaterThan(0)
  })
})
