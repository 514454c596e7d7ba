// Checks a zone's Rego modules with the real OPA before the api accepts them, without touching
// the policies OPA is serving: each module's `package caracal.authz` line is rewritten to a
// package of this check alone (`caracal.validate.v<random>`, same line, so OPA's row numbers
// still point into the caller's text), PUT through OPA's Policy API, and every module put is
// deleted again whatever happens. OPA parses and compiles; here only the package and the
// presence of a `result` rule are checked, because OPA accepts a module without either.
import { Effect, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { type HttpError, httpError } from "../../core/http/errors.ts"

export const MAX_MODULES = 32
export const MODULE_MAX_BYTES = 256 * 1024
const OPA_TIMEOUT_MS = 10_000

const ModuleName = Schema.String.pipe(Schema.check(Schema.isPattern(/^[\x21-\x7e][\x20-\x7e]{0,127}$/u)))

export const CompileBody = Schema.Struct({
  zone_id: Schema.String.pipe(Schema.check(Schema.isPattern(/^[A-Za-z0-9._:-]{1,128}$/u))),
  modules: Schema.Record(ModuleName, Schema.String)
})

/** The module set is not a valid policy: 422 invalid_policy with this message. */
export class InvalidPolicy extends Schema.TaggedError<InvalidPolicy>()("InvalidPolicy", { message: Schema.String }) {}

const PACKAGE = /^package[ \t]+caracal\.authz[ \t]*(?:#.*)?$/
// a rule head at the start of a line: `result := …`, `result if …`, `default result := …`, `result contains …`
const RESULT_RULE = /^(?:default[ \t]+)?result\b[ \t]*(?::=|=|if\b|\{|contains\b|\[)/m

/** The index of the module's package line, or why the module is refused. */
const packageLine = (name: string, lines: ReadonlyArray<string>): number | InvalidPolicy => {
  const i = lines.findIndex((l) => l.trim() !== "" && !l.trimStart().startsWith("#"))
  if (i === -1) return new InvalidPolicy({ message: `module ${name} is empty` })
  if (!PACKAGE.test(lines[i]!.trim())) {
    return new InvalidPolicy({ message: `module ${name} must declare package caracal.authz as its first statement` })
  }
  return i
}

// `data.caracal.authz` as a whole reference (not `input.data.caracal.authz`, not `…authzx`)
const OWN_PACKAGE_REF = /(?<![A-Za-z0-9_.])data\.caracal\.authz(?![A-Za-z0-9_])/g

/**
 * The module moved to package `pkg`: its `package caracal.authz` line rewritten in place (same
 * line, so OPA's row numbers still point into the caller's text) and every reference to
 * `data.caracal.authz` pointed at `pkg`, so that a module may still name its own package's
 * rules. Shared by this check and the sts's policy sync (opa.ts), so that what is checked is
 * what is served. (A reference spelled `data["caracal"]…` or written inside a string is left as is.)
 */
export const rewriteModule = (name: string, text: string, pkg: string): string | InvalidPolicy => {
  const lines = text.split("\n")
  const at = packageLine(name, lines)
  if (at instanceof InvalidPolicy) return at
  lines[at] = `package ${pkg}`
  return lines.join("\n").replace(OWN_PACKAGE_REF, `data.${pkg}`)
}

/** Checks what OPA would accept but the sts cannot use; returns each module rewritten to `pkg`. */
export const prepareModules = (
  modules: Readonly<Record<string, string>>,
  pkg: string
): ReadonlyArray<{ readonly name: string; readonly text: string }> | InvalidPolicy => {
  const entries = Object.entries(modules)
  if (entries.length === 0) return new InvalidPolicy({ message: "at least one module is required" })
  if (entries.length > MAX_MODULES) return new InvalidPolicy({ message: `at most ${MAX_MODULES} modules are allowed` })
  const out: Array<{ name: string; text: string }> = []
  for (const [name, text] of entries) {
    if (Buffer.byteLength(text, "utf8") > MODULE_MAX_BYTES) {
      return new InvalidPolicy({ message: `module ${name} exceeds ${MODULE_MAX_BYTES} bytes` })
    }
    const rewritten = rewriteModule(name, text, pkg)
    if (rewritten instanceof InvalidPolicy) return rewritten
    out.push({ name, text: rewritten })
  }
  // helper modules may leave `result` to a sibling, but the set must define it: the sts asks for it
  if (!entries.some(([, text]) => RESULT_RULE.test(text))) {
    return new InvalidPolicy({ message: "the policy must define a result rule in package caracal.authz" })
  }
  return out
}

interface OpaError {
  readonly code?: string
  readonly message?: string
  readonly location?: { readonly file?: string; readonly row?: number; readonly col?: number }
}

const unavailable = () => httpError(503, "temporarily_unavailable", "the policy engine is unavailable")

/** OPA's refusal of one module, as `name:row:col: code: message` lines naming the caller's module and package. */
const describeRefusal = (body: unknown, names: ReadonlyMap<string, string>, pkg: string): string => {
  const b = (typeof body === "object" && body !== null ? body : {}) as { message?: string; errors?: ReadonlyArray<OpaError> }
  const errors = Array.isArray(b.errors) ? b.errors : []
  const lines = errors.length === 0
    ? [b.message ?? "OPA refused the module"]
    : errors.map((e) => {
      const file = e.location?.file
      const where = file === undefined ? "" : `${names.get(file) ?? file}:${e.location?.row ?? 0}:${e.location?.col ?? 0}: `
      return `${where}${e.code === undefined ? "" : `${e.code}: `}${e.message ?? ""}`
    })
  return lines.join("; ").split(pkg).join("caracal.authz")
}

const opa = (base: string, method: "PUT" | "DELETE", id: string, body?: string) =>
  Effect.tryPromise({
    try: async () => {
      const res = await fetch(`${base.replace(/\/$/, "")}/v1/policies/${encodeURIComponent(id)}`, {
        method,
        ...(body === undefined ? {} : { body, headers: { "content-type": "text/plain" } }),
        signal: AbortSignal.timeout(OPA_TIMEOUT_MS)
      })
      const text = await res.text()
      let parsed: unknown = undefined
      try {
        parsed = text === "" ? undefined : JSON.parse(text)
      } catch {
        parsed = text
      }
      return { status: res.status, body: parsed }
    },
    catch: (cause) => cause
  }).pipe(
    Effect.tapError((cause) => Effect.logWarning("OPA unreachable").pipe(Effect.annotateLogs({ cause: String(cause) }))),
    Effect.mapError(unavailable)
  )

/**
 * Compiles `modules` in OPA. A module may use rules of a sibling, and OPA compiles each PUT
 * against what it already holds, so modules refused in one round are tried again once their
 * siblings are in; the check ends when a round makes no progress. Fails with InvalidPolicy
 * (OPA's messages) or a 503 when OPA cannot be asked.
 */
export const compilePolicy = (
  opaUrl: string,
  modules: Readonly<Record<string, string>>,
  /** Names this deployment's temporary modules (REDIS_KEY_PREFIX), as the policy sync names its own. */
  ns = "caracal"
): Effect.Effect<void, InvalidPolicy | HttpError> => {
  const tag = randomBytes(8).toString("hex")
  const pkg = `caracal.validate.v${tag}`
  const prepared = prepareModules(modules, pkg)
  if (prepared instanceof InvalidPolicy) return Effect.fail(prepared)
  const withIds = prepared.map((m, i) => ({ ...m, id: `${ns}-validate-${tag}-${i}` }))
  const names = new Map(withIds.map((m) => [m.id, m.name]))
  const installed: Array<string> = []
  const check = Effect.gen(function*() {
    let pending = withIds
    let refusals: Array<string> = []
    while (pending.length > 0) {
      const refused: typeof withIds = []
      refusals = []
      for (const m of pending) {
        const res = yield* opa(opaUrl, "PUT", m.id, m.text)
        if (res.status === 200) {
          installed.push(m.id)
        } else if (res.status === 400) {
          refused.push(m)
          refusals.push(describeRefusal(res.body, names, pkg))
        } else {
          yield* Effect.logWarning("OPA answered the policy check unexpectedly").pipe(Effect.annotateLogs({ status: res.status }))
          return yield* unavailable()
        }
      }
      if (refused.length === 0 || refused.length === pending.length) break
      pending = refused
    }
    if (refusals.length > 0) return yield* new InvalidPolicy({ message: refusals.join("; ") })
  })
  // The check's modules leave OPA whether it passed, failed or was interrupted. OPA refuses to
  // delete a module another one still uses, so the last installed go first, and refused
  // deletions are tried again while the others go.
  const cleanUp = Effect.gen(function*() {
    let left = [...installed].reverse()
    while (left.length > 0) {
      const kept: Array<string> = []
      for (const id of left) {
        const res = yield* opa(opaUrl, "DELETE", id).pipe(Effect.catch(() => Effect.succeed({ status: 503, body: undefined })))
        if (res.status !== 200 && res.status !== 404) kept.push(id)
      }
      if (kept.length === left.length) {
        yield* Effect.logWarning("could not delete policy-check modules from OPA").pipe(Effect.annotateLogs({ ids: kept.join(",") }))
        return
      }
      left = kept
    }
  })
  return check.pipe(Effect.ensuring(cleanUp))
}
