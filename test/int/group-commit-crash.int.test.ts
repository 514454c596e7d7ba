// kill -9 in the middle of group writes: every acknowledged command is in the log, and no
// command is partly written (each event has its outbox row, each account's row is its log).
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freshDatabase, spawnScript } from "../../core/testing/index.ts"
import { until } from "../fixtures/harness.ts"
import { ledgerTable } from "../fixtures/ledger.ts"

let db: Awaited<ReturnType<typeof freshDatabase>>
beforeAll(async () => {
  db = await freshDatabase("group_crash")
  await ledgerTable("balances").execute(db.database.db)
})
afterAll(() => db.close())

describe("when the writing process is killed (SIGKILL) during group writes", () => {
  it("loses no acknowledged command and leaves no command partly written", { timeout: 120_000 }, async () => {
    const writer = spawnScript("test/fixtures/group-writer.ts", [], { DATABASE_URL: db.url })
    try {
      // running, acknowledging, and writing in groups of more than one
      await until(() => /^group \d+$/m.test(writer.stdout()) && (writer.stdout().match(/^ack /gm)?.length ?? 0) > 2_000, 90_000,
        "the writer acknowledging commands in groups")
    } finally {
      writer.child.kill("SIGKILL")
    }
    await writer.exited
    const acks = writer.stdout().split("\n").filter((l) => l.startsWith("ack ")).map((l) => l.split(" "))
    const kdb = db.database.db

    // every acknowledged command is in the log, at the sequence it was acknowledged with
    const logged = new Set((await sql<{ k: string }>`select aggregate_id || ' ' || sequence as k from events
      where type = 'FundsDeposited'`.execute(kdb)).rows.map((r) => r.k))
    const missing = acks.filter(([, id, seq]) => !logged.has(`${id} ${seq}`))
    expect(missing).toEqual([])

    // nothing partial: every event has its outbox row and every outbox row its event
    const orphans = await sql<{ n: string }>`select
      (select count(*) from events e where not exists (select 1 from outbox o where o.event_position = e.position))
      + (select count(*) from outbox o where not exists (select 1 from events e where e.position = o.event_position)) as n`.execute(kdb)
    expect(Number(orphans.rows[0]!.n)).toBe(0)
    // and each account's row equals its events: deposits counted, amounts summed, sequences without gaps
    const mismatched = await sql<{ account_id: string }>`
      with log as (select aggregate_id, count(*) filter (where type = 'FundsDeposited') as deposits,
          coalesce(sum((data->>'amount')::int) filter (where type = 'FundsDeposited'), 0) as balance,
          max(sequence) as last, count(*) as events
        from events group by aggregate_id)
      select b.account_id from balances b full join log l on l.aggregate_id = b.account_id
      where l.aggregate_id is null or b.account_id is null or b.deposits <> l.deposits or b.balance <> l.balance or l.last <> l.events`
      .execute(kdb)
    expect(mismatched.rows).toEqual([])
  })
})
