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

describe("when one of two writing processes is killed (SIGKILL) during group writes, and then the other", () => {
  it("loses no acknowledged command and leaves no command partly written", { timeout: 120_000 }, async () => {
    // two writers on the same accounts, as two replicas: one is killed mid-write, the other goes on, then is killed too
    const writers = [0, 1].map(() => spawnScript("test/fixtures/group-writer.ts", [], { DATABASE_URL: db.url }))
    const acked = (w: (typeof writers)[number]) => w.stdout().match(/^ack /gm)?.length ?? 0
    try {
      await until(() => writers.every((w) => /^group \d+$/m.test(w.stdout()) && acked(w) > 1_000), 90_000,
        "both writers acknowledging commands in groups")
      writers[0]!.child.kill("SIGKILL")
      await writers[0]!.exited
      const survivorBefore = acked(writers[1]!)
      await until(() => acked(writers[1]!) > survivorBefore + 1_000, 60_000, "the other writer going on")
    } finally {
      for (const w of writers) w.child.kill("SIGKILL")
    }
    await Promise.all(writers.map((w) => w.exited))
    const acks = writers.flatMap((w) => w.stdout().split("\n").filter((l) => l.startsWith("ack ")).map((l) => l.split(" ")))
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
