// The Postgres event log: append (with optimistic concurrency), load one aggregate, and
// read the whole log in commit-safe order.
import { type Kysely, sql, type Transaction } from "kysely"
import type { Actor, Envelope } from "../schemas/envelope.ts"
import type { Tables } from "./db/tables.ts"
import type { LoggedFields } from "./signing.ts"

export interface EventToAppend {
  readonly type: string
  readonly schemaVersion: number
  readonly data: unknown
}

export interface AppendMeta {
  readonly zoneId: string
  readonly actor: Actor
  readonly occurredAt: Date
  readonly correlationId: string
  readonly causationId: string | null
}

/** A row of the events table as read back (jsonb already parsed by pg). */
export interface EventRow {
  readonly position: string
  readonly transaction_id: string
  readonly id: string
  readonly zone_id: string
  readonly aggregate_type: string
  readonly aggregate_id: string
  readonly sequence: number
  readonly type: string
  readonly schema_version: number
  /** ISO 8601 UTC with milliseconds, formatted by Postgres (cheaper than parsing a Date per row). */
  readonly occurred_at: string
  readonly actor: Actor
  readonly correlation_id: string
  readonly causation_id: string | null
  readonly data: unknown
  /** The producer's MAC over the row's logged fields (null when it had no key). */
  readonly mac?: string | null
  readonly mac_key_id?: string | null
}

/** The fields the log MAC covers, read back from a row. */
export const loggedFieldsOf = (r: EventRow): LoggedFields => ({
  id: r.id,
  type: r.type,
  schemaVersion: r.schema_version,
  zoneId: r.zone_id,
  aggregateType: r.aggregate_type,
  aggregateId: r.aggregate_id,
  sequence: r.sequence,
  occurredAt: r.occurred_at,
  actor: r.actor,
  correlationId: r.correlation_id,
  causationId: r.causation_id,
  data: r.data
})

export const toEnvelope = (r: EventRow): Envelope => ({
  id: r.id,
  type: r.type,
  schemaVersion: r.schema_version,
  zoneId: r.zone_id,
  aggregate: { type: r.aggregate_type, id: r.aggregate_id },
  sequence: r.sequence,
  position: r.position,
  occurredAt: r.occurred_at,
  actor: r.actor,
  correlationId: r.correlation_id,
  causationId: r.causation_id
  , data: r.data
})

/** occurred_at as the envelope's ISO string (UTC, milliseconds, as JavaScript's toISOString). */
export const OCCURRED_AT_ISO = (column: string) => `to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`

export const EVENT_COLUMNS = sql.raw(
  `position::text as position, transaction_id::text as transaction_id, id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, ${OCCURRED_AT_ISO("occurred_at")} as occurred_at, actor, correlation_id, causation_id, data, mac, mac_key_id`
)

/** Thrown inside a transaction when another writer appended the same sequence first. */
export class SequenceConflict extends Error {
  readonly _tag = "SequenceConflict"
}

export const isUniqueViolation = (e: unknown, constraint?: string) =>
  typeof e === "object" && e !== null && (e as { code?: string }).code === "23505" &&
  (constraint === undefined || (e as { constraint?: string }).constraint === constraint)

export const loadAggregateEvents = async (
  db: Transaction<Tables> | Kysely<Tables>,
  aggregate: { readonly type: string; readonly id: string },
  afterSequence = 0,
  upToSequence = 2_147_483_647
): Promise<ReadonlyArray<EventRow>> => {
  const { rows } = await sql<EventRow>`
    select ${EVENT_COLUMNS} from events
    where aggregate_type = ${aggregate.type} and aggregate_id = ${aggregate.id}
      and sequence > ${afterSequence} and sequence <= ${upToSequence}
    order by sequence`.execute(db)
  return rows
}

/** A position in commit-safe order: (transaction id, position). */
export interface LogCursor {
  readonly transactionId: string
  readonly position: string
}

export const LOG_START: LogCursor = { transactionId: "0", position: "0" }

export interface LogFilter {
  /**
   * true (the default) for readers that resume from a cursor: stop below the oldest running
   * transaction. false for one-shot listings (replay), which show everything committed now.
   */
  readonly horizon?: boolean
  readonly zoneId?: string | undefined
  readonly aggregateType?: string | undefined
  readonly aggregateId?: string | undefined
  readonly types?: ReadonlyArray<string> | undefined
}

/**
 * The log's horizon: every event of a transaction below it has committed (or never will), so
 * a reader that stops below it never overtakes a row still in flight. Positions are allocated
 * at insert, not at commit, hence the need.
 *
 * It is the oldest transaction of this statement's snapshot that may have appended events,
 * not the snapshot's xmin: xmin counts every open transaction on the server (a report, a
 * backup, a session left idle in another database) and one of those would stall every reader.
 * A transaction in the snapshot is passed over only when it is still running and holds no
 * lock on the events table: it has appended nothing (an INSERT takes that lock for the rest
 * of the transaction). Event writers take the lock before they are given a transaction id —
 * a single INSERT statement locks at parse, a multi-statement command locks first (see
 * command.ts) — so one that has no id yet will get one above this horizon. A transaction that
 * ended after the snapshot was taken still counts: its rows may be invisible to it.
 */
export const HORIZON = sql`(
  select coalesce(min(x.xid), pg_snapshot_xmax(pg_current_snapshot()))
  from pg_snapshot_xip(pg_current_snapshot()) as x(xid)
  where not exists (
    select 1 from pg_locks t
    where t.locktype = 'transactionid' and t.mode = 'ExclusiveLock' and t.granted
      and t.transactionid::text = (x.xid::text::bigint % 4294967296)::text
      and not exists (
        select 1 from pg_locks r
        where r.virtualtransaction = t.virtualtransaction and r.locktype = 'relation'
          and r.relation = 'events'::regclass
          and r.database = (select oid from pg_database where datname = current_database()))))`

/**
 * Reads the log after `cursor` without gaps: only rows below the horizon (see HORIZON), in
 * (transaction id, position) order, so a row still in flight is never overtaken.
 */
export const readLog = async (
  db: Kysely<Tables> | Transaction<Tables>,
  cursor: LogCursor,
  limit: number,
  filter: LogFilter = {}
): Promise<ReadonlyArray<EventRow>> => {
  const conditions = [sql`(transaction_id, position) > (${cursor.transactionId}::xid8, ${cursor.position}::bigint)`]
  if (filter.horizon !== false) conditions.push(sql`transaction_id < ${HORIZON}`)
  if (filter.zoneId !== undefined) conditions.push(sql`zone_id = ${filter.zoneId}`)
  if (filter.aggregateType !== undefined) conditions.push(sql`aggregate_type = ${filter.aggregateType}`)
  if (filter.aggregateId !== undefined) conditions.push(sql`aggregate_id = ${filter.aggregateId}`)
  if (filter.types !== undefined && filter.types.length > 0) conditions.push(sql`type in (${sql.join(filter.types)})`)
  const { rows } = await sql<EventRow>`
    select ${EVENT_COLUMNS} from events
    where ${sql.join(conditions, sql` and `)}
    -- qualified: a bare name would sort by the text aliases in EVENT_COLUMNS ("10" < "9")
    order by events.transaction_id, events.position
    limit ${limit}`.execute(db)
  return rows
}

/** The current horizon (see HORIZON): every event of a lower transaction id has committed or never will. */
export const logHorizon = async (db: Kysely<Tables> | Transaction<Tables>): Promise<string> =>
  (await sql<{ x: string }>`select ${HORIZON}::text as x`.execute(db)).rows[0]!.x

/**
 * A transaction id above every one given out so far: every transaction that has begun writing
 * events has a lower one, or none yet. (A snapshot's xmax is not enough: it is one past the
 * latest *completed* transaction, and a writer still running may hold a higher id.)
 */
export const nextTransaction = async (db: Kysely<Tables> | Transaction<Tables>): Promise<bigint> =>
  BigInt((await sql<{ x: string }>`select pg_current_xact_id()::text as x`.execute(db)).rows[0]!.x)

/**
 * For a catch-up that found nothing more to read: true when every event writer that had
 * begun by `target` has ended (it has really seen everything committed before it started);
 * otherwise waits until they have and answers false: read again, they may have written.
 */
export const writersEnded = async (db: Kysely<Tables>, target: bigint, timeoutMs = 60_000): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs
  let waited = false
  while (BigInt(await logHorizon(db)) < target) {
    if (Date.now() > deadline) throw new Error(`event writers older than transaction ${target} still running after ${timeoutMs} ms`)
    waited = true
    await new Promise((r) => setTimeout(r, 10))
  }
  return !waited
}

export const cursorOf = (r: EventRow): LogCursor => ({ transactionId: r.transaction_id, position: r.position })
