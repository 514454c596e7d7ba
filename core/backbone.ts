// Stream keys from configuration: the signer a producer signs with, and the verifier a
// consumer (or the CLI) checks entries with, including keys being rotated out.
import { Redacted } from "effect"
import { signingKey, type SigningKey, Verifier } from "./signing.ts"

interface KeyVars {
  readonly STREAMS_HMAC_KEY?: Redacted.Redacted<Buffer> | undefined
  readonly STREAMS_HMAC_PREVIOUS_KEYS?: Redacted.Redacted<ReadonlyArray<Buffer>> | undefined
}

export const signerFrom = (key: Redacted.Redacted<Buffer> | undefined): SigningKey | undefined =>
  key === undefined ? undefined : signingKey(Redacted.value(key))

/** The current key and any being rotated out; an empty verifier accepts unsigned entries. */
export const verifierFrom = (vars: KeyVars) =>
  new Verifier([
    ...(vars.STREAMS_HMAC_KEY ? [signingKey(Redacted.value(vars.STREAMS_HMAC_KEY))] : []),
    ...(vars.STREAMS_HMAC_PREVIOUS_KEYS ? Redacted.value(vars.STREAMS_HMAC_PREVIOUS_KEYS).map(signingKey) : [])
  ])
