// Group commit: commands that arrive while a group is being written (or within a short
// window when none is) are written together. First in one statement (core/group-statement.ts);
// if a member would fail, the exact way: one transaction, in which one call of
// caracal_write_group (core/migrations/0009_write_group.ts) writes every member's events,
// outbox rows and idempotency key set-based and takes each member's capacity, then one
// statement writes the projection rows of the members that passed. Each member gets its own
// outcome, exactly as alone: a refused or conflicting member leaves nothing behind.
//
// A command is decided before it is queued (its reads happen on the pool, concurrently with
// everything else), so a group never waits for a slow member: only finished writes queue.
// Members are written in one global order (zone, aggregate), so that concurrent groups take
// row locks in the same order; a group that still deadlocks fails as a whole, and execute
// retries each member like any conflict.
import { type Kysely, sql } from "kysely"
import pg from "pg"
import { isUnavailable } from "./db/database.ts"
import type { Tables } from "./db/tables.ts"
import { groupStatement } from "./group-statement.ts"
import { changesSql, foldChanges, type RowChange } from "./row-changes.ts"

export interface GroupCommitOptions {
  /** Members per group (WRITE_GROUP_MAX_SIZE); 1 turns grouping off: each command is its own statement. */
  readonly maxSize: number
  /** How long an idle writer waits for more members before it writes (WRITE_GROUP_WINDOW_US). */
  readonly windowUs: number
  /** Members that may wait for a group (WRITE_QUEUE_MAX); past it a command is refused at once. */
  readonly queueMax: number
  /** How long a member may wait for its group to be sent (WRITE_DEADLINE_MS); past it, refused. */
  readonly deadlineMs: number
}

export const DEFAULT_GROUP_COMMIT: GroupCommitOptions = { maxSize: 32, windowUs: 200, queueMax: 10_000, deadlineMs: 5_000 }

/**
 * Groups written at once: one can commit (wait for its WAL flush) while the next executes,
 * without several groups of one process contending for the same rows.
 */
const IN_FLIGHT = 2

/**
 * After a group's single statement failed (a member refused or conflicted), the next groups
 * are written the exact way straight away: where refusals are common (a limit reached), a
 * statement that fails costs a round trip and the work done before it failed.
 */
const EXACT_AFTER_FAILURE = 8

/** What one member's write statement assigned: each event's id, position and transaction. */
export type Written = ReadonlyArray<{ readonly id: string; readonly position: string; readonly transaction_id: string }>

/**
 * A member's statement failed inside its subtransaction: shaped like pg's own error (code,
 * constraint, message), so that the code that reads errors of an ungrouped write reads it alike.
 */
export class MemberFailed extends Error {
  readonly code: string
  readonly constraint: string | undefined
  constructor(code: string, constraint: string | null, message: string | null) {
    super(message ?? code)
    this.code = code
    this.constraint = constraint === null || constraint === "" ? undefined : constraint
  }
}

interface GroupRow {
  readonly member: number
  readonly written: Written | null
  readonly error_code: string | null
  readonly error_constraint: string | null
  readonly error_message: string | null
}

/** Refused before it was written (queue full, or waited past the deadline): a 503, nothing written. */
export class WriteOverloaded extends Error {}

/** One member as caracal_write_group reads it (JSON). */
export interface MemberWrite {
  readonly producer: string
  /** Full event rows, MACs included. */
  readonly events: ReadonlyArray<Readonly<Record<string, unknown>>>
  readonly routes: ReadonlyArray<{ readonly event_id: string; readonly stream: string }>
  /** The channel to NOTIFY with the producer's name, when its relay does not lead in this process. */
  readonly notify: string | null
  readonly key: { readonly scope: string; readonly idempotency_key: string; readonly result: unknown; readonly fingerprint: string | null } | null
  /** An SQL expression with its values written in (see inlineParameters); raises to refuse. */
  readonly capacity: string | null
}

export interface GroupMember {
  /** The global write order: zone, aggregate type, aggregate id. */
  readonly order: string
  readonly write: MemberWrite
  /** Its projection rows, written after the call for the members that passed. */
  readonly changes: ReadonlyArray<RowChange>
  /** The member written on its own, one statement: a group of one, or a group that failed as a whole. */
  readonly alone: () => Promise<Written>
}

interface Queued extends GroupMember {
  readonly enqueued: number
  readonly resolve: (w: Written) => void
  readonly reject: (e: unknown) => void
}

/** Group sizes and write latencies since the last drain (reported by the Producer layer). */
export interface GroupObservations {
  readonly sizes: Array<number>
  /** Seconds from a group's send to its answer. */
  readonly latencies: Array<number>
  refused: number
  /** Groups that failed as a whole on one member's fault and were written member by member. */
  writtenAlone: number
  /** Groups written in one statement (core/group-statement.ts). */
  atOnce: number
  /** Groups whose single statement failed on a member's refusal or conflict, then written the exact way. */
  atOnceFailed: number
}

export class GroupCommit {
  readonly options: GroupCommitOptions
  private readonly db: Kysely<Tables>
  private queue: Array<Queued> = []
  private running = 0
  private waiting = false
  private sweeping: ReturnType<typeof setTimeout> | undefined
  /** Groups still to be written the exact way after a single statement failed. */
  private exactOnly = 0
  private observations: GroupObservations = { sizes: [], latencies: [], refused: 0, writtenAlone: 0, atOnce: 0, atOnceFailed: 0 }

  constructor(db: Kysely<Tables>, options: GroupCommitOptions = DEFAULT_GROUP_COMMIT) {
    this.db = db
    this.options = options
  }

  /** Queues one member; answers what it wrote, or its own error. */
  write(member: GroupMember): Promise<Written> {
    if (this.queue.length >= this.options.queueMax) {
      this.observations.refused++
      return Promise.reject(new WriteOverloaded(`write queue full (${this.options.queueMax} waiting)`))
    }
    return new Promise<Written>((resolve, reject) => {
      this.queue.push({ ...member, enqueued: performance.now(), resolve, reject })
      this.schedule()
      this.sweepLater()
    })
  }

  drain(): GroupObservations {
    const o = this.observations
    this.observations = { sizes: [], latencies: [], refused: 0, writtenAlone: 0, atOnce: 0, atOnceFailed: 0 }
    return o
  }

  /**
   * An idle writer waits up to the window for more members (one event-loop turn at a time, so
   * arrivals get in); a full group goes at once. While a group is being written, the next waits
   * one event-loop turn: the members decided in the same burst (the callers the last group
   * answered) go together, rather than the first alone. So under a steady load two groups
   * alternate: one is decided here while the other is written (measured: +30% commands/s at 64
   * in flight with groups of 32, where groups of 64 left this process and Postgres taking turns).
   */
  private schedule() {
    if (this.waiting || this.running >= IN_FLIGHT || this.queue.length === 0) return
    if (this.queue.length >= this.options.maxSize) return this.send()
    this.waiting = true
    const until = this.running > 0 ? 0 : performance.now() + this.options.windowUs / 1000
    const tick = () => {
      if (this.queue.length >= this.options.maxSize || performance.now() >= until) {
        this.waiting = false
        if (this.running < IN_FLIGHT) this.send()
      } else setImmediate(tick)
    }
    setImmediate(tick)
  }

  private send() {
    const now = performance.now()
    const group = this.takeGroup(now)
    if (group.length === 0) return
    this.running++
    this.observations.sizes.push(group.length)
    group.sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0))
    void this.writeGroup(group).finally(() => {
      this.observations.latencies.push((performance.now() - now) / 1000)
      this.running--
      this.schedule()
    })
  }

  private takeGroup(now: number): Array<Queued> {
    const group: Array<Queued> = []
    while (group.length < this.options.maxSize && this.queue.length > 0) {
      const taken = this.queue.splice(0, this.options.maxSize - group.length)
      for (const m of taken) {
        if (now - m.enqueued > this.options.deadlineMs) this.overdue(m)
        else group.push(m)
      }
    }
    return group
  }

  private overdue(m: Queued) {
    this.observations.refused++
    m.reject(new WriteOverloaded(`waited over ${this.options.deadlineMs} ms for a write`))
  }

  private readonly columnTypes = new Map<string, ReadonlyMap<string, string>>()

  /** Column types of the projection tables, read once per table (they change only with a migration and a restart). */
  private async learnTypes(trx: Kysely<Tables>, changes: ReadonlyArray<RowChange>) {
    const unknown = [...new Set(changes.filter((c) => c.op === "update").map((c) => c.table))].filter((t) => !this.columnTypes.has(t))
    for (const table of unknown) {
      const { rows } = await sql<{ name: string; type: string }>`
        select attname as name, format_type(atttypid, atttypmod) as type from pg_attribute
        where attrelid = ${table}::regclass and attnum > 0 and not attisdropped`.execute(trx)
      this.columnTypes.set(table, new Map(rows.map((r) => [r.name, r.type])))
    }
  }

  private async writeGroup(group: ReadonlyArray<Queued>) {
    if (group.length === 1) return group[0]!.alone().then(group[0]!.resolve, group[0]!.reject)
    if (this.exactOnly > 0) this.exactOnly--
    else {
      try {
        const written = await this.writeAtOnce(group)
        this.observations.atOnce++
        group.forEach((m, i) => m.resolve(written[i]!))
        return
      } catch (e) {
        // A refusal or a conflict aborted the statement, so nothing of it was written: the exact way
        // tells who failed. Postgres unavailable: every member gets the error (503), as any write does.
        if (isUnavailable(e)) {
          for (const m of group) m.reject(e)
          return
        }
        this.observations.atOnceFailed++
        this.exactOnly = EXACT_AFTER_FAILURE
      }
    }
    await this.writeExactly(group)
  }

  /** The whole group in one statement (core/group-statement.ts): fails as a whole if any member would. */
  private async writeAtOnce(group: ReadonlyArray<Queued>): Promise<ReadonlyArray<Written>> {
    const changes = foldChanges(group.flatMap((m) => m.changes))
    await this.learnTypes(this.db, changes)
    const byTable = [...changes].sort((a, b) => (a.table < b.table ? -1 : a.table > b.table ? 1 : 0))
    const { statement, written } = groupStatement(group.map((m) => m.write), changesSql(byTable, (table) => this.columnTypes.get(table)!))
    return written((await statement.execute(this.db)).rows)
  }

  /** The group through caracal_write_group: each member's own outcome, whatever the others'. */
  private async writeExactly(group: ReadonlyArray<Queued>) {
    let rows: ReadonlyArray<GroupRow>
    // every table a member may write a row to, locked up front as a single statement would at parse
    const tables = [...new Set(group.flatMap((m) => m.changes.map((c) => c.table)))].sort()
    try {
      rows = await this.db.transaction().execute(async (trx) => {
        const { rows } = await sql<GroupRow>`
          select member, written, error_code, error_constraint, error_message
          from caracal_write_group(${JSON.stringify(group.map((m) => m.write))}::jsonb, ${tables}::text[])`.execute(trx)
        // the passing members' rows, folded in member order: two members of one row see each other's changes
        const changes = foldChanges(rows.filter((r) => r.error_code === null).flatMap((r) => group[r.member - 1]!.changes))
        if (changes.length > 0) {
          await this.learnTypes(trx, changes)
          const statements = changesSql(changes, (table) => this.columnTypes.get(table)!)
          await sql`with ${sql.join(statements.map((s, i) => sql`${sql.raw(`p${i}`)} as (${s})`))} select 1`.execute(trx)
        }
        return rows
      })
    } catch (e) {
      // Postgres unavailable, or a deadlock: nothing of it committed, each member gets the error
      // (execute retries a deadlock). Anything else is one member's own fault (its projection
      // rows broke a constraint, a bug): each member is written alone and gets its own outcome.
      if (isUnavailable(e)) for (const m of group) m.reject(e)
      else {
        this.observations.writtenAlone++
        for (const m of group) m.alone().then(m.resolve, m.reject)
      }
      return
    }
    for (const r of rows) {
      const m = group[r.member - 1]!
      if (r.error_code === null) m.resolve(r.written ?? [])
      else m.reject(new MemberFailed(r.error_code, r.error_constraint, r.error_message))
    }
  }

  /** Members stuck behind groups that do not come back (a stalled server) still get their 503 in time. */
  private sweepLater() {
    if (this.sweeping !== undefined) return
    this.sweeping = setTimeout(() => {
      this.sweeping = undefined
      const now = performance.now()
      const keep: Array<Queued> = []
      for (const m of this.queue) {
        if (now - m.enqueued > this.options.deadlineMs) this.overdue(m)
        else keep.push(m)
      }
      this.queue = keep
      if (keep.length > 0) this.sweepLater()
    }, Math.max(10, this.options.deadlineMs / 4))
    this.sweeping.unref()
  }
}

// pg's own conversion of a parameter to its text form (dates, arrays, JSON), as it would send it
const { prepareValue } = (pg as unknown as { utils: { prepareValue: (v: unknown) => unknown } }).utils

const literal = (value: unknown): string => {
  const text = prepareValue(value)
  if (text === null) return "null"
  if (Buffer.isBuffer(text)) return `'\\x${text.toString("hex")}'::bytea`
  return pg.escapeLiteral(String(text))
}

/**
 * A compiled statement with its parameters written in as quoted literals: a member's capacity
 * travels as text in the group's JSON, run by EXECUTE. A quoted literal is typed by its context exactly like a
 * parameter of unknown type, so the statement means the same. Placeholders inside quoted
 * strings or identifiers are left alone.
 */
export const inlineParameters = (query: { readonly sql: string; readonly parameters: ReadonlyArray<unknown> }): string => {
  const text = query.sql
  let out = ""
  let i = 0
  while (i < text.length) {
    const c = text[i]!
    if (c === "'" || c === "\"") {
      // copy a quoted string or identifier whole (a doubled quote stays inside it)
      let j = i + 1
      while (j < text.length && !(text[j] === c && text[j + 1] !== c)) j += text[j] === c ? 2 : 1
      out += text.slice(i, j + 1)
      i = j + 1
    } else if (c === "$" && /[0-9]/.test(text[i + 1] ?? "")) {
      let j = i + 1
      while (j < text.length && /[0-9]/.test(text[j]!)) j++
      const n = Number(text.slice(i + 1, j))
      if (n < 1 || n > query.parameters.length) throw new Error(`placeholder $${n} has no parameter`)
      out += literal(query.parameters[n - 1])
      i = j
    } else {
      out += c
      i++
    }
  }
  return out
}
