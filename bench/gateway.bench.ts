// The gateway's hot path beside its ceiling, measured in the same run: a bare Node reverse
// proxy (bench/proxy-peers.ts, same keep-alive pool, no checks) in front of the same upstream.
// Governed requests carry a fresh per-call mandate each (signed with the zone's real key,
// with the claims the sts mints), a credential is injected, every decision is audited.
//   throughput at c32 (target ≥ 0.4 of the bare proxy), p50 at c1 (added ≤ 1 ms), p99 at c32
//   (≤ 30 ms), and the revocation-to-refusal delay over 100 trials (a streaming call in
//   flight is cut; target p99 ≤ 250 ms).
import http from "node:http"
import { keepAliveAgent } from "../core/http/agents.ts"
import { randomUUID } from "node:crypto"
import { SignJWT } from "jose"
import { freePort, spawnScript } from "../core/testing/index.ts"
import { startGatewayStack, zoneSigner } from "../test/fixtures/gateway.ts"
import { until } from "../test/fixtures/harness.ts"
import { gcPauses, percentile, printGcBetween, report } from "./lib.ts"

const C_HIGH = 32
const N_HIGH = Number(process.env.BENCH_GATEWAY_N ?? 20_000)
const N_LOW = 2_000
const TRIALS = Number(process.env.BENCH_GATEWAY_TRIALS ?? 100)

const upstreamPort = await freePort()
const barePort = await freePort()
const peers = [
  spawnScript("bench/proxy-peers.ts", ["upstream", String(upstreamPort)], {}),
  spawnScript("bench/proxy-peers.ts", ["bare", String(barePort), String(upstreamPort)], {})
]
const g = await startGatewayStack("bench_gw", {
  gatewayVars: {
    UPSTREAM_ALLOWLIST: "127.0.0.1/32",
    RATE_LIMIT_PER_MINUTE: "100000000",
    LOG_LEVEL: "warn",
    JTI_CACHE_SIZE: "10000",
    // e.g. BENCH_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the gateway
    ...(process.env.BENCH_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_NODE_OPTIONS } : {})
  }
})
const provider = (await g.post(`/v1/zones/${g.zone}/providers`, { name: "bench-key", header: "x-api-key", value_prefix: "" })).id
const credential = (await g.post(`/v1/zones/${g.zone}/credentials`, { provider_id: provider, material: "bench-secret-material" })).id
const resource = (await g.post(`/v1/zones/${g.zone}/resources`, { identifier: "bench", scopes: ["read"], upstream_url: `http://127.0.0.1:${upstreamPort}` })).id
await g.post(`/v1/zones/${g.zone}/bindings`, { resource_id: resource, application_id: g.app.id, credential_id: credential })
const signer = await zoneSigner(g.api, g.zone)
await until(async () => {
  const r = await fetch(`http://127.0.0.1:${barePort}/`).catch(() => undefined)
  return r?.status === 200
}, 30_000, "the bare proxy")

/** A per-call mandate for `bench`, as the sts mints them. */
const mint = () => {
  const now = Math.floor(Date.now() / 1000)
  return new SignJWT({ sub: g.app.id, zone_id: g.zone, client_id: g.app.id, scope: "read", use: "per_call", target: ["bench"], sid: randomUUID() })
    .setProtectedHeader({ alg: "ES256", kid: signer.kid, typ: "JWT" })
    .setIssuer(g.api.issuer)
    .setAudience("bench")
    .setIssuedAt(now)
    .setExpirationTime(now + 900)
    .setJti(randomUUID())
    .sign(signer.key)
}
const mintMany = async (n: number) => {
  const out: Array<string> = []
  for (let i = 0; i < n; i++) out.push(await mint())
  return out
}

/** `n` requests over `c` keep-alive connections; throughput and sorted latencies (ms). */
const load = async (port: number, c: number, n: number, headersFor: (i: number) => http.OutgoingHttpHeaders) => {
  const agent = keepAliveAgent({ maxSockets: c })
  const latencies: Array<number> = []
  let next = 0
  let failures = 0
  const one = (i: number) =>
    new Promise<void>((resolve) => {
      const t = performance.now()
      const req = http.request({ host: "127.0.0.1", port, path: "/items", agent, headers: headersFor(i) }, (res) => {
        res.resume()
        res.on("end", () => {
          if (res.statusCode !== 200) failures++
          latencies.push(performance.now() - t)
          resolve()
        })
      })
      req.on("error", () => {
        failures++
        resolve()
      })
      req.end()
    })
  const start = performance.now()
  await Promise.all(Array.from({ length: c }, async () => {
    while (next < n) await one(next++)
  }))
  const seconds = (performance.now() - start) / 1000
  agent.destroy()
  if (failures > 0) throw new Error(`${failures} of ${n} requests failed on port ${port}`)
  return { rps: n / seconds, latencies: latencies.sort((a, b) => a - b) }
}

const gatewayPort = g.gateways[0]!.port
const governed = (mandates: Array<string>) => (i: number) => ({ authorization: `Bearer ${mandates[i]}`, "x-caracal-resource": "bench" })
const bare = () => ({})

// warm-up: connections, JIT, the JWKS and credential caches
await load(barePort, 8, 1000, bare)
await load(gatewayPort, 8, 1000, governed(await mintMany(1000)))

const highMandates = await mintMany(N_HIGH)
const lowMandates = await mintMany(N_LOW)
const bareHigh = await load(barePort, C_HIGH, N_HIGH, bare)
const gc0 = await gcPauses(`http://127.0.0.1:${gatewayPort}`)
const gwHigh = await load(gatewayPort, C_HIGH, N_HIGH, governed(highMandates))
const gc1 = await gcPauses(`http://127.0.0.1:${gatewayPort}`)
printGcBetween("gateway c32 phase", gc0, gc1)
const bareLow = await load(barePort, 1, N_LOW, bare)
const gwLow = await load(gatewayPort, 1, N_LOW, governed(lowMandates))

report({ bench: "gateway", metric: "governed_rps_c32_vs_bare_proxy", value: gwHigh.rps, unit: "req/s", ceiling: bareHigh.rps })
report({ bench: "gateway", metric: "p50_ms_c1_vs_bare_proxy", value: percentile(gwLow.latencies, 50), unit: "ms", ceiling: percentile(bareLow.latencies, 50) })
report({ bench: "gateway", metric: "added_p50_ms_c1_vs_1ms_target", value: percentile(gwLow.latencies, 50) - percentile(bareLow.latencies, 50), unit: "ms", ceiling: 1 })
report({ bench: "gateway", metric: "p99_ms_c32_vs_30ms_target", value: percentile(gwHigh.latencies, 99), unit: "ms", ceiling: 30 })
report({ bench: "gateway", metric: "bare_proxy_p99_ms_c32", value: percentile(bareHigh.latencies, 99), unit: "ms", ceiling: 30 })

// revocation → refusal: a streaming call in flight is cut when its session is terminated
// (`session`), and when the root of its agent tree is (`subtree`: the coordinator's cascade
// terminates the child, whose mandate the stream runs on)
const lifecycle = await g.ambient()
const spawn = async (parent?: string) => {
  const r = await g.coord("POST", `/zones/${g.zone}/agents`, lifecycle, { application_id: g.app.id, ...(parent === undefined ? {} : { parent_id: parent }) })
  if (r.status !== 201) throw new Error(`spawn: ${r.text}`)
  return r.body.id as string
}
/** Opens a stream on `session`'s mandate, terminates `victim`, and answers how long the cut took (ms). */
const trial = async (session: string, victim: string) => {
  const mandate = await g.perCall("bench", { session })
  // (resolved with an object: a promise resolved with a promise would wait for that one)
  const { closed } = await new Promise<{ closed: Promise<number> }>((resolve, reject) => {
    http.get({ host: "127.0.0.1", port: gatewayPort, path: "/events", headers: { authorization: `Bearer ${mandate}`, "x-caracal-resource": "bench" } }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`stream: ${res.statusCode}`))
      const ended = new Promise<number>((done) => res.on("close", () => done(performance.now())))
      res.once("data", () => resolve({ closed: ended }))
      res.resume()
    }).on("error", reject)
  })
  const revokedAt = performance.now()
  const revoked = await g.coord("DELETE", `/zones/${g.zone}/agents/${victim}`, lifecycle)
  if (revoked.status !== 200) throw new Error(`terminate: ${revoked.text}`)
  return (await closed) - revokedAt
}
const figures = async (name: string, run: () => Promise<number>, trials: number) => {
  const delays: Array<number> = []
  for (let t = 0; t < trials; t++) delays.push(await run())
  delays.sort((a, b) => a - b)
  report({ bench: "gateway", metric: `${name}_revocation_to_cut_p50_ms_${trials}_trials`, value: percentile(delays, 50), unit: "ms", ceiling: 250 })
  report({ bench: "gateway", metric: `${name}_revocation_to_cut_p99_ms_${trials}_trials`, value: percentile(delays, 99), unit: "ms", ceiling: 250 })
}
await figures("session", async () => {
  const s = await spawn()
  return trial(s, s)
}, TRIALS)
await figures("subtree", async () => {
  const root = await spawn()
  const child = await spawn(root)
  return trial(child, root)
}, Math.max(1, Math.floor(TRIALS / 2)))

await g.close()
for (const p of peers) p.child.kill("SIGKILL")
process.exit(0)
