// The coordinator's mandate rules on top of core/mandate: it accepts ambient mandates only
// (`use` = ambient, `aud` = the issuer, `iss` = ISSUER_URL), every route needs the
// agent:lifecycle scope, and a caller acts for its own application or for another one it holds
// agent:act-for:<application id> for. Verification itself (keys, encodings, claims, the JWKS
// fetch bounds, 401/403/503) lives in core/mandate/verify.ts.
import {
  type AnyZone,
  AuthError,
  type MandateVerifier,
  type MandateVerifierOptions,
  makeMandateVerifier as makeCoreVerifier,
  type Mandate,
  parseBearer
} from "../../core/mandate/verify.ts"

export {
  ALLOWED_ALGORITHMS,
  authenticate,
  AuthError,
  authErrorAnswer,
  isZoneId,
  type Mandate,
  type MandateVerifier,
  MAX_TOKEN_BYTES,
  parseBearer,
  scopesOf
} from "../../core/mandate/verify.ts"

export const LIFECYCLE_SCOPE = "agent:lifecycle"

export const actsFor = (mandate: Mandate, applicationId: string): boolean =>
  applicationId === mandate.clientId || mandate.scopes.has(`agent:act-for:${applicationId}`)

export const requireActsFor = (mandate: Mandate, applicationId: string): void => {
  if (!actsFor(mandate, applicationId)) {
    throw new AuthError({ status: 403, code: "forbidden", description: "the mandate may not act for this application" })
  }
}

export interface CoordinatorVerifierOptions extends Omit<MandateVerifierOptions, "jwksBaseUrl" | "accept"> {
  /** Base URL of the STS, whose per-zone JWKS verifies mandates. */
  readonly stsUrl: string
}

/** Ambient mandates of `issuer` with agent:lifecycle; 403 missing_scope without it. */
export const makeMandateVerifier = (options: CoordinatorVerifierOptions): MandateVerifier => {
  const { stsUrl, ...rest } = options
  const core = makeCoreVerifier({ ...rest, jwksBaseUrl: stsUrl, accept: { use: "ambient", audience: options.issuer } })
  const verify = async (token: string, zone: string | AnyZone): Promise<Mandate> => {
    const mandate = await core.verify(token, zone)
    if (!mandate.scopes.has(LIFECYCLE_SCOPE)) {
      throw new AuthError({ status: 403, code: "missing_scope", description: `the mandate lacks the ${LIFECYCLE_SCOPE} scope` })
    }
    return mandate
  }
  return {
    verify,
    verifyAuthorization: async (header, zone) => verify(parseBearer(header), zone)
  }
}
