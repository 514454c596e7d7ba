// A consumer-group member: reads a stream with XREADGROUP, verifies and decodes each
// entry, hands it to an idempotent handler and acknowledges it only after the handler's
// effect has committed. Entries a dead member left pending are claimed with XAUTOCLAIM
// once idle; poison (bad or missing signature, corrupt JSON, unknown version) and
// entries past the delivery limit go to the dead-letter stream with their reason and
// are acknowledged, so the group keeps flowing.
import type { Redis } from "ioredis"
import { hostname } from "node:os"
import { decodeEnvelope, type Envelope } from "../schemas/envelope.ts"
import type { EventRegistry } from "../schemas/registry.ts"
import type { Verdict, Verifier } from "./signing.ts"
import { asRecord } from "./trim.ts"

/**
 * An entry as a handler sees it: for domain streams the envelope with data upcast to the
 * latest version; for a stream of records (entries with no log row) the record as its decoder made it.
 */
export interface ReceivedEvent<T = Envelope> {
  readonly envelope: T
  readonly stream: string
  readonly entryId: string
  readonly signature: Verdict | "not_checked"
  /** The entry's field/value list as read (what a dead letter keeps of it). */
  readonly raw?: ReadonlyArray<string>
}

/** Turns an entry's verified JSON into what the handler gets, or names why it is poison. */
export type Decode<T> = (json: unknown) => { readonly ok: true; readonly value: T } | { readonly ok: false; readonly reason: string }

export interface ConsumerOptions<T = Envelope> {
  readonly redis: Redis
  readonly streams: ReadonlyArray<string>
  readonly group: string
  readonly consumer?: string
  /** Decodes envelopes (domain events), unless `decode` is given for another kind of entry. */
  readonly registry?: EventRegistry
  readonly decode?: Decode<T>
  /** When it holds keys, every entry must carry a valid signature. */
  readonly verifier?: Verifier | undefined
  readonly handle: (event: ReceivedEvent<T>) => Promise<void>
  /**
   * Optional: handles a whole read at once (one transaction for a projection). If it fails,
   * the entries are retried one by one through `handle`, so one bad entry cannot hold back
   * the others.
   */
  readonly handleBatch?: (events: ReadonlyArray<ReceivedEvent<T>>) => Promise<void>
  readonly deadLetterStream: (stream: string) => string
  readonly count?: number
  readonly blockMs?: number
  readonly claimIdleMs?: number
  readonly claimIntervalMs?: number
  /** A member of the group idle this long with nothing pending is a replica that is gone: removed. */
  readonly deadConsumerMs?: number
  /** Deliveries after which a failing entry is parked in the dead-letter stream. */
  readonly maxDeliveries?: number
  readonly onError?: (error: unknown, entryId: string) => void
  /** Called once an entry is in the dead-letter stream (e.g. to raise an alert); a failure here is only reported. */
  readonly onDeadLetter?: (letter: DeadLettered) => Promise<void>
}

export interface DeadLettered {
  readonly stream: string
  readonly id: string
  readonly reason: string
  readonly deliveries: number
  readonly fields: ReadonlyArray<string>
}

export const defaultConsumerName = () => `${hostname()}-${process.pid}`

type Entry = [id: string, fields: Array<string>]
type StreamReply = Array<[stream: string, entries: Array<Entry>]> | null

const fieldsOf = (raw: Array<string>) => {
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < raw.length; i += 2) out[raw[i]!] = raw[i + 1]!
  return out
}

export const ensureGroup = async (redis: Redis, stream: string, group: string) => {
  try {
    await redis.xgroup("CREATE", stream, group, "0", "MKSTREAM")
  } catch (e) {
    if (!(e instanceof Error) || !e.message.includes("BUSYGROUP")) throw e
  }
}

export type Classified<T = Envelope> =
  | { readonly ok: true; readonly event: ReceivedEvent<T> }
  | { readonly ok: false; readonly reason: string }

/** Decodes an envelope and upcasts its data to the latest version of its event. */
export const envelopeDecoder = (registry: EventRegistry): Decode<Envelope> => (json) => {
  const envelope = decodeEnvelope(json)
  if (envelope._tag === "Failure") return { ok: false, reason: "invalid_envelope" }
  const e = envelope.success
  const decoded = registry.decode(e.type, e.schemaVersion, e.data)
  if (decoded._tag === "Failure") return { ok: false, reason: decoded.failure.reason }
  return { ok: true, value: { ...e, schemaVersion: decoded.success.version, data: decoded.success.data } }
}

/** Verify, parse and decode one domain-event entry; pure apart from the verifier's key lookups. */
export const classify = (
  stream: string,
  entryId: string,
  raw: Array<string>,
  registry: EventRegistry,
  verifier: Verifier | undefined
): Classified => classifyWith(stream, entryId, raw, envelopeDecoder(registry), verifier)

/** Verify, parse and decode one entry with the given decoder. */
export const classifyWith = <T>(
  stream: string,
  entryId: string,
  raw: Array<string>,
  decode: Decode<T>,
  verifier: Verifier | undefined
): Classified<T> => {
  const f = fieldsOf(raw)
  if (f.e === undefined) return { ok: false, reason: "missing_payload" }
  let signature: ReceivedEvent["signature"] = "not_checked"
  if (verifier?.enabled) {
    signature = verifier.verify(stream, f.e, f.k, f.s)
    if (signature !== "valid") return { ok: false, reason: signature }
  }
  let json: unknown
  try {
    json = JSON.parse(f.e)
  } catch {
    return { ok: false, reason: "corrupt_json" }
  }
  const decoded = decode(json)
  if (!decoded.ok) return decoded
  return { ok: true, event: { envelope: decoded.value, stream, entryId, signature, raw } }
}

export interface Consumer {
  readonly run: () => Promise<void>
  readonly stop: () => void
  readonly name: string
  readonly stats: { handled: number; deadLettered: number; claimed: number }
}

export const makeConsumer = <T = Envelope>(opts: ConsumerOptions<T>): Consumer => {
  const decode = opts.decode ?? (envelopeDecoder(opts.registry!) as unknown as Decode<T>)
  const name = opts.consumer ?? defaultConsumerName()
  const count = opts.count ?? 100
  const blockMs = opts.blockMs ?? 1000
  const claimIdleMs = opts.claimIdleMs ?? 30_000
  const claimIntervalMs = opts.claimIntervalMs ?? Math.max(1000, Math.floor(claimIdleMs / 2))
  const maxDeliveries = opts.maxDeliveries ?? 5
  const stats = { handled: 0, deadLettered: 0, claimed: 0 }
  let stopped = false
  // XREADGROUP BLOCK holds its connection; a dedicated one keeps other commands flowing
  const reader = opts.redis.duplicate()
  reader.on("error", () => {})

  const deadLetter = async (stream: string, id: string, raw: Array<string>, reason: string, deliveries: number) => {
    await opts.redis.multi()
      .xadd(opts.deadLetterStream(stream), "*", "reason", reason, "stream", stream, "id", id, "group", opts.group,
        "consumer", name, "at", new Date().toISOString(), "deliveries", String(deliveries), "fields", JSON.stringify(raw))
      .xack(stream, opts.group, id)
      .exec()
    stats.deadLettered++
    if (opts.onDeadLetter) {
      await opts.onDeadLetter({ stream, id, reason, deliveries, fields: raw }).catch((e) => opts.onError?.(e, id))
    }
  }

  const process1 = async (stream: string, id: string, raw: Array<string> | null, deliveries: number) => {
    if (raw === null) {
      // trimmed away or deleted while pending: nothing left to apply
      await opts.redis.xack(stream, opts.group, id)
      return
    }
    const c = classifyWith(stream, id, raw, decode, opts.verifier)
    if (!c.ok) return deadLetter(stream, id, raw, c.reason, deliveries)
    try {
      await opts.handle(c.event)
      await opts.redis.xack(stream, opts.group, id)
      stats.handled++
    } catch (e) {
      opts.onError?.(e, id)
      if (deliveries >= maxDeliveries) {
        await deadLetter(stream, id, raw, `max_deliveries: ${e instanceof Error ? e.message : String(e)}`.slice(0, 500), deliveries)
      }
      // otherwise left pending: the claim loop redelivers it after claimIdleMs
    }
  }

  /** The last batch's acknowledgement, awaited before the next batch is handled (its failure is the loop's). */
  let acking: Promise<unknown> | undefined
  const acked = async () => {
    const pending = acking
    acking = undefined
    if (pending !== undefined) await pending
  }

  /** First deliveries in one call; poison is parked first, the rest handled and acknowledged together. */
  const processBatch = async (stream: string, entries: Array<Entry>): Promise<void> => {
    const good: Array<ReceivedEvent<T>> = []
    const raws = new Map<string, Array<string>>()
    const gone: Array<string> = [] // trimmed or deleted while pending: nothing to apply
    for (const [id, raw] of entries) {
      if (raw === null) {
        gone.push(id)
        continue
      }
      const c = classifyWith(stream, id, raw, decode, opts.verifier)
      if (c.ok) {
        good.push(c.event)
        raws.set(id, raw)
      } else await deadLetter(stream, id, raw, c.reason, 1)
    }
    try {
      if (good.length > 0) await opts.handleBatch!(good)
    } catch (e) {
      opts.onError?.(e, good[0]!.entryId)
      // one at a time instead, so that a single failing entry cannot hold back the others
      for (const g of good) await process1(stream, g.entryId, raws.get(g.entryId)!, 1)
      if (gone.length > 0) await opts.redis.xack(stream, opts.group, ...gone)
      return
    }
    const ack = [...good.map((g) => g.entryId), ...gone]
    stats.handled += good.length
    // acknowledged while the next read waits (a round trip less per batch): an acknowledgement
    // lost with a crash only redelivers what the checkpoints then skip
    if (ack.length > 0) {
      acking = opts.redis.xack(stream, opts.group, ...ack)
      acking.catch(() => undefined) // awaited by acked(); never an unhandled rejection meanwhile
    }
  }

  const deliveriesOf = async (stream: string, ids: ReadonlyArray<string>) => {
    const out = new Map<string, number>()
    if (ids.length === 0) return out
    const pending = (await opts.redis.xpending(stream, opts.group, ids[0]!, ids[ids.length - 1]!, ids.length * 2 + 10)) as Array<
      [string, string, number, number]
    >
    for (const [id, , , n] of pending) out.set(id, n)
    return out
  }

  const claimIdle = async () => {
    for (const stream of opts.streams) {
      let cursor = "0-0"
      do {
        const reply = (await opts.redis.xautoclaim(stream, opts.group, name, claimIdleMs, cursor, "COUNT", count)) as [
          string,
          Array<Entry | null>,
          Array<string>?
        ]
        cursor = reply[0]
        const entries = reply[1]
        const deleted = reply[2] ?? []
        for (const id of deleted) await opts.redis.xack(stream, opts.group, id)
        const live = entries.filter((e): e is Entry => e !== null)
        stats.claimed += live.length
        const counts = await deliveriesOf(stream, live.map((e) => e[0]))
        for (const [id, raw] of live) {
          const n = counts.get(id) ?? maxDeliveries
          // claimed past the limit: it has failed often enough, park it without another try
          if (n > maxDeliveries) await deadLetter(stream, id, raw, "max_deliveries", n)
          else await process1(stream, id, raw, n)
        }
      } while (cursor !== "0-0" && !stopped)
    }
  }

  const deadConsumerMs = opts.deadConsumerMs ?? 3_600_000
  /** Members of replicas that are gone: their pending entries were claimed above, so they hold nothing. */
  const removeDeadConsumers = async () => {
    for (const stream of opts.streams) {
      const members = ((await opts.redis.xinfo("CONSUMERS", stream, opts.group)) as Array<Array<unknown>>).map(asRecord)
      for (const m of members) {
        if (m.name !== name && Number(m.pending) === 0 && Number(m.idle) > deadConsumerMs) {
          await opts.redis.xgroup("DELCONSUMER", stream, opts.group, String(m.name))
        }
      }
    }
  }

  const run = async () => {
    // the groups are created inside the retry loop: Redis unreachable at that moment is retried
    // like any other failure (outside it, run() rejected and nobody awaited it until shutdown)
    let grouped = false
    let lastClaim = 0
    // entries this consumer name already holds (a restart under the same name) come first
    let ids = opts.streams.map(() => "0")
    while (!stopped) {
      try {
        if (!grouped) {
          for (const s of opts.streams) await ensureGroup(opts.redis, s, opts.group)
          grouped = true
        }
        if (Date.now() - lastClaim >= claimIntervalMs) {
          lastClaim = Date.now()
          await acked()
          await claimIdle()
          await removeDeadConsumers()
        }
        const read = reader.xreadgroup(
          "GROUP", opts.group, name, "COUNT", count, "BLOCK", blockMs, "STREAMS", ...opts.streams, ...ids
        ) as Promise<StreamReply>
        read.catch(() => undefined) // awaited below, after the acknowledgement in flight
        await acked()
        const reply = await read
        let ownPendingLeft = false
        for (const [stream, entries] of reply ?? []) {
          const replaying = ids[opts.streams.indexOf(stream)] !== ">"
          if (replaying && entries.length > 0) ownPendingLeft = true
          const counts = replaying ? await deliveriesOf(stream, entries.map((e) => e[0])) : undefined
          if (!replaying && opts.handleBatch && entries.length > 1) {
            await processBatch(stream, entries as Array<Entry>)
            continue
          }
          for (const [id, raw] of entries) await process1(stream, id, raw as Array<string> | null, counts?.get(id) ?? 1)
        }
        if (!ownPendingLeft) ids = opts.streams.map(() => ">")
      } catch (e) {
        if (stopped) break
        opts.onError?.(e, "")
        // a read answered while the failure surfaced is this member's pending: read it again first
        ids = opts.streams.map(() => "0")
        await new Promise((r) => setTimeout(r, 250))
      }
    }
    await acked().catch(() => undefined)
    reader.disconnect()
  }

  return {
    run,
    stop: () => {
      stopped = true
    },
    name,
    stats
  }
}
