// The api service: the control plane's routes behind ADMIN_TOKEN, its producer (commands,
// outbox relay under a fenced lease), /health, /ready and /metrics.
import { Producer } from "../../core/producer.ts"
import { runService } from "../../core/service.ts"
import { apiProducer } from "./commands.ts"
import { apiSpec } from "./config.ts"
import { apiErrors, ApiRoutes } from "./http.ts"

if (import.meta.main) {
  runService({ name: "api", spec: apiSpec, producer: Producer.layer(apiSpec, apiProducer), routes: ApiRoutes, mapError: apiErrors })
}
