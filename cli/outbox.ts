// `caracal outbox dead`: the outbox rows the relay gave up on, and re-queueing them once
// the cause is fixed. A re-queued row is an ordinary pending row again, so the relay
// publishes it in id order with the rest of its aggregate.
import { type Kysely, sql } from "kysely"
import type { Tables } from "../core/db/tables.ts"
import { type Column, type Out, printRows, UsageError } from "./output.ts"

export interface DeadRow {
  readonly id: string
  readonly producer: string
  readonly stream: string
  readonly aggregate_key: string
  readonly attempts: number
  readonly last_error: string | null
  readonly created_at: Date
}

export const listDead = async (db: Kysely<Tables>, producer?: string): Promise<ReadonlyArray<DeadRow>> => {
  const { rows } = await sql<DeadRow>`
    select id::text as id, producer, stream, aggregate_key, attempts, last_error, created_at from outbox
    where status = 'dead' ${producer === undefined ? sql`` : sql`and producer = ${producer}`}
    order by id`.execute(db)
  return rows
}

const columns: ReadonlyArray<Column<DeadRow>> = [
  { header: "ID", value: (r) => r.id },
  { header: "PRODUCER", value: (r) => r.producer },
  { header: "STREAM", value: (r) => r.stream },
  { header: "AGGREGATE", value: (r) => r.aggregate_key },
  { header: "ATTEMPTS", value: (r) => r.attempts },
  { header: "CREATED_AT", value: (r) => r.created_at },
  // last: error texts are long and would push every other column apart
  { header: "LAST_ERROR", value: (r) => r.last_error?.replace(/\s+/g, " ") }
]

export const printDead = async (db: Kysely<Tables>, out: Out, opts: { readonly producer?: string | undefined; readonly json: boolean }) =>
  printRows(out, await listDead(db, opts.producer), {
    json: opts.json,
    columns,
    toJson: (r) => ({ ...r, created_at: r.created_at.toISOString() }),
    empty: "no dead outbox rows"
  })

export type RequeueTarget = { readonly all: true; readonly producer: string } | { readonly all: false; readonly ids: ReadonlyArray<string> }

/** Validates `--requeue` values: outbox ids, or `all` together with `--producer`. */
export const requeueTarget = (values: ReadonlyArray<string>, producer: string | undefined): RequeueTarget => {
  if (values.includes("all")) {
    if (values.length > 1) throw new UsageError("--requeue all cannot be combined with ids")
    if (producer === undefined) throw new UsageError("--requeue all needs --producer, so that one command cannot re-queue every service's rows")
    return { all: true, producer }
  }
  const bad = values.filter((v) => !/^[1-9]\d{0,18}$/.test(v))
  if (bad.length > 0) throw new UsageError(`--requeue takes outbox ids or "all"; not an id: ${bad.join(", ")}`)
  return { all: false, ids: [...new Set(values)] }
}

/** Puts dead rows back to pending with a fresh attempt budget; returns the ids re-queued. */
export const requeueDead = async (db: Kysely<Tables>, target: RequeueTarget, producer?: string): Promise<ReadonlyArray<string>> => {
  const which = target.all
    ? sql`producer = ${target.producer}`
    : sql`id = any(${target.ids}::bigint[]) ${producer === undefined ? sql`` : sql`and producer = ${producer}`}`
  const { rows } = await sql<{ id: string }>`
    update outbox set status = 'pending', attempts = 0, next_attempt_at = now(), lease_until = null
    where status = 'dead' and ${which}
    returning id::text as id`.execute(db)
  return rows.map((r) => r.id).sort((a, b) => Number(BigInt(a) - BigInt(b)))
}

export const runRequeue = async (
  db: Kysely<Tables>,
  out: Out,
  opts: { readonly values: ReadonlyArray<string>; readonly producer?: string | undefined; readonly json: boolean }
) => {
  const target = requeueTarget(opts.values, opts.producer)
  const ids = await requeueDead(db, target, opts.producer)
  const skipped = target.all ? [] : target.ids.filter((id) => !ids.includes(id))
  if (opts.json) {
    out(JSON.stringify({ requeued: ids.length, ids, skipped }))
    return
  }
  out(`re-queued ${ids.length} dead outbox row${ids.length === 1 ? "" : "s"}${ids.length > 0 ? `: ${ids.join(", ")}` : ""}`)
  if (skipped.length > 0) out(`not re-queued (not dead, or no such row${opts.producer === undefined ? "" : " of that producer"}): ${skipped.join(", ")}`)
}
