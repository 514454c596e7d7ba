// The sts service: configuration, connections, migrations, /health, /ready, /metrics.
// Its domain routes arrive with their issues.
import { runService } from "../../core/service.ts"

if (import.meta.main) runService({ name: "sts" })
