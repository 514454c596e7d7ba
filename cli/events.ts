// `caracal events tail` (the newest stream entries, optionally followed) and
// `caracal events replay` (the Postgres log in commit-safe order, each event checked
// against the stream entry that carried it: a tampered entry shows up as `invalid`).
import type { Redis } from "ioredis"
import { type Kysely, sql } from "kysely"
import type { Tables } from "../core/db/tables.ts"
import { type EventRow, LOG_START, type LogCursor, cursorOf, readLog, toEnvelope } from "../core/eventstore.ts"
import { makeKeys } from "../core/redis/keys.ts"
import type { Verdict, Verifier } from "../core/signing.ts"
import { compareIds } from "../core/trim.ts"
import { type Column, makeTable, type Out, UsageError } from "./output.ts"

export type Entry = [id: string, fields: Array<string>]

/** Field/value pairs of a stream entry as a record; a repeated field keeps its first value. */
export const fieldsOf = (raw: ReadonlyArray<string>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < raw.length; i += 2) if (!(raw[i]! in out)) out[raw[i]!] = raw[i + 1]!
  return out
}

/** Every stream whose name matches, sorted. SCAN, not KEYS: it never blocks the server. */
export const scanStreams = async (redis: Redis, pattern: string): Promise<Array<string>> => {
  const found = new Set<string>()
  let cursor = "0"
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 500, "TYPE", "stream")
    cursor = next
    for (const k of keys) found.add(k)
  } while (cursor !== "0")
  return [...found].sort()
}

export const discoverStreams = async (redis: Redis, prefix: string) =>
  (await scanStreams(redis, `${prefix}:*:events`)).filter((s) => !s.endsWith(":dlq"))

/** What an entry's payload says it is. Lenient: a payload that no longer parses may still name its id. */
export interface Peek {
  readonly id: string | undefined
  readonly type: string | undefined
  readonly aggregate: string | undefined
  readonly sequence: number | undefined
}

export const peekEnvelope = (bytes: string | undefined): Peek => {
  const none = { id: undefined, type: undefined, aggregate: undefined, sequence: undefined }
  if (bytes === undefined) return none
  try {
    const j = JSON.parse(bytes) as Record<string, unknown>
    const agg = j.aggregate as { type?: unknown; id?: unknown } | undefined
    return {
      id: typeof j.id === "string" ? j.id : undefined,
      type: typeof j.type === "string" ? j.type : undefined,
      aggregate: agg && typeof agg.type === "string" ? `${agg.type}/${String(agg.id)}` : undefined,
      sequence: typeof j.sequence === "number" ? j.sequence : undefined
    }
  } catch {
    // the envelope is serialised id-first, so a corrupted payload usually still names its event
    const m = /"id"\s*:\s*"([^"]+)"/.exec(bytes)
    return { ...none, id: m?.[1] }
  }
}

// ------------------------------------------------------------------ tail

export interface TailRow {
  readonly stream: string
  readonly entryId: string
  readonly type: string | undefined
  readonly aggregate: string | undefined
  readonly sequence: number | undefined
  readonly signature: Verdict | "not_checked"
}

export const tailRow = (verifier: Verifier, stream: string, [entryId, raw]: Entry): TailRow => {
  const f = fieldsOf(raw)
  const p = peekEnvelope(f.e)
  const signature = verifier.enabled ? verifier.verify(stream, f.e ?? "", f.k, f.s) : "not_checked"
  return { stream, entryId, type: p.type, aggregate: p.aggregate, sequence: p.sequence, signature }
}

const tailColumns: ReadonlyArray<Column<TailRow>> = [
  { header: "STREAM", value: (r) => r.stream },
  { header: "ENTRY", value: (r) => r.entryId },
  { header: "TYPE", value: (r) => r.type },
  { header: "AGGREGATE", value: (r) => r.aggregate },
  { header: "SEQ", value: (r) => r.sequence },
  { header: "SIGNATURE", value: (r) => r.signature }
]

export interface StreamDeps {
  readonly redis: Redis
  readonly verifier: Verifier
  readonly prefix: string
  readonly out: Out
}

export interface TailOptions {
  readonly streams: ReadonlyArray<string>
  readonly count: number
  readonly json: boolean
  /** Keep printing new entries until this signal aborts. */
  readonly follow?: AbortSignal | undefined
}

const byEntryId = (a: TailRow, b: TailRow) => compareIds(a.entryId, b.entryId) || a.stream.localeCompare(b.stream)

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms)
    signal.addEventListener("abort", () => { clearTimeout(t); resolve() }, { once: true })
  })

export const tailEvents = async (deps: StreamDeps, opts: TailOptions): Promise<void> => {
  if (!Number.isInteger(opts.count) || opts.count < 1) throw new UsageError("--count must be a positive integer")
  const discover = opts.streams.length === 0
  let streams = discover ? await discoverStreams(deps.redis, deps.prefix) : [...opts.streams]
  const rows: Array<TailRow> = []
  const last = new Map<string, string>()
  for (const s of streams) {
    const entries = ((await deps.redis.xrevrange(s, "+", "-", "COUNT", opts.count)) as Array<Entry>).reverse()
    for (const e of entries) rows.push(tailRow(deps.verifier, s, e))
    last.set(s, entries.at(-1)?.[0] ?? "0-0")
  }
  rows.sort(byEntryId)
  const table = makeTable(tailColumns)
  const print = (batch: ReadonlyArray<TailRow>) => {
    if (opts.json) for (const r of batch) deps.out(JSON.stringify(r))
    else for (const l of table(batch)) deps.out(l)
  }
  const signal = opts.follow
  if (signal === undefined) {
    if (rows.length === 0 && !opts.json) deps.out(streams.length === 0 ? `no streams match ${deps.prefix}:*:events` : "no entries")
    return print(rows)
  }
  print(rows)
  // XREAD BLOCK holds its connection, and disconnecting it is how an abort ends the wait
  const reader = deps.redis.duplicate()
  reader.on("error", () => {})
  const stop = () => reader.disconnect()
  signal.addEventListener("abort", stop, { once: true })
  let lastScan = Date.now()
  try {
    while (!signal.aborted) {
      if (discover && Date.now() - lastScan > 5000) {
        // streams of aggregate types first written after the tail started
        lastScan = Date.now()
        streams = await discoverStreams(deps.redis, deps.prefix)
        for (const s of streams) if (!last.has(s)) last.set(s, "0-0")
      }
      if (streams.length === 0) {
        await sleep(1000, signal)
        continue
      }
      const reply = (await reader
        .xread("COUNT", 100, "BLOCK", 1000, "STREAMS", ...streams, ...streams.map((s) => last.get(s) ?? "0-0"))
        .catch((e: unknown) => {
          if (signal.aborted) return null
          throw e
        })) as Array<[string, Array<Entry>]> | null
      const batch: Array<TailRow> = []
      for (const [s, entries] of reply ?? []) {
        for (const e of entries) batch.push(tailRow(deps.verifier, s, e))
        if (entries.length > 0) last.set(s, entries.at(-1)![0])
      }
      print(batch.sort(byEntryId))
    }
  } finally {
    signal.removeEventListener("abort", stop)
    reader.disconnect()
  }
}

// ------------------------------------------------------------------ replay

export type ReplayStatus = "valid" | "invalid" | "unsigned" | "unknown_key" | "not_published" | "not_checked"

export interface ReplayOptions {
  readonly zone?: string | undefined
  /** `TYPE` or `TYPE/ID`. */
  readonly aggregate?: string | undefined
  readonly types: ReadonlyArray<string>
  readonly from?: string | undefined
  readonly to?: string | undefined
  readonly json: boolean
}

export const parseAggregate = (raw: string): { readonly type: string; readonly id: string | undefined } => {
  const slash = raw.indexOf("/")
  const type = slash < 0 ? raw : raw.slice(0, slash)
  const id = slash < 0 ? undefined : raw.slice(slash + 1)
  if (type === "" || id === "") throw new UsageError(`--aggregate must be TYPE or TYPE/ID, got ${JSON.stringify(raw)}`)
  return { type, id }
}

export const parsePosition = (flag: string, raw: string | undefined): bigint | undefined => {
  if (raw === undefined) return undefined
  if (!/^\d{1,19}$/.test(raw)) throw new UsageError(`${flag} must be a log position (a non-negative integer), got ${JSON.stringify(raw)}`)
  return BigInt(raw)
}

interface Located {
  readonly stream: string
  readonly fields: Record<string, string>
}

/** Which precedence a finding has: any tampered copy condemns the event, whatever else is found. */
const RANK: Record<Exclude<ReplayStatus, "not_checked" | "not_published">, number> = { invalid: 3, unknown_key: 2, unsigned: 1, valid: 0 }

export const judge = (verifier: Verifier, expected: string, found: ReadonlyArray<Located>): ReplayStatus => {
  if (!verifier.enabled) return "not_checked"
  let worst: keyof typeof RANK | undefined
  for (const { stream, fields } of found) {
    const v = verifier.verify(stream, fields.e ?? "", fields.k, fields.s)
    // a valid MAC over other bytes than the log's means the log or the key holder lied
    const status = v === "valid" ? (fields.e === expected ? "valid" : "invalid") : v === "bad_signature" ? "invalid" : v
    if (worst === undefined || RANK[status] > RANK[worst]) worst = status
  }
  return worst ?? "not_published"
}

/** The entries of the streams scanned so far, by the envelope id they carry. Each stream is read once. */
const streamIndex = (redis: Redis) => {
  const scanned = new Set<string>()
  const byId = new Map<string, Array<Located>>()
  const ensure = async (stream: string) => {
    if (scanned.has(stream)) return
    scanned.add(stream)
    let start = "-"
    for (;;) {
      const page = (await redis.xrange(stream, start, "+", "COUNT", 1000)) as Array<Entry>
      for (const [, raw] of page) {
        const fields = fieldsOf(raw)
        const id = peekEnvelope(fields.e).id
        if (id !== undefined) byId.set(id, [...(byId.get(id) ?? []), { stream, fields }])
      }
      if (page.length < 1000) return
      start = `(${page.at(-1)![0]}`
    }
  }
  return { ensure, find: (id: string) => byId.get(id) ?? [] }
}

export interface ReplayRow {
  readonly row: EventRow
  readonly signature: ReplayStatus
}

const replayColumns: ReadonlyArray<Column<ReplayRow>> = [
  { header: "POSITION", value: (r) => r.row.position },
  { header: "OCCURRED_AT", value: (r) => r.row.occurred_at },
  { header: "TYPE", value: (r) => `${r.row.type} v${r.row.schema_version}` },
  { header: "AGGREGATE", value: (r) => `${r.row.aggregate_type}/${r.row.aggregate_id}` },
  { header: "SEQ", value: (r) => r.row.sequence },
  { header: "ACTOR", value: (r) => `${r.row.actor.kind}:${r.row.actor.id}` },
  { header: "SIGNATURE", value: (r) => r.signature }
]

export interface ReplayDeps {
  readonly db: Kysely<Tables>
  /** Needed only when the verifier holds keys. */
  readonly redis: Redis | undefined
  readonly verifier: Verifier
  readonly prefix: string
  readonly out: Out
  readonly batchSize?: number
}

/** Prints the matching events in log order; returns how many. */
export const replayEvents = async (deps: ReplayDeps, opts: ReplayOptions): Promise<number> => {
  const agg = opts.aggregate === undefined ? undefined : parseAggregate(opts.aggregate)
  const from = parsePosition("--from", opts.from)
  const to = parsePosition("--to", opts.to)
  if (from !== undefined && to !== undefined && from > to) throw new UsageError("--from must not be after --to")
  const checking = deps.verifier.enabled
  if (checking && deps.redis === undefined) throw new Error("replay: a verifier needs a Redis client")
  const index = checking ? streamIndex(deps.redis!) : undefined
  const keys = makeKeys(deps.prefix)
  const table = makeTable(replayColumns)
  const filter = { zoneId: opts.zone, aggregateType: agg?.type, aggregateId: agg?.id, types: opts.types }
  let cursor: LogCursor = LOG_START
  let printed = 0
  for (;;) {
    // a one-shot listing: everything committed now, not only what is below the horizon
    const page = await readLog(deps.db, cursor, deps.batchSize ?? 500, { ...filter, horizon: false })
    if (page.length === 0) break
    cursor = cursorOf(page.at(-1)!)
    // commit order is not position order, so a position range cannot end the scan early
    const rows = page.filter((r) => (from === undefined || BigInt(r.position) >= from) && (to === undefined || BigInt(r.position) <= to))
    const streamsOf = new Map<string, Set<string>>()
    if (index !== undefined && rows.length > 0) {
      const { rows: published } = await sql<{ position: string; stream: string }>`
        select event_position::text as position, stream from outbox
        where event_position = any(${rows.map((r) => r.position)}::bigint[])`.execute(deps.db)
      for (const p of published) streamsOf.set(p.position, (streamsOf.get(p.position) ?? new Set()).add(p.stream))
      for (const r of rows) {
        // sent outbox rows are pruned after a day; the aggregate type's default stream still holds the entry
        if (!streamsOf.has(r.position)) {
          try {
            streamsOf.set(r.position, new Set([keys.stream(r.aggregate_type)]))
          } catch {
            // an aggregate type that is not a valid key part has no default stream
          }
        }
      }
      for (const s of new Set([...streamsOf.values()].flatMap((x) => [...x]))) await index.ensure(s)
    }
    const judged = rows.map((row): ReplayRow => {
      const own = streamsOf.get(row.position) ?? new Set<string>()
      const found = index?.find(row.id).filter((l) => own.has(l.stream)) ?? []
      return { row, signature: judge(deps.verifier, JSON.stringify(toEnvelope(row)), found) }
    })
    if (opts.json) for (const r of judged) deps.out(JSON.stringify({ ...toEnvelope(r.row), signature: r.signature }))
    else for (const l of table(judged)) deps.out(l)
    printed += judged.length
  }
  if (printed === 0 && !opts.json) deps.out("no events match")
  return printed
}
