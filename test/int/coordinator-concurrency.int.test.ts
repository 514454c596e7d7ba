// The coordinator's guarantees where replicas and maintenance meet: a rebuild while 16
// writers write, a replica whose cached state another replica has moved on, and a command
// that emits several events for one row.
import { Effect } from "effect"
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { execute } from "../../core/command.ts"
import { makeDatabase, makeKysely } from "../../core/db/database.ts"
import { rebuildPostgres } from "../../core/projection.ts"
import { makeKeys } from "../../core/redis/keys.ts"
import { freshDatabase } from "../../core/testing/index.ts"
import { events } from "../../services/coordinator/events.ts"
import { makeProducer } from "../../core/producer.ts"
import { type Caller, coordinatorProducer, makeCommands, projectInline } from "../../services/coordinator/commands.ts"
import { session } from "../../services/coordinator/domain/session.ts"
import { coordinatorProjection } from "../../services/coordinator/projection.ts"

let db: Awaited<ReturnType<typeof freshDatabase>>
beforeAll(async () => {
  db = await freshDatabase("co_concurrency")
})
afterAll(() => db.close())

const limits = { maxDepth: 6, maxChildren: 50, maxPerZone: 100_000, maxPerApp: 100_000, defaultTtlSeconds: 3600 }
const commandsOn = (database: typeof db.database) =>
  makeCommands({ producer: makeProducer(coordinatorProducer, { database, keys: makeKeys("conctest"), signer: undefined }), limits })
const caller = (zoneId: string, app: string, i: number | string): Caller => ({ zoneId, applicationId: app, requestId: `r-${i}` })

const snapshot = async (zone: string) => ({
  sessions: (await sql`select * from agent_sessions where zone_id = ${zone} order by id`.execute(db.database.db)).rows,
  counts: (await sql`select * from session_counts where live > 0 and scope like ${`%${zone}%`} order by scope`.execute(db.database.db)).rows
})

describe("when the coordinator is rebuilt while 16 writers run", () => {
  it("afterwards its tables and limit counters equal a fold of the log, row by row", async () => {
    const zone = "z-rebuild"
    const commands = commandsOn(db.database)
    const sessions: Array<{ id: string; app: string }> = []
    let stopped = false
    let written = 0
    const writer = async (w: number) => {
      let i = 0
      while (!stopped) {
        i++
        const app = `app-${w % 4}`
        const mine = sessions.filter((s) => s.app === app)
        const s = mine.length > 0 ? mine[(w * 7919 + i * 104729) % mine.length] : undefined
        const roll = (w * 31 + i * 17) % 10
        const run: Effect.Effect<unknown, unknown> = s === undefined || roll < 3
          ? Effect.map(commands.spawn(caller(zone, app, `${w}-${i}`), { applicationId: app, parentId: undefined, kind: "instance", ttlSeconds: undefined, metadata: {} }),
            (o) => sessions.push({ id: o.result.id, app }))
          : roll < 6 ? commands.suspend(caller(zone, app, `${w}-${i}`), s.id)
          : roll < 9 ? commands.resume(caller(zone, app, `${w}-${i}`), s.id)
          : commands.terminate(caller(zone, app, `${w}-${i}`), s.id, "done")
        const exit = await Effect.runPromiseExit(run)
        if (exit._tag === "Success") written++
      }
    }
    // a history for the rebuild to replay, so that it takes a while
    await Promise.all(Array.from({ length: 16 }, (_, w) => (async () => {
      for (let i = 0; i < 60; i++) {
        const app = `app-${w % 4}`
        const o = await Effect.runPromise(commands.spawn(caller(zone, app, `seed-${w}-${i}`), { applicationId: app, parentId: undefined, kind: "instance", ttlSeconds: undefined, metadata: { i } }))
        sessions.push({ id: o.result.id, app })
      }
    })()))
    const writers = Array.from({ length: 16 }, (_, w) => writer(w))
    let rebuilds = 0
    try {
      // rebuild back to back until several rebuilds have overlapped a fair amount of traffic
      // (a busy machine gets there later: a generous deadline rather than a fixed duration)
      const deadline = Date.now() + 60_000
      while ((rebuilds < 3 || written < 200) && Date.now() < deadline) {
        await rebuildPostgres(db.database.db, events, coordinatorProjection)
        rebuilds++
        // writers that waited for the rebuild run now, on the rebuilt rows
        await new Promise((r) => setTimeout(r, 50))
      }
    } finally {
      stopped = true
      await Promise.all(writers)
    }
    expect(rebuilds).toBeGreaterThanOrEqual(3)
    expect(written).toBeGreaterThanOrEqual(200)
    const live = await snapshot(zone)
    // a quiet rebuild is the fold of the log: the live tables must equal it
    await rebuildPostgres(db.database.db, events, coordinatorProjection)
    const folded = await snapshot(zone)
    expect(live.sessions.length).toBe(folded.sessions.length)
    expect(live.sessions).toEqual(folded.sessions)
    expect(live.counts).toEqual(folded.counts)
  }, 120_000)
})

describe("when another replica moved a session on after this replica cached it", () => {
  it("a command that would write nothing on the cached state checks the log and really suspends", async () => {
    const zone = "z-cache"
    // two database handles: two replicas, each with its own aggregate cache
    const other = makeDatabase(makeKysely(db.url, 2))
    try {
      const a = commandsOn(db.database)
      const b = commandsOn(other)
      const { result } = await Effect.runPromise(a.spawn(caller(zone, "app", 1), { applicationId: "app", parentId: undefined, kind: "instance", ttlSeconds: undefined, metadata: {} }))
      await Effect.runPromise(a.suspend(caller(zone, "app", 2), result.id)) // A caches "suspended"
      await Effect.runPromise(b.resume(caller(zone, "app", 3), result.id)) // B resumes: A's cache is stale
      await Effect.runPromise(a.suspend(caller(zone, "app", 4), result.id))
      const row = (await sql<{ status: string }>`select status from agent_sessions where id = ${result.id}`.execute(db.database.db)).rows[0]
      expect(row?.status).toBe("suspended")
      const types = (await sql<{ type: string }>`select type from events where aggregate_id = ${result.id} order by sequence`.execute(db.database.db)).rows
      expect(types.map((t) => t.type)).toEqual(["AgentSpawned", "AgentSuspended", "AgentResumed", "AgentSuspended"])
    } finally {
      await other.db.destroy()
    }
  })
})

describe("when one decision emits several events for one row (spawn, then suspend)", () => {
  it("the inline projection leaves the row suspended, and the rebuild agrees", async () => {
    const zone = "z-multi"
    const id = "multi-1"
    const now = new Date()
    const spawnSuspended = {
      ...session,
      decide: () => Effect.succeed([
        { type: "AgentSpawned" as const, data: { applicationId: "app", parentId: null, rootId: id, depth: 0, kind: "instance" as const, ttlSeconds: 600, expiresAt: new Date(now.getTime() + 600_000).toISOString(), metadata: {} } },
        { type: "AgentSuspended" as const, data: { cascade: false } }
      ])
    }
    await Effect.runPromise(execute(db.database, events, {
      aggregate: spawnSuspended,
      id,
      isNew: true,
      command: { _tag: "ExpireAgent" },
      meta: { zoneId: zone, actor: { kind: "test", id: "t" }, now, correlationId: "c" },
      producer: "coordinator",
      streams: () => [],
      projectRows: projectInline,
      result: () => ({ id })
    }))
    const live = await snapshot(zone)
    expect(live.sessions).toHaveLength(1)
    expect((live.sessions[0] as { status: string }).status).toBe("suspended")
    await rebuildPostgres(db.database.db, events, coordinatorProjection)
    expect((await snapshot(zone)).sessions).toEqual(live.sessions)
  })
})
