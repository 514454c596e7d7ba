// `caracal dlq list|show|requeue`: the dead-letter streams beside each event stream. A
// dead letter carries the original entry's field/value list as JSON; re-queueing adds
// those fields back to the original stream as a new entry (above every group's last
// delivered id, so the groups read it again) and removes the dead letter, atomically.
import type { Redis } from "ioredis"
import { type Entry, fieldsOf, peekEnvelope, scanStreams } from "./events.ts"
import { type Column, type Out, printRows, UsageError } from "./output.ts"

export interface DeadLetter {
  readonly dlq: string
  readonly entryId: string
  readonly reason: string | undefined
  readonly stream: string | undefined
  readonly id: string | undefined
  readonly group: string | undefined
  readonly consumer: string | undefined
  readonly at: string | undefined
  /** Deliveries before it was parked (absent in dead letters written before the count was kept). */
  readonly deliveries: string | undefined
  /** The original entry's field/value list; undefined when the dead letter's copy is unreadable. */
  readonly fields: ReadonlyArray<string> | undefined
}

export const parseDeadLetter = (dlq: string, [entryId, raw]: Entry): DeadLetter => {
  const f = fieldsOf(raw)
  let fields: ReadonlyArray<string> | undefined
  try {
    const parsed: unknown = JSON.parse(f.fields ?? "")
    if (Array.isArray(parsed) && parsed.every((x) => typeof x === "string")) fields = parsed
  } catch {
    fields = undefined
  }
  return { dlq, entryId, reason: f.reason, stream: f.stream, id: f.id, group: f.group, consumer: f.consumer, at: f.at, deliveries: f.deliveries, fields }
}

/** `--stream` may name the event stream or its dead-letter stream; by default, every one under the prefix. */
export const dlqStreams = async (redis: Redis, prefix: string, stream: string | undefined) =>
  stream === undefined ? scanStreams(redis, `${prefix}:*:dlq`) : [stream.endsWith(":dlq") ? stream : `${stream}:dlq`]

export interface DlqDeps {
  readonly redis: Redis
  readonly prefix: string
  readonly out: Out
}

export const listDeadLetters = async (redis: Redis, prefix: string, stream?: string): Promise<ReadonlyArray<DeadLetter>> => {
  const out: Array<DeadLetter> = []
  for (const dlq of await dlqStreams(redis, prefix, stream)) {
    for (const e of (await redis.xrange(dlq, "-", "+")) as Array<Entry>) out.push(parseDeadLetter(dlq, e))
  }
  return out
}

const typeOf = (d: DeadLetter) => (d.fields === undefined ? undefined : peekEnvelope(fieldsOf(d.fields).e).type)

const columns: ReadonlyArray<Column<DeadLetter>> = [
  { header: "DLQ", value: (d) => d.dlq },
  { header: "ENTRY", value: (d) => d.entryId },
  { header: "REASON", value: (d) => d.reason },
  { header: "ORIGINAL_ID", value: (d) => d.id },
  { header: "TYPE", value: typeOf },
  { header: "GROUP", value: (d) => d.group },
  { header: "CONSUMER", value: (d) => d.consumer },
  { header: "DELIVERIES", value: (d) => d.deliveries },
  { header: "AT", value: (d) => d.at }
]

const asJson = (d: DeadLetter) => {
  const fields = d.fields === undefined ? undefined : fieldsOf(d.fields)
  let envelope: unknown = null
  try {
    envelope = fields?.e === undefined ? null : JSON.parse(fields.e)
  } catch {
    envelope = null
  }
  return { ...d, fields: fields ?? null, envelope }
}

export const printDeadLetters = async (deps: DlqDeps, opts: { readonly stream?: string | undefined; readonly json: boolean }) =>
  printRows(deps.out, await listDeadLetters(deps.redis, deps.prefix, opts.stream), {
    json: opts.json,
    columns,
    toJson: (d) => ({ ...d, type: typeOf(d) ?? null, fields: undefined }),
    empty: "no dead letters"
  })

/** The one dead letter with this entry id, in `--stream`'s DLQ or any under the prefix. */
export const findDeadLetter = async (redis: Redis, prefix: string, entryId: string, stream?: string): Promise<DeadLetter> => {
  if (!/^\d+-\d+$/.test(entryId)) throw new UsageError(`not a stream entry id: ${JSON.stringify(entryId)} (expected MS-SEQ, e.g. 1764400000000-0)`)
  const dlqs = await dlqStreams(redis, prefix, stream)
  const found: Array<DeadLetter> = []
  for (const dlq of dlqs) {
    for (const e of (await redis.xrange(dlq, entryId, entryId)) as Array<Entry>) found.push(parseDeadLetter(dlq, e))
  }
  if (found.length === 0) {
    const where = dlqs.length === 0 ? `no dead-letter streams match ${prefix}:*:dlq` : `searched ${dlqs.join(", ")}`
    throw new UsageError(`no dead letter ${entryId} (${where})`)
  }
  if (found.length > 1) throw new UsageError(`${entryId} is in several dead-letter streams (${found.map((d) => d.dlq).join(", ")}); choose one with --stream`)
  return found[0]!
}

const indent = (text: string, by: string) => text.split("\n").map((l, i) => (i === 0 ? l : by + l)).join("\n")

export const showDeadLetter = async (deps: DlqDeps, entryId: string, opts: { readonly stream?: string | undefined; readonly json: boolean }) => {
  const d = await findDeadLetter(deps.redis, deps.prefix, entryId, opts.stream)
  if (opts.json) {
    deps.out(JSON.stringify(asJson(d)))
    return
  }
  const head: Array<[string, string | undefined]> = [
    ["dlq", d.dlq], ["entry", d.entryId], ["reason", d.reason], ["stream", d.stream], ["original id", d.id],
    ["group", d.group], ["consumer", d.consumer], ["at", d.at], ["deliveries", d.deliveries]
  ]
  for (const [k, v] of head) deps.out(`${k.padEnd(12)}${v ?? "-"}`)
  if (d.fields === undefined) {
    deps.out("fields      (unreadable)")
    return
  }
  deps.out("fields")
  const fields = fieldsOf(d.fields)
  const width = Math.max(...Object.keys(fields).map((k) => k.length)) + 2
  for (const [k, v] of Object.entries(fields)) {
    let shown = v
    if (k === "e") {
      try {
        shown = JSON.stringify(JSON.parse(v), null, 2)
      } catch {
        shown = `${v}  (not valid JSON)`
      }
    }
    deps.out(`  ${k.padEnd(width)}${indent(shown, " ".repeat(width + 2))}`)
  }
}

/** Moves a dead letter back onto its original stream; returns where it went. */
export const requeueDeadLetter = async (
  redis: Redis,
  prefix: string,
  entryId: string,
  stream?: string
): Promise<{ readonly stream: string; readonly entryId: string }> => {
  const d = await findDeadLetter(redis, prefix, entryId, stream)
  if (d.stream === undefined) throw new UsageError(`dead letter ${entryId} does not name its original stream`)
  if (d.fields === undefined || d.fields.length === 0 || d.fields.length % 2 !== 0) {
    throw new UsageError(`dead letter ${entryId} does not hold a readable copy of the original entry`)
  }
  // one transaction: a crash cannot leave the entry both re-queued and still dead-lettered
  const res = await redis.multi().xadd(d.stream, "*", ...d.fields).xdel(d.dlq, d.entryId).exec()
  const failed = res?.find(([e]) => e !== null)?.[0]
  if (res === null || failed) throw failed ?? new Error("re-queue transaction aborted")
  return { stream: d.stream, entryId: String(res[0]![1]) }
}

export const runRequeueDeadLetter = async (deps: DlqDeps, entryId: string, opts: { readonly stream?: string | undefined; readonly json: boolean }) => {
  const to = await requeueDeadLetter(deps.redis, deps.prefix, entryId, opts.stream)
  deps.out(opts.json ? JSON.stringify({ requeued: entryId, ...to }) : `re-queued ${entryId} to ${to.stream} as ${to.entryId}`)
}
