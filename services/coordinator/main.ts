// The coordinator service: agent sessions and delegations over HTTP, its producer (commands,
// outbox relay), and the sweep that expires sessions and edges and finishes cascades (also
// those a crashed replica left half-done).
import { Effect, Layer, Schedule } from "effect"
import { Producer } from "../../core/producer.ts"
import { runService } from "../../core/service.ts"
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
    background: SweepLive.pipe(Layer.provide(Coordinator.layer)),
    mapError: coordinatorErrors
  })
}
