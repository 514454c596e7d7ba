// Appending audit records (schemas/audit-record.ts) to the audit stream at AUDIT_STREAM_URL,
// signed like every stream entry (STREAMS_HMAC_KEY: the same wire form as the relay's, so the
// audit service verifies them the same way). Not through an outbox: a decision is recorded
// before it is answered, and a failed write fails the request (503) — no unaudited authority.
import { Context, Effect, Layer, Redacted, Schema } from "effect"
import { Redis } from "ioredis"
import { v7 as uuidv7 } from "uuid"
import { type AuditRecord, AuditRecord as AuditRecordSchema } from "../schemas/audit-record.ts"
import { ServiceConfig } from "./config/load.ts"
import { sendReleasing } from "./redis/command.ts"
import { type Keys, makeKeys } from "./redis/keys.ts"
import { sign, type SigningKey, signingKey } from "./signing.ts"

export class AuditUnavailable extends Schema.TaggedError<AuditUnavailable>()("AuditUnavailable", { cause: Schema.Defect() }) {
  override get message() {
    return "AUDIT_STREAM_URL: the audit stream is unreachable"
  }
}

/** How long an append may take before the request is refused. */
const APPEND_TIMEOUT_MS = 2000

export interface AuditLogShape {
  readonly stream: string
  /** Appends one record (id and occurred_at filled in when absent); fails with AuditUnavailable. */
  readonly append: (record: Omit<AuditRecord, "id" | "occurred_at"> & Partial<Pick<AuditRecord, "id" | "occurred_at">>) =>
    Effect.Effect<AuditRecord, AuditUnavailable>
  /** The same as a promise, for a hot path written as plain async code; rejects with AuditUnavailable. */
  readonly appendNow: (record: Omit<AuditRecord, "id" | "occurred_at"> & Partial<Pick<AuditRecord, "id" | "occurred_at">>) =>
    Promise<AuditRecord>
  readonly ping: Effect.Effect<void, AuditUnavailable>
  /**
   * A record as `append` would put it on the stream — its fields (the exact bytes, and their
   * signature when there is a key) — for a writer that adds it within a script of its own.
   */
  readonly entry: (record: AuditRecord) => ReadonlyArray<string>
}

const encode = Schema.encodeSync(AuditRecordSchema)

/** The stream fields of a record: its bytes, signed like every stream entry. */
const fieldsOf = (record: AuditRecord, stream: string, signer: SigningKey | undefined): Array<string> => {
  const bytes = JSON.stringify(encode(record))
  return signer ? ["e", bytes, "k", signer.id, "s", sign(signer, stream, bytes)] : ["e", bytes]
}

/** A record with its id (a fresh UUIDv7) and occurred_at (now) filled in when absent. */
export const completeRecord = (partial: Omit<AuditRecord, "id" | "occurred_at"> & Partial<Pick<AuditRecord, "id" | "occurred_at">>): AuditRecord => ({
  ...partial,
  id: partial.id ?? uuidv7(),
  occurred_at: partial.occurred_at ?? new Date().toISOString()
})

export const makeAuditLog = (redis: Redis, keys: Keys, signer: SigningKey | undefined): AuditLogShape => {
  const stream = keys.stream("audit")
  // Plain async code with one timer, not an effect: services append one record per governed
  // request, where running an effect with a timeout costs more than building the record.
  const appendNow: AuditLogShape["appendNow"] = async (partial) => {
    const record = completeRecord(partial)
    const fields = fieldsOf(record, stream, signer)
    let timer: ReturnType<typeof setTimeout> | undefined
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AuditUnavailable({ cause: "timeout" })), APPEND_TIMEOUT_MS)
    })
    try {
      // the record's fields are released once Redis has answered (redis/command.ts)
      const written = sendReleasing<string>(redis, "xadd", [stream, "*", ...fields]).catch((cause: unknown) => {
        throw new AuditUnavailable({ cause })
      })
      await Promise.race([written, timedOut])
      return record
    } finally {
      clearTimeout(timer)
    }
  }
  return {
    stream,
    appendNow,
    append: (partial) =>
      Effect.tryPromise({
        try: () => appendNow(partial),
        catch: (e) => e instanceof AuditUnavailable ? e : new AuditUnavailable({ cause: e })
      }),
    ping: Effect.asVoid(Effect.tryPromise({ try: () => redis.ping(), catch: (cause) => new AuditUnavailable({ cause }) })),
    entry: (record) => fieldsOf(record, stream, signer)
  }
}

export class AuditLog extends Context.Service<AuditLog, AuditLogShape>()("caracal/core/AuditLog") {
  /** A connection of its own to AUDIT_STREAM_URL (db0), closed with the service. */
  static readonly layer = (opts: { readonly url: string; readonly password?: string | undefined; readonly keys: Keys; readonly signer: SigningKey | undefined }) =>
    Layer.effect(AuditLog, Effect.gen(function*() {
      const redis = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const r = new Redis(opts.url, {
              lazyConnect: true,
              maxRetriesPerRequest: 1,
              // commands fail fast while the audit Redis is away: the request fails closed
              enableOfflineQueue: false,
              retryStrategy: (times) => Math.min(times * 100, 2000),
              ...(opts.password === undefined ? {} : { password: opts.password })
            })
            r.on("error", () => {})
            await r.connect()
            return r
          },
          catch: (cause) => new AuditUnavailable({ cause })
        }),
        (r) => Effect.promise(() => r.quit().catch(() => r.disconnect()))
      )
      return makeAuditLog(redis, opts.keys, opts.signer)
    }))
}

/** The variables a service that writes audit records has (AUDIT_STREAM_URL defaults to REDIS_URL). */
interface AuditVars {
  readonly AUDIT_STREAM_URL: Redacted.Redacted<string>
  readonly REDIS_PASSWORD?: Redacted.Redacted<string> | undefined
  readonly REDIS_KEY_PREFIX: string
  readonly STREAMS_HMAC_KEY?: Redacted.Redacted<Buffer> | undefined
}

/** The audit stream at the service's AUDIT_STREAM_URL, signed with its STREAMS_HMAC_KEY. */
export const auditLogFromConfig = Layer.unwrap(Effect.gen(function*() {
  const vars = (yield* ServiceConfig).vars as unknown as AuditVars
  return AuditLog.layer({
    url: Redacted.value(vars.AUDIT_STREAM_URL),
    password: vars.REDIS_PASSWORD === undefined ? undefined : Redacted.value(vars.REDIS_PASSWORD),
    keys: makeKeys(vars.REDIS_KEY_PREFIX),
    signer: vars.STREAMS_HMAC_KEY === undefined ? undefined : signingKey(Redacted.value(vars.STREAMS_HMAC_KEY))
  })
}))
