// One HTTP exchange with a Caracal service: JSON or form body, a timeout per attempt,
// typed errors from the RFC 6749 / Caracal error body, and retries with jittered
// backoff for requests the caller marked idempotent (replaying anything else could
// mint a second mandate or a second edge).
import { CaracalError, type CaracalService } from "./errors.ts"

export interface RetryPolicy {
  /** Attempts in all, the first included (default 3). */
  readonly attempts?: number
  /** First backoff in ms, doubled each retry, with full jitter (default 100). */
  readonly baseDelayMs?: number
}

export interface CallOptions {
  readonly service: CaracalService
  readonly method: string
  readonly url: string
  readonly headers?: Record<string, string>
  readonly json?: unknown
  readonly form?: URLSearchParams
  /** Safe to send again: GETs, terminations, and POSTs carrying an Idempotency-Key. */
  readonly idempotent: boolean
  readonly retry?: RetryPolicy | undefined
  readonly timeoutMs?: number | undefined
}

// 502/503/504 mean the request was not served (a proxy, a restart, the service's own 503);
// 429 is a limit here (max_depth_exceeded…), never retried.
const RETRYABLE_STATUS = new Set([502, 503, 504])

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const errorOf = (service: CaracalService, status: number, body: unknown): CaracalError => {
  const b = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>
  const str = (v: unknown) => (typeof v === "string" ? v : undefined)
  return new CaracalError({
    service,
    status,
    code: str(b.error) ?? `http_${status}`,
    description: str(b.error_description) ?? str(b.message) ?? `HTTP ${status}`,
    reason: str(b.reason)
  })
}

export const call = async <T>(o: CallOptions): Promise<{ status: number; body: T; headers: Headers }> => {
  const attempts = o.idempotent ? Math.max(1, o.retry?.attempts ?? 3) : 1
  const base = o.retry?.baseDelayMs ?? 100
  const headers: Record<string, string> = { accept: "application/json", ...o.headers }
  let body: string | undefined
  if (o.json !== undefined) {
    headers["content-type"] = "application/json"
    body = JSON.stringify(o.json)
  } else if (o.form !== undefined) {
    headers["content-type"] = "application/x-www-form-urlencoded"
    body = o.form.toString()
  }
  let last: CaracalError | undefined
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await sleep(Math.random() * base * 2 ** (i - 1))
    let res: Response
    try {
      res = await fetch(o.url, { method: o.method, headers, body, signal: AbortSignal.timeout(o.timeoutMs ?? 10_000) })
    } catch (e) {
      // the URL's host only: never a token, and the cause's message says what went wrong
      const cause = e instanceof Error ? ((e.cause as Error | undefined)?.message ?? e.message) : String(e)
      last = new CaracalError({ service: o.service, status: 0, code: "unreachable", description: `${new URL(o.url).host}: ${cause}` })
      continue
    }
    const text = await res.text()
    let parsed: unknown = undefined
    try {
      parsed = text === "" ? undefined : JSON.parse(text)
    } catch {
      parsed = undefined
    }
    if (res.ok) return { status: res.status, body: parsed as T, headers: res.headers }
    last = errorOf(o.service, res.status, parsed)
    if (!RETRYABLE_STATUS.has(res.status)) throw last
  }
  throw last!
}
