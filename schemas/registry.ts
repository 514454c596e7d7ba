// A registry of event types and their frozen versions. A published version never
// changes; a change adds version n+1 and an upcaster from n, and readers always see
// the latest version (old payloads are upcast on read, never rewritten in the log).
import { Result, Schema } from "effect"

export interface EventVersion<A = unknown> {
  readonly type: string
  readonly version: number
  readonly data: Schema.Codec<A, unknown>
  /** From the previous version's data to this one's; required for every version > 1. */
  readonly upcast?: (previous: any) => unknown
}

export type DecodeFailure =
  | { readonly reason: "unknown_event_type"; readonly detail: string }
  | { readonly reason: "unknown_event_version"; readonly detail: string }
  | { readonly reason: "invalid_event_data"; readonly detail: string }

export interface Decoded {
  readonly type: string
  readonly version: number
  readonly data: unknown
}

export class EventRegistry {
  private readonly byType = new Map<string, Array<EventVersion>>()
  // built once per version: making a decoder per call dominated the cost of a rebuild
  private readonly decoders = new Map<EventVersion, (u: unknown) => Result.Result<unknown, Schema.SchemaError>>()
  private readonly encoders = new Map<EventVersion, (u: unknown) => unknown>()

  register(...versions: ReadonlyArray<EventVersion<any>>): this {
    for (const v of versions) {
      const list = this.byType.get(v.type) ?? []
      if (v.version !== list.length + 1) throw new Error(`${v.type}: versions must be registered in order (got v${v.version})`)
      if (v.version > 1 && v.upcast === undefined) throw new Error(`${v.type} v${v.version} needs an upcaster from v${v.version - 1}`)
      list.push(v as EventVersion)
      this.byType.set(v.type, list)
      this.decoders.set(v as EventVersion, Schema.decodeUnknownResult(v.data))
      this.encoders.set(v as EventVersion, Schema.encodeUnknownSync(v.data))
    }
    return this
  }

  types(): ReadonlyArray<string> {
    return [...this.byType.keys()]
  }

  versions(type: string): ReadonlyArray<EventVersion> {
    return this.byType.get(type) ?? []
  }

  latest(type: string): number {
    return this.byType.get(type)?.length ?? 0
  }

  /** Validates data of the given version and upcasts it to the latest version. */
  decode(type: string, version: number, data: unknown): Result.Result<Decoded, DecodeFailure> {
    const list = this.byType.get(type)
    if (list === undefined) return Result.fail({ reason: "unknown_event_type", detail: type })
    const def = list[version - 1]
    if (def === undefined) return Result.fail({ reason: "unknown_event_version", detail: `${type} v${version}` })
    const first = this.decoders.get(def)!(data)
    if (Result.isFailure(first)) return Result.fail({ reason: "invalid_event_data", detail: `${type} v${version}: ${first.failure.message}` })
    let current: unknown = first.success
    for (let v = version + 1; v <= list.length; v++) current = list[v - 1]!.upcast!(current)
    return Result.succeed({ type, version: list.length, data: current })
  }

  /** The JSON encoding of data of the latest version of a type, checked against its schema. */
  encode(type: string, data: unknown): { readonly version: number; readonly json: unknown } {
    const list = this.byType.get(type)
    if (list === undefined) throw new Error(`unregistered event type ${type}`)
    const def = list[list.length - 1]!
    return { version: list.length, json: this.encoders.get(def)!(data) }
  }
}
