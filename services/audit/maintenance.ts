// The audit's periodic work besides ingest: signed checkpoints of every chain that grew
// (AUDIT_CHECKPOINT_INTERVAL_S), partitions created ahead and retention applied (hourly),
// and a continuous self-verification of what was appended since the last round, whose
// results /metrics exposes (a failure is logged as an error naming the first bad record).
import { Effect, Layer, Metric, Schedule } from "effect"
import { loadSpec, ServiceConfig } from "../../core/config/load.ts"
import { Database } from "../../core/db/database.ts"
import { publicKeyFromHex } from "./checkpoint.ts"
import { auditSpec } from "./config.ts"
import { checkpointChains } from "./ingest.ts"
import { auditKeys } from "./keys.ts"
import { ensureAhead } from "./partitions.ts"
import { applyRetention } from "./retention.ts"
import { chainPages, listChains, loadAnchor, loadCheckpoints } from "./store.ts"
import { type Anchor, verifyChain } from "./verify.ts"

const verifications = Metric.counter("caracal_audit_verifications_total", { description: "Self-verification rounds per result", incremental: true })
const verifiedRecords = Metric.counter("caracal_audit_verified_records_total", { description: "Records re-verified by the service", incremental: true })
const checkpoints = Metric.counter("caracal_audit_checkpoints_total", { description: "Periodic checkpoints signed", incremental: true })
const droppedPartitions = Metric.counter("caracal_audit_partitions_dropped_total", { description: "Partitions dropped by retention", incremental: true })

const quietly = (what: string) => <A, E, R>(self: Effect.Effect<A, E, R>) =>
  self.pipe(Effect.catchCause((cause) => Effect.logWarning(`audit: ${what} failed`).pipe(Effect.annotateLogs({ cause: String(cause) }))))

export const MaintenanceLive = Layer.effectDiscard(Effect.gen(function*() {
  const vars = yield* loadSpec(auditSpec)
  const config = yield* ServiceConfig
  const keys = yield* auditKeys(vars, config.mode)
  const { db } = yield* Database
  yield* Effect.logInfo("audit: checkpoint key").pipe(Effect.annotateLogs({ key_id: keys.signer.keyId, public_key: keys.signer.publicKeyHex }))

  yield* Effect.promise(() => checkpointChains(db, keys.signer, new Date())).pipe(
    Effect.tap((n) => (n > 0 ? Metric.update(checkpoints, n) : Effect.void)),
    quietly("checkpoint"),
    Effect.repeat(Schedule.spaced(`${vars.AUDIT_CHECKPOINT_INTERVAL_S} seconds`)),
    Effect.forkScoped
  )

  yield* Effect.promise(async () => {
    await ensureAhead(db, new Date())
    return applyRetention(db, new Date(), vars.AUDIT_RETENTION_DAYS)
  }).pipe(
    Effect.tap((r) => Effect.all([
      r.dropped.length > 0 ? Metric.update(droppedPartitions, r.dropped.length) : Effect.void,
      r.held ? Effect.logInfo("audit: retention holds a partition").pipe(Effect.annotateLogs(r.held)) : Effect.void
    ])),
    quietly("retention"),
    Effect.repeat(Schedule.spaced("1 hour")),
    Effect.forkScoped
  )

  // where each chain's verification stopped last round: the next one continues from there
  const verifiedUpTo = new Map<string, Anchor>()
  const publicKey = publicKeyFromHex(keys.signer.publicKeyHex)
  const verifyRound = Effect.fn("audit.selfVerify")(function*() {
    for (const chain of yield* Effect.promise(() => listChains(db))) {
      const report = yield* Effect.promise(async () => {
        const kept = verifiedUpTo.get(chain)
        const dropped = await loadAnchor(db, chain)
        // retention may have dropped past where the last round stopped
        const from = kept === undefined || (dropped !== undefined && dropped.firstSeq > kept.firstSeq) ? dropped : kept
        return verifyChain({
          chain,
          pages: chainPages(db, chain, 5000, from?.firstSeq ?? 1),
          checkpoints: await loadCheckpoints(db, chain),
          anchor: from,
          hmacKey: keys.hmacKey,
          publicKey
        })
      })
      yield* Metric.update(verifiedRecords, report.records)
      yield* Metric.update(Metric.withAttributes(verifications, { result: report.ok ? "ok" : "failed" }), 1)
      if (report.ok) verifiedUpTo.set(chain, report.end)
      else {
        yield* Effect.logError("audit: chain verification failed").pipe(Effect.annotateLogs({ chain, ...report.firstBad }))
        verifiedUpTo.delete(chain)
      }
    }
  })
  yield* verifyRound().pipe(quietly("self-verification"), Effect.repeat(Schedule.spaced("60 seconds")), Effect.forkScoped)
}))
