// The sts's internal routes (CONTRACTS.md "Internal calls"): called by the api (and later the
// gateway), never by clients. Every route first verifies the caller's HMAC signature and
// claims its nonce (core/internal-call.ts); anything else is refused with one uniform 401.
import { Effect, Redacted, Schema } from "effect"
import { HttpRouter, HttpServerResponse as Res } from "effect/http"
import { loadSpec } from "../../core/config/load.ts"
import { Database } from "../../core/db/database.ts"
import { type Answer, httpError } from "../../core/http/errors.ts"
import { requireSignedCall, serviceHmacKeys } from "../../core/internal-call.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { stsSpec } from "./config.ts"
import { checkMaterial, createCredential, CreateCredentialBody } from "./credentials.ts"
import { CompileBody, compilePolicy } from "./policies.ts"

/** The signed body, parsed as JSON and decoded; a body that is not JSON is a 400 that echoes nothing. */
const decodeBody = <S extends Schema.Top & { readonly DecodingServices: never }>(schema: S, text: string) =>
  Effect.gen(function*() {
    const json = yield* Effect.try({
      try: () => JSON.parse(text) as unknown,
      catch: () => httpError(400, "invalid_request", "the body must be JSON")
    })
    return yield* Schema.decodeUnknownEffect(schema)(json)
  })

export const stsErrors = (error: unknown): Answer | undefined => {
  if (typeof error !== "object" || error === null || !("_tag" in error)) return undefined
  if (error._tag === "CredentialUnavailable") {
    return { status: 404, code: "not_found", description: "no such credential, or it cannot be served", internal: false }
  }
  return undefined
}

export const InternalRoutes = HttpRouter.use((router) =>
  Effect.gen(function*() {
    const vars = yield* loadSpec(stsSpec)
    const database = yield* Database
    const redis = yield* RedisClient
    const signed = requireSignedCall(serviceHmacKeys(vars)).pipe(Effect.provideService(RedisClient, redis))

    yield* router.addAll([
      HttpRouter.route("POST", "/internal/v1/credentials", Effect.gen(function*() {
        const body = yield* decodeBody(CreateCredentialBody, yield* signed)
        const material = yield* checkMaterial(body.material)
        const id = yield* createCredential(database, Redacted.value(vars.ZONE_KEK), {
          zoneId: body.zone_id,
          providerId: body.provider_id,
          material
        })
        yield* Effect.logInfo("credential sealed").pipe(
          Effect.annotateLogs({ credential_id: id, zone_id: body.zone_id, provider_id: body.provider_id })
        )
        return Res.jsonUnsafe({ credential_id: id }, { status: 201 })
      })),

      HttpRouter.route("POST", "/internal/v1/policies/compile", Effect.gen(function*() {
        const body = yield* decodeBody(CompileBody, yield* signed)
        return yield* compilePolicy(vars.OPA_URL, body.modules, vars.REDIS_KEY_PREFIX).pipe(
          Effect.as(Res.jsonUnsafe({ ok: true })),
          // the contract's 422 carries OPA's text under `message` as well as `error_description`
          Effect.catchTag("InvalidPolicy", (e) =>
            Effect.succeed(Res.jsonUnsafe(
              { error: "invalid_policy", error_description: e.message, message: e.message },
              { status: 422 }
            )))
        )
      }))
    ])
  }))
