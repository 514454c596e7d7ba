// The one decider behind every api aggregate (zone, application, resource, provider,
// credential, binding, policy, policy set, grant): a record that is created once, changed
// under optimistic concurrency (the ETag is the aggregate's version, its last sequence),
// and ended once (archived, revoked, deleted). What differs between aggregates — the
// record's fields and their rules — arrives in the command as data or as a pure function
// of the current record, so the decider stays pure and every rule sees the state the
// log proves, not a possibly stale read.
import { Data, Effect } from "effect"
import type { Aggregate } from "../../../core/command.ts"
import { type ApiAggregateType, apiAggregates } from "../events.ts"

export type Rec = Readonly<Record<string, unknown>>

export interface RecordState {
  readonly status: "none" | "active" | "ended"
  /** The number of events so far: the ETag. */
  readonly version: number
  readonly record: Rec | null
}

/** A refusal with its HTTP status and stable code (e.g. 412 precondition_failed). */
export class ApiRejected extends Data.TaggedError("ApiRejected")<{
  readonly status: number
  readonly code: string
  readonly description: string
}> {}

export const rejected = (status: number, code: string, description: string) => new ApiRejected({ status, code, description })

/** What a change makes of the record: the new record, and the event's data when it is more than the record. */
export interface Changed {
  readonly record: Rec
  readonly data?: unknown
}

export type RecordCommand =
  | { readonly _tag: "Create"; readonly record: Rec }
  | {
    readonly _tag: "Change"
    /** The event's type, e.g. ResourceUpdated, ApplicationSecretRotated. */
    readonly event: string
    /** From If-Match: refused with 412 unless the aggregate is still at this version. */
    readonly expectedVersion: number | undefined
    readonly change: (current: Rec) => Changed | ApiRejected
  }
  | { readonly _tag: "End"; readonly reason: string; readonly expectedVersion?: number | undefined }

export interface RecordEvent {
  readonly type: string
  readonly data: unknown
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)

/** Events whose data carries the record under `record` beside other fields. */
const WRAPPED = new Set(["PolicyVersionAdded"])

export const recordOf = (event: RecordEvent): Rec => (WRAPPED.has(event.type) ? (event.data as { record: Rec }).record : event.data as Rec)

export const recordAggregate = (type: ApiAggregateType): Aggregate<RecordState, RecordCommand, RecordEvent, ApiRejected> => {
  const { prefix, ended } = apiAggregates[type]
  const thing = type
  return {
    type,
    initialState: { status: "none", version: 0, record: null },
    decide: (command, state) =>
      Effect.suspend((): Effect.Effect<ReadonlyArray<RecordEvent>, ApiRejected> => {
        if (command._tag === "Create") {
          if (state.status !== "none") return Effect.fail(rejected(409, `${thing}_exists`, `this ${thing} already exists`))
          return Effect.succeed([{ type: `${prefix}Created`, data: command.record }])
        }
        if (state.status === "none") return Effect.fail(rejected(404, `${thing}_not_found`, `no such ${thing}`))
        if (command.expectedVersion !== undefined && command.expectedVersion !== state.version) {
          return Effect.fail(rejected(412, "precondition_failed", `If-Match does not match the ${thing}'s current ETag`))
        }
        if (command._tag === "End") return Effect.succeed(state.status === "ended" ? [] : [{ type: ended, data: { reason: command.reason } }])
        if (state.status === "ended") return Effect.fail(rejected(409, `${thing}_archived`, `this ${thing} is archived`))
        const changed = command.change(state.record!)
        if (changed instanceof ApiRejected) return Effect.fail(changed)
        // a change that changes nothing writes nothing (a repeated PATCH is not a new version)
        if (changed.data === undefined && same(changed.record, state.record)) return Effect.succeed([])
        return Effect.succeed([{ type: command.event, data: changed.data ?? changed.record }])
      }),
    evolve: (state, event) =>
      event.type === ended
        ? { status: "ended", version: state.version + 1, record: state.record }
        : { status: "active", version: state.version + 1, record: recordOf(event) }
  }
}

export const aggregates = Object.fromEntries(
  (Object.keys(apiAggregates) as Array<ApiAggregateType>).map((t) => [t, recordAggregate(t)])
) as { readonly [T in ApiAggregateType]: Aggregate<RecordState, RecordCommand, RecordEvent, ApiRejected> }
