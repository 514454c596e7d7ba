// The log's horizon holds readers back for event writers only. A transaction that appends
// no events — here held open for the whole file in another database of the same server, as
// a report, a backup or a forgotten session would be — must not stall catch-up or gap fill;
// an event writer that began before a catch-up must be waited for.
import { sql } from "kysely"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { catchUpPostgres, MemoryProjectionRunner } from "../../core/projection.ts"
import { stackEnv } from "../../core/testing/index.ts"
import { makeHarness, type Harness } from "../fixtures/harness.ts"
import { balancesProjection, ledgerTable, registry, memoryBalances } from "../fixtures/ledger.ts"

let h: Harness
let unrelated: pg.Client
beforeAll(async () => {
  h = await makeHarness("horizon")
  const url = new URL(stackEnv().DATABASE_URL)
  url.pathname = "/postgres"
  unrelated = new pg.Client({ connectionString: url.toString() })
  unrelated.on("error", () => {})
  await unrelated.connect()
  // an open transaction with a transaction id, older than every event this file writes
  await unrelated.query("begin")
  await unrelated.query("select pg_current_xact_id()")
})
afterAll(async () => {
  await unrelated.query("rollback").catch(() => undefined)
  await unrelated.end()
  await h.close()
})

const table = async (name: string) =>
  (await sql<Record<string, unknown>>`select * from ${sql.table(name)} order by account_id`.execute(h.db.database.db)).rows

describe("when an unrelated transaction stays open on the server", () => {
  it("catch-up still reads every committed event, and the projection equals the live state", async () => {
    for (let i = 0; i < 20; i++) {
      await h.run(`u-${i}`, { _tag: "Open", owner: `o${i}` })
      await h.run(`u-${i}`, { _tag: "Deposit", amount: i + 1 })
    }
    await ledgerTable("p_horizon").execute(h.db.database.db)
    const started = Date.now()
    const caught = await catchUpPostgres(h.db.database.db, registry, balancesProjection("p_horizon"))
    expect(caught.applied).toBe(40)
    expect(Date.now() - started).toBeLessThan(10_000)
    expect(await table("p_horizon")).toEqual(await table("balances"))
  })

  it("an in-memory projection catches up and fills gaps while it stays open", async () => {
    const balances = new Map<string, number>()
    const runner = new MemoryProjectionRunner(memoryBalances, balances, h.db.database.db, registry)
    await h.run("gap", { _tag: "Open", owner: "g" })
    expect(await runner.catchUp()).toBeGreaterThan(0)
    expect(balances.get("gap")).toBe(0)
    const first = await h.run("gap", { _tag: "Deposit", amount: 5 })
    const second = await h.run("gap", { _tag: "Deposit", amount: 7 })
    // the stream delivers the second deposit first: the first is filled in from the log
    const { upcastRow } = await import("../../core/projection.ts")
    expect(await runner.apply(upcastRow(registry, second.events[0]!))).toBe("applied")
    expect(balances.get("gap")).toBe(12)
    expect(await runner.apply(upcastRow(registry, first.events[0]!))).toBe("duplicate")
  })
})

describe("when an event writer began before the catch-up and commits during it", () => {
  it("the catch-up returns only after that writer ended, with its event", async () => {
    await ledgerTable("p_writer").execute(h.db.database.db)
    const projection = balancesProjection("p_writer")
    await catchUpPostgres(h.db.database.db, registry, projection)
    const writer = new pg.Client({ connectionString: h.db.url })
    await writer.connect()
    try {
      await writer.query("begin")
      await writer.query(`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
        values (gen_random_uuid(), 'z1', 'account', 'late-writer', 1, 'AccountOpened', 1, now(), '{"kind":"t","id":"t"}', 'c', '{"owner":"late"}')`)
      let done = false
      const catching = catchUpPostgres(h.db.database.db, registry, projection).then((r) => {
        done = true
        return r
      })
      await new Promise((r) => setTimeout(r, 500))
      expect(done, "returned while an older event writer was still open").toBe(false)
      await writer.query("commit")
      const result = await catching
      expect(result.applied).toBeGreaterThanOrEqual(1)
      const rows = await table("p_writer")
      expect(rows.map((r) => r.account_id)).toContain("late-writer")
    } finally {
      await writer.end()
    }
  })
})
