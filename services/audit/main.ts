// The audit service: configuration, connections, migrations, /health, /ready, /metrics.
// Its domain routes arrive with their issues.
import { runService } from "../../core/service.ts"
import { auditSpec } from "./config.ts"

if (import.meta.main) runService({ name: "audit", spec: auditSpec })
