// The audit service: consumes every stream into per-zone verifiable chains (ingest-layer.ts),
// signs checkpoints, applies retention and verifies itself (maintenance.ts), exports closed
// windows to S3 as Parquet when AUDIT_EXPORT_S3_BUCKET is set (export-layer.ts); /ready
// reflects the consumer's health (health.ts).
import { Effect, Layer } from "effect"
import { runService } from "../../core/service.ts"
import { auditSpec } from "./config.ts"
import { health } from "./health.ts"
import { IngestLive } from "./ingest-layer.ts"
import { MaintenanceLive } from "./maintenance.ts"
import { ExportLive } from "./export-layer.ts"

class ConsumerUnhealthy extends Error {}

if (import.meta.main) {
  runService({
    name: "audit",
    spec: auditSpec,
    background: Layer.mergeAll(IngestLive, MaintenanceLive, ExportLive),
    readyChecksFrom: (vars) => [{
      name: "consumer",
      check: Effect.suspend(() => {
        if (!health.running) return Effect.fail(new ConsumerUnhealthy("the consumer is not running"))
        if (health.oldestPendingMs > vars.AUDIT_READY_MAX_PENDING_S * 1000) {
          return Effect.fail(new ConsumerUnhealthy(`the oldest pending entry is ${Math.round(health.oldestPendingMs / 1000)} s old`))
        }
        return Effect.void
      })
    }]
  })
}
