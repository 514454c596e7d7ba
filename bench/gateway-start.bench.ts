// A gateway replica's start on a large log: 10,000 bindings (and their resources) among
// 1,000,000 unrelated events. Ready (its /ready 200) means every binding is projected; the
// target is 10 s. The catch-up reads only the event types it projects, so the unrelated
// events cost an index walk, never a decode.
import { startGatewayStack } from "../test/fixtures/gateway.ts"
import { type SeedEvent, seedLog } from "../test/fixtures/log-seed.ts"
import { report } from "./lib.ts"

const BINDINGS = 10_000
const NOISE = Number(process.env.BENCH_GATEWAY_NOISE ?? 1_000_000)

const g = await startGatewayStack("bench_gw_start")
function* log(): Generator<SeedEvent> {
  const perBinding = Math.floor(NOISE / BINDINGS)
  for (let i = 0; i < BINDINGS; i++) {
    const resource = `res_b_${i}`
    yield {
      zoneId: g.zone, aggregateType: "resource", aggregateId: resource, sequence: 1, type: "ResourceCreated",
      data: { identifier: `b${i}`, name: "", scopes: ["read"], upstreamUrl: g.upstream.url, prefix: "", credentialProviderId: null, requiresGrant: false, metadata: {} }
    }
    yield {
      zoneId: g.zone, aggregateType: "binding", aggregateId: `bnd_b_${i}`, sequence: 1, type: "BindingCreated",
      data: { resourceId: resource, applicationId: g.app.id, credentialId: null }
    }
    for (let n = 0; n < perBinding; n++) {
      yield { zoneId: `zone_${n % 97}`, aggregateType: "noise", aggregateId: `noise_${i}_${n}`, sequence: 1, type: "NoiseRecorded", data: { i, n } }
    }
  }
}
const seeding = performance.now()
await seedLog(g.api.dbUrl, g.api.env.STREAMS_HMAC_KEY, log())
process.stderr.write(`seeded ${BINDINGS} bindings and ${NOISE} unrelated events in ${Math.round(performance.now() - seeding)} ms\n`)

const started = performance.now()
const gw = await g.startGateway()
const seconds = (performance.now() - started) / 1000
const body = (await (await fetch(`${gw.url}/ready`)).json()) as { details: { bindings: { bindings: number } } }
if (body.details.bindings.bindings < BINDINGS) throw new Error(`ready with ${body.details.bindings.bindings} bindings`)
report({ bench: "gateway-start", metric: `ready_s_with_${BINDINGS}_bindings_among_${NOISE}_events_vs_10s_target`, value: seconds, unit: "s", ceiling: 10 })
await g.close()
process.exit(0)
