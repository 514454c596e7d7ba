// Command write: decide + append + inline projection + outbox, atomically, one command at a
// time per worker, 16 workers, beside the ceiling: one INSERT statement per command writing
// the same rows (event, outbox row, read-model row). Commands open an account and then
// deposit into it (1 creation : 9 updates), so state loading and caching are exercised.
import { Effect } from "effect"
import { sql } from "kysely"
import { randomUUID } from "node:crypto"
import { execute } from "../core/command.ts"
import { outboxSignal } from "../core/outbox-signal.ts"
import { freshDatabase } from "../core/testing/index.ts"
import { account, ledgerTable, registry, balanceRows } from "../test/fixtures/ledger.ts"
import { report, throughput } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 4000)
const C = 16
const db = await freshDatabase("bench_cmd")
const kdb = db.database.db
await ledgerTable("balances").execute(kdb)
const stream = "bench:{account}:events"

// N/10 accounts: the first N/10 commands open them, the rest deposit into them; with 16 in
// flight an account is always open before its first deposit starts
const ACCOUNTS = Number(process.env.BENCH_ACCOUNTS ?? N / 10)
const command = (i: number, run: string) =>
  Effect.runPromise(execute(db.database, registry, {
    aggregate: account,
    id: `${run}-${i % ACCOUNTS}`,
    isNew: i < ACCOUNTS,
    command: i < ACCOUNTS ? { _tag: "Open", owner: "bench" } : { _tag: "Deposit", amount: 1 },
    meta: { zoneId: "z1", actor: { kind: "bench", id: "b" }, now: new Date(), correlationId: randomUUID() },
    producer: "bench",
    streams: () => [stream],
    projectRows: (state, pending) => balanceRows("balances", `${run}-${i % ACCOUNTS}`, state, pending),
    result: () => null
  }))

const singleStatement = (i: number, run: string) => sql`
  with e as (
    insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values (${randomUUID()}, 'z1', 'account', ${`${run}-${i}`}, 1, 'AccountOpened', 1, now(), ${JSON.stringify({ kind: "bench", id: "b" })}::jsonb, ${randomUUID()}, ${JSON.stringify({ owner: "bench" })}::jsonb)
    returning position),
  o as (insert into outbox (producer, stream, event_position, aggregate_key) select 'bench', ${stream}, position, ${`account/${run}-${i}`} from e)
  insert into balances (account_id, owner, balance, deposits, status) values (${`${run}-${i}`}, 'bench', 0, 0, 'Open')`.execute(kdb)

// As in a service whose own relay leads: commits wake it in-process rather than by NOTIFY.
// The second figure is a replica whose relay does not lead (every commit NOTIFYs).
outboxSignal.setLeading("bench", true)

// warm both paths, then alternate so that drift on a noisy machine hits both alike
await throughput(200, C, (i) => singleStatement(i, "warm-s"))
await throughput(400, C, (i) => command(i, "warm-c"))
const ceilings: Array<number> = []
const ours: Array<number> = []
for (let round = 0; round < 2; round++) {
  ceilings.push(await throughput(N, C, (i) => singleStatement(i, `s${round}`)))
  ours.push(await throughput(N, C, (i) => command(i, `c${round}`)))
}
report({ bench: "command-write", metric: "commands_per_s_c16", value: Math.max(...ours), unit: "cmd/s", ceiling: Math.max(...ceilings) })
outboxSignal.setLeading("bench", false)
const notifying = await throughput(N, C, (i) => command(i, "n"))
report({ bench: "command-write", metric: "commands_per_s_c16_notify", value: notifying, unit: "cmd/s", ceiling: Math.max(...ceilings) })
await db.close()
