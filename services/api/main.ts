// The api service: configuration, connections, migrations, its producer (outbox relay),
// /health, /ready and /metrics. Its domain routes arrive with their issues.
import { Producer } from "../../core/producer.ts"
import { runService } from "../../core/service.ts"
import { EventRegistry } from "../../schemas/registry.ts"
import { apiSpec } from "./config.ts"

/** Its events arrive with the api issue; the relay already runs so that the outbox is served. */
const apiProducer = { name: "api", registry: new EventRegistry(), streams: () => () => [] }

if (import.meta.main) runService({ name: "api", spec: apiSpec, producer: Producer.layer(apiSpec, apiProducer) })
