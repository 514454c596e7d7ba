// The HTTP kernel every service reuses: routes in, a Node HTTP(S) server out, with
// request ids, body limits, JSON errors, access logs, metrics, /health, /ready, /metrics
// and graceful shutdown (in-flight requests finish; new connections are refused).
import { NodeHttpServer } from "@effect/platform-node"
import { ByteSize, Cause, Context, Effect, Layer, Metric, Scope } from "effect"
import { HttpRouter, HttpServer, HttpServerRequest as Req, HttpServerResponse as Res } from "effect/http"
import { HttpIncomingMessage } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import { observeGc } from "../gc-metrics.ts"
import { randomUUID } from "node:crypto"
import nodeHttp from "node:http"
import https from "node:https"
import { answerFor, errorResponse, type ErrorMapper } from "./errors.ts"

/** 1 MiB: enough for any control-plane document; larger bodies are refused with 413. */
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024

export interface ReadyCheck {
  readonly name: string
  readonly check: Effect.Effect<void, unknown>
  /** What /ready shows beside the verdict (e.g. how many records a projection holds). */
  readonly detail?: () => unknown
}

// Checks a service's own layers add while they are built (an in-memory projection that is
// ready once caught up): they exist only after the configuration is read, so they cannot be
// listed up front. One service per process, so one list per process.
const registered: Array<ReadyCheck> = []

/** Adds a check to this process's /ready (e.g. "caught up"), for as long as it runs. */
export const addReadyCheck = (check: ReadyCheck) => Effect.sync(() => void registered.push(check))

/**
 * A plain Node handler that takes the requests it claims before the router sees them: for a
 * route that streams both ways and must cut a stream mid-flight (the gateway's proxy), which
 * a response value cannot express. /health, /ready and /metrics stay with the router.
 */
export interface FrontHandler {
  readonly claims: (req: nodeHttp.IncomingMessage) => boolean
  readonly handle: (req: nodeHttp.IncomingMessage, res: nodeHttp.ServerResponse) => void
}

export class Front extends Context.Service<Front, FrontHandler>()("caracal/core/http/Front") {}

/** The server with `front` answering the requests it claims; every other request goes on to the router. */
const withFront = (server: nodeHttp.Server, front: FrontHandler | undefined): nodeHttp.Server => {
  if (front === undefined) return server
  const emit = server.emit.bind(server)
  server.emit = ((event: string, ...args: Array<unknown>) => {
    if (event === "request") {
      const [req, res] = args as [nodeHttp.IncomingMessage, nodeHttp.ServerResponse]
      if (front.claims(req)) {
        front.handle(req, res)
        return true
      }
    }
    return emit(event, ...args)
  }) as typeof server.emit
  return server
}

export interface ServeOptions<RF = never> {
  readonly service: string
  readonly port: number
  readonly host: string
  readonly tls?: { readonly cert: Buffer; readonly key: Buffer } | undefined
  readonly readyChecks: ReadonlyArray<ReadyCheck>
  readonly maxBodyBytes?: number
  readonly mapError?: ErrorMapper
  readonly shutdownTimeoutMs?: number
  /** A Front layer: requests it claims bypass the router (built with the service's other layers). */
  readonly front?: Layer.Layer<Front, unknown, RF>
}

const SANE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** The id of the request being handled (the client's X-Request-Id if sane, else generated). */
export const RequestId = Context.Reference<string>("caracal/core/http/RequestId", { defaultValue: () => "none" })

export const requestIdOf = (header: string | undefined): string =>
  header !== undefined && SANE_REQUEST_ID.test(header) ? header : randomUUID()

const requests = Metric.counter("http_requests_total", { description: "HTTP requests by method and status", incremental: true })
const duration = Metric.histogram("http_request_duration_seconds", {
  description: "HTTP request latency",
  boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
})

/** Counts a request a Front handler answered in the kernel's request metrics, as the router's are counted. */
export const observeRequest = (service: string, method: string, status: number, seconds: number): void =>
  Effect.runSync(Effect.andThen(
    Metric.update(Metric.withAttributes(requests, { service, method, status: String(status) }), 1),
    Metric.update(Metric.withAttributes(duration, { service }), seconds)
  ))

/** Wraps the router: the only place where errors, ids, limits, logs and metrics are handled. */
export const withKernel = <E, R>(
  app: Effect.Effect<Res.HttpServerResponse, E, R>,
  opts: Pick<ServeOptions, "service" | "maxBodyBytes" | "mapError">
): Effect.Effect<Res.HttpServerResponse, never, R | Req.HttpServerRequest> =>
  Effect.gen(function*() {
    const req = yield* Req.HttpServerRequest
    const requestId = requestIdOf(req.headers["x-request-id"])
    // every log line written while handling the request carries its id
    return yield* handle(req, app, opts).pipe(
      Effect.map((res) => Res.setHeader(res, "x-request-id", requestId)),
      Effect.annotateLogs({ request_id: requestId }),
      Effect.provideService(RequestId, requestId)
    )
  })

const handle = <E, R>(
  req: Req.HttpServerRequest,
  app: Effect.Effect<Res.HttpServerResponse, E, R>,
  opts: Pick<ServeOptions, "service" | "maxBodyBytes" | "mapError">
): Effect.Effect<Res.HttpServerResponse, never, R> =>
  Effect.gen(function*() {
    const started = performance.now()
    const limit = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES
    const declared = Number(req.headers["content-length"] ?? "0")
    const res = yield* (declared > limit
      // refuse before reading a byte of an announced oversize body
      ? Effect.succeed(errorResponse(413, "payload_too_large", `request body exceeds ${limit} bytes`))
      : app.pipe(
        // a body without a length (chunked) is cut off at the same limit while it is read
        Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(limit)),
        Effect.catchCause((cause) => {
          const failure = Cause.findErrorOption(cause)
          const error = failure._tag === "Some" ? failure.value : Cause.squash(cause)
          const answer = answerFor(error, opts.mapError)
          const log = answer.internal
            ? Effect.logError("request failed").pipe(Effect.annotateLogs({ cause: Cause.pretty(cause) }))
            : Effect.void
          const response = errorResponse(answer.status, answer.code, answer.description)
          // RFC 6750: a 401 tells the client which scheme to use and what was wrong
          return Effect.as(log, answer.status === 401
            ? Res.setHeader(response, "www-authenticate", `Bearer error="${answer.code.replace(/[^a-z_]/g, "")}"`)
            : response)
        })
      ))
    const seconds = (performance.now() - started) / 1000
    const status = String(res.status)
    yield* Metric.update(Metric.withAttributes(requests, { service: opts.service, method: req.method, status }), 1)
    yield* Metric.update(Metric.withAttributes(duration, { service: opts.service }), seconds)
    if (req.url !== "/metrics" && req.url !== "/health") {
      yield* Effect.logInfo("http").pipe(
        Effect.annotateLogs({ method: req.method, path: req.url.split("?")[0], status: res.status, ms: Math.round(seconds * 1000) })
      )
    }
    return res
  })

/** /health is liveness only; /ready runs this service's dependency checks; /metrics includes GC pauses. */
export const operationalRoutes = (service: string, readyChecks: ReadonlyArray<ReadyCheck>) => {
  observeGc()
  return Layer.mergeAll(
    HttpRouter.add("GET", "/health", Effect.succeed(Res.jsonUnsafe({ status: "ok", service }))),
    HttpRouter.add(
      "GET",
      "/ready",
      Effect.gen(function*() {
        // details are read before the checks: a count shown beside "ok" was taken no later than the verdict
        const all = [...readyChecks, ...registered]
        const details = Object.fromEntries(all.flatMap((c) => (c.detail === undefined ? [] : [[c.name, c.detail()]])))
        const results = yield* Effect.forEach(all, (c) =>
          c.check.pipe(
            Effect.timeout("2 seconds"),
            Effect.as({ name: c.name, ok: true }),
            Effect.catchCause(() => Effect.succeed({ name: c.name, ok: false }))
          ), { concurrency: "unbounded" })
        const ready = results.every((r) => r.ok)
        const checks = Object.fromEntries(results.map((r) => [r.name, r.ok ? "ok" : "unavailable"]))
        return Res.jsonUnsafe({ status: ready ? "ready" : "not_ready", service, checks, ...(Object.keys(details).length > 0 ? { details } : {}) },
          { status: ready ? 200 : 503 })
      })
    ),
    HttpRouter.add(
      "GET",
      "/metrics",
      Effect.map(PrometheusMetrics.format(), (text) => Res.text(text, { contentType: "text/plain; version=0.0.4; charset=utf-8" }))
    )
  )
}

/** Serves `routes` (a layer of HttpRouter.add/use) with the kernel on Node's HTTP or HTTPS server. */
export const serve = <E, R, RF = never>(routes: Layer.Layer<never, E, R>, opts: ServeOptions<RF>) => {
  const app = Layer.mergeAll(routes, operationalRoutes(opts.service, opts.readyChecks))
  const server = (front: FrontHandler | undefined) =>
    NodeHttpServer.layer(
      () => withFront(opts.tls ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key }) : nodeHttp.createServer(), front),
      { port: opts.port, host: opts.host, gracefulShutdownTimeout: `${opts.shutdownTimeoutMs ?? 10_000} millis` }
    )
  const listening = Layer.effectDiscard(
    HttpServer.addressFormattedWith((address) =>
      Effect.logInfo("listening").pipe(Effect.annotateLogs({ address, tls: opts.tls !== undefined })))
  )
  // The routes are built before the server listens. Node's server accepts connections from
  // listen() on, and a request that arrives before the handler is attached has no listener:
  // it is never answered (a client that connects as soon as the port opens waits forever
  // while slow route layers — caches, key checks — are still being built).
  //
  // Built with the service's own memo map, not a fork of it (HttpRouter.toHttpEffect forks it,
  // and a fork's entries are invisible to its parent): a layer that the routes and the
  // background work both name — a cache, an in-memory projection and the consumer that feeds
  // it — is then one instance. With a fork the routes got a second, unfed copy of each.
  return Layer.unwrap(Effect.gen(function*() {
    const router = yield* toSharedHttpEffect(app)
    const front = opts.front === undefined ? undefined : Context.get(yield* buildShared(opts.front), Front)
    return Layer.merge(HttpServer.serve(withKernel(router, opts)), listening).pipe(Layer.provide(server(front)))
  }))
}

/** Builds a layer with the current memo map (see serve): what it shares with other layers is one instance. */
const buildShared = <A, E, R>(layer: Layer.Layer<A, E, R>): Effect.Effect<Context.Context<A>, E, R> =>
  Effect.contextWith((context: Context.Context<never>) => {
    const scope = Context.get(context as Context.Context<Scope.Scope>, Scope.Scope)
    const memoMap = Context.getOrUndefined(context, Layer.CurrentMemoMap) ?? Layer.makeMemoMapUnsafe()
    return Layer.buildWithMemoMap(layer, memoMap, scope)
  }) as unknown as Effect.Effect<Context.Context<A>, E, R>

/** HttpRouter.toHttpEffect, built with the current memo map instead of a fork of it; the router itself is fresh. */
const toSharedHttpEffect = <A, E, R>(appLayer: Layer.Layer<A, E, R>): ReturnType<typeof HttpRouter.toHttpEffect<A, E, R>> =>
  Effect.contextWith((context: Context.Context<never>) => {
    const scope = Context.get(context as Context.Context<Scope.Scope>, Scope.Scope)
    const memoMap = Context.getOrUndefined(context, Layer.CurrentMemoMap) ?? Layer.makeMemoMapUnsafe()
    return Effect.map(
      Layer.buildWithMemoMap(Layer.provideMerge(appLayer, Layer.fresh(HttpRouter.layer)), memoMap, scope),
      (built) => Context.get(built, HttpRouter.HttpRouter).asHttpEffect()
    )
  }) as unknown as ReturnType<typeof HttpRouter.toHttpEffect<A, E, R>>
