// The command handler: one transaction, optimistic concurrency with bounded retry, idempotency.
import { Cause, Effect } from "effect"
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { execute, type Execution, MAX_ATTEMPTS } from "../../core/command.ts"
import { makeDatabase, makeKysely } from "../../core/db/database.ts"
import { readLog } from "../../core/eventstore.ts"
import { LOG_START } from "../../core/eventstore.ts"
import { makeHarness, type Harness, PRODUCER } from "../fixtures/harness.ts"
import { account, registry } from "../fixtures/ledger.ts"

let h: Harness
beforeAll(async () => {
  h = await makeHarness("command")
})
afterAll(() => h.close())

const count = async (table: "events" | "outbox", where = sql`true`) =>
  Number((await sql<{ n: string }>`select count(*) as n from ${sql.table(table)} where ${where}`.execute(h.db.database.db)).rows[0]!.n)

describe("when a command succeeds", () => {
  it("commits its events, its state and its outbox rows together", async () => {
    await h.run("a1", { _tag: "Open", owner: "ada" })
    const out = await h.run("a1", { _tag: "Deposit", amount: 5 })
    expect(out.events.map((e) => [e.type, e.sequence])).toEqual([["FundsDeposited", 2]])
    const row = await h.db.database.db.selectFrom("balances" as never).selectAll().where("account_id" as never, "=", "a1" as never).executeTakeFirst()
    expect(row).toMatchObject({ balance: "5", deposits: 1, status: "Open" })
    expect(await count("outbox", sql`aggregate_key = 'account/a1'`)).toBe(2)
  })
})

describe("when the inline projection fails inside the transaction", () => {
  it("writes no event and no outbox row", async () => {
    const before = [await count("events"), await count("outbox")]
    const exit = await Effect.runPromiseExit(execute(h.db.database, registry, {
      aggregate: account,
      id: "a-broken",
      command: { _tag: "Open", owner: "x" },
      meta: h.meta(),
      producer: PRODUCER,
      streams: () => [h.stream],
      project: async (trx) => {
        await sql`insert into no_such_table values (1)`.execute(trx)
      },
      result: () => null
    }))
    expect(exit._tag).toBe("Failure")
    expect([await count("events"), await count("outbox")]).toEqual(before)
  })
})

describe("when a command meets a bug or an unavailable database", () => {
  const run = (over: Partial<Execution<any, any, any, any, null>>, database = h.db.database) =>
    Effect.runPromiseExit(execute(database, registry, {
      aggregate: account,
      id: `defect-${Math.random()}`,
      command: { _tag: "Open", owner: "x" },
      meta: h.meta(),
      producer: PRODUCER,
      streams: () => [h.stream],
      result: () => null,
      ...over
    }))
  const failureTag = (exit: Awaited<ReturnType<typeof run>>) =>
    exit._tag === "Failure" ? Cause.findErrorOption(exit.cause).pipe((o) => (o._tag === "Some" ? (o.value as { _tag?: string })._tag : "defect")) : "success"

  it("a decider that dies is a defect (a 500), not a typed failure", async () => {
    const dies = { ...account, decide: () => Effect.die(new Error("decider bug")) }
    expect(failureTag(await run({ aggregate: dies }))).toBe("defect")
  })

  it("an SQL error in the statement is a defect, not DbError (a bug is not a 503)", async () => {
    expect(failureTag(await run({ projectRows: () => [{ table: "no_such_table", key: ["id", "1"], op: "insert", values: {} }] }))).toBe("defect")
  })

  it("Postgres unreachable fails with DbError (a 503)", async () => {
    const down = makeDatabase(makeKysely("postgres://caracal:caracal@127.0.0.1:1/none", 1))
    try {
      expect(failureTag(await run({}, down))).toBe("DbError")
    } finally {
      await down.db.destroy()
    }
  })
})

describe("when the decider rejects a command", () => {
  it("fails with the domain error and writes nothing", async () => {
    const before = await count("events")
    await expect(h.run("nobody", { _tag: "Deposit", amount: 1 })).rejects.toMatchObject({ reason: "not_open" })
    expect(await count("events")).toBe(before)
  })
})

describe("when many writers hit one aggregate at once", () => {
  it("every command commits once, with sequences 1..n and no gaps (conflicts retried)", async () => {
    await h.run("hot", { _tag: "Open", owner: "h" })
    const n = MAX_ATTEMPTS
    const results = await Promise.allSettled(Array.from({ length: n }, () => h.run("hot", { _tag: "Deposit", amount: 1 })))
    const ok = results.filter((r) => r.status === "fulfilled").length
    const { rows } = await sql<{ sequence: number }>`select sequence from events where aggregate_id = 'hot' order by sequence`.execute(h.db.database.db)
    expect(rows.map((r) => r.sequence)).toEqual(Array.from({ length: ok + 1 }, (_, i) => i + 1))
    // each round of conflicts has a winner: MAX_ATTEMPTS concurrent writers all get through
    expect(ok).toBe(n)
  })
})

describe("when a command is retried with the same idempotency key", () => {
  it("returns the first result and appends nothing", async () => {
    await h.run("idem", { _tag: "Open", owner: "i" })
    const first = await h.run("idem", { _tag: "Deposit", amount: 7 }, { idempotencyKey: "k-1" })
    const eventsAfterFirst = await count("events", sql`aggregate_id = 'idem'`)
    const again = await h.run("idem", { _tag: "Deposit", amount: 7 }, { idempotencyKey: "k-1" })
    expect(again.replayed).toBe(true)
    expect(again.result).toEqual(first.result)
    expect(await count("events", sql`aggregate_id = 'idem'`)).toBe(eventsAfterFirst)
    // concurrent first uses of one key: exactly one deposit
    const racing = await Promise.all(Array.from({ length: 5 }, () => h.run("idem", { _tag: "Deposit", amount: 1 }, { idempotencyKey: "k-2" })))
    expect(racing.filter((r) => !r.replayed)).toHaveLength(1)
    expect(await count("events", sql`aggregate_id = 'idem'`)).toBe(eventsAfterFirst + 1)
  })
})

describe("the event log", () => {
  it("is read whole and in order in small batches, past positions of every digit count", async () => {
    const db = h.db.database.db
    await sql`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
      select gen_random_uuid(), 'z1', 'bulk', 'b' || g, 1, 'AccountOpened', 1, now(), '{"kind":"t","id":"t"}', 'c', '{"owner":"b"}'
      from generate_series(1, 1500) g`.execute(db)
    let cursor = LOG_START
    const positions: Array<number> = []
    for (;;) {
      const rows = await readLog(db, cursor, 97, { horizon: false, aggregateType: "bulk" })
      if (rows.length === 0) break
      positions.push(...rows.map((r) => Number(r.position)))
      cursor = { transactionId: rows.at(-1)!.transaction_id, position: rows.at(-1)!.position }
    }
    expect(positions).toHaveLength(1500)
    for (let i = 1; i < positions.length; i++) expect(positions[i]).toBeGreaterThan(positions[i - 1]!)
  })

  it("refuses updates and deletes", async () => {
    await expect(sql`update events set type = 'X' where aggregate_id = 'a1'`.execute(h.db.database.db)).rejects.toThrow(/append-only/)
    await expect(sql`delete from events where aggregate_id = 'a1'`.execute(h.db.database.db)).rejects.toThrow(/append-only/)
  })

  it("when a lower position commits after a higher one, the reader waits for it instead of skipping it", async () => {
    const db = h.db.database.db
    // start after everything committed so far (a horizon-free read: other test files' transactions don't matter)
    const start = await readLog(db, LOG_START, 100_000, { horizon: false })
    const cursor = { transactionId: start.at(-1)!.transaction_id, position: start.at(-1)!.position }
    // transaction A takes a position and stays open
    const conn = await db.connection().execute(async (c) => {
      await sql`begin`.execute(c)
      await sql`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
        values (gen_random_uuid(), 'z1', 'account', 'late', 1, 'AccountOpened', 1, now(), '{"kind":"t","id":"t"}', 'c', '{"owner":"l"}')`.execute(c)
      // transaction B commits a higher position meanwhile
      await h.run("early", { _tag: "Open", owner: "e" })
      const whileOpen = await readLog(db, cursor, 100)
      await sql`commit`.execute(c)
      // xids are cluster-wide: a transaction open in another database (a parallel test file)
      // also holds the reader back, so wait for the horizon to pass rather than read once
      let afterCommit = await readLog(db, cursor, 100)
      for (let i = 0; i < 200 && afterCommit.length < 2; i++) {
        await new Promise((r) => setTimeout(r, 50))
        afterCommit = await readLog(db, cursor, 100)
      }
      return { whileOpen, afterCommit }
    })
    expect(conn.whileOpen.map((r) => r.aggregate_id)).toEqual([])
    expect(conn.afterCommit.map((r) => r.aggregate_id)).toEqual(["late", "early"])
  })
})
