// The api service: configuration, connections, migrations, its outbox relay, /health,
// /ready and /metrics. Its domain routes arrive with their issues.
import { RelayLive } from "../../core/backbone.ts"
import { runService } from "../../core/service.ts"

if (import.meta.main) runService({ name: "api", background: RelayLive("api") })
