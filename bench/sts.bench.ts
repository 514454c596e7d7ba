// The sts: per-call token exchanges per second over HTTP (16 in flight; client
// authenticated by its ambient mandate, resource bound, policy asked, mandate signed, audit
// record appended) beside the irreducible work of one exchange measured in the same run —
// one OPA decision over REST, one ES256 signature, one XADD, in sequence, 16 in flight —
// then exchange latency at half the measured rate, offered open-loop, beside the irreducible
// work's own latency offered the same way.
import { generateKeyPair, SignJWT } from "jose"
import { Redis } from "ioredis"
import { randomBytes } from "node:crypto"
import http from "node:http"
import { keepAliveAgent } from "../core/http/agents.ts"
import { stackEnv } from "../core/testing/index.ts"
import { decisionPath, makeOpa } from "../services/sts/opa.ts"
import { startApi } from "../test/fixtures/api.ts"
import { until } from "../test/fixtures/harness.ts"
import { gcPauses, machineCpuDuring, openLoop, percentile, printGcBetween, report, throughput } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 2000)
const C = 16
const POLICY = `package caracal.authz

default result := {"allow": false, "reason": "default deny"}

result := {"allow": true, "reason": "bound resource"} if {
  input.action.use == "per_call"
  input.resource.identifier == "api"
}

result := {"allow": true, "reason": "ambient"} if {
  input.action.use == "ambient"
}
`
// the per-(zone, resource, application) budget is lifted: the benchmark is one client
const h = await startApi("bench_sts", { LOG_LEVEL: "warn" }, 1, { LOG_LEVEL: "warn", TOKEN_RATE_PER_MINUTE: "10000000", ...(process.env.BENCH_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_NODE_OPTIONS } : {}) })
const create = async (path: string, body: unknown) => {
  const r = await h.call("POST", path, { body })
  if (r.status !== 201 && r.status !== 200) throw new Error(`${path}: ${r.status} ${r.text}`)
  return r.body
}
const zone = (await create("/v1/zones", { slug: "bench" })).id as string
const app = await create(`/v1/zones/${zone}/applications`, { name: "bench" })
const resource = await create(`/v1/zones/${zone}/resources`, { identifier: "api", scopes: ["read", "write"] })
await create(`/v1/zones/${zone}/bindings`, { resource_id: resource.id, application_id: app.id })
const policy = await create(`/v1/zones/${zone}/policies`, { name: "bench", rego: POLICY })
const set = await create(`/v1/zones/${zone}/policy-sets`, { name: "bench" })
const version = await create(`/v1/zones/${zone}/policy-sets/${set.id}/versions`, { manifest: { policies: [{ policy_id: policy.id }] } })
await create(`/v1/zones/${zone}/policy-sets/${set.id}/activate`, { version_id: version.versions[0].id })

const form = (params: Record<string, string>) => new URLSearchParams(params).toString()
const tokenUrl = `${h.sts.url}/oauth/2/token`
const send = (body: string) => fetch(tokenUrl, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body })
// the timed exchanges go over node:http with a keep-alive pool: fetch (undici) costs about half
// a millisecond of CPU per request, taken from the same two cores the sts, OPA and Redis share
const agent = keepAliveAgent({ maxSockets: 64 })
const post = (body: string) =>
  new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = http.request(tokenUrl, {
      method: "POST",
      agent,
      headers: { "content-type": "application/x-www-form-urlencoded", "content-length": Buffer.byteLength(body) }
    }, (res) => {
      let text = ""
      res.setEncoding("utf8")
      res.on("data", (c: string) => (text += c))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }))
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(body)
  })
let subject = ""
await until(async () => {
  const r = await send(form({ grant_type: "client_credentials", zone_id: zone, application_id: app.id, client_secret: app.client_secret, ttl_seconds: "3600" }))
  if (r.status !== 200) return false
  subject = ((await r.json()) as { access_token: string }).access_token
  return true
}, 60_000, "the policy in OPA")
const exchangeBody = form({
  grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
  subject_token: subject,
  subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
  resource: "api",
  scope: "read"
})
const exchange = async () => {
  const r = await post(exchangeBody)
  if (r.status !== 200) throw new Error(`exchange: ${r.status} ${r.text}`)
}

// the irreducible work, in this process: OPA's decision for the same zone and input shape, a signature, an XADD
const opa = stackEnv().OPA_URL
const { privateKey } = await generateKeyPair("ES256")
const redis = new Redis(stackEnv().REDIS_URL)
const scratch = `bench:${randomBytes(4).toString("hex")}:{audit}:events`
// the input the sts sends for these exchanges (exchange.ts), so OPA parses and evaluates the same document
const decisionInput = () => {
  const r = { identifier: "api", id: resource.id, scopes: ["read", "write"] }
  return {
    zone_id: zone,
    principal: { application_id: app.id, client_id: app.id, user_id: app.id, agent_session_id: null, delegation_edge_id: null, traits: [] },
    resource: r,
    resources: [r],
    action: { use: "per_call", scopes: ["read"] },
    session: null,
    delegation: null,
    context: { time: new Date().toISOString(), request_id: randomBytes(16).toString("hex"), grant_type: "urn:ietf:params:oauth:grant-type:token-exchange" }
  }
}
const opaClient = makeOpa(opa)
const irreducible = async () => {
  // the sts's own OPA client (the same HTTP client and pool the exchange uses)
  const r = await opaClient.evaluate(decisionPath(zone), decisionInput(), AbortSignal.timeout(5000))
  if (!(r.body as { result?: { allow?: boolean } }).result?.allow) throw new Error("the ceiling's decision did not allow")
  const jwt = await new SignJWT({ scope: "read", zone_id: zone }).setProtectedHeader({ alg: "ES256", kid: "k" }).setIssuedAt().setExpirationTime("15m")
    .setJti(randomBytes(18).toString("base64url")).sign(privateKey)
  await redis.xadd(scratch, "*", "e", jwt.slice(0, 200))
}

await throughput(200, C, exchange)
await throughput(200, C, irreducible)
const rates: Array<number> = []
const ceilings: Array<number> = []
for (let round = 0; round < 2; round++) {
  ceilings.push(await throughput(N, C, irreducible))
  rates.push(await throughput(N, C, exchange))
}
const rate = Math.max(...rates)
report({ bench: "sts", metric: "per_call_exchanges_per_s_c16_vs_opa_sign_xadd", value: rate, unit: "exchanges/s", ceiling: Math.max(...ceilings) })

const gc0 = await gcPauses(h.sts.url)
const offered = rate / 2
const seconds = Number(process.env.BENCH_SECONDS ?? 10)
const { result: latencies, ...exchangeCpu } = await machineCpuDuring(() => openLoop(offered, seconds, exchange))
const gc1 = await gcPauses(h.sts.url)
printGcBetween("sts half-rate phase", gc0, gc1)
// the irreducible work offered the same way at the same rate: how much of the tail the
// machine (two cores shared by the sts, OPA, Redis and this process) gives any work here
const { result: irreducibleLatencies, ...irreducibleCpu } = await machineCpuDuring(() => openLoop(offered, seconds, irreducible))
report({ bench: "sts", metric: `exchange_p99_ms_at_half_rate_${Math.round(offered)}_per_s`, value: percentile(latencies, 99), unit: "ms", ceiling: 20 })
report({ bench: "sts", metric: "exchange_p50_ms_at_half_rate", value: percentile(latencies, 50), unit: "ms", ceiling: 20 })
report({ bench: "sts", metric: "irreducible_p99_ms_at_half_rate", value: percentile(irreducibleLatencies, 99), unit: "ms", ceiling: 20 })
// how busy the two cores were in each phase (all processes), and what the hypervisor took
report({ bench: "sts", metric: "machine_cpu_busy_pct_at_half_rate", value: exchangeCpu.busyPct, unit: "%", ceiling: 100 })
report({ bench: "sts", metric: "machine_cpu_steal_pct_at_half_rate", value: exchangeCpu.stealPct, unit: "%", ceiling: 100 })
report({ bench: "sts", metric: "machine_cpu_stalled_pct_at_half_rate", value: exchangeCpu.stalledPct, unit: "%", ceiling: 100 })
report({ bench: "sts", metric: "irreducible_machine_cpu_busy_pct_at_half_rate", value: irreducibleCpu.busyPct, unit: "%", ceiling: 100 })
report({ bench: "sts", metric: "irreducible_machine_cpu_stalled_pct_at_half_rate", value: irreducibleCpu.stalledPct, unit: "%", ceiling: 100 })
await redis.del(scratch)
redis.disconnect()
agent.destroy()
await h.close()
