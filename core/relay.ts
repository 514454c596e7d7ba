// The outbox relay: publishes committed outbox rows to signed Redis Streams.
//
// Order per aggregate is the invariant that shapes it. Two relays claiming interleaved
// batches could publish an aggregate's sequence 33 before 32, so one relay per producer
// leads at a time (a Postgres advisory lock held on a dedicated connection; when the
// leader dies its session ends and a standby takes over within one poll). The leader
// claims due rows in id order (an aggregate's later event always has a higher id: it
// could only be written after the earlier one committed), skips an aggregate whose
// earlier row is backing off, and publishes a batch with one pipelined round trip.
//
// Rows are never selected by "id > last sent": a transaction holding a lower id can
// commit after a higher one was published; status = 'pending' finds it whenever it lands.
import { Redis } from "ioredis"
import { sql } from "kysely"
import pg from "pg"
import type { Envelope } from "../schemas/envelope.ts"
import { OUTBOX_CHANNEL } from "./command.ts"
import { outboxSignal } from "./outbox-signal.ts"
import type { DatabaseShape } from "./db/database.ts"
import { type EventRow, OCCURRED_AT_ISO, toEnvelope } from "./eventstore.ts"
import { sign, type SigningKey } from "./signing.ts"

export interface RelayOptions {
  readonly producer: string
  readonly databaseUrl: string
  readonly database: DatabaseShape
  readonly redis: Redis
  readonly pollMs: number
  readonly batchSize: number
  readonly maxAttempts: number
  readonly signer?: SigningKey | undefined
  /** Fault injection for tests: runs after XADD, before the rows are marked sent. */
  readonly afterPublish?: (ids: ReadonlyArray<string>) => Promise<void>
  readonly onError?: (error: unknown) => void
}

interface ClaimedRow extends EventRow {
  readonly outbox_id: string
  readonly stream: string
  readonly attempts: number
}

/** The wire form of a stream entry: the envelope's exact bytes, the key id and the MAC. */
export const entryFields = (stream: string, envelope: Envelope, signer: SigningKey | undefined): Array<string> => {
  const bytes = JSON.stringify(envelope)
  return signer ? ["e", bytes, "k", signer.id, "s", sign(signer, stream, bytes)] : ["e", bytes]
}

/** Exponential backoff from 500 ms to 5 min, with full jitter so that relays do not retry in step. */
export const backoffMs = (attempts: number, random = Math.random) =>
  Math.round(random() * Math.min(300_000, 500 * 2 ** Math.min(attempts, 20)))

const claim = (database: DatabaseShape, producer: string, limit: number) =>
  sql<ClaimedRow>`
    select o.id::text as outbox_id, o.stream, o.attempts,
      e.position::text as position, e.transaction_id::text as transaction_id, e.id, e.zone_id, e.aggregate_type,
      e.aggregate_id, e.sequence, e.type, e.schema_version, ${sql.raw(OCCURRED_AT_ISO("e.occurred_at"))} as occurred_at, e.actor, e.correlation_id, e.causation_id, e.data
    from outbox o join events e on e.position = o.event_position
    where o.producer = ${producer} and o.status = 'pending' and o.next_attempt_at <= now()
      and not exists (
        select 1 from outbox p
        where p.producer = o.producer and p.aggregate_key = o.aggregate_key and p.status = 'pending'
          and p.id < o.id and p.next_attempt_at > now())
    order by o.id
    limit ${limit}
    for update of o skip locked`.execute(database.db).then((r) => r.rows)

const markSent = (database: DatabaseShape, ids: ReadonlyArray<string>) =>
  ids.length === 0 ? Promise.resolve() : sql`
    update outbox set status = 'sent', sent_at = now(), attempts = attempts + 1, lease_until = null
    where id = any(${ids}::bigint[]) and status = 'pending'`.execute(database.db)

const markFailed = (database: DatabaseShape, failures: ReadonlyArray<{ id: string; attempts: number; error: string }>, maxAttempts: number) =>
  Promise.all(failures.map((f) => sql`
    update outbox set attempts = attempts + 1, last_error = ${f.error.slice(0, 1000)},
      next_attempt_at = now() + make_interval(secs => ${backoffMs(f.attempts + 1) / 1000}),
      status = case when attempts + 1 >= ${maxAttempts} then 'dead' else 'pending' end
    where id = ${f.id}::bigint`.execute(database.db)))

/** true when Redis itself answered with an error (the row's fault); false when Redis was unreachable. */
const isReplyError = (e: unknown) => e instanceof Error && e.name === "ReplyError"

export interface Relay {
  /** Runs until stop(); resolves when the loop has exited. */
  readonly run: () => Promise<void>
  readonly stop: () => void
  readonly stats: { published: number; failed: number; leader: boolean }
}

export const makeRelay = (opts: RelayOptions): Relay => {
  let stopped = false
  let wake: (() => void) | undefined
  const stats = { published: 0, failed: 0, leader: false }
  // a commit signalled while a batch is in flight must not wait for the next poll
  let signalled = false
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      if (signalled) {
        signalled = false
        return resolve()
      }
      const t = setTimeout(() => { wake = undefined; resolve() }, ms)
      wake = () => { clearTimeout(t); wake = undefined; signalled = false; resolve() }
    })
  const signal = () => {
    signalled = true
    wake?.()
  }
  const lockKey = `caracal-relay:${opts.producer}`

  /** One batch; returns how many rows it handled (0 = nothing due). */
  const tick = async (): Promise<number> => {
    const rows = await claim(opts.database, opts.producer, opts.batchSize)
    if (rows.length === 0) return 0
    const pipeline = opts.redis.pipeline()
    for (const r of rows) pipeline.xadd(r.stream, "*", ...entryFields(r.stream, toEnvelope(r), opts.signer))
    // Redis unreachable throws here: not the rows' fault, so no attempt is charged; the loop backs off
    const results = await pipeline.exec()
    const sent: Array<string> = []
    const failed: Array<{ id: string; attempts: number; error: string }> = []
    rows.forEach((r, i) => {
      const err = results?.[i]?.[0]
      if (!err) sent.push(r.outbox_id)
      else if (isReplyError(err)) failed.push({ id: r.outbox_id, attempts: r.attempts, error: err.message })
      else throw err
    })
    if (opts.afterPublish) await opts.afterPublish(sent)
    await markSent(opts.database, sent)
    await markFailed(opts.database, failed, opts.maxAttempts)
    stats.published += sent.length
    stats.failed += failed.length
    return rows.length
  }

  const run = async () => {
    // commands committed in this process wake the relay directly (see outbox-signal.ts)
    const unsubscribe = outboxSignal.subscribe(opts.producer, signal)
    let listener: pg.Client | undefined
    let failures = 0
    while (!stopped) {
      try {
        if (listener === undefined) {
          const client = new pg.Client({ connectionString: opts.databaseUrl })
          client.on("error", () => {}) // a dropped connection is noticed by the next query
          await client.connect()
          listener = client
          client.on("notification", signal)
          await client.query(`listen ${OUTBOX_CHANNEL}`)
        }
        if (!stats.leader) {
          const { rows } = await listener.query<{ ok: boolean }>("select pg_try_advisory_lock(hashtext($1)) as ok", [lockKey])
          stats.leader = rows[0]?.ok === true
          outboxSignal.setLeading(opts.producer, stats.leader)
          if (!stats.leader) {
            await sleep(opts.pollMs)
            continue
          }
        }
        const handled = await tick()
        failures = 0
        // a full batch means more is probably due: go again at once
        if (handled < opts.batchSize) await sleep(opts.pollMs)
      } catch (e) {
        opts.onError?.(e)
        failures++
        if (listener && !(await listener.query("select 1").then(() => true, () => false))) {
          // the lock lived in that session: leadership is gone with it
          await listener.end().catch(() => undefined)
          listener = undefined
          stats.leader = false
          outboxSignal.setLeading(opts.producer, false)
        }
        // capped low: when Redis or Postgres returns, publishing resumes within seconds
        await sleep(Math.min(5_000, Math.max(50, backoffMs(failures))))
      }
    }
    unsubscribe()
    if (stats.leader) outboxSignal.setLeading(opts.producer, false)
    if (listener) await listener.end().catch(() => undefined)
    stats.leader = false
  }

  return {
    run,
    stop: () => {
      stopped = true
      signal()
    },
    stats
  }
}
