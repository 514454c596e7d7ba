// The exporter as background work: with AUDIT_EXPORT_S3_BUCKET set, every replica tries
// each minute; the lease (export.ts) lets one of them export at a time.
import { Effect, Layer, Metric, Schedule } from "effect"
import { loadSpec, ServiceConfig } from "../../core/config/load.ts"
import { defaultConsumerName } from "../../core/consumer.ts"
import { Database } from "../../core/db/database.ts"
import { auditSpec } from "./config.ts"
import { runExport } from "./export.ts"
import { auditKeys } from "./keys.ts"
import { s3Client } from "./s3.ts"

const exported = Metric.counter("caracal_audit_export_windows_total", { description: "Windows written to S3 as Parquet", incremental: true })

export const ExportLive = Layer.effectDiscard(Effect.gen(function*() {
  const vars = yield* loadSpec(auditSpec)
  const bucket = vars.AUDIT_EXPORT_S3_BUCKET
  if (bucket === undefined) return
  const config = yield* ServiceConfig
  const keys = yield* auditKeys(vars, config.mode)
  const database = yield* Database
  const s3 = yield* Effect.acquireRelease(Effect.sync(() => s3Client(vars)), (c) => Effect.sync(() => c.destroy()))
  const holder = defaultConsumerName()
  yield* Effect.tryPromise(() =>
    runExport({
      database, s3, bucket, windowS: vars.AUDIT_EXPORT_WINDOW_S, signer: keys.signer, holder,
      graceS: Math.max(60, 3 * vars.AUDIT_CHECKPOINT_INTERVAL_S)
    }, new Date())
  ).pipe(
    Effect.tap((r) => {
      const n = r.windows.filter((w) => w.written).length
      return n > 0 ? Metric.update(exported, n) : Effect.void
    }),
    Effect.withSpan("audit.export"),
    Effect.catchCause((cause) => Effect.logWarning("audit: export round failed").pipe(Effect.annotateLogs({ cause: String(cause) }))),
    Effect.repeat(Schedule.spaced("60 seconds")),
    Effect.forkScoped
  )
}))
