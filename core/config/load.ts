// Reads a service's variables once, at startup, through Effect's ConfigProvider
// (the environment in production, a fixed record in tests) and enforces the rules
// that span several variables.
import { Config, Context, Effect, Layer, Option, Schema } from "effect"
import { readFileSync } from "node:fs"
import type { common } from "./common.ts"
import type { Spec, Values } from "./vars.ts"

export class ConfigInvalid extends Schema.TaggedError<ConfigInvalid>()("ConfigInvalid", {
  variable: Schema.String,
  rule: Schema.String
}) {
  override get message() {
    return `${this.variable}: ${this.rule}`
  }
}

export interface Tls {
  readonly cert: Buffer
  readonly key: Buffer
}

export const readRaw = (name: string): Effect.Effect<string | undefined> =>
  Config.option(Config.String(name)).pipe(
    Effect.map(Option.getOrUndefined),
    // A malformed provider is a programming error, not a user's misconfiguration.
    Effect.orDie
  )

export const loadSpec = <S extends Spec>(spec: S): Effect.Effect<Values<S>, ConfigInvalid> =>
  Effect.gen(function*() {
    const raws: Record<string, string | undefined> = {}
    for (const name of Object.keys(spec)) {
      const raw = yield* readRaw(name)
      raws[name] = raw === "" ? undefined : raw
    }
    const out: Record<string, unknown> = {}
    for (const [name, v] of Object.entries(spec)) {
      const raw = raws[name] ?? v.default ?? (v.defaultFrom ? raws[v.defaultFrom] : undefined)
      if (raw === undefined) {
        if (v.required) return yield* new ConfigInvalid({ variable: name, rule: "is required but not set" })
        out[name] = undefined
        continue
      }
      const parsed = v.parse(raw)
      if (!parsed.ok) return yield* new ConfigInvalid({ variable: name, rule: parsed.rule })
      out[name] = parsed.value
    }
    return out as Values<S>
  })

export type Mode = "production" | "development"

/** The variables every service has (see `common`), plus its PORT. */
export type CommonVars = Values<typeof common> & { readonly PORT: number }

export interface Loaded<S extends Spec = Spec> {
  readonly service: string
  readonly mode: Mode
  readonly vars: Values<S>
  readonly tls: Tls | undefined
}

const readPem = (variable: string, path: string) =>
  Effect.try({
    try: () => readFileSync(path),
    catch: () => new ConfigInvalid({ variable, rule: `cannot read file ${path}` })
  })

/** The variables of every service: a spec passed to loadService must have them. */
export type ServiceSpec = typeof common & { readonly PORT: Spec[string] }

export const loadService = <S extends ServiceSpec>(service: string, spec: S): Effect.Effect<Loaded<S>, ConfigInvalid> =>
  Effect.gen(function*() {
    const vars = yield* loadSpec(spec)
    const shared = vars as unknown as CommonVars
    const cert = shared.TLS_CERT_FILE
    const key = shared.TLS_KEY_FILE
    if ((cert === undefined) !== (key === undefined)) {
      const missing = cert === undefined ? "TLS_CERT_FILE" : "TLS_KEY_FILE"
      const other = cert === undefined ? "TLS_KEY_FILE" : "TLS_CERT_FILE"
      return yield* new ConfigInvalid({ variable: missing, rule: `must be set together with ${other} (both or neither)` })
    }
    const tls = cert !== undefined && key !== undefined
      ? { cert: yield* readPem("TLS_CERT_FILE", cert), key: yield* readPem("TLS_KEY_FILE", key) }
      : undefined
    const mode = shared.CARACAL_MODE
    if (mode === "production" && tls === undefined && !shared.INSECURE_HTTP) {
      return yield* new ConfigInvalid({
        variable: "INSECURE_HTTP",
        rule: "production mode serves HTTPS only: set TLS_CERT_FILE and TLS_KEY_FILE, or INSECURE_HTTP=true"
      })
    }
    return { service, mode, vars, tls }
  })

/** The loaded configuration of the running service. */
export class ServiceConfig extends Context.Service<ServiceConfig, Loaded>()("caracal/core/ServiceConfig") {
  static readonly layer = <S extends ServiceSpec>(service: string, spec: S) => Layer.effect(ServiceConfig, loadService(service, spec))
}
