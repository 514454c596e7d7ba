// Cascades: a large tree terminated with one event per session and every revocation
// published signed; a coordinator killed half-way through a cascade finishes it on restart.
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { makeConsumer } from "../../core/consumer.ts"
import { makeKysely } from "../../core/db/database.ts"
import { signingKey, Verifier } from "../../core/signing.ts"
import { events } from "../../services/coordinator/events.ts"
import { type CoordinatorHarness, startCoordinator } from "../fixtures/coordinator.ts"
import { until } from "../fixtures/harness.ts"

let h: CoordinatorHarness
let token: string
beforeAll(async () => {
  h = await startCoordinator("co_cascade", { MAX_PER_ZONE: "2000", MAX_PER_APP: "2000" })
  token = await h.token("app-t")
})
afterAll(() => h.close())

/** A tree `levels` deep below its root with `fanOut` children per session; returns every id, root first. */
const buildTree = async (levels: number, fanOut: number) => {
  const root = (await h.call("POST", "/zones/z1/agents", { token, body: { application_id: "app-t" } })).body.id as string
  const all = [root]
  let frontier = [root]
  for (let level = 0; level < levels; level++) {
    const next: Array<string> = []
    for (let i = 0; i < frontier.length; i += 25) {
      const made = await Promise.all(frontier.slice(i, i + 25).flatMap((parent) =>
        Array.from({ length: fanOut }, () => h.call("POST", "/zones/z1/agents", { token, body: { application_id: "app-t", parent_id: parent } }))))
      for (const m of made) {
        expect(m.status).toBe(201)
        next.push(m.body.id)
      }
    }
    all.push(...next)
    frontier = next
  }
  return all
}

const withDb = async <A>(f: (db: ReturnType<typeof makeKysely>) => Promise<A>) => {
  const db = makeKysely(h.dbUrl, 2)
  try {
    return await f(db)
  } finally {
    await db.destroy()
  }
}

const terminatedEvents = (ids: ReadonlyArray<string>) =>
  withDb(async (db) => (await sql<{ aggregate_id: string; n: number }>`select aggregate_id, count(*)::int as n from events
    where type = 'AgentTerminated' and aggregate_id = any(${[...ids]}::text[]) group by aggregate_id`.execute(db)).rows)

describe("when the root of a tree four levels deep with five children each is terminated", () => {
  it("every session ends with exactly one event, and a consumer group receives every revocation, signed", async () => {
    const ids = await buildTree(4, 5)
    expect(ids).toHaveLength(1 + 5 + 25 + 125 + 625)
    const received = new Map<string, string>()
    const consumer = makeConsumer({
      redis: h.redis,
      streams: [h.keys.stream("revocation")],
      group: "test-revocations",
      registry: events,
      verifier: new Verifier([signingKey(h.streamsKey)]),
      deadLetterStream: h.keys.deadLetters,
      blockMs: 100,
      handle: async (e) => {
        if (e.envelope.type === "AgentTerminated") received.set(e.envelope.aggregate.id, e.signature)
      }
    })
    const consuming = consumer.run()
    try {
      const del = await h.call("DELETE", `/zones/z1/agents/${ids[0]}`, { token })
      expect(del.body.status).toBe("terminated")
      const tree = (await h.call("GET", `/zones/z1/agents/${ids[0]}/tree`, { token })).body.items as Array<{ status: string }>
      expect(tree.filter((s) => s.status !== "terminated")).toEqual([])
      const counts = await terminatedEvents(ids)
      expect(counts).toHaveLength(ids.length)
      expect(counts.every((c) => c.n === 1)).toBe(true)
      await until(() => ids.every((id) => received.has(id)), 30_000, "every revocation received")
      expect([...received.values()].every((v) => v === "valid")).toBe(true)
      expect(consumer.stats.deadLettered).toBe(0)
    } finally {
      consumer.stop()
      await consuming
    }
  }, 120_000)
})

describe("when the coordinator is killed in the middle of a cascade", () => {
  it("a restarted coordinator completes it: nothing stays active under a terminated parent, one event each", async () => {
    const ids = await buildTree(3, 6) // 259 sessions
    const replica = h.replicas[0]!
    const deleting = h.call("DELETE", `/zones/z1/agents/${ids[0]}`, { token }).catch(() => undefined)
    // kill it as soon as the root's termination has committed
    await until(async () => withDb(async (db) =>
      (await sql<{ status: string }>`select status from agent_sessions where id = ${ids[0]}`.execute(db)).rows[0]?.status === "terminated"), 10_000, "root terminated")
    await replica.stop("SIGKILL")
    await deleting
    const leftActive = await withDb(async (db) => (await sql<{ n: number }>`select count(*)::int as n from agent_sessions
      where id = any(${ids}::text[]) and status <> 'terminated'`.execute(db)).rows[0]!.n)
    expect(leftActive).toBeGreaterThan(0) // the cascade really was cut short
    const restarted = await h.startReplica()
    await until(async () => withDb(async (db) => (await sql<{ n: number }>`select count(*)::int as n from agent_sessions
      where id = any(${ids}::text[]) and status <> 'terminated'`.execute(db)).rows[0]!.n === 0), 30_000, "cascade completed after restart")
    const counts = await terminatedEvents(ids)
    expect(counts).toHaveLength(ids.length)
    expect(counts.every((c) => c.n === 1)).toBe(true)
    expect(restarted.url).not.toBe(replica.url)
  }, 120_000)
})
