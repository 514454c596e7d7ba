// Compile-time checks (npm run typecheck): a service produces only if its variable spec has
// the producer's variables. Each @ts-expect-error fails the typecheck if the line compiles.
import { Producer } from "../../core/producer.ts"
import { EventRegistry } from "../../schemas/registry.ts"
import { coordinatorSpec } from "../../services/coordinator/config.ts"
import { gatewaySpec } from "../../services/gateway/config.ts"

const definition = { name: "typecheck", registry: new EventRegistry(), streams: () => () => [] }

// the coordinator has OUTBOX_*, STREAMS_HMAC_KEY and the retentions: it may produce
export const coordinatorProduces = Producer.layer(coordinatorSpec, definition)

// @ts-expect-error the gateway's spec lacks the producer variables (OUTBOX_POLL_MS, …)
export const gatewayCannotProduce = Producer.layer(gatewaySpec, definition)

const { OUTBOX_POLL_MS: _dropped, ...withoutPoll } = coordinatorSpec
// @ts-expect-error one producer variable missing is enough to refuse it
export const missingOneVariable = Producer.layer(withoutPoll, definition)
