// Projections: read models built by applying events. Each event is applied exactly once
// per projection, because a checkpoint per aggregate (its last applied `sequence`) is
// read under a row lock and written in the same transaction as the effect:
//   sequence <= checkpoint      → a duplicate (relay crash, redelivery): skipped
//   sequence  > checkpoint + 1  → an earlier event has not arrived yet (it is on another
//                                 consumer, or being retried): it is loaded from the
//                                 Postgres log and applied first, so order holds
// The same rule makes the switch from catching up on the log to following the stream
// safe: whatever both deliver is applied once, whatever neither has is filled in.
import { type Kysely, sql, type Transaction } from "kysely"
import type { Envelope } from "../schemas/envelope.ts"
import type { EventRegistry } from "../schemas/registry.ts"
import type { Tables } from "./db/tables.ts"
import { cursorOf, type EventRow, LOG_START, type LogCursor, loadAggregateEvents, loggedFieldsOf, logHorizon, nextTransaction, readLog, toEnvelope, writersEnded } from "./eventstore.ts"
import { type Verdict, type Verifier, verifyLogged } from "./signing.ts"

export interface Projection<Tx> {
  readonly name: string
  /** Event types this projection reacts to; others only advance its checkpoints. */
  readonly handles: ReadonlySet<string>
  readonly apply: (tx: Tx, event: Envelope) => Promise<void> | void
  /**
   * Optional: applies many events at once (in order, already deduplicated), e.g. folding
   * them in memory and writing each row once. Catch-up and rebuild use it when present.
   */
  readonly applyBatch?: (tx: Tx, events: ReadonlyArray<Envelope>) => Promise<void> | void
  /** Empties the read model (for a rebuild). */
  readonly reset: (tx: Tx) => Promise<void> | void
  /** Derives what the replay does not (counters, summaries) once every event is applied. */
  readonly afterRebuild?: (tx: Tx) => Promise<void> | void
  /**
   * The tables this projection writes, when commands also change them inline: a rebuild
   * holds their writers off until it commits (see rebuildPostgres).
   */
  readonly tables?: ReadonlyArray<string>
}

/** Decodes a stored row to the latest version of its event, as a consumer would see it. */
export const upcastRow = (registry: EventRegistry, row: EventRow): Envelope => {
  const env = toEnvelope(row)
  const decoded = registry.decode(env.type, env.schemaVersion, env.data)
  if (decoded._tag === "Failure") throw new Error(`cannot project ${env.type} v${env.schemaVersion}: ${decoded.failure.detail}`)
  return { ...env, schemaVersion: decoded.success.version, data: decoded.success.data }
}

// ---------------------------------------------------------------- Postgres projections

export type PgProjection = Projection<Transaction<Tables>>

const saveCursor = (trx: Transaction<Tables>, projection: string, c: LogCursor) =>
  sql`insert into projection_cursors (projection, transaction_id, position) values (${projection}, ${c.transactionId}::xid8, ${c.position}::bigint)
    on conflict (projection) do update set transaction_id = excluded.transaction_id, position = excluded.position, updated_at = now()`.execute(trx)

const loadCursor = async (db: Kysely<Tables>, projection: string): Promise<LogCursor> => {
  const { rows } = await sql<{ transaction_id: string; position: string }>`
    select transaction_id::text, position::text from projection_cursors where projection = ${projection}`.execute(db)
  const r = rows[0]
  return r ? { transactionId: r.transaction_id, position: r.position } : LOG_START
}

/** What batch application needs of an event, whether it came from the log or a stream. */
interface Item {
  readonly aggregateType: string
  readonly aggregateId: string
  readonly sequence: number
  readonly type: string
  readonly envelope: () => Envelope
}

const rowItem = (registry: EventRegistry, r: EventRow): Item => ({
  aggregateType: r.aggregate_type,
  aggregateId: r.aggregate_id,
  sequence: r.sequence,
  type: r.type,
  envelope: () => upcastRow(registry, r)
})

const envelopeItem = (e: Envelope): Item => ({
  aggregateType: e.aggregate.type,
  aggregateId: e.aggregate.id,
  sequence: e.sequence,
  type: e.type,
  envelope: () => e
})

const keyOf = (type: string, id: string) => `${type}\u0000${id}`

/**
 * Creates missing checkpoint rows and locks them all, in one statement: two batches of one
 * aggregate serialise here. Each key is found through the unique index (the conflict check),
 * in key order, so every batch takes its locks in the same order. The no-op update is what
 * locks an existing row and returns its latest committed sequence (a plain select would read
 * it as of the statement's start, stale if another batch committed while this one waited).
 */
const lockCheckpoints = async (trx: Transaction<Tables>, projection: string, items: ReadonlyArray<Item>) => {
  const keys = [...new Set(items.map((i) => keyOf(i.aggregateType, i.aggregateId)))]
  const types = keys.map((k) => k.split("\u0000")[0]!)
  const ids = keys.map((k) => k.split("\u0000")[1]!)
  const { rows } = await sql<{ aggregate_type: string; aggregate_id: string; sequence: number }>`
    insert into projection_checkpoints (projection, aggregate_type, aggregate_id, sequence)
    select ${projection}, k.t, k.i, 0 from unnest(${types}::text[], ${ids}::text[]) as k(t, i) order by k.t, k.i
    on conflict (projection, aggregate_type, aggregate_id) do update set sequence = projection_checkpoints.sequence
    returning aggregate_type, aggregate_id, sequence`.execute(trx)
  return new Map(rows.map((c) => [keyOf(c.aggregate_type, c.aggregate_id), c.sequence]))
}

/**
 * Applies a batch in one transaction with the once-only rule per aggregate: duplicates are
 * skipped, a gap is filled from the log first. Checkpoints are read (and locked) once and
 * written once per batch, so catch-up, rebuild and stream batches cost a few statements
 * per batch rather than three per event.
 */
const applyBatch = async (
  trx: Transaction<Tables>,
  registry: EventRegistry,
  projection: PgProjection,
  items: ReadonlyArray<Item>,
  /** Checkpoints the caller already holds (a rebuild starts from none): skips reading them. */
  known?: Map<string, number>
) => {
  if (items.length === 0) return 0
  const cps = known ?? (await lockCheckpoints(trx, projection.name, items))
  const touched = new Map<string, number>()
  const todo: Array<Envelope> = []
  for (const item of items) {
    const key = keyOf(item.aggregateType, item.aggregateId)
    const cp = touched.get(key) ?? cps.get(key) ?? 0
    if (item.sequence <= cp) continue
    if (item.sequence > cp + 1) {
      // an earlier event of this aggregate has not reached us yet: take it from the log
      const ref = { type: item.aggregateType, id: item.aggregateId }
      for (const row of await loadAggregateEvents(trx, ref, cp, item.sequence - 1)) {
        if (projection.handles.has(row.type)) todo.push(upcastRow(registry, row))
      }
    }
    if (projection.handles.has(item.type)) todo.push(item.envelope())
    touched.set(key, item.sequence)
  }
  if (projection.applyBatch) await projection.applyBatch(trx, todo)
  else for (const e of todo) await projection.apply(trx, e)
  if (known) for (const [k, v] of touched) known.set(k, v)
  if (touched.size > 0) {
    const t = [...touched.entries()]
    await sql`insert into projection_checkpoints (projection, aggregate_type, aggregate_id, sequence)
      select ${projection.name}, k.t, k.i, k.s from unnest(${t.map(([k]) => k.split("\u0000")[0]!)}::text[],
        ${t.map(([k]) => k.split("\u0000")[1]!)}::text[], ${t.map(([, s]) => s)}::int[]) as k(t, i, s)
      on conflict (projection, aggregate_type, aggregate_id) do update set sequence = excluded.sequence`.execute(trx)
  }
  return touched.size
}

export type ApplyOutcome = "applied" | "duplicate"

/** Applies one event (and any missing predecessors) exactly once, in one transaction. */
export const applyToPostgres = (
  db: Kysely<Tables>,
  registry: EventRegistry,
  projection: PgProjection,
  event: Envelope
): Promise<ApplyOutcome> =>
  db.transaction().execute(async (trx) =>
    (await applyBatch(trx, registry, projection, [envelopeItem(event)])) > 0 ? "applied" : "duplicate")

/** Applies a batch of delivered events (a consumer's read) exactly once, in one transaction. */
export const applyDeliveredToPostgres = (
  db: Kysely<Tables>,
  registry: EventRegistry,
  projection: PgProjection,
  events: ReadonlyArray<Envelope>
): Promise<number> =>
  db.transaction().execute((trx) => applyBatch(trx, registry, projection, events.map(envelopeItem)))

/**
 * Read-your-writes: a projection that misses an aggregate (spawn → exchange before the event
 * has reached this consumer) applies that aggregate's events from the log, once, before the
 * caller refuses. Returns how many events were new to the projection.
 */
export const refreshPostgres = (
  db: Kysely<Tables>,
  registry: EventRegistry,
  projection: PgProjection,
  aggregate: { readonly type: string; readonly id: string }
): Promise<number> =>
  db.transaction().execute(async (trx) => {
    const rows = await loadAggregateEvents(trx, aggregate)
    if (rows.length === 0) return 0
    const before = (await lockCheckpoints(trx, projection.name, [rowItem(registry, rows[0]!)])).get(keyOf(aggregate.type, aggregate.id)) ?? 0
    const unseen = rows.filter((r) => r.sequence > before)
    await applyBatch(trx, registry, projection, unseen.map((r) => rowItem(registry, r)))
    return unseen.length
  })

/** A log row whose MAC does not match: altered after it was written, or by someone without the key. */
export class LogTampered extends Error {
  readonly _tag = "LogTampered"
  readonly position: string
  readonly verdict: Verdict
  constructor(position: string, verdict: Verdict) {
    super(`event at position ${position} fails verification (${verdict})`)
    this.position = position
    this.verdict = verdict
  }
}

/** With keys held, every row must carry a valid MAC; a rebuild never applies a forged row. */
export const verifyRows = (verifier: Verifier | undefined, rows: ReadonlyArray<EventRow>) => {
  if (!verifier?.enabled) return
  for (const r of rows) {
    const verdict = verifyLogged(verifier, loggedFieldsOf(r), r.mac_key_id ?? null, r.mac ?? null)
    if (verdict !== "valid") throw new LogTampered(r.position, verdict)
  }
}

export interface CatchUpOptions {
  readonly batchSize?: number
  readonly onProgress?: (p: CatchUpProgress) => void
  readonly verifier?: Verifier | undefined
}

export interface CatchUpProgress {
  readonly applied: number
  readonly cursor: LogCursor
}

/** Catches a Postgres projection up with the log from its saved cursor, batch by batch. */
export const catchUpPostgres = async (
  db: Kysely<Tables>,
  registry: EventRegistry,
  projection: PgProjection,
  opts: CatchUpOptions = {}
): Promise<CatchUpProgress> => {
  let cursor = await loadCursor(db, projection.name)
  let applied = 0
  // writers that began before the catch-up must be read too: it returns only once they ended
  const started = await nextTransaction(db)
  for (;;) {
    const rows = await readLog(db, cursor, opts.batchSize ?? 2000)
    if (rows.length === 0) {
      if (await writersEnded(db, started)) break
      continue
    }
    verifyRows(opts.verifier, rows)
    const next = cursorOf(rows[rows.length - 1]!)
    await db.transaction().execute(async (trx) => {
      await applyBatch(trx, registry, projection, rows.map((r) => rowItem(registry, r)))
      await saveCursor(trx, projection.name, next)
    })
    cursor = next
    applied += rows.length
    opts.onProgress?.({ applied, cursor })
  }
  return { applied, cursor }
}

/**
 * Drops the read model and its checkpoints and replays the whole log into it, all in one
 * transaction: readers keep seeing the old state until the new one commits, and a rebuild
 * that fails (a tampered row, a crash) leaves the old state in place.
 *
 * Commands that change the projection's tables inline are held off for the rebuild's
 * length: it first locks the tables against writers (SHARE ROW EXCLUSIVE conflicts with the
 * ROW EXCLUSIVE lock a write takes; reads go on). A write that waited there then runs on a
 * fresh snapshot, taken after the lock was granted, so it changes the rebuilt rows. Without
 * the lock, a write committing meanwhile would land in the log, while its UPDATE found no
 * row (deleted by the rebuild) and the table would disagree with the log forever. A write
 * already running when the rebuild starts is waited for, and its events are replayed.
 * Chosen over shadow tables and a swap: the same guarantee with no second copy and no
 * catch-up of the gap; the price is that writes wait for the rebuild (about 10 s per million
 * events, see the README's benchmarks).
 *
 * It applies everything committed, but saves as its cursor only the last row below the
 * horizon taken at the start: a transaction still running then may commit a lower
 * (transaction id, position) later, and the next catch-up must start before it. What that
 * catch-up reads twice is skipped by the per-aggregate checkpoints.
 */
export const rebuildPostgres = async (
  db: Kysely<Tables>,
  registry: EventRegistry,
  projection: PgProjection,
  opts: CatchUpOptions = {}
): Promise<CatchUpProgress> => {
  // Writers lock tables in name order (core/group-commit.ts) and so does this; a writer whose
  // function touches a table it did not lock first may still deadlock with it: then again.
  for (let attempt = 1; ; attempt++) {
    try {
      return await rebuildOnce(db, registry, projection, opts)
    } catch (e) {
      if (attempt >= 5 || (e as { code?: string }).code !== "40P01") throw e
    }
  }
}

const rebuildOnce = (
  db: Kysely<Tables>,
  registry: EventRegistry,
  projection: PgProjection,
  opts: CatchUpOptions
): Promise<CatchUpProgress> =>
  db.transaction().execute(async (trx) => {
    if (projection.tables !== undefined && projection.tables.length > 0) {
      const tables = [...projection.tables].sort()
      await sql`lock table ${sql.join(tables.map((t) => sql.table(t)))} in share row exclusive mode`.execute(trx)
    }
    await projection.reset(trx)
    await sql`delete from projection_checkpoints where projection = ${projection.name}`.execute(trx)
    const horizon = BigInt(await logHorizon(trx))
    let cursor = LOG_START
    let safe = LOG_START
    let applied = 0
    const read = (after: LogCursor) => {
      const p = readLog(trx, after, opts.batchSize ?? 10_000, { horizon: false })
      p.catch(() => {}) // an abandoned prefetch (the rebuild failed) must not surface as unhandled
      return p
    }
    // the rebuild deleted every checkpoint: it tracks them itself instead of reading them back
    const checkpoints = new Map<string, number>()
    let next = read(cursor)
    for (;;) {
      const rows = await next
      if (rows.length === 0) break
      // queue the next read now: Postgres fetches it while this batch is verified and decoded
      next = read(cursorOf(rows[rows.length - 1]!))
      verifyRows(opts.verifier, rows)
      await applyBatch(trx, registry, projection, rows.map((r) => rowItem(registry, r)), checkpoints)
      for (const r of rows) if (BigInt(r.transaction_id) < horizon) safe = cursorOf(r)
      cursor = cursorOf(rows[rows.length - 1]!)
      applied += rows.length
      opts.onProgress?.({ applied, cursor })
    }
    await projection.afterRebuild?.(trx)
    await saveCursor(trx, projection.name, safe)
    return { applied, cursor }
  })

// ---------------------------------------------------------------- in-memory projections

/** An in-memory read model (kept by every replica): the same once-only rule, checkpoints in memory. */
export class MemoryProjectionRunner<S> {
  private readonly checkpoints = new Map<string, number>()
  cursor: LogCursor = LOG_START
  /** True once a catch-up has read the whole log (a replica is ready to answer from it). */
  caughtUp = false

  readonly projection: Projection<S>
  readonly state: S
  private readonly db: Kysely<Tables>
  private readonly registry: EventRegistry

  constructor(projection: Projection<S>, state: S, db: Kysely<Tables>, registry: EventRegistry) {
    this.projection = projection
    this.state = state
    this.db = db
    this.registry = registry
  }

  async apply(event: Envelope): Promise<ApplyOutcome> {
    const key = `${event.aggregate.type}\u0000${event.aggregate.id}`
    const cp = this.checkpoints.get(key) ?? 0
    if (event.sequence <= cp) return "duplicate"
    if (event.sequence > cp + 1) {
      for (const row of await loadAggregateEvents(this.db, event.aggregate, cp, event.sequence - 1)) {
        // decoded only when handled: the log holds other services' events too, which this registry need not know
        if (this.projection.handles.has(row.type)) await this.projection.apply(this.state, upcastRow(this.registry, row))
      }
    }
    if (this.projection.handles.has(event.type)) await this.projection.apply(this.state, event)
    this.checkpoints.set(key, event.sequence)
    return "applied"
  }

  /** A row of the log: applied when handled; otherwise only its checkpoint moves (it is never decoded). */
  private async applyRow(row: EventRow): Promise<void> {
    if (this.projection.handles.has(row.type)) {
      await this.apply(upcastRow(this.registry, row))
      return
    }
    const key = `${row.aggregate_type}\u0000${row.aggregate_id}`
    if (row.sequence > (this.checkpoints.get(key) ?? 0)) this.checkpoints.set(key, row.sequence)
  }

  /** Read-your-writes: applies what the log has of this aggregate beyond its checkpoint. */
  async refresh(aggregate: { readonly type: string; readonly id: string }): Promise<number> {
    const key = `${aggregate.type}\u0000${aggregate.id}`
    const rows = await loadAggregateEvents(this.db, aggregate, this.checkpoints.get(key) ?? 0)
    for (const row of rows) await this.applyRow(row)
    return rows.length
  }

  async catchUp(batchSize = 2000, verifier?: Verifier): Promise<number> {
    let n = 0
    const started = await nextTransaction(this.db)
    for (;;) {
      // only the events it handles: the log holds every service's, and a replica starts faster reading less
      const rows = await readLog(this.db, this.cursor, batchSize, { types: [...this.projection.handles] })
      if (rows.length === 0) {
        if (await writersEnded(this.db, started)) {
          this.caughtUp = true
          return n
        }
        continue
      }
      verifyRows(verifier, rows)
      for (const row of rows) await this.applyRow(row)
      this.cursor = cursorOf(rows[rows.length - 1]!)
      n += rows.length
    }
  }
}
