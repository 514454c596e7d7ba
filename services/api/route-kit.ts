// How an api route is declared and run. A route is data — method, path, summary, body
// schema, query parameters, success status — plus its handler; the router and the
// OpenAPI document (openapi.ts) are both built from the same list, so neither can name a
// route the other lacks. Running a route: admin auth (with the address's failure limit),
// JSON only (415), the body decoded strictly (400 with issues), Idempotency-Key checked,
// then the handler.
import { Effect, Option, Schema, SchemaIssue } from "effect"
import { HttpRouter, HttpServerRequest as Req, HttpServerResponse as Res } from "effect/http"
import { createHash } from "node:crypto"
import { httpError } from "../../core/http/errors.ts"
import { RequestId } from "../../core/http/server.ts"
import { canonicalJson } from "../../core/signing.ts"
import type { AdminAuth } from "./auth.ts"
import type { Caller } from "./commands.ts"

export type Method = "GET" | "POST" | "PATCH" | "DELETE"

export interface Ctx<B> {
  readonly params: Readonly<Record<string, string>>
  readonly body: B
  readonly caller: Caller
  /** From If-Match: the version the caller last saw; undefined when absent or `*`. */
  readonly ifMatch: number | undefined
  readonly query: URLSearchParams
  readonly request: Req.HttpServerRequest
}

export interface RouteSpec<B = any> {
  readonly method: Method
  /** OpenAPI form: /v1/zones/{zone}/applications/{id} */
  readonly path: string
  readonly summary: string
  readonly tag: string
  readonly body?: Schema.Codec<B, unknown> | undefined
  readonly query?: ReadonlyArray<{ readonly name: string; readonly description: string }>
  readonly status: number
  /** false: no admin token (the token pass-through). */
  readonly admin?: boolean
  readonly run: (ctx: Ctx<B>) => Effect.Effect<Res.HttpServerResponse, unknown, any>
}

export const route = <B = undefined>(spec: RouteSpec<B>): RouteSpec<B> => spec

/** A validation failure with its issues: 400 {error:"invalid_request", issues:[{path,message}]}. */
export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", {
  description: Schema.String,
  issues: Schema.Array(Schema.Struct({ path: Schema.String, message: Schema.String }))
}) {}

const formatter = SchemaIssue.makeFormatterStandardSchemaV1()

const issuesOf = (issue: SchemaIssue.Issue) =>
  formatter(issue).issues.map((i) => ({
    path: (i.path ?? []).map((p) => String(typeof p === "object" && p !== null && "key" in p ? p.key : p)).join("."),
    message: i.message
  }))

export const decodeStrict = <B>(schema: Schema.Codec<B, unknown>, input: unknown) =>
  Schema.decodeUnknownEffect(schema)(input, { onExcessProperty: "error", errors: "all" }).pipe(
    Effect.mapError((e) => new InvalidRequest({ description: "the request body is invalid", issues: issuesOf(e.issue) }))
  )

const ETAG = /^(?:W\/)?"?(\d{1,9})"?$/

const ifMatchOf = (header: string | undefined) => {
  if (header === undefined || header.trim() === "*") return Effect.succeed(undefined)
  const m = ETAG.exec(header.trim())
  // an If-Match naming no version we could have sent can never match
  return m ? Effect.succeed(Number(m[1])) : Effect.fail(httpError(412, "precondition_failed", "If-Match does not match the current ETag"))
}

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/

const JSON_TYPE = /^application\/(?:[a-z0-9.+-]*\+)?json\s*(?:;|$)/i

/** The request's body as JSON: refused unless it says it is JSON (415) and parses (400). */
const jsonBody = (req: Req.HttpServerRequest) =>
  Effect.gen(function*() {
    const text = yield* req.text
    const type = req.headers["content-type"]
    if (text.trim() === "" && type === undefined) return undefined
    if (type === undefined || !JSON_TYPE.test(type)) {
      return yield* httpError(415, "unsupported_media_type", "the body must be application/json")
    }
    return yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: () => httpError(400, "invalid_request", "malformed JSON body") })
  })

export const etag = (version: number) => `"${version}"`

export const answer = (body: unknown, status: number, version?: number) => {
  const res = Res.jsonUnsafe(body, { status })
  return version === undefined ? res : Res.setHeader(res, "etag", etag(version))
}

/** The router's path pattern for an OpenAPI path. */
export const routerPath = (path: string) => path.replace(/\{([a-z_]+)\}/g, ":$1")

const addressOf = (req: Req.HttpServerRequest) => Option.getOrElse(req.remoteAddress, () => "unknown")

/** Runs one route: the checks every api route shares, then its handler. */
export const handlerOf = (spec: RouteSpec, auth: AdminAuth) =>
  Effect.gen(function*() {
    const req = yield* Req.HttpServerRequest
    const requestId = yield* RequestId
    let actorId = "anonymous"
    if (spec.admin !== false) {
      const outcome = yield* Effect.promise(() => auth.check(req.headers.authorization, addressOf(req))).pipe(
        Effect.catchDefect((cause) => Effect.fail(httpError(503, "temporarily_unavailable", `rate limiter unavailable: ${String(cause)}`)))
      )
      if (!outcome.ok) {
        if (outcome.status === 429) {
          return Res.setHeader(
            Res.jsonUnsafe({ error: "too_many_requests", error_description: "too many failed admin authentications; retry later" }, { status: 429 }),
            "retry-after",
            String(outcome.retryAfter)
          )
        }
        return Res.setHeader(
          Res.jsonUnsafe({ error: "invalid_admin_token", error_description: "a valid admin bearer token is required" }, { status: 401 }),
          "www-authenticate",
          `Bearer error="invalid_token"`
        )
      }
      actorId = outcome.actorId
    }
    const params = (yield* HttpRouter.params) as Record<string, string>
    const raw = spec.body === undefined ? undefined : yield* jsonBody(req)
    const body = spec.body === undefined ? undefined : yield* decodeStrict(spec.body, raw ?? {})
    const key = req.headers["idempotency-key"]
    if (key !== undefined && !IDEMPOTENCY_KEY.test(key)) {
      return yield* httpError(400, "invalid_request", "Idempotency-Key must be 1-200 printable ASCII characters")
    }
    const path = req.url.split("?")[0]!
    const caller: Caller = {
      actorId,
      requestId,
      ...(spec.method === "POST" && key !== undefined
        ? {
          idempotencyKey: `${actorId}:${key}`,
          // what the key stands for: the route with its ids and the body in canonical form
          idempotencyFingerprint: createHash("sha256").update(`${spec.method} ${path}\n${canonicalJson(body ?? null)}`).digest("hex"),
          idempotencyScope: `api:${params.zone ?? "-"}`
        }
        : {})
    }
    return yield* spec.run({
      params,
      body,
      caller,
      ifMatch: yield* ifMatchOf(req.headers["if-match"]),
      query: new URL(req.url, "http://x").searchParams,
      request: req
    })
  }).pipe(
    Effect.catch((e: unknown) =>
      e instanceof InvalidRequest
        ? Effect.succeed(Res.jsonUnsafe({ error: "invalid_request", error_description: e.description, issues: e.issues }, { status: 400 }))
        : Effect.fail(e))
  )
