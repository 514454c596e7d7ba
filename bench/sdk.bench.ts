// The SDK's overhead per governed fetch: the same request with the same pre-minted
// mandate sent (a) straight to a bare local HTTP server with the headers written by hand
// and (b) through caracal.fetch (prefix routing, trace and baggage headers, the agent read
// from AsyncLocalStorage), alternating, one at a time; the overhead is the median of the
// per-pair differences (target ≤ 0.2 ms). The bare server stands in for the gateway, so
// both paths hit the same listener. Then the per-call exchange (SDK → real sts: client
// authenticated by the ambient mandate, policy asked, mandate signed, audit appended).
// Then the same through the real gateway: each call needs its own mandate (the gateway
// refuses a replay), so mandates are minted first and each pair spends two; beside it the
// whole governed path (exchange + gateway + upstream) and the bare proxy ceiling (a Node
// proxy that only pipes the request to the same upstream).
import { createServer, request as httpRequest } from "node:http"
import type { AddressInfo } from "node:net"
import { Agent, Caracal, CoordinatorClient } from "../sdk/src/index.ts"
import { sdkFor, startGatewayStack } from "../test/fixtures/gateway.ts"
import { startZone } from "../test/fixtures/zone.ts"
import { percentile, report } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 5000)
const EXCHANGES = Number(process.env.BENCH_EXCHANGES ?? 300)
const GATEWAY_PAIRS = Number(process.env.BENCH_GATEWAY_PAIRS ?? 500)

const server = createServer((req, res) => {
  req.resume()
  req.on("end", () => res.end('{"ok":true}'))
})
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
const gatewayUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
const mandate = `eyJhbGciOiJFUzI1NiJ9.${Buffer.from(JSON.stringify({ use: "per_call", aud: "api", pad: "x".repeat(400) })).toString("base64url")}.sig`

const caracal = new Caracal({
  coordinator: new CoordinatorClient({ baseUrl: "http://127.0.0.1:1" }),
  zoneId: "z",
  applicationId: "a",
  subjectToken: mandate,
  stsUrl: "http://127.0.0.1:1",
  gatewayUrl,
  resources: [{ resourceId: "reports", upstreamPrefix: "http://upstream.test/reports" }, { resourceId: "api", upstreamPrefix: "http://upstream.test" }]
})
const agent = new Agent(caracal, {
  id: "0190b0c0-0000-7000-8000-000000000001", zone_id: "z", application_id: "a", parent_id: null, root_id: "0190b0c0-0000-7000-8000-000000000001",
  depth: 0, kind: "instance", status: "active", ttl_seconds: 3600, metadata: {}, created_at: "", expires_at: "", ended_at: null, end_reason: null
}, "4bf92f3577b34da6a3ce929d0e0e4736")

const direct = async () => {
  const res = await fetch(`${gatewayUrl}/v1/items/1`, {
    headers: {
      authorization: `Bearer ${mandate}`,
      "x-caracal-resource": "api",
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      baggage: `caracal.agent_session_id=${agent.id}`
    }
  })
  await res.text()
}
const governed = async () => {
  const res = await caracal.fetch("http://upstream.test/v1/items/1", undefined, { mandate })
  await res.text()
}

const directMs: Array<number> = []
const sdkMs: Array<number> = []
const diffs: Array<number> = []
await agent.run(async () => {
  for (let i = 0; i < 500; i++) await Promise.all([direct(), governed()]) // warm-up (JIT, sockets)
  for (let i = 0; i < N; i++) {
    // alternate which goes first so neither always meets a colder socket
    const order = i % 2 === 0 ? [direct, governed] : [governed, direct]
    const t: Array<number> = []
    for (const f of order) {
      const s = performance.now()
      await f()
      t.push(performance.now() - s)
    }
    const [d, g] = i % 2 === 0 ? [t[0]!, t[1]!] : [t[1]!, t[0]!]
    directMs.push(d)
    sdkMs.push(g)
    diffs.push(g - d)
  }
})
server.close()
const sorted = (a: Array<number>) => [...a].sort((x, y) => x - y)
const directP50 = percentile(sorted(directMs), 50)
report({ bench: "sdk", metric: "direct_fetch_p50", value: directP50, unit: "ms", ceiling: directP50 })
report({ bench: "sdk", metric: "governed_fetch_preminted_p50", value: percentile(sorted(sdkMs), 50), unit: "ms", ceiling: directP50 })
report({ bench: "sdk", metric: "governed_fetch_overhead_p50", value: percentile(sorted(diffs), 50), unit: "ms", ceiling: 0.2 })
report({ bench: "sdk", metric: "governed_fetch_overhead_p99", value: percentile(sorted(diffs), 99), unit: "ms", ceiling: 0.2 })

// the per-call exchange through the SDK, against the real sts, beside a bare HTTP round trip
if (EXCHANGES > 0) {
  const z = await startZone("bench_sdk")
  try {
    const real = new Caracal({
      coordinator: new CoordinatorClient({ baseUrl: z.coordinator.url }),
      zoneId: z.zoneId,
      applicationId: z.app.id,
      subjectToken: await z.ambient(),
      stsUrl: z.h.sts.url
    })
    const times: Array<number> = []
    const health: Array<number> = []
    for (let i = 0; i < 20; i++) await real.exchange("api")
    for (let i = 0; i < EXCHANGES; i++) {
      let s = performance.now()
      await real.exchange("api")
      times.push(performance.now() - s)
      s = performance.now()
      await (await fetch(`${z.h.sts.url}/health`)).text()
      health.push(performance.now() - s)
    }
    const healthP50 = percentile(sorted(health), 50)
    report({ bench: "sdk", metric: "exchange_p50", value: percentile(sorted(times), 50), unit: "ms", ceiling: healthP50 })
    report({ bench: "sdk", metric: "exchange_p99", value: percentile(sorted(times), 99), unit: "ms", ceiling: percentile(sorted(health), 99) })
  } finally {
    await z.close()
  }
}

// through the real gateway
if (GATEWAY_PAIRS > 0) {
  const g = await startGatewayStack("bench_sdk_gw", { gatewayVars: { LOG_LEVEL: "warn" } })
  const proxy = createServer((req, res) => {
    const up = httpRequest({ host: "127.0.0.1", port: g.upstream.port, path: `/base${req.url}`, method: req.method, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers)
      ur.pipe(res)
    })
    req.pipe(up)
  })
  await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r))
  const proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`
  try {
    const real = await sdkFor(g, [{ resourceId: "api", upstreamPrefix: "http://upstream.example" }])
    const session = await real.startSession()
    const mandates: Array<string> = []
    for (let i = 0; i < 2 * GATEWAY_PAIRS + 100; i++) mandates.push((await session.exchange("api")).accessToken)
    const viaGateway = async (m: string) => {
      const res = await fetch(`${g.gateways[0]!.url}/items`, {
        headers: { authorization: `Bearer ${m}`, "x-caracal-resource": "api", traceparent: `00-${session.traceId}-00f067aa0ba902b7-01`, baggage: `caracal.agent_session_id=${session.id}` }
      })
      await res.text()
      if (res.status !== 200) throw new Error(`gateway answered ${res.status}`)
    }
    const viaSdk = async (m: string) => {
      const res = await session.fetch("http://upstream.example/items", undefined, { mandate: m })
      await res.text()
      if (res.status !== 200) throw new Error(`gateway answered ${res.status}`)
    }
    const bare = async () => void (await (await fetch(`${proxyUrl}/items`)).text())
    for (let i = 0; i < 50; i++) {
      await viaGateway(mandates.pop()!)
      await viaSdk(mandates.pop()!)
      await bare()
    }
    const gw: Array<number> = []
    const sdk: Array<number> = []
    const d: Array<number> = []
    const proxied: Array<number> = []
    for (let i = 0; i < GATEWAY_PAIRS; i++) {
      let t = performance.now()
      await bare()
      proxied.push(performance.now() - t)
      const a = mandates.pop()!
      const b = mandates.pop()!
      const order = i % 2 === 0
      const times: Array<number> = []
      for (const f of order ? [() => viaGateway(a), () => viaSdk(b)] : [() => viaSdk(b), () => viaGateway(a)]) {
        t = performance.now()
        await f()
        times.push(performance.now() - t)
      }
      const [x, y] = order ? [times[0]!, times[1]!] : [times[1]!, times[0]!]
      gw.push(x)
      sdk.push(y)
      d.push(y - x)
    }
    const whole: Array<number> = []
    for (let i = 0; i < Math.min(GATEWAY_PAIRS, 300); i++) {
      const t = performance.now()
      const res = await session.fetch("http://upstream.example/items")
      await res.text()
      whole.push(performance.now() - t)
    }
    const bareP50 = percentile(sorted(proxied), 50)
    report({ bench: "sdk", metric: "gateway_direct_p50", value: percentile(sorted(gw), 50), unit: "ms", ceiling: bareP50 })
    report({ bench: "sdk", metric: "gateway_sdk_preminted_p50", value: percentile(sorted(sdk), 50), unit: "ms", ceiling: bareP50 })
    report({ bench: "sdk", metric: "gateway_sdk_overhead_p50", value: percentile(sorted(d), 50), unit: "ms", ceiling: 0.2 })
    report({ bench: "sdk", metric: "governed_path_p50", value: percentile(sorted(whole), 50), unit: "ms", ceiling: bareP50 })
    report({ bench: "sdk", metric: "governed_path_p99", value: percentile(sorted(whole), 99), unit: "ms", ceiling: percentile(sorted(proxied), 99) })
    await session.end()
  } finally {
    proxy.close()
    await g.close()
  }
}
