// Group commit: commands written together still get each their own outcome, exactly as alone.
import { Cause, Effect, Exit } from "effect"
import { sql } from "kysely"
import pg from "pg"
import { randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type CapacityChange, execute, type Execution } from "../../core/command.ts"
import { memberWrite } from "../../core/command-write.ts"
import { GroupCommit } from "../../core/group-commit.ts"
import { OUTBOX_CHANNEL, outboxSignal } from "../../core/outbox-signal.ts"
import { makeHarness, type Harness, PRODUCER } from "../fixtures/harness.ts"
import { account, balanceRows, type LedgerCommand, LedgerRejected, registry } from "../fixtures/ledger.ts"

let h: Harness
beforeAll(async () => {
  h = await makeHarness("group")
  // a limit the way a service writes one: a function that raises with its own SQLSTATE
  await sql`create function test_deposit_limit(amount int) returns boolean language plpgsql as $$
    begin
      if amount > 100 then raise exception 'over_limit' using errcode = 'CA429'; end if;
      return true;
    end $$`.execute(h.db.database.db)
})
afterAll(() => h.close())

const db = () => h.db.database.db
const n = async (q: ReturnType<typeof sql<{ n: string }>>) => Number((await q.execute(db())).rows[0]!.n)

/** A group writer that waits long enough for every command of a test to join one group. */
const slowGroup = () => new GroupCommit(db(), { maxSize: 64, windowUs: 300_000, queueMax: 1_000, deadlineMs: 10_000 })

const limit: Omit<CapacityChange<LedgerRejected>, "sql"> = {
  refusal: (e) => ((e as { code?: string }).code === "CA429" ? new LedgerRejected({ reason: (e as Error).message }) : undefined)
}

const command = (group: GroupCommit, id: string, command: LedgerCommand, over: Partial<Execution<any, any, any, any, unknown>> = {}) =>
  Effect.runPromiseExit(execute(h.db.database, registry, {
    aggregate: account,
    id,
    command,
    meta: h.meta(),
    producer: PRODUCER,
    streams: () => [h.stream],
    projectRows: (state, pending) => balanceRows("balances", id, state, pending),
    capacity: (_s, _p) => command._tag === "Deposit" ? { ...limit, sql: sql`test_deposit_limit(${command.amount})` } : undefined,
    result: (state) => state,
    ...over
  }, group))

const errorOf = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause).pipe((o) => (o._tag === "Some" ? o.value : "defect")) : undefined

describe("a group with a refusal, a sequence conflict, an idempotent replay and successes", () => {
  it("gives each caller its own result, and the log and outbox hold exactly the successful events", async () => {
    const run = randomUUID().slice(0, 8)
    const ids = Array.from({ length: 6 }, (_, i) => `${run}-${i}`)
    const opening = slowGroup()
    for (const exit of await Promise.all(ids.map((id) => command(opening, id, { _tag: "Open", owner: "o" })))) expect(exit._tag).toBe("Success")
    expect(opening.drain().sizes).toEqual([6]) // the six opens were one group
    const eventsBefore = await n(sql`select count(*)::text as n from events`)
    const key = randomUUID()

    const group = slowGroup()
    const [refused, first, second, keyed, keyedAgain, ok1, ok2] = await Promise.all([
      command(group, ids[0]!, { _tag: "Deposit", amount: 500 }), // over the limit: refused
      command(group, ids[1]!, { _tag: "Deposit", amount: 1 }), // these two decide on the same state:
      command(group, ids[1]!, { _tag: "Deposit", amount: 2 }), // one loses the sequence and is retried
      command(group, ids[2]!, { _tag: "Deposit", amount: 3 }, { meta: h.meta({ idempotencyKey: key }) }),
      command(group, ids[3]!, { _tag: "Deposit", amount: 4 }, { meta: h.meta({ idempotencyKey: key }) }), // same key: a replay
      command(group, ids[4]!, { _tag: "Deposit", amount: 5 }),
      command(group, ids[5]!, { _tag: "Deposit", amount: 6 })
    ])
    const { sizes, writtenAlone, atOnceFailed } = group.drain()
    expect(sizes[0]).toBe(7) // all seven in one group; then the retries of the members that lost
    expect(atOnceFailed).toBe(1) // its single statement failed, so it was written the exact way
    expect(writtenAlone).toBe(0) // the group held: the failing members were undone inside it
    expect(sizes.length).toBeGreaterThan(1)

    expect(errorOf(refused)).toEqual(new LedgerRejected({ reason: "over_limit" }))
    for (const exit of [first, second, keyed, keyedAgain, ok1, ok2]) expect(exit._tag).toBe("Success")
    const outcome = (e: typeof first) => (e as Exit.Success<{ replayed: boolean; result: unknown; events: ReadonlyArray<unknown> }>).value
    // the key's first use wrote; its second use answers the first result and writes nothing
    const [a, b] = [outcome(keyed), outcome(keyedAgain)]
    expect([a.replayed, b.replayed].sort()).toEqual([false, true])
    expect(b.result).toEqual(a.result)

    // the log: exactly the successful events (2 on ids[1], 1 for the key, 1 each on ids[4], ids[5])
    expect(await n(sql`select count(*)::text as n from events`)).toBe(eventsBefore + 5)
    const seqs = await sql<{ aggregate_id: string; sequence: number }>`select aggregate_id, sequence from events
      where aggregate_id = ${ids[1]!} order by sequence`.execute(db())
    expect(seqs.rows.map((r) => r.sequence)).toEqual([1, 2, 3])
    // the outbox: one row per event, no more, no less
    expect(await n(sql`select count(*)::text as n from events e left join outbox o on o.event_position = e.position
      where o.id is null`)).toBe(0)
    expect(await n(sql`select count(*)::text as n from outbox`)).toBe(await n(sql`select count(*)::text as n from events`))
    // the projection: each account's row equals its events
    const rows = await sql<{ account_id: string; balance: string; deposits: number }>`select account_id, balance, deposits from balances
      where account_id like ${`${run}-%`} order by account_id`.execute(db())
    const keyedId = a.replayed ? ids[3]! : ids[2]!
    const expected: Record<string, [number, number]> = {
      [ids[0]!]: [0, 0], [ids[1]!]: [3, 2], [ids[2]!]: [0, 0], [ids[3]!]: [0, 0], [ids[4]!]: [5, 1], [ids[5]!]: [6, 1]
    }
    expected[keyedId] = keyedId === ids[2] ? [3, 1] : [4, 1]
    expect(rows.rows.map((r) => [r.account_id, Number(r.balance), r.deposits])).toEqual(ids.map((id) => [id, ...expected[id]!]))
  })
})

describe("a group in which every member passes", () => {
  it("is one statement: each member's events, outbox rows, idempotency key and projection row, one commit, and the relay's wake-up", async () => {
    outboxSignal.setLeading(PRODUCER, false) // the relay leads elsewhere: the commit must NOTIFY it
    const listener = new pg.Client({ connectionString: h.db.url })
    await listener.connect()
    await listener.query(`listen ${OUTBOX_CHANNEL}`)
    const woken = new Promise<string | undefined>((resolve) => listener.on("notification", (n) => resolve(n.payload)))
    try {
      const run = randomUUID().slice(0, 8)
      const ids = Array.from({ length: 4 }, (_, i) => `${run}-${i}`)
      const key = randomUUID()
      const group = slowGroup()
      const exits = await Promise.all(ids.map((id, i) =>
        command(group, id, { _tag: "Open", owner: "o" }, i === 1 ? { meta: h.meta({ idempotencyKey: key }) } : {})))
      const o = group.drain()
      expect([o.sizes, o.atOnce, o.atOnceFailed, o.writtenAlone]).toEqual([[4], 1, 0, 0])
      expect(await woken).toBe(PRODUCER)

      // each caller got the position and transaction its own event was given
      const events = await sql<{ aggregate_id: string; position: string; transaction_id: string }>`
        select aggregate_id, position::text, transaction_id::text from events where aggregate_id like ${`${run}-%`} order by aggregate_id`.execute(db())
      expect(events.rows.map((r) => r.aggregate_id)).toEqual(ids)
      expect(new Set(events.rows.map((r) => r.transaction_id)).size).toBe(1) // one commit
      const told = exits.map((e) => (e as unknown as Exit.Success<{ events: ReadonlyArray<{ position: string; transaction_id: string }> }>).value.events)
      expect(told.map((t) => [t.length, t[0]!.position, t[0]!.transaction_id])).toEqual(events.rows.map((r) => [1, r.position, r.transaction_id]))
      expect(await n(sql`select count(*)::text as n from outbox o join events e on e.position = o.event_position
        where e.aggregate_id like ${`${run}-%`}`)).toBe(4)
      expect(await n(sql`select count(*)::text as n from balances where account_id like ${`${run}-%`}`)).toBe(4)

      // the key was recorded with the group: its second use is a replay and writes nothing
      const again = await command(slowGroup(), `${run}-other`, { _tag: "Open", owner: "o" }, { meta: h.meta({ idempotencyKey: key }) })
      expect((again as unknown as Exit.Success<{ replayed: boolean }>).value.replayed).toBe(true)
      expect(await n(sql`select count(*)::text as n from events where aggregate_id = ${`${run}-other`}`)).toBe(0)
    } finally {
      await listener.end()
    }
  })
})

describe("after a group's single statement fails", () => {
  it("the next eight groups are written the exact way straight away, and the one after at once again", async () => {
    const run = randomUUID().slice(0, 8)
    const [a, b] = [`${run}-a`, `${run}-b`]
    const opening = slowGroup()
    await Promise.all([command(opening, a, { _tag: "Open", owner: "o" }), command(opening, b, { _tag: "Open", owner: "o" })])
    const group = new GroupCommit(db(), { maxSize: 64, windowUs: 200_000, queueMax: 1_000, deadlineMs: 10_000 })
    const pair = (amountA: number) => Promise.all([command(group, a, { _tag: "Deposit", amount: amountA }), command(group, b, { _tag: "Deposit", amount: 1 })])
    const [refused, passed] = await pair(500)
    expect([errorOf(refused), passed._tag]).toEqual([new LedgerRejected({ reason: "over_limit" }), "Success"])
    expect(group.drain()).toMatchObject({ sizes: [2], atOnce: 0, atOnceFailed: 1 })
    for (let i = 0; i < 8; i++) {
      for (const exit of await pair(1)) expect(exit._tag).toBe("Success")
    }
    expect(group.drain()).toMatchObject({ atOnce: 0, atOnceFailed: 0 })
    for (const exit of await pair(1)) expect(exit._tag).toBe("Success")
    expect(group.drain()).toMatchObject({ sizes: [2], atOnce: 1, atOnceFailed: 0 })
    const rows = await sql<{ balance: string }>`select balance from balances where account_id in (${a}, ${b}) order by account_id`.execute(db())
    expect(rows.rows.map((r) => Number(r.balance))).toEqual([9, 10])
  })
})

describe("a group with a member whose projection is a bug", () => {
  it("writes the other members, and that member alone fails as a defect", async () => {
    const run = randomUUID().slice(0, 8)
    const group = slowGroup()
    const [good1, bad, good2] = await Promise.all([
      command(group, `${run}-g1`, { _tag: "Open", owner: "o" }),
      command(group, `${run}-bad`, { _tag: "Open", owner: "o" }, {
        projectRows: () => [{ table: "balances", key: ["account_id", `${run}-bad`], op: "insert", values: { no_such_column: sql`1` } }]
      }),
      command(group, `${run}-g2`, { _tag: "Open", owner: "o" })
    ])
    const { sizes, writtenAlone, atOnceFailed } = group.drain()
    expect([sizes[0], atOnceFailed, writtenAlone]).toEqual([3, 1, 1]) // one group, written member by member
    expect([good1._tag, good2._tag]).toEqual(["Success", "Success"])
    expect(errorOf(bad)).toBe("defect")
    expect(await n(sql`select count(*)::text as n from events where aggregate_id = ${`${run}-bad`}`)).toBe(0)
    expect(await n(sql`select count(*)::text as n from balances where account_id in (${`${run}-g1`}, ${`${run}-g2`})`)).toBe(2)
  })
})

describe("two members of one group on one row", () => {
  it("see each other's changes: an open and then a deposit of one account, written in one group, leave the deposit applied", async () => {
    const id = `seq-${randomUUID().slice(0, 8)}`
    const group = slowGroup()
    const x = { aggregate: account, id, meta: h.meta(), producer: PRODUCER, streams: () => [h.stream], result: () => null }
    const event = (sequence: number, type: string, data: unknown) =>
      ({ id: randomUUID(), aggregateType: "account", aggregateId: id, sequence, type, schemaVersion: type === "FundsDeposited" ? 2 : 1, data })
    const opened = [event(1, "AccountOpened", { owner: "o" })]
    const deposited = [event(2, "FundsDeposited", { amount: 7, currency: "EUR" })]
    const member = (pending: ReturnType<typeof event>[], state: Parameters<typeof balanceRows>[2]) => ({
      order: id,
      write: memberWrite(x, pending, null, "s", null),
      changes: balanceRows("balances", id, state, pending),
      alone: () => Promise.reject(new Error("written alone: the group did not hold"))
    })
    const written = await Promise.all([
      group.write(member(opened, { status: "Open", owner: "o", balance: 0, deposits: 0 })),
      group.write(member(deposited, { status: "Open", owner: "o", balance: 7, deposits: 1 }))
    ])
    expect(group.drain().sizes).toEqual([2])
    expect(written.map((w) => w.length)).toEqual([1, 1])
    const row = await sql<{ balance: string; deposits: number }>`select balance, deposits from balances where account_id = ${id}`.execute(db())
    expect(row.rows[0]).toMatchObject({ balance: "7", deposits: 1 })
    expect(await n(sql`select count(*)::text as n from outbox o join events e on e.position = o.event_position where e.aggregate_id = ${id}`)).toBe(2)
  })
})

describe("members decided while a group is being written", () => {
  it("wait one event-loop turn and go as one group, not the first alone", async () => {
    const run = randomUUID().slice(0, 8)
    const group = new GroupCommit(db(), { maxSize: 8, windowUs: 0, queueMax: 1_000, deadlineMs: 10_000 })
    const x = { aggregate: account, meta: h.meta(), producer: PRODUCER, streams: () => [h.stream], result: () => null }
    const member = (id: string) => {
      const pending = [{ id: randomUUID(), aggregateType: "account", aggregateId: id, sequence: 1, type: "AccountOpened", schemaVersion: 1, data: { owner: "o" } }]
      return group.write({
        order: id,
        write: memberWrite({ ...x, id }, pending, null, "s", null),
        changes: balanceRows("balances", id, { status: "Open", owner: "o", balance: 0, deposits: 0 }, pending),
        alone: () => Promise.reject(new Error("written alone"))
      })
    }
    const first = [member(`${run}-1`), member(`${run}-2`)]
    await new Promise((resolve) => setImmediate(resolve)) // the first group is sent, and not yet answered
    const burst = [member(`${run}-3`), member(`${run}-4`), member(`${run}-5`)]
    await Promise.all([...first, ...burst])
    expect(group.drain().sizes).toEqual([2, 3])
  })
})

describe("under overload", () => {
  it("a command past its deadline gets DbError (503) and is not written; commands already sent are all acknowledged and kept", async () => {
    const group = new GroupCommit(db(), { maxSize: 4, windowUs: 0, queueMax: 1_000, deadlineMs: 300 })
    const run = randomUUID().slice(0, 8)
    // hold the events table so that groups sent now wait, and commands behind them queue
    const blocker = await h.db.database.db.connection().execute(async (conn) => {
      await sql`begin`.execute(conn)
      await sql`lock table events in exclusive mode`.execute(conn)
      const pending = Array.from({ length: 12 }, (_, i) => command(group, `${run}-${i}`, { _tag: "Open", owner: "o" }))
      await new Promise((r) => setTimeout(r, 1_000))
      await sql`commit`.execute(conn)
      return Promise.all(pending)
    })
    const tags = blocker.map((exit) => (exit._tag === "Success" ? "ok" : (errorOf(exit) as { _tag?: string })._tag))
    expect(tags.filter((t) => t === "DbError").length).toBeGreaterThan(0) // waited past the deadline
    expect(tags.filter((t) => t === "ok").length).toBeGreaterThan(0) // sent before it: written
    for (const [i, t] of tags.entries()) {
      const written = await n(sql`select count(*)::text as n from events where aggregate_id = ${`${run}-${i}`}`)
      expect([t, written]).toEqual([t, t === "ok" ? 1 : 0])
    }
  })

  it("a full queue refuses at once with DbError (503)", async () => {
    // the window holds the first two queued while the others arrive
    const group = new GroupCommit(db(), { maxSize: 10, windowUs: 1_000_000, queueMax: 2, deadlineMs: 10_000 })
    const run = randomUUID().slice(0, 8)
    const exits = await Promise.all(Array.from({ length: 6 }, (_, i) => command(group, `${run}-${i}`, { _tag: "Open", owner: "o" })))
    const tags = exits.map((exit) => (exit._tag === "Success" ? "ok" : (errorOf(exit) as { _tag?: string })._tag))
    expect(tags.filter((t) => t === "DbError").length).toBeGreaterThan(0)
    expect(tags.filter((t) => t === "ok").length).toBeGreaterThanOrEqual(2)
  })
})
