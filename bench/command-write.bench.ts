// Command write: decide + append + inline projection + outbox + a limit, atomically. Grouped
// (group commit, 64 commands in flight) beside the batched ceiling measured in the same run:
// the same rows written 64 commands to a transaction (one multi-row statement); with half the
// commands refused by the limit beside the all-accepted rate; and ungrouped (16 in flight)
// beside one INSERT statement per command. Commands open an account and then deposit into it
// (1 creation : 9 updates), so state loading and caching are exercised.
import { Effect } from "effect"
import { sql } from "kysely"
import { randomUUID } from "node:crypto"
import { execute } from "../core/command.ts"
import { DEFAULT_GROUP_COMMIT, GroupCommit } from "../core/group-commit.ts"
import { outboxSignal } from "../core/outbox-signal.ts"
import { freshDatabase } from "../core/testing/index.ts"
import { account, balanceRows, ledgerTable, LedgerRejected, registry } from "../test/fixtures/ledger.ts"
import { report, throughput } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 6400)
const C = 16
const G = 64 // commands in flight for the grouped figures, and rows per transaction of the batched ceiling
const db = await freshDatabase("bench_cmd")
const kdb = db.database.db
await ledgerTable("balances").execute(kdb)
// a limit as a service writes one: refuses (raises CA429) when told to
await sql`create function bench_limit(ok boolean) returns boolean language plpgsql as $$
  begin if not ok then raise exception 'over_limit' using errcode = 'CA429'; end if; return true; end $$`.execute(kdb)
const stream = "bench:{account}:events"

// N/10 accounts: the first N/10 commands open them, the rest deposit into them; an account is
// always open before its first deposit starts (opens come first and finish in order of start)
const ACCOUNTS = Number(process.env.BENCH_ACCOUNTS ?? N / 10)
const ungrouped = new GroupCommit(kdb, { ...DEFAULT_GROUP_COMMIT, maxSize: 1 })
const grouped = new GroupCommit(kdb, DEFAULT_GROUP_COMMIT)
const command = (i: number, run: string, group: GroupCommit, refuseOdd = false) =>
  Effect.runPromise(Effect.exit(execute(db.database, registry, {
    aggregate: account,
    id: `${run}-${i % ACCOUNTS}`,
    isNew: i < ACCOUNTS,
    command: i < ACCOUNTS ? { _tag: "Open", owner: "bench" } : { _tag: "Deposit", amount: 1 },
    meta: { zoneId: "z1", actor: { kind: "bench", id: "b" }, now: new Date(), correlationId: randomUUID() },
    producer: "bench",
    streams: () => [stream],
    projectRows: (state, pending) => balanceRows("balances", `${run}-${i % ACCOUNTS}`, state, pending),
    capacity: () => (i < ACCOUNTS ? undefined : { sql: sql`bench_limit(${!(refuseOdd && i % 2 === 1)})`, refusal: () => new LedgerRejected({ reason: "over_limit" }) }),
    result: () => null
  }, group)))

const singleStatement = (i: number, run: string) => sql`
  with e as (
    insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values (${randomUUID()}, 'z1', 'account', ${`${run}-${i}`}, 1, 'AccountOpened', 1, now(), ${JSON.stringify({ kind: "bench", id: "b" })}::jsonb, ${randomUUID()}, ${JSON.stringify({ owner: "bench" })}::jsonb)
    returning position),
  o as (insert into outbox (producer, stream, event_position, aggregate_key) select 'bench', ${stream}, position, ${`account/${run}-${i}`} from e)
  insert into balances (account_id, owner, balance, deposits, status) values (${`${run}-${i}`}, 'bench', 0, 0, 'Open')`.execute(kdb)

/** The batched ceiling: the same rows (event, outbox row, read-model row) for G commands in one transaction. */
const batchOf64 = (b: number, run: string) => {
  const ids = Array.from({ length: G }, (_, k) => `${run}-${b}-${k}`)
  return sql`
  with e as (
    insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values ${sql.join(ids.map((id) => sql`(${randomUUID()}::uuid, 'z1', 'account', ${id}, 1, 'AccountOpened', 1, now(), ${JSON.stringify({ kind: "bench", id: "b" })}::jsonb, ${randomUUID()}, ${JSON.stringify({ owner: "bench" })}::jsonb)`))}
    returning position, aggregate_id),
  o as (insert into outbox (producer, stream, event_position, aggregate_key) select 'bench', ${stream}, position, 'account/' || aggregate_id from e)
  insert into balances (account_id, owner, balance, deposits, status) values ${sql.join(ids.map((id) => sql`(${id}, 'bench', 0, 0, 'Open')`))}`.execute(kdb)
}

// As in a service whose own relay leads: commits wake it in-process rather than by NOTIFY.
outboxSignal.setLeading("bench", true)

// warm every path, then alternate so that drift on a noisy machine hits them alike
await throughput(200, C, (i) => singleStatement(i, "warm-s"))
await throughput(10, 2, (b) => batchOf64(b, "warm-b"))
await throughput(640, G, (i) => command(i, "warm-g", grouped))
const single: Array<number> = []
const batched: Array<number> = []
const ungroupedC16: Array<number> = []
const groupedC64: Array<number> = []
const halfRefused: Array<number> = []
for (let round = 0; round < 2; round++) {
  single.push(await throughput(N / 2, C, (i) => singleStatement(i, `s${round}`)))
  batched.push(G * await throughput(N / G, 2, (b) => batchOf64(b, `b${round}`)))
  ungroupedC16.push(await throughput(N / 2, C, (i) => command(i, `u${round}`, ungrouped)))
  groupedC64.push(await throughput(N, G, (i) => command(i, `g${round}`, grouped)))
  halfRefused.push(await throughput(N, G, (i) => command(i, `h${round}`, grouped, true)))
}
const sizes = grouped.drain().sizes
report({ bench: "command-write", metric: "ungrouped_commands_per_s_c16_vs_single_statement", value: Math.max(...ungroupedC16), unit: "cmd/s", ceiling: Math.max(...single) })
report({ bench: "command-write", metric: "grouped_commands_per_s_c64_vs_batches_of_64", value: Math.max(...groupedC64), unit: "cmd/s", ceiling: Math.max(...batched) })
report({ bench: "command-write", metric: "grouped_half_refused_per_s_c64_vs_all_accepted", value: Math.max(...halfRefused), unit: "cmd/s", ceiling: Math.max(...groupedC64) })
// against the largest group the writer makes (WRITE_GROUP_MAX_SIZE): 1.0 means every group was full
report({ bench: "command-write", metric: "mean_group_size_c64", value: sizes.reduce((a, b) => a + b, 0) / Math.max(1, sizes.length), unit: "commands", ceiling: grouped.options.maxSize })
await db.close()
