// The api: create-application commands (decide + event + api_records row + outbox + key,
// grouped, 64 in flight) beside the backbone's single-statement write ceiling (one INSERT
// statement per command with the same rows, 16 in flight) measured in the same run; and a
// list of 1,000 records over HTTP (p99) beside a bare Node server answering the same bytes
// (timed by bench/latency-client.ts, a process of its own).
import { Effect } from "effect"
import { sql } from "kysely"
import http from "node:http"
import { randomBytes, randomUUID } from "node:crypto"
import type { AddressInfo } from "node:net"
import { v7 as uuidv7 } from "uuid"
import { makeKeys } from "../core/redis/keys.ts"
import { makeProducer } from "../core/producer.ts"
import { outboxSignal } from "../core/outbox-signal.ts"
import { freshDatabase, runScript, stackEnv, startService } from "../core/testing/index.ts"
import { apiProducer, makeCommands } from "../services/api/commands.ts"
import { verifierFor } from "../services/api/secrets.ts"
import { percentile, report, throughput } from "./lib.ts"

const N = Number(process.env.BENCH_N ?? 4000)
const db = await freshDatabase("bench_api")
const kdb = db.database.db
const producer = makeProducer(apiProducer, { database: db.database, keys: makeKeys("benchapi"), signer: undefined })
const commands = makeCommands(producer)
outboxSignal.setLeading("api", true)
const zone = uuidv7()
const caller = { actorId: "admin:bench", requestId: "bench" }
await Effect.runPromise(commands.create("zone", caller, zone, zone, { slug: "bench", name: "bench", description: "", metadata: {} }))

const createApplication = (i: number, run: string) =>
  Effect.runPromise(commands.create("application", caller, zone, uuidv7(), {
    name: `${run}-${i}`,
    registrationMethod: "manual",
    credentialType: "client_secret",
    traits: [],
    allowedScopes: ["agent:lifecycle"],
    metadata: {},
    secretVerifiers: [verifierFor(`cs_${randomBytes(32).toString("base64url")}`, true, new Date())]
  }))

// the ceiling: the same three rows per command, one statement each, no decider, no key
const singleStatement = (i: number, run: string) => {
  const id = uuidv7()
  const record = JSON.stringify({ name: `${run}-${i}`, allowedScopes: ["agent:lifecycle"], secretVerifiers: [] })
  return sql`
  with e as (
    insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
    values (${randomUUID()}, ${zone}, 'application', ${id}, 1, 'ApplicationCreated', 1, now(), '{"kind":"admin","id":"b"}'::jsonb, ${randomUUID()}, ${record}::jsonb)
    returning position),
  o as (insert into outbox (producer, stream, event_position, aggregate_key) select 'bench', 'bench:{application}:events', position, ${`application/${id}`} from e)
  insert into api_records (id, type, zone_id, version, status, record, created_at, updated_at)
  values (${id}, 'application', ${zone}, 1, 'active', ${record}::jsonb, now(), now())`.execute(kdb)
}

await throughput(300, 16, (i) => singleStatement(i, "warm-s"))
await throughput(640, 64, (i) => createApplication(i, "warm-c"))
const ceiling: Array<number> = []
const creates: Array<number> = []
for (let round = 0; round < 2; round++) {
  ceiling.push(await throughput(N, 16, (i) => singleStatement(i, `s${round}`)))
  creates.push(await throughput(N, 64, (i) => createApplication(i, `c${round}`)))
}
report({ bench: "api", metric: "create_application_per_s_c64_vs_single_statement_c16", value: Math.max(...creates), unit: "cmd/s", ceiling: Math.max(...ceiling) })

// ---- a list of 1,000 records over HTTP
const listZone = uuidv7()
await Effect.runPromise(commands.create("zone", caller, listZone, listZone, { slug: "list", name: "list", description: "", metadata: {} }))
await throughput(1000, 32, (i) =>
  Effect.runPromise(commands.create("resource", caller, listZone, uuidv7(), {
    identifier: `r-${i}`,
    name: `resource ${i}`,
    scopes: ["read", "write"],
    upstreamUrl: "http://127.0.0.1:9",
    prefix: "",
    credentialProviderId: null,
    requiresGrant: false,
    metadata: { n: i }
  })))
// the list is timed on a settled system: the write phase's outbox rows count as published
// (otherwise the api's relay spends the whole measurement draining tens of thousands of
// them), and autovacuum has nothing left to do after that phase
await sql`update outbox set status = 'sent', sent_at = now() where status = 'pending'`.execute(kdb)
await sql`vacuum analyze`.execute(kdb)
const token = randomBytes(24).toString("hex")
const api = await startService("api", {
  DATABASE_URL: db.url,
  REDIS_URL: stackEnv().REDIS_URL,
  REDIS_KEY_PREFIX: `benchapi${randomBytes(3).toString("hex")}`,
  INSECURE_HTTP: "true",
  ADMIN_TOKEN: token,
  STS_URL: "http://127.0.0.1:9",
  SERVICE_HMAC_KEY: randomBytes(32).toString("hex"),
  LOG_LEVEL: "warn",
  // e.g. BENCH_NODE_OPTIONS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the api
  ...(process.env.BENCH_NODE_OPTIONS ? { NODE_OPTIONS: process.env.BENCH_NODE_OPTIONS } : {})
})
const listPath = `/v1/zones/${listZone}/resources?limit=1000`
const body = await (await fetch(`${api.url}${listPath}`, { headers: { authorization: `Bearer ${token}` } })).text()
if ((JSON.parse(body) as { items: Array<unknown> }).items.length !== 1000) throw new Error("the list did not return 1,000 records")
const bare = http.createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(body))
await new Promise<void>((r) => bare.listen(0, "127.0.0.1", r))
const bareUrl = `http://127.0.0.1:${(bare.address() as AddressInfo).port}${listPath}`
// timed from a client process of its own, api and bare server in alternating rounds of 50
const client = await runScript("bench/latency-client.ts", ["6", "50", "20", `authorization:Bearer ${token}`, `${api.url}${listPath}`, bareUrl], {}, 300_000)
if (client.code !== 0) throw new Error(`latency client: ${client.stderr}`)
const timings = JSON.parse(client.stdout) as Record<string, Array<number>>
const apiMs = timings[`${api.url}${listPath}`]!
const bareMs = timings[bareUrl]!
report({ bench: "api", metric: "list_1000_p99_ms_vs_bare_node_same_bytes", value: percentile(apiMs, 99), unit: "ms", ceiling: percentile(bareMs, 99) })
report({ bench: "api", metric: "list_1000_p50_ms_vs_bare_node_same_bytes", value: percentile(apiMs, 50), unit: "ms", ceiling: percentile(bareMs, 50) })
bare.close()
await api.stop()
await db.close()
