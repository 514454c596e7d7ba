// Declarative environment variables: one definition per variable gives its parser,
// default, whether it is required or secret, and the text shown in the README table.
import { Redacted } from "effect"

/** A parser turns the raw string into a value or returns the rule it broke. */
export type Parse<A> = (raw: string) => { readonly ok: true; readonly value: A } | { readonly ok: false; readonly rule: string }

export interface Var<A> {
  readonly parse: Parse<A>
  readonly required: boolean
  /** The raw default, parsed like any other value; absent means "no default". */
  readonly default?: string
  /** A default that is another variable's value (e.g. a second Redis URL that falls back to REDIS_URL). */
  readonly defaultFrom?: string
  readonly secret: boolean
  readonly doc: string
}

const ok = <A>(value: A) => ({ ok: true as const, value })
const bad = (rule: string) => ({ ok: false as const, rule })

const url = (protocols: ReadonlyArray<string>): Parse<string> => (raw) => {
  try {
    const u = new URL(raw)
    return protocols.includes(u.protocol.replace(/:$/, ""))
      ? ok(raw)
      : bad(`must be a URL with scheme ${protocols.join(" or ")}`)
  } catch {
    return bad(`must be a URL with scheme ${protocols.join(" or ")}`)
  }
}

/** Hex-encoded key material; `bytes` fixes the length, otherwise at least 16 bytes. */
const hexKey = (bytes?: number): Parse<Redacted.Redacted<Buffer>> => (raw) => {
  if (!/^[0-9a-fA-F]*$/.test(raw) || raw.length % 2 !== 0 || raw.length === 0) return bad("must be hex-encoded")
  if (bytes !== undefined && raw.length !== bytes * 2) return bad(`must be ${bytes * 2} hex chars (${bytes} bytes)`)
  if (bytes === undefined && raw.length < 32) return bad("must be at least 32 hex chars (16 bytes)")
  if (/^0+$/.test(raw)) return bad("must not be all zeros")
  return ok(Redacted.make(Buffer.from(raw, "hex")))
}

export const parsers = {
  string: ((raw) => (raw.length > 0 ? ok(raw) : bad("must not be empty"))) as Parse<string>,
  url,
  /** A URL that may embed a password: validated, then kept Redacted. */
  secretUrl: (protocols: ReadonlyArray<string>): Parse<Redacted.Redacted<string>> => (raw) => {
    const r = url(protocols)(raw)
    return r.ok ? ok(Redacted.make(raw)) : r
  },
  int: (min: number, max: number): Parse<number> => (raw) => {
    if (!/^-?\d+$/.test(raw)) return bad(`must be an integer between ${min} and ${max}`)
    const n = Number(raw)
    return n >= min && n <= max ? ok(n) : bad(`must be an integer between ${min} and ${max}`)
  },
  bool: ((raw) => (raw === "true" ? ok(true) : raw === "false" ? ok(false) : bad("must be true or false"))) as Parse<boolean>,
  oneOf: <const L extends string>(values: ReadonlyArray<L>): Parse<L> => (raw) =>
    (values as ReadonlyArray<string>).includes(raw) ? ok(raw as L) : bad(`must be one of ${values.join(", ")} (lower case)`),
  hexKey,
  hexKeyList: ((raw) => {
    const keys: Array<Buffer> = []
    for (const part of raw.split(",").map((x) => x.trim()).filter((x) => x.length > 0)) {
      const one = hexKey()(part)
      if (!one.ok) return bad(`each key ${one.rule}`)
      keys.push(Redacted.value(one.value))
    }
    return ok(Redacted.make(keys))
  }) as Parse<Redacted.Redacted<ReadonlyArray<Buffer>>>,
  secretString: ((raw) => (raw.length >= 16 ? ok(Redacted.make(raw)) : bad("must be at least 16 characters"))) as Parse<
    Redacted.Redacted<string>
  >,
  secretAny: ((raw) => (raw.length > 0 ? ok(Redacted.make(raw)) : bad("must not be empty"))) as Parse<
    Redacted.Redacted<string>
  >,
  keyPart: ((raw) => (/^[A-Za-z0-9_.:-]{1,64}$/.test(raw) ? ok(raw) : bad("must be 1-64 of A-Z a-z 0-9 _ . : -"))) as Parse<string>,
  path: ((raw) => (raw.length > 0 ? ok(raw) : bad("must be a file path"))) as Parse<string>
}

export const required = <A>(parse: Parse<A>, doc: string, secret = false): Var<A> => ({ parse, required: true, secret, doc })
export const optional = <A>(parse: Parse<A>, doc: string, secret = false): Var<A | undefined> => ({
  parse,
  required: false,
  secret,
  doc
})
export const withDefault = <A>(parse: Parse<A>, defaultRaw: string, doc: string): Var<A> => ({
  parse,
  required: false,
  default: defaultRaw,
  secret: false,
  doc
})
export const defaultFrom = <A>(parse: Parse<A>, other: string, doc: string): Var<A> => ({
  parse,
  required: false,
  defaultFrom: other,
  secret: false,
  doc
})

export type Spec = Readonly<Record<string, Var<any>>>
export type Values<S extends Spec> = { readonly [K in keyof S]: S[K] extends Var<infer A> ? A : never }
