// The token request's parsing: grant and token types, repeated parameters, client
// authentication methods, sizes — each refusal with its RFC 6749 error.
import { describe, expect, it } from "vitest"
import { GRANT_TOKEN_EXCHANGE, OAuthError, parseTokenRequest, TOKEN_TYPE_JWT } from "../../services/sts/token-request.ts"

const FORM = "application/x-www-form-urlencoded"
const parse = (params: Record<string, string | Array<string>>, auth?: string, type = FORM) => {
  const form = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) for (const x of Array.isArray(v) ? v : [v]) form.append(k, x)
  return parseTokenRequest(form.toString(), type, auth)
}
const refusal = (f: () => unknown) => {
  try {
    f()
  } catch (e) {
    if (e instanceof OAuthError) return `${e.status} ${e.error}`
    throw e
  }
  return "accepted"
}

describe("the token request", () => {
  it("parses client_credentials with the secret in the body or in HTTP Basic", () => {
    const body = parse({ grant_type: "client_credentials", zone_id: "z1", application_id: "app", client_secret: "s", scope: "a b a" })
    expect(body).toMatchObject({ grantType: "client_credentials", zoneId: "z1", applicationId: "app", clientSecret: "s", scopes: ["a", "b"], basicAuth: false })
    const basic = parse({ grant_type: "client_credentials", zone_id: "z1" }, `Basic ${Buffer.from("app:s%3Ax").toString("base64")}`)
    expect(basic).toMatchObject({ applicationId: "app", clientSecret: "s:x", basicAuth: true })
  })

  it("parses a token exchange with repeated resources", () => {
    const r = parse({ grant_type: GRANT_TOKEN_EXCHANGE, subject_token: "a.b.c", subject_token_type: TOKEN_TYPE_JWT, resource: ["api", "mcp:github", "api"] })
    expect(r).toMatchObject({ grantType: "token_exchange", subjectToken: "a.b.c", resources: ["api", "mcp:github"] })
  })

  it("refuses what RFC 6749 and RFC 8693 refuse", () => {
    expect(refusal(() => parse({ zone_id: "z1" }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: "password" }))).toBe("400 unsupported_grant_type")
    expect(refusal(() => parse({ grant_type: GRANT_TOKEN_EXCHANGE, subject_token: "a.b.c" }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: GRANT_TOKEN_EXCHANGE, subject_token: "a.b.c", subject_token_type: "urn:x" }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: GRANT_TOKEN_EXCHANGE, subject_token_type: TOKEN_TYPE_JWT }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: GRANT_TOKEN_EXCHANGE, actor_token: "a.b.c" }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: "client_credentials", scope: ["a", "b"] }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: "client_credentials", ttl_seconds: "-5" }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: "client_credentials", zone_id: "../x" }))).toBe("400 invalid_request")
    expect(refusal(() => parse({ grant_type: GRANT_TOKEN_EXCHANGE, resource: "Not A Resource" }))).toBe("400 invalid_target")
    expect(refusal(() => parse({ grant_type: "client_credentials", scope: "bad\"scope" }))).toBe("400 invalid_scope")
    expect(refusal(() => parse({ grant_type: "client_credentials" }, undefined, "application/json"))).toBe("400 invalid_request")
    // one authentication method per request
    expect(refusal(() => parse({ grant_type: "client_credentials", client_secret: "s" }, `Basic ${Buffer.from("app:s").toString("base64")}`))).toBe("400 invalid_request")
  })

  it("ignores unknown parameters (RFC 6749 §3.2)", () => {
    expect(refusal(() => parse({ grant_type: "client_credentials", something_new: "x" }))).toBe("accepted")
  })
})
