// What the forensic views never show: an audit record holds no secret by contract, but a
// domain event's data may hold a secret's verifier or other sensitive metadata (a client
// secret's hash, a credential's material reference). Keys that name such things are
// replaced wherever they appear; the verifiable bytes themselves stay in the tables and the
// export, which only auditors with database or bucket access read.
const SENSITIVE = /secret|verifier|password|passphrase|token|material|private|credential_value|authorization|cookie|api_?key/i

export const REDACTED = "[redacted]"

export const redact = (v: unknown): unknown => {
  if (Array.isArray(v)) return v.map(redact)
  if (v === null || typeof v !== "object") return v
  return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, SENSITIVE.test(k) ? REDACTED : redact(x)]))
}
