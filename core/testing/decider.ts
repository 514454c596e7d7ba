// given(events).when(command).then(events): decider tests with no I/O.
import { Cause, Effect, Exit } from "effect"
import type { Aggregate, CommandMeta, DomainEvent } from "../command.ts"

export const testMeta = (now = "2026-01-01T00:00:00.000Z"): CommandMeta => ({
  zoneId: "z1",
  actor: { kind: "test", id: "t" },
  now: new Date(now),
  correlationId: "c"
})

export const given = <S, C, E extends DomainEvent, Err>(aggregate: Aggregate<S, C, E, Err>, history: ReadonlyArray<NoInfer<E>> = []) => ({
  when: (command: C, meta: CommandMeta = testMeta()) => {
    const state = history.reduce(aggregate.evolve, aggregate.initialState)
    const exit = Effect.runSyncExit(aggregate.decide(command, state, meta))
    return {
      /** The events decided (throws with the error if the command was rejected). */
      events: (): ReadonlyArray<E> => {
        if (Exit.isSuccess(exit)) return exit.value
        throw new Error(`rejected: ${JSON.stringify(Cause.squash(exit.cause))}`)
      },
      /** The rejection (throws if the command was accepted). */
      error: (): Err => {
        if (Exit.isFailure(exit)) {
          const e = Cause.findErrorOption(exit.cause)
          if (e._tag === "Some") return e.value
        }
        throw new Error(`accepted: ${JSON.stringify(Exit.isSuccess(exit) ? exit.value : null)}`)
      },
      state: () => (Exit.isSuccess(exit) ? exit.value.reduce(aggregate.evolve, state) : state)
    }
  }
})
