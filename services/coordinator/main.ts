// The coordinator service: agent sessions and delegations over HTTP, its outbox relay,
// and the sweep that expires sessions and edges and finishes cascades (also those a
// crashed replica left half-done).
import { Effect, Layer, Schedule } from "effect"
import { RelayLive } from "../../core/backbone.ts"
import { runService } from "../../core/service.ts"
import { PRODUCER } from "./commands.ts"
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
    routes: CoordinatorRoutes.pipe(Layer.provide(Coordinator.layer)),
    background: Layer.mergeAll(RelayLive(PRODUCER), SweepLive.pipe(Layer.provide(Coordinator.layer))),
    mapError: coordinatorErrors
  })
}
