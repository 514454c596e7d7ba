// The coordinator's tables are a projection of its events: after a randomised workload of
// 10,000 commands (with the cascades they cause), dropping and rebuilding them from the
// log gives exactly the live tables, row by row.
import { Effect } from "effect"
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { rebuildPostgres } from "../../core/projection.ts"
import { makeKeys } from "../../core/redis/keys.ts"
import { freshDatabase } from "../../core/testing/index.ts"
import { events } from "../../services/coordinator/events.ts"
import { sweep } from "../../services/coordinator/cascade.ts"
import { makeProducer } from "../../core/producer.ts"
import { type Caller, coordinatorProducer, makeCommands } from "../../services/coordinator/commands.ts"
import { coordinatorProjection } from "../../services/coordinator/projection.ts"

let db: Awaited<ReturnType<typeof freshDatabase>>
beforeAll(async () => {
  db = await freshDatabase("co_rebuild")
})
afterAll(() => db.close())

/** A small seeded generator (mulberry32): the same workload on every run. */
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const snapshot = async () => ({
  sessions: (await sql`select * from agent_sessions order by id`.execute(db.database.db)).rows,
  edges: (await sql`select * from delegation_edges order by id`.execute(db.database.db)).rows,
  // the counters the limits reserve against: zero rows are what a rebuild does not recreate
  counts: (await sql`select * from session_counts where live > 0 order by scope`.execute(db.database.db)).rows
})

describe("after a randomised workload of 10,000 commands", () => {
  it("rebuilding the coordinator's tables from the log gives the live tables exactly", async () => {
    const commands = makeCommands({
      producer: makeProducer(coordinatorProducer, { database: db.database, keys: makeKeys("rebuildtest"), signer: undefined }),
      limits: { maxDepth: 6, maxChildren: 8, maxPerZone: 3000, maxPerApp: 3000, defaultTtlSeconds: 3600 }
    })
    const rnd = random(20261129)
    const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(rnd() * xs.length)]!
    const apps = ["app-1", "app-2", "app-3"]
    const sessions: Array<{ id: string; app: string }> = []
    const edges: Array<string> = []
    const outcomes = new Map<string, number>()
    const caller = (app: string, i: number): Caller => ({ zoneId: "z1", applicationId: app, requestId: `w-${i}` })
    for (let i = 0; i < 10_000; i++) {
      const roll = rnd()
      const s = sessions.length > 0 ? pick(sessions) : undefined
      let run: Effect.Effect<{ result: { id: string } }, { _tag: string }>
      if (roll < 0.35 || s === undefined) {
        const app = pick(apps)
        const parent = s && s.app === app && rnd() < 0.7 ? s.id : undefined
        run = Effect.tap(commands.spawn(caller(app, i), {
          applicationId: app, parentId: parent, kind: rnd() < 0.2 ? "ephemeral" : "instance",
          ttlSeconds: rnd() < 0.05 ? 1 : undefined, metadata: { i }
        }), (o) => Effect.sync(() => sessions.push({ id: o.result.id, app })))
      } else if (roll < 0.5) run = commands.suspend(caller(s.app, i), s.id)
      else if (roll < 0.65) run = commands.resume(caller(s.app, i), s.id)
      else if (roll < 0.75) run = commands.terminate(caller(s.app, i), s.id, "random")
      else if (roll < 0.92) {
        const t = pick(sessions)
        run = Effect.tap(commands.createDelegation(caller(s.app, i), {
          issuerApplicationId: s.app, receiverApplicationId: t.app, sourceSessionId: s.id, targetSessionId: t.id,
          scopes: rnd() < 0.5 ? ["read"] : ["read", "write"], constraints: rnd() < 0.3 ? { maxHops: Math.floor(rnd() * 3) } : {},
          ttlSeconds: 60 + Math.floor(rnd() * 600)
        }), (o) => Effect.sync(() => edges.push(o.result.id)))
      } else if (edges.length > 0) {
        run = commands.onDelegation(caller(s.app, i), pick(edges), { _tag: "RevokeDelegation", reason: "random", causeId: null })
      } else continue
      const exit = await Effect.runPromiseExit(run)
      const tag = exit._tag === "Success" ? "ok" : String((exit.cause as unknown as { reasons: Array<{ error?: { _tag?: string; code?: string } }> }).reasons[0]?.error?.code ?? "error")
      outcomes.set(tag, (outcomes.get(tag) ?? 0) + 1)
      // cascades are part of the workload, as in the service after each command
      if (i % 25 === 0) await Effect.runPromise(sweep(db.database, commands, "z1"))
    }
    await Effect.runPromise(sweep(db.database, commands, "z1"))
    // rejections are part of a realistic workload, but most commands must have written something
    expect(outcomes.get("ok")!).toBeGreaterThan(4000)
    expect(outcomes.get("error")).toBeUndefined()

    const live = await snapshot()
    expect(live.sessions.length).toBeGreaterThan(1000)
    expect(live.edges.length).toBeGreaterThan(100)
    const logged = Number((await sql<{ n: string }>`select count(*)::text as n from events`.execute(db.database.db)).rows[0]!.n)
    const result = await rebuildPostgres(db.database.db, events, coordinatorProjection)
    expect(result.applied).toBe(logged)
    const rebuilt = await snapshot()
    expect(rebuilt.sessions).toEqual(live.sessions)
    expect(rebuilt.edges).toEqual(live.edges)
    expect(rebuilt.counts).toEqual(live.counts)
    expect(live.counts.length).toBeGreaterThan(0)
  }, 300_000)
})
