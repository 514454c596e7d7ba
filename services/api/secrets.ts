// Application client secrets. The server generates one by default: 32 random bytes
// (256 bits), shown once, stored as a verifier the sts checks in microseconds. A keyed
// hash suffices for a random secret (no guessing can reach 2^256), so no memory-hard KDF
// is needed: HMAC-SHA256 keyed by a random per-secret salt. A caller may still supply its
// own secret (existing clients do): it may be guessable, so it is stored with scrypt
// (Node's built-in memory-hard KDF, N=2^15, r=8, p=1: ~32 MiB and tens of ms per check,
// which is what slows offline guessing of a leaked verifier).
import { createHmac, randomBytes, scryptSync, timingSafeEqual } from "node:crypto"
import type { SecretVerifier } from "./events.ts"

/** `cs_` + 43 base64url characters (32 random bytes): recognisable in a leak scan, copy-safe. */
export const generateSecret = (): string => `cs_${randomBytes(32).toString("base64url")}`

export const SUPPLIED_SECRET_MIN = 32
export const SUPPLIED_SECRET_MAX = 512
const SCRYPT = { N: 2 ** 15, r: 8, p: 1 } as const

const hmacOf = (salt: Buffer, secret: string) => createHmac("sha256", salt).update(secret, "utf8").digest()
const scryptOf = (salt: Buffer, secret: string, params: { N: number; r: number; p: number }) =>
  scryptSync(secret, salt, 32, { N: params.N, r: params.r, p: params.p, maxmem: 128 * params.N * params.r * 2 })

export const verifierFor = (secret: string, generated: boolean, now: Date): SecretVerifier => {
  const salt = randomBytes(16)
  return generated
    ? { alg: "hmac-sha256", salt: salt.toString("base64url"), hash: hmacOf(salt, secret).toString("base64url"), createdAt: now.toISOString(), validUntil: null }
    : {
      alg: "scrypt",
      salt: salt.toString("base64url"),
      hash: scryptOf(salt, secret, SCRYPT).toString("base64url"),
      params: { ...SCRYPT },
      createdAt: now.toISOString(),
      validUntil: null
    }
}

/** Does `secret` match one of the verifiers still valid at `now`? (the sts's check; constant time per verifier) */
export const verifySecret = (verifiers: ReadonlyArray<SecretVerifier>, secret: string, now: Date): boolean => {
  let ok = false
  for (const v of verifiers) {
    if (v.validUntil !== null && Date.parse(v.validUntil) <= now.getTime()) continue
    const salt = Buffer.from(v.salt, "base64url")
    const expected = Buffer.from(v.hash, "base64url")
    const actual = v.alg === "hmac-sha256" ? hmacOf(salt, secret) : scryptOf(salt, secret, v.params ?? SCRYPT)
    // every verifier is checked: the time taken does not tell which one matched
    if (actual.length === expected.length && timingSafeEqual(actual, expected)) ok = true
  }
  return ok
}
