// What the api asks of the sts (CONTRACTS.md, internal calls signed with SERVICE_HMAC_KEY):
// seal a credential's material, check Rego with OPA, rotate a zone's key; and the token
// endpoint, passed through unchanged for clients that know only the api's URL.
import { Effect } from "effect"
import { callInternal, type InternalCallOptions, nodeRequest } from "../../core/internal-call.ts"
import { httpError } from "../../core/http/errors.ts"
import { rejected } from "./domain/record.ts"

export interface StsClient {
  readonly sealCredential: (zone: string, providerId: string, material: unknown) => Effect.Effect<string, unknown>
  readonly compilePolicy: (zone: string, modules: Readonly<Record<string, string>>) => Effect.Effect<void, unknown>
  readonly rotateKey: (zone: string) => Effect.Effect<unknown, unknown>
  readonly passThrough: (
    headers: Readonly<Record<string, string | undefined>>,
    body: string
  ) => Effect.Effect<{ readonly status: number; readonly body: string; readonly headers: Record<string, string> }, unknown>
}

/** An answer the sts should never give: the api says so instead of guessing (502). */
const unexpected = (what: string, status: number) =>
  Effect.logWarning("unexpected sts answer").pipe(
    Effect.annotateLogs({ call: what, status }),
    Effect.andThen(httpError(502, "sts_error", `the sts could not ${what} (status ${status})`))
  )

// Headers a token request carries that the sts needs; the answer's headers the client needs.
const FORWARDED = ["content-type", "authorization", "accept", "x-request-id", "traceparent", "tracestate", "baggage"]
const RETURNED = ["content-type", "cache-control", "pragma", "www-authenticate"]

/** The token request as the client sent it; the answer with the headers a token client needs. */
const forward = async (url: URL, headers: Record<string, string>, body: string, insecure: boolean) => {
  const res = await nodeRequest(url, "POST", headers, body, 10_000, insecure)
  const out: Record<string, string> = {}
  for (const h of RETURNED) {
    const v = res.headers[h]
    if (typeof v === "string") out[h] = v
  }
  return { status: res.status === 0 ? 502 : res.status, body: res.text, headers: out }
}

export const makeStsClient = (opts: InternalCallOptions): StsClient => ({
  sealCredential: (zone, providerId, material) =>
    Effect.gen(function*() {
      const res = yield* callInternal(opts, "POST", "/internal/v1/credentials", { zone_id: zone, provider_id: providerId, material })
      const id = (res.body as { credential_id?: unknown } | undefined)?.credential_id
      if ((res.status === 200 || res.status === 201) && typeof id === "string") return id
      return yield* unexpected("seal the credential", res.status)
    }),
  compilePolicy: (zone, modules) =>
    Effect.gen(function*() {
      const res = yield* callInternal(opts, "POST", "/internal/v1/policies/compile", { zone_id: zone, modules })
      if (res.status === 200) return
      if (res.status === 422) {
        const b = res.body as { message?: unknown; error_description?: unknown } | undefined
        const message = typeof b?.message === "string" ? b.message : typeof b?.error_description === "string" ? b.error_description : "rejected by OPA"
        return yield* rejected(422, "invalid_policy", message)
      }
      if (res.status === 503) return yield* httpError(503, "temporarily_unavailable", "the policy engine is unavailable")
      return yield* unexpected("check the policy", res.status)
    }),
  rotateKey: (zone) =>
    Effect.gen(function*() {
      const res = yield* callInternal(opts, "POST", `/internal/v1/zones/${encodeURIComponent(zone)}/keys/rotate`, {})
      if (res.status === 200 || res.status === 201) return res.body
      return yield* unexpected("rotate the zone key", res.status)
    }),
  passThrough: (headers, body) =>
    Effect.tryPromise({
      try: () => {
        const out: Record<string, string> = {}
        for (const h of FORWARDED) if (headers[h] !== undefined) out[h] = headers[h]!
        return forward(new URL("/oauth/2/token", opts.baseUrl), out, body, opts.insecureTls === true)
      },
      catch: () => httpError(503, "temporarily_unavailable", "the sts is unavailable")
    })
})
