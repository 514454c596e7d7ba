// The HTTP kernel: statuses and error shape for bad input, body limits, request ids,
// Prometheus metrics, JSON logs, readiness and graceful shutdown.
import { Effect, Fiber, Layer, Logger, Schema } from "effect"
import { HttpRouter, HttpServerRequest as Req, HttpServerResponse as Res } from "effect/http"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { serve } from "../../core/http/server.ts"
import { emptyDatabase, freePort, spareRedisServer, stackEnv, startService, type RunningService, type TestDatabase } from "../../core/testing/index.ts"

const Echo = Schema.Struct({ name: Schema.String })
const routes = Layer.mergeAll(
  HttpRouter.add("POST", "/echo", Effect.map(Req.schemaBodyJson(Echo), (b) => Res.jsonUnsafe(b))),
  HttpRouter.add("GET", "/slow", Effect.as(Effect.sleep("600 millis"), Res.jsonUnsafe({ done: true }))),
  HttpRouter.add("GET", "/boom", Effect.die(new Error("secret internal detail")))
)

const startInProcess = async (maxBodyBytes = 1024) => {
  const port = await freePort()
  const layer = serve(routes, { service: "test", port, host: "127.0.0.1", readyChecks: [], maxBodyBytes, shutdownTimeoutMs: 5000 })
  // no logger: the deliberate defect below would print its stack into the test output
  const fiber = Effect.runFork(Layer.launch(layer).pipe(Effect.provide(Logger.layer([]))))
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; i < 100; i++) {
    if (await fetch(`${url}/health`).then(() => true, () => false)) break
    await new Promise((r) => setTimeout(r, 20))
  }
  return { url, stop: () => Effect.runPromise(Fiber.interrupt(fiber)) }
}

describe("the HTTP kernel", () => {
  let server: Awaited<ReturnType<typeof startInProcess>>
  beforeAll(async () => {
    server = await startInProcess()
  })
  afterAll(() => server.stop())

  const expectError = async (res: Response, status: number, code: string) => {
    expect(res.status).toBe(status)
    expect(res.headers.get("content-type")).toMatch(/application\/json/)
    const body = await res.json() as Record<string, unknown>
    expect(body.error).toBe(code)
    expect(typeof body.error_description).toBe("string")
    return body
  }

  it("answers an unknown route with 404 not_found", async () => {
    await expectError(await fetch(`${server.url}/nowhere`), 404, "not_found")
  })
  it("answers malformed JSON with 400 invalid_request", async () => {
    await expectError(await fetch(`${server.url}/echo`, { method: "POST", body: "{\"name\":", headers: { "content-type": "application/json" } }), 400, "invalid_request")
  })
  it("answers a body of the wrong shape with 400 invalid_request", async () => {
    await expectError(await fetch(`${server.url}/echo`, { method: "POST", body: JSON.stringify({ name: 5 }), headers: { "content-type": "application/json" } }), 400, "invalid_request")
  })
  it("answers an oversize body with 413, with or without a Content-Length", async () => {
    const big = JSON.stringify({ name: "x".repeat(5000) })
    await expectError(await fetch(`${server.url}/echo`, { method: "POST", body: big, headers: { "content-type": "application/json" } }), 413, "payload_too_large")
    // a streamed (chunked) body has no Content-Length: the limit applies while reading
    const stream = new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode(big)); c.close() } })
    await expectError(await fetch(`${server.url}/echo`, { method: "POST", body: stream, duplex: "half", headers: { "content-type": "application/json" } } as RequestInit), 413, "payload_too_large")
  })
  it("accepts a good body", async () => {
    const res = await fetch(`${server.url}/echo`, { method: "POST", body: JSON.stringify({ name: "ada" }), headers: { "content-type": "application/json" } })
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ name: "ada" })
  })
  it("turns a defect into 500 server_error without leaking it", async () => {
    const body = await expectError(await fetch(`${server.url}/boom`), 500, "server_error")
    expect(JSON.stringify(body)).not.toContain("secret internal detail")
  })
  it("keeps a sane X-Request-Id and replaces an insane one", async () => {
    expect((await fetch(`${server.url}/health`, { headers: { "x-request-id": "req-42" } })).headers.get("x-request-id")).toBe("req-42")
    const replaced = (await fetch(`${server.url}/health`, { headers: { "x-request-id": "bad id<script>" } })).headers.get("x-request-id")
    expect(replaced).toMatch(/^[0-9a-f-]{36}$/)
  })
  it("finishes an in-flight request on shutdown and then refuses connections", async () => {
    const other = await startInProcess()
    const inflight = fetch(`${other.url}/slow`)
    await new Promise((r) => setTimeout(r, 100))
    const stopping = other.stop()
    const res = await inflight
    expect(res.status).toBe(200)
    expect(await res.json()).toEqual({ done: true })
    await stopping
    await expect(fetch(`${other.url}/health`)).rejects.toThrow()
  })
})

// A line of the Prometheus text exposition format (version 0.0.4).
const METRIC_NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*"
const LABELS = `\\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\.)*",?)*\\}`
const VALUE = "(?:[-+]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE][-+]?\\d+)?|[-+]?Inf|NaN)"
const SAMPLE = new RegExp(`^(${METRIC_NAME})(${LABELS})? (${VALUE})(?: -?\\d+)?$`)
const HELP = new RegExp(`^# HELP (${METRIC_NAME}) .*$`)
const TYPE = new RegExp(`^# TYPE (${METRIC_NAME}) (counter|gauge|histogram|summary|untyped)$`)

export const parsePrometheus = (text: string) => {
  const types = new Map<string, string>()
  const samples: Array<{ name: string; labels: string; value: string }> = []
  for (const line of text.split("\n")) {
    if (line === "") continue
    const t = TYPE.exec(line)
    if (t) {
      types.set(t[1]!, t[2]!)
      continue
    }
    if (HELP.test(line)) continue
    const s = SAMPLE.exec(line)
    if (!s) throw new Error(`not Prometheus text: ${JSON.stringify(line)}`)
    samples.push({ name: s[1]!, labels: s[2] ?? "", value: s[3]! })
  }
  return { types, samples }
}

describe("a running service", () => {
  let db: TestDatabase
  let svc: RunningService
  beforeAll(async () => {
    db = await emptyDatabase("http")
    svc = await startService("coordinator", { DATABASE_URL: db.url, REDIS_URL: stackEnv().REDIS_URL, INSECURE_HTTP: "true", STS_URL: "http://127.0.0.1:1" })
  })
  afterAll(async () => {
    await svc.stop()
    await db.drop()
  })

  it("serves /health and /ready 200 with its dependencies up", async () => {
    expect((await fetch(`${svc.url}/health`)).status).toBe(200)
    const ready = await fetch(`${svc.url}/ready`)
    expect(ready.status).toBe(200)
    expect(await ready.json()).toMatchObject({ status: "ready", checks: { postgres: "ok", redis: "ok" } })
  })

  it("serves /metrics as valid Prometheus text that counts requests", async () => {
    await fetch(`${svc.url}/nowhere`)
    const res = await fetch(`${svc.url}/metrics`)
    expect(res.headers.get("content-type")).toMatch(/^text\/plain/)
    const { types, samples } = parsePrometheus(await res.text())
    expect(types.get("http_requests_total")).toBe("counter")
    expect(types.get("http_request_duration_seconds")).toBe("histogram")
    expect(samples.some((s) => s.name === "http_requests_total" && s.labels.includes(`status="404"`))).toBe(true)
    expect(samples.some((s) => s.name === "http_request_duration_seconds_bucket")).toBe(true)
  })

  it("shows its garbage collections on /metrics, by kind, once it has collected", async () => {
    const minor = async () => {
      const { types, samples } = parsePrometheus(await (await fetch(`${svc.url}/metrics`)).text())
      const count = samples.find((s) => s.name === "nodejs_gc_pause_seconds_count" && s.labels.includes(`kind="minor"`))
      return { type: types.get("nodejs_gc_pause_seconds"), count: Number(count?.value ?? 0) }
    }
    // requests allocate until the young generation fills and is collected
    const deadline = Date.now() + 30_000
    while ((await minor()).count === 0 && Date.now() < deadline) {
      await Promise.all(Array.from({ length: 50 }, () => fetch(`${svc.url}/ready`).then((r) => r.arrayBuffer())))
    }
    const seen = await minor()
    expect(seen.type).toBe("histogram")
    expect(seen.count).toBeGreaterThan(0)
  }, 60_000)

  it("writes JSON log lines with level, message and the request id", async () => {
    await fetch(`${svc.url}/ready`, { headers: { "x-request-id": "trace-me-1" } })
    await new Promise((r) => setTimeout(r, 100))
    const lines = svc.stdout().trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)
    for (const l of lines) {
      expect(typeof l.level).toBe("string")
      expect(typeof l.message).toBe("string")
    }
    expect(lines.find((l) => l.request_id === "trace-me-1")).toMatchObject({ level: "info", message: "http", path: "/ready", status: 200 })
  })
})

describe("when Redis goes away", () => {
  it("/ready answers 503 naming redis while /health stays 200", async () => {
    const db = await emptyDatabase("ready")
    const redis = await spareRedisServer([])
    const svc = await startService("coordinator", { DATABASE_URL: db.url, REDIS_URL: redis.url, INSECURE_HTTP: "true", STS_URL: "http://127.0.0.1:1" })
    try {
      expect((await fetch(`${svc.url}/ready`)).status).toBe(200)
      await redis.stop()
      const res = await fetch(`${svc.url}/ready`)
      expect(res.status).toBe(503)
      expect(await res.json()).toMatchObject({ status: "not_ready", checks: { redis: "unavailable", postgres: "ok" } })
      expect((await fetch(`${svc.url}/health`)).status).toBe(200)
    } finally {
      await svc.stop()
      await db.drop()
    }
  })
})
