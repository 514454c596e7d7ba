// The governed call end to end: per-call mandates from the real sts, through the gateway, to
// upstreams on loopback that record what reaches them. What the upstream receives (the
// injected credential, never the caller's), how the path maps, streaming both ways, limits
// and timeouts, the SSRF guard (a trap listener must never see a connection), redirects,
// rate limits, and that no secret reaches a log line or an audit record.
import http from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freePort } from "../../core/testing/index.ts"
import { type GatewayHarness, startGatewayStack } from "../fixtures/gateway.ts"
import { until } from "../fixtures/harness.ts"

let g: GatewayHarness
let trap: http.Server
let trapPort: number
let trapConnections = 0
const mandates: Array<string> = []

const perCall = async (resource: string) => {
  const m = await g.perCall(resource)
  mandates.push(m)
  return m
}

beforeAll(async () => {
  g = await startGatewayStack("gw_proxy", { gatewayVars: { MAX_BODY_BYTES: "65536", UPSTREAM_TIMEOUT_MS: "1500" } })
  trap = http.createServer((_req, res) => res.end("trapped"))
  trap.on("connection", () => void trapConnections++)
  await new Promise<void>((resolve) => trap.listen(0, "127.0.0.1", resolve))
  trapPort = (trap.address() as AddressInfo).port
}, 180_000)
afterAll(async () => {
  trap?.close()
  await g?.close()
})

describe("a governed call", () => {
  it("reaches the upstream with the injected credential and without the caller's", async () => {
    const r = await g.call("/items?q=1", {
      mandate: await perCall("api"),
      resource: "api",
      headers: {
        cookie: "a=b",
        "x-caracal-trace": "x",
        "x-forwarded-for": "203.0.113.9",
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        baggage: "tenant=acme"
      }
    })
    expect(r.status, r.text).toBe(200)
    const seen = g.upstream.seen.at(-1)!
    expect(seen.url).toBe("/base/items?q=1")
    expect(seen.headers["x-upstream-key"]).toBe(`Key ${g.secret}`)
    for (const h of ["authorization", "cookie", "x-caracal-resource", "x-caracal-trace"]) expect(seen.headers[h], h).toBeUndefined()
    expect(seen.headers["x-forwarded-for"]).toBe("203.0.113.9, 127.0.0.1")
    expect(seen.headers["x-forwarded-proto"]).toBe("http")
    expect(seen.headers["x-forwarded-host"]).toBe(new URL(g.gateways[0]!.url).host)
    expect(seen.headers.host).toBe(new URL(g.upstream.url).host)
    expect(seen.headers.traceparent).toBe("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    expect(seen.headers.baggage).toBe("tenant=acme")
    expect(r.headers.get("x-request-id")).toBeTruthy()
  })

  it("strips hop-by-hop headers and those the Connection header names", async () => {
    const mandate = await perCall("plain")
    const status = await new Promise<number>((resolve, reject) => {
      http.get(`${g.gateways[0]!.url}/hop`, {
        headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "plain", connection: "keep-alive, x-drop-me", "x-drop-me": "1", te: "trailers", "keep-alive": "timeout=5", "proxy-authorization": "Basic eA==" }
      }, (res) => {
        res.resume()
        resolve(res.statusCode ?? 0)
      }).on("error", reject)
    })
    expect(status).toBe(200)
    const seen = g.upstream.seen.filter((s) => s.url === "/hop").at(-1)!
    for (const h of ["x-drop-me", "te", "keep-alive", "proxy-authorization"]) expect(seen.headers[h], h).toBeUndefined()
  })

  it("names the resource by its first path segment when there is no X-Caracal-Resource", async () => {
    const r = await g.call("/plain/deep/path?x=y", { mandate: await perCall("plain") })
    expect(r.status, r.text).toBe(200)
    expect(g.upstream.seen.at(-1)!.url).toBe("/deep/path?x=y")
    expect(g.upstream.seen.at(-1)!.headers["x-upstream-key"]).toBeUndefined()
  })

  it("streams request bodies up and responses down without buffering them", async () => {
    const body = "x".repeat(40_000)
    const up = await g.call("/upload", { mandate: await perCall("plain"), resource: "plain", method: "POST", body })
    expect(up.status).toBe(200)
    expect(up.body.bytes).toBe(40_000)
    // the first event arrives while the upstream is still writing (it ends only after 1 s)
    g.upstream.route("/slow-events", (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" })
      res.write("data: first\n\n")
      setTimeout(() => res.end("data: last\n\n"), 1000)
    })
    const mandate = await perCall("plain")
    const started = Date.now()
    const firstAt = await new Promise<number>((resolve, reject) => {
      http.get(`${g.gateways[0]!.url}/slow-events`, { headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "plain" } }, (res) => {
        res.once("data", () => resolve(Date.now()))
        res.resume()
      }).on("error", reject)
    })
    expect(firstAt - started).toBeLessThan(900)
  })

  it("cuts the caller's answer when the upstream drops mid-body, never ending it as complete", async () => {
    // chunked: an ended response would carry the terminating chunk and look whole to the caller
    g.upstream.route("/dropped-chunked", (_req, res) => {
      res.writeHead(200, { "content-type": "text/plain" })
      res.write("partial ")
      setTimeout(() => res.socket?.destroy(), 100)
    })
    g.upstream.route("/dropped-sized", (_req, res) => {
      res.writeHead(200, { "content-type": "text/plain", "content-length": "1000" })
      res.write("partial ")
      setTimeout(() => res.socket?.destroy(), 100)
    })
    for (const path of ["/dropped-chunked", "/dropped-sized"]) {
      const mandate = await perCall("plain")
      const outcome = await new Promise<{ complete: boolean; body: string; status: number }>((resolve) => {
        http.get(`${g.gateways[0]!.url}${path}`, { headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "plain" } }, (res) => {
          let body = ""
          res.on("data", (c: Buffer) => (body += c.toString()))
          res.on("error", () => undefined)
          res.on("close", () => resolve({ complete: res.complete, body, status: res.statusCode ?? 0 }))
        }).on("error", () => resolve({ complete: false, body: "", status: 0 }))
      })
      expect(outcome.status, path).toBe(200)
      expect(outcome.body, path).toBe("partial ")
      expect(outcome.complete, path).toBe(false)
    }
  })

  it("refuses bodies over MAX_BODY_BYTES, declared or chunked, with 413", async () => {
    const big = "y".repeat(100_000)
    const declared = await g.call("/too-big", { mandate: await perCall("plain"), resource: "plain", method: "POST", body: big })
    expect(declared.status).toBe(413)
    expect(g.upstream.seen.filter((s) => s.url === "/too-big")).toHaveLength(0)
    const mandate = await perCall("plain")
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${g.gateways[0]!.url}/too-big-chunked`, {
        method: "POST",
        headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "plain", "transfer-encoding": "chunked" }
      }, (res) => {
        res.resume()
        resolve(res.statusCode ?? 0)
      })
      req.on("error", reject)
      for (let i = 0; i < 10; i++) req.write("z".repeat(10_000))
      req.end()
    })
    expect(status).toBe(413)
  })

  it("answers 504 when the upstream does not start its answer in time, 502 when it cannot be reached", async () => {
    g.upstream.route("/hang", () => {})
    const slow = await g.call("/hang", { mandate: await perCall("plain"), resource: "plain" })
    expect(slow.status).toBe(504)
    expect(slow.body.error).toBe("gateway_timeout")
    const port = await freePort()
    await g.post(`/v1/zones/${g.zone}/resources`, { identifier: "down", scopes: ["read"], upstream_url: `http://127.0.0.1:${port}` })
      .then((r) => g.post(`/v1/zones/${g.zone}/bindings`, { resource_id: r.id, application_id: g.app.id }))
    // allowlisted by CIDR on a replica of its own: the port is not the recorder's
    const gw = await g.startGateway({ UPSTREAM_ALLOWLIST: `127.0.0.1:${g.upstream.port},127.0.0.1:${port}` })
    const res = await fetch(`${gw.url}/x`, { headers: { authorization: `Bearer ${await perCall("down")}`, "x-caracal-resource": "down" } })
    expect(res.status).toBe(502)
  })

  it("returns a redirect to the caller as it is, never following it", async () => {
    g.upstream.route("/redirect", (_req, res) => {
      res.writeHead(302, { location: `http://127.0.0.1:${trapPort}/inside` })
      res.end()
    })
    const r = await g.call("/redirect", { mandate: await perCall("plain"), resource: "plain" })
    expect(r.status).toBe(302)
    expect(r.headers.get("location")).toBe(`http://127.0.0.1:${trapPort}/inside`)
    expect(trapConnections).toBe(0)
  })

  it("refuses upstreams at metadata, loopback and unspecified addresses in every notation, before connecting", async () => {
    const targets = [
      "http://169.254.169.254/latest/meta-data",
      "http://[::ffff:a9fe:a9fe]/",
      "http://2852039166/",
      `http://0.0.0.0:${trapPort}/`,
      `http://[::1]:${trapPort}/`,
      `http://0177.0.0.1:${trapPort}/`,
      `http://localhost:${trapPort}/`
    ]
    for (const [i, upstream_url] of targets.entries()) {
      const identifier = `ssrf-${i}`
      const resource = await g.post(`/v1/zones/${g.zone}/resources`, { identifier, scopes: ["read"], upstream_url })
      await g.post(`/v1/zones/${g.zone}/bindings`, { resource_id: resource.id, application_id: g.app.id })
      const r = await g.call("/", { mandate: await perCall(identifier), resource: identifier })
      expect(r.status, `${upstream_url}: ${r.text}`).toBe(403)
      expect(r.body.error).toBe("upstream_not_allowed")
    }
    expect(trapConnections).toBe(0)
  })

  it("limits calls per (zone, resource, application): past the budget 429 with Retry-After", async () => {
    const resource = await g.post(`/v1/zones/${g.zone}/resources`, { identifier: "limited", scopes: ["read"], upstream_url: g.upstream.url })
    await g.post(`/v1/zones/${g.zone}/bindings`, { resource_id: resource.id, application_id: g.app.id })
    const gw = await g.startGateway({ RATE_LIMIT_PER_MINUTE: "3" })
    const call = async () => fetch(`${gw.url}/limited`, { headers: { authorization: `Bearer ${await perCall("limited")}`, "x-caracal-resource": "limited" } })
    for (let i = 0; i < 3; i++) expect((await call()).status).toBe(200)
    const over = await call()
    expect(over.status).toBe(429)
    expect(over.headers.get("retry-after")).toBe("60")
    // another resource of the same application has its own budget
    const other = await g.post(`/v1/zones/${g.zone}/resources`, { identifier: "limited-2", scopes: ["read"], upstream_url: g.upstream.url })
    await g.post(`/v1/zones/${g.zone}/bindings`, { resource_id: other.id, application_id: g.app.id })
    const other2 = await fetch(`${gw.url}/x`, { headers: { authorization: `Bearer ${await perCall("limited-2")}`, "x-caracal-resource": "limited-2" } })
    expect(other2.status, `${await other2.text()}\n${gw.stdout().slice(-3000)}`).toBe(200)
  })

  it("no credential, mandate or client secret in any log line or audit record", async () => {
    const audit = async () => (await g.api.redis.xrange(g.api.keys.stream("audit"), "-", "+")).map(([, f]) => f.join(" ")).join("\n")
    await until(async () => (await audit()).includes("\"source\":\"gateway\""), 10_000, "gateway audit records")
    const haystacks = [g.logs(), await audit()]
    for (const text of haystacks) {
      expect(text).not.toContain(g.secret)
      expect(text).not.toContain(g.app.secret)
      for (const m of mandates) expect(text).not.toContain(m.split(".")[2]!)
    }
  })
})
