// HMAC-SHA256 signatures of stream messages. The MAC covers the stream name and the exact
// message bytes, so an entry copied onto another stream, or re-serialised, fails to verify.
// Key objects are created once: on Node 24 createSecretKey is several times faster than
// passing a raw Buffer to createHmac on every call.
import { createHash, createHmac, createSecretKey, type KeyObject, timingSafeEqual } from "node:crypto"

export interface SigningKey {
  /** Short id derived from the key, carried with each message so that keys can rotate. */
  readonly id: string
  readonly key: KeyObject
}

export const keyIdOf = (raw: Buffer) => createHash("sha256").update(raw).digest("hex").slice(0, 16)

export const signingKey = (raw: Buffer): SigningKey => ({ id: keyIdOf(raw), key: createSecretKey(raw) })

const SEPARATOR = Buffer.from([0]) // stream names never contain NUL (see core/redis/keys.ts)

export const mac = (key: KeyObject, stream: string, bytes: Buffer | string): Buffer =>
  createHmac("sha256", key).update(stream).update(SEPARATOR).update(bytes).digest()

export const sign = (k: SigningKey, stream: string, bytes: Buffer | string): string => mac(k.key, stream, bytes).toString("base64url")

export type Verdict = "valid" | "unsigned" | "unknown_key" | "bad_signature"

/** Verifies against any held key (the current one and those being rotated out). */
export class Verifier {
  private readonly keys: Map<string, KeyObject>
  constructor(keys: ReadonlyArray<SigningKey>) {
    this.keys = new Map(keys.map((k) => [k.id, k.key]))
  }
  get enabled(): boolean {
    return this.keys.size > 0
  }
  verify(stream: string, bytes: Buffer | string, kid: string | undefined, sig: string | undefined): Verdict {
    return this.verifyWith(stream, bytes, kid, sig)
  }
  /** The same check with any context string in place of the stream name (e.g. the log's). */
  verifyWith(context: string, bytes: Buffer | string, kid: string | undefined, sig: string | undefined): Verdict {
    if (kid === undefined || sig === undefined) return "unsigned"
    const key = this.keys.get(kid)
    if (key === undefined) return "unknown_key"
    const expected = mac(key, context, bytes)
    const given = Buffer.from(sig, "base64url")
    // constant time: the comparison does not stop at the first differing byte
    return given.length === expected.length && timingSafeEqual(given, expected) ? "valid" : "bad_signature"
  }
}

/** The fields of an event the producer decides (the database assigns position and transaction id). */
export interface LoggedFields {
  readonly id: string
  readonly type: string
  readonly schemaVersion: number
  readonly zoneId: string
  readonly aggregateType: string
  readonly aggregateId: string
  readonly sequence: number
  readonly occurredAt: string
  readonly actor: unknown
  readonly correlationId: string
  readonly causationId: string | null
  readonly data: unknown
}

// Canonical JSON (RFC 8785's rules for JSON values: keys sorted by UTF-16 code units,
// numbers and strings as ECMAScript serialises them): jsonb reorders keys and drops
// whitespace, so the MAC must cover a form that survives the round trip through Postgres.
// Built on the native JSON.stringify for scalars: the canonicalize package, measured on the
// rebuild benchmark, spent more time here than the HMAC itself.
// One string built by appending (no intermediate arrays of parts): the audit service
// canonicalises every record it chains, and the arrays were most of the cost.
export const canonicalJson = (v: unknown): string => {
  if (v === null || typeof v !== "object") return JSON.stringify(v) ?? "null"
  if (Array.isArray(v)) {
    let out = "["
    for (let i = 0; i < v.length; i++) out += (i === 0 ? "" : ",") + canonicalJson(v[i])
    return out + "]"
  }
  const o = v as Record<string, unknown>
  const keys = Object.keys(o).sort()
  let out = "{"
  let first = true
  for (const k of keys) {
    const x = o[k]
    if (x === undefined) continue
    out += (first ? "" : ",") + JSON.stringify(k) + ":" + canonicalJson(x)
    first = false
  }
  return out + "}"
}

const LOG_CONTEXT = "caracal-log-v1"

/**
 * canonicalJson(f) for the fixed shape of LoggedFields, written out with its keys already
 * in sorted order (a rebuild verifies every row, so this is its hottest path). The unit
 * tests pin it to canonicalJson.
 */
export const canonicalLogged = (f: LoggedFields): string =>
  `{"actor":${canonicalJson(f.actor)},"aggregateId":${JSON.stringify(f.aggregateId)},"aggregateType":${JSON.stringify(f.aggregateType)},` +
  `"causationId":${JSON.stringify(f.causationId)},"correlationId":${JSON.stringify(f.correlationId)},"data":${canonicalJson(f.data)},` +
  `"id":${JSON.stringify(f.id)},"occurredAt":${JSON.stringify(f.occurredAt)},"schemaVersion":${f.schemaVersion},` +
  `"sequence":${f.sequence},"type":${JSON.stringify(f.type)},"zoneId":${JSON.stringify(f.zoneId)}}`
export const logMac = (k: SigningKey, f: LoggedFields): string =>
  mac(k.key, LOG_CONTEXT, canonicalLogged(f)).toString("base64url")

export const verifyLogged = (v: Verifier, f: LoggedFields, kid: string | null, sig: string | null): Verdict =>
  v.verifyWith(LOG_CONTEXT, canonicalLogged(f), kid ?? undefined, sig ?? undefined)
