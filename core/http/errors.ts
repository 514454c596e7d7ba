// The single place where failures become HTTP answers. Every error body has the shape
// {error, error_description} with a stable code; infrastructure failures become 503 and
// anything unexpected 500 — the cause goes to the log with the request id, never to the client.
import { Schema } from "effect"
import { HttpServerResponse as Res } from "effect/http"

export class HttpError extends Schema.TaggedError<HttpError>()("HttpError", {
  status: Schema.Number,
  code: Schema.String,
  description: Schema.String
}) {}

export const httpError = (status: number, code: string, description: string) => new HttpError({ status, code, description })

export const errorResponse = (status: number, code: string, description: string) =>
  Res.jsonUnsafe({ error: code, error_description: description }, { status })

export interface Answer {
  readonly status: number
  readonly code: string
  readonly description: string
  /** true when the failure is ours, not the caller's: log it with its cause. */
  readonly internal: boolean
}

/** A service adds its own domain errors by returning an Answer, or undefined to pass. */
export type ErrorMapper = (error: unknown) => Answer | undefined

const tagOf = (e: unknown): string | undefined =>
  typeof e === "object" && e !== null && "_tag" in e && typeof e._tag === "string" ? e._tag : undefined

const schemaIssue = (e: unknown): string => {
  const msg = e instanceof Error ? e.message : String(e)
  // Schema messages describe the input, not our internals; keep them short.
  return msg.length > 500 ? `${msg.slice(0, 500)}…` : msg
}

export const answerFor = (error: unknown, mapper?: ErrorMapper): Answer => {
  const custom = mapper?.(error)
  if (custom) return custom
  const tag = tagOf(error)
  switch (tag) {
    case "HttpError": {
      const e = error as HttpError
      return { status: e.status, code: e.code, description: e.description, internal: e.status >= 500 }
    }
    case "HttpServerError": {
      const reason = (error as { reason: { _tag: string; reason?: string } }).reason
      if (reason._tag === "RouteNotFound") return { status: 404, code: "not_found", description: "no such route", internal: false }
      if (reason._tag === "RequestParseError") {
        return reason.reason === "BodyTooLarge"
          ? { status: 413, code: "payload_too_large", description: "request body exceeds the limit", internal: false }
          : { status: 400, code: "invalid_request", description: "malformed request body", internal: false }
      }
      return { status: 400, code: "invalid_request", description: "bad request", internal: false }
    }
    case "IdempotencyKeyReused":
      return {
        status: 422,
        code: "idempotency_key_reused",
        description: "this Idempotency-Key was used with a different request; use a new key",
        internal: false
      }
    case "SchemaError":
      return { status: 400, code: "invalid_request", description: schemaIssue(error), internal: false }
    case "DbError":
    case "RedisError":
      return { status: 503, code: "temporarily_unavailable", description: "a dependency is unavailable", internal: true }
    default:
      return { status: 500, code: "server_error", description: "internal error", internal: true }
  }
}
