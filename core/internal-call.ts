// HMAC-signed calls between services (api → sts, gateway → sts), as CONTRACTS.md fixes them:
//
//   X-Caracal-Signature: v1 keyid=<id> ts=<unix seconds> sig=<hex HMAC-SHA256(key, "METHOD\nPATH\nts\nhex(sha256(body))")>
//
// PATH is the request path with its query string. The key id is the first 16 hex characters
// of sha256(key), so a verifier holding SERVICE_HMAC_KEY and SERVICE_HMAC_PREVIOUS_KEYS picks
// the right key during a rotation without trying each. A signature is good for 30 s either
// side of the verifier's clock, and once: its value is kept 60 s in Redis db1 (longer than
// the window, so a replay inside the window always finds it). Redis unreachable refuses the
// call (503): a replay check that cannot run must not pass.
import { Clock, Effect, Redacted, Schema } from "effect"
import { type HttpServerError, HttpServerRequest as Req } from "effect/http"
import { createHash, createHmac, timingSafeEqual } from "node:crypto"
import http from "node:http"
import https from "node:https"
import { type HttpError, httpError } from "./http/errors.ts"
import { RedisClient, RedisError } from "./redis/redis.ts"

export const SIGNATURE_HEADER = "x-caracal-signature"
/** How far the signer's clock may be from the verifier's, either way. */
export const MAX_SKEW_SECONDS = 30
/** How long a seen signature is remembered: more than the whole window it could be accepted in. */
export const NONCE_TTL_SECONDS = 60
/** How long the nonce check may wait for Redis before the call is refused. */
const NONCE_TIMEOUT = "2 seconds"

const sha256Hex = (data: string | Uint8Array) => createHash("sha256").update(data).digest("hex")

/** The id a key is known by in the header: the first 16 hex characters of sha256(key). */
export const keyIdOf = (key: Uint8Array): string => sha256Hex(key).slice(0, 16)

const canonical = (method: string, path: string, ts: number, body: string | Uint8Array) =>
  `${method.toUpperCase()}\n${path}\n${ts}\n${sha256Hex(typeof body === "string" ? Buffer.from(body, "utf8") : body)}`

const mac = (key: Uint8Array, method: string, path: string, ts: number, body: string | Uint8Array) =>
  createHmac("sha256", key).update(canonical(method, path, ts, body)).digest()

/** The X-Caracal-Signature value for a request; `path` includes the query string. */
export const signRequest = (
  key: Buffer,
  method: string,
  path: string,
  body: string,
  nowSeconds: number = Math.floor(Date.now() / 1000)
): string => `v1 keyid=${keyIdOf(key)} ts=${nowSeconds} sig=${mac(key, method, path, nowSeconds, body).toString("hex")}`

export type VerifyResult =
  | { readonly ok: true; readonly sig: string }
  | { readonly ok: false; readonly reason: string }

// strict: one form only, lower-case hex, so that one signature has one spelling (it is the nonce)
const HEADER = /^v1 keyid=([0-9a-f]{16}) ts=(\d{1,12}) sig=([0-9a-f]{64})$/

/**
 * Checks a request's signature header against `keys` (the current key first, then rotated-out
 * ones). The reason is for the verifier's log only: the caller gets one uniform refusal.
 */
export const verifyRequest = (
  keys: ReadonlyArray<Buffer>,
  header: string | undefined,
  method: string,
  path: string,
  body: string | Uint8Array,
  nowSeconds: number
): VerifyResult => {
  if (header === undefined || header === "") return { ok: false, reason: "unsigned" }
  const m = HEADER.exec(header)
  if (m === null) return { ok: false, reason: "malformed signature header" }
  const [, keyId, tsText, sig] = m as unknown as [string, string, string, string]
  const ts = Number(tsText)
  if (ts < nowSeconds - MAX_SKEW_SECONDS) return { ok: false, reason: "signature too old" }
  if (ts > nowSeconds + MAX_SKEW_SECONDS) return { ok: false, reason: "signature timestamp in the future" }
  const key = keys.find((k) => keyIdOf(k) === keyId)
  if (key === undefined) return { ok: false, reason: "unknown key id" }
  const expected = mac(key, method, path, ts, body)
  const given = Buffer.from(sig, "hex")
  // both are 32 bytes (the pattern fixes the length), so the comparison leaks nothing
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: "signature mismatch" }
  return { ok: true, sig }
}

/** The keys a verifier accepts: SERVICE_HMAC_KEY, then SERVICE_HMAC_PREVIOUS_KEYS. */
export const serviceHmacKeys = (vars: {
  readonly SERVICE_HMAC_KEY: Redacted.Redacted<Buffer>
  readonly SERVICE_HMAC_PREVIOUS_KEYS: Redacted.Redacted<ReadonlyArray<Buffer>> | undefined
}): ReadonlyArray<Buffer> => [
  Redacted.value(vars.SERVICE_HMAC_KEY),
  ...(vars.SERVICE_HMAC_PREVIOUS_KEYS === undefined ? [] : Redacted.value(vars.SERVICE_HMAC_PREVIOUS_KEYS))
]

const refused = () =>
  httpError(401, "invalid_signature", "the internal call is unsigned, or its signature is invalid, expired or already used")

/**
 * Records a verified signature as used (SET NX EX in db1). Fails with 401 when it was seen
 * before, and with a RedisError (503) when Redis does not answer in time.
 */
export const claimNonce = (sig: string): Effect.Effect<void, HttpError | RedisError, RedisClient> =>
  Effect.gen(function*() {
    const redis = yield* RedisClient
    const key = redis.keys.key("internal-nonce", sig)
    const set = yield* Effect.tryPromise({
      try: () => redis.limits.set(key, "1", "EX", NONCE_TTL_SECONDS, "NX"),
      catch: (cause) => new RedisError({ cause })
    }).pipe(
      Effect.timeoutOrElse({
        duration: NONCE_TIMEOUT,
        orElse: () => Effect.fail(new RedisError({ cause: new Error("nonce check timed out") }))
      })
    )
    if (set !== "OK") {
      yield* Effect.logWarning("internal call refused").pipe(Effect.annotateLogs({ reason: "replayed signature" }))
      return yield* refused()
    }
  })

/**
 * The guard of an internal route: verifies the request's signature over its exact body bytes,
 * then claims its nonce. Returns the body as text for the route to parse. Every refusal is the
 * same 401 invalid_signature; the reason goes to the log.
 */
export const requireSignedCall = (
  keys: ReadonlyArray<Buffer>
): Effect.Effect<string, HttpError | RedisError | HttpServerError.HttpServerError, Req.HttpServerRequest | RedisClient> =>
  Effect.gen(function*() {
    const req = yield* Req.HttpServerRequest
    // the MAC covers the bytes as sent: hashing decoded text would let invalid UTF-8 differ
    // (a body over the service's limit fails here: 413 from the kernel, as on any route)
    const bytes = new Uint8Array(yield* req.arrayBuffer)
    const now = Math.floor((yield* Clock.currentTimeMillis) / 1000)
    const verdict = verifyRequest(keys, req.headers[SIGNATURE_HEADER], req.method, req.url, bytes, now)
    if (!verdict.ok) {
      yield* Effect.logWarning("internal call refused").pipe(Effect.annotateLogs({ reason: verdict.reason }))
      return yield* refused()
    }
    yield* claimNonce(verdict.sig)
    return new TextDecoder().decode(bytes)
  })

// ---- the client --------------------------------------------------------------------------

export interface InternalCallOptions {
  /** The callee's base URL (e.g. STS_URL); may carry a path prefix. */
  readonly baseUrl: string
  /** SERVICE_HMAC_KEY. */
  readonly key: Buffer
  /** Accept any certificate from an https callee (self-signed internal networks only). */
  readonly insecureTls?: boolean
  readonly timeoutMs?: number
}

export interface InternalResponse {
  readonly status: number
  /** The JSON body, or the text when it is not JSON, or undefined when empty. */
  readonly body: unknown
}

/** The callee could not be reached or did not answer in time: the caller answers 503. */
export class InternalCallFailed extends Schema.TaggedError<InternalCallFailed>()("InternalCallFailed", {
  url: Schema.String,
  cause: Schema.Defect()
}) {
  override get message() {
    return `internal call to ${this.url} failed`
  }
}

const DEFAULT_TIMEOUT_MS = 10_000

const parseBody = (text: string): unknown => {
  if (text === "") return undefined
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

// fetch cannot skip certificate checks without a dispatcher from a matching undici; Node's
// own https client can, and this path is for self-signed internal deployments only (and for
// the api's token pass-through, which must honour INSECURE_STS too).
export const nodeRequest = (url: URL, method: string, headers: Record<string, string>, body: string | undefined, timeoutMs: number, insecure: boolean) =>
  new Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }>((resolve, reject) => {
    const client = url.protocol === "https:" ? https : http
    const sized = body === undefined ? headers : { ...headers, "content-length": String(Buffer.byteLength(body, "utf8")) }
    const req = client.request(url, { method, headers: sized, timeout: timeoutMs, ...(insecure ? { rejectUnauthorized: false } : {}) }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (c: Buffer) => chunks.push(c))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8"), headers: res.headers }))
      res.on("error", reject)
    })
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)))
    req.on("error", reject)
    if (body !== undefined) req.write(body)
    req.end()
  })

// The nonce is the signature, and the signature of one request is the same all second long:
// a caller sending the same request twice within a second (a retry, two identical credentials)
// would have the second refused as a replay. So this process never signs one request twice
// with one timestamp: a repeat takes the next second, still well inside the verifier's window.
const lastSigned = new Map<string, number>()
const uniqueTimestamp = (key: Buffer, method: string, path: string, body: string): number => {
  const now = Math.floor(Date.now() / 1000)
  // entries are kept in the order they were last used: the stale ones are at the front
  for (const [k, ts] of lastSigned) {
    if (ts >= now - MAX_SKEW_SECONDS) break
    lastSigned.delete(k)
  }
  const request = `${keyIdOf(key)}\n${method.toUpperCase()}\n${path}\n${sha256Hex(body)}`
  const previous = lastSigned.get(request)
  const ts = previous === undefined || previous < now ? now : previous + 1
  lastSigned.delete(request)
  lastSigned.set(request, ts)
  return ts
}

/**
 * Calls another service's internal route, signed with `opts.key`. `path` is absolute (with
 * any query string) and is resolved against `baseUrl`; the signature covers the path the
 * callee will see. A body is sent as JSON. Rejects with InternalCallFailed when the callee
 * cannot be reached; any HTTP answer (4xx and 5xx included) resolves.
 */
export const internalCall = async (
  opts: InternalCallOptions,
  method: string,
  path: string,
  body?: unknown
): Promise<InternalResponse> => {
  if (!path.startsWith("/")) throw new TypeError(`internal call path must be absolute: ${path}`)
  const base = new URL(opts.baseUrl)
  const url = new URL(`${base.pathname.replace(/\/$/, "")}${path}`, base)
  const text = body === undefined ? undefined : JSON.stringify(body)
  const signedPath = url.pathname + url.search
  const headers: Record<string, string> = {
    [SIGNATURE_HEADER]: signRequest(opts.key, method, signedPath, text ?? "", uniqueTimestamp(opts.key, method, signedPath, text ?? "")),
    accept: "application/json",
    ...(text === undefined ? {} : { "content-type": "application/json" })
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
  try {
    if (opts.insecureTls === true && url.protocol === "https:") {
      const res = await nodeRequest(url, method.toUpperCase(), headers, text, timeoutMs, true)
      return { status: res.status, body: parseBody(res.text) }
    }
    const res = await fetch(url, {
      method: method.toUpperCase(),
      headers,
      ...(text === undefined ? {} : { body: text }),
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs)
    })
    return { status: res.status, body: parseBody(await res.text()) }
  } catch (cause) {
    throw new InternalCallFailed({ url: `${url.origin}${url.pathname}`, cause })
  }
}

/** internalCall as an Effect; an unreachable callee is a 503 temporarily_unavailable. */
export const callInternal = (
  opts: InternalCallOptions,
  method: string,
  path: string,
  body?: unknown
): Effect.Effect<InternalResponse, HttpError> =>
  Effect.tryPromise({ try: () => internalCall(opts, method, path, body), catch: (e) => e }).pipe(
    Effect.tapError((e) => Effect.logWarning("internal call failed").pipe(Effect.annotateLogs({ cause: String(e) }))),
    Effect.mapError(() => httpError(503, "temporarily_unavailable", "an internal service is unavailable"))
  )
