// The coordinator service: agent sessions and delegations over HTTP, its producer (commands,
// outbox relay), the sweep that expires sessions and edges and finishes cascades (also
// those a crashed replica left half-done), and its consumer of the api's zones and
// applications (api-status.ts), which spawns are checked against.
import { Effect, Layer, Schedule } from "effect"
import { Consumer } from "../../core/consumer-layer.ts"
import { Producer } from "../../core/producer.ts"
import { runService } from "../../core/service.ts"
import { principalsConsumer } from "./api-status.ts"
import { coordinatorProducer } from "./commands.ts"
import { coordinatorSpec } from "./config.ts"
import { Coordinator, CoordinatorRoutes, coordinatorErrors } from "./http.ts"

/** Often enough that a 1-second TTL ends within about a second; each run is a few indexed queries. */
const SWEEP_EVERY = "500 millis"

const SweepLive = Layer.effectDiscard(Effect.gen(function*() {
  const coordinator = yield* Coordinator
  yield* coordinator.sweep().pipe(
    Effect.catchCause((cause) => Effect.logWarning("sweep failed; retrying").pipe(Effect.annotateLogs({ cause: String(cause) }))),
    Effect.repeat(Schedule.spaced(SWEEP_EVERY)),
    Effect.forkScoped
  )
}))

if (import.meta.main) {
  runService({
    name: "coordinator",
    spec: coordinatorSpec,
    producer: Producer.layer(coordinatorSpec, coordinatorProducer),
    routes: CoordinatorRoutes.pipe(Layer.provide(Coordinator.layer)),
    background: Layer.mergeAll(SweepLive.pipe(Layer.provide(Coordinator.layer)), Consumer.layer(coordinatorSpec, principalsConsumer)),
    mapError: coordinatorErrors
  })
}
