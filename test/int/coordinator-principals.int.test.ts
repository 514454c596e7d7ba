// The coordinator's projection of the api's zones and applications, and the spawns it
// refuses: two coordinator replicas sharing one database, api events written to that
// database by a producer named "api" (relayed to the streams, so the consumer group projects
// them) and by one named "api-held" whose outbox no relay publishes until the end (so only
// the log has those events: read-your-writes). One replica is killed; the other goes on
// projecting. Finally `caracal projections rebuild` gives the same table.
import { Effect } from "effect"
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Aggregate, DomainEvent } from "../../core/command.ts"
import { type DatabaseShape, makeDatabase, makeKysely } from "../../core/db/database.ts"
import { makeProducer, type ProducerShape } from "../../core/producer.ts"
import { makeRelay, type Relay } from "../../core/relay.ts"
import { signingKey } from "../../core/signing.ts"
import { runScript, stackEnv } from "../../core/testing/index.ts"
import { API_REVOCATIONS, events as apiEvents } from "../../services/api/events.ts"
import { PRINCIPALS } from "../../services/coordinator/api-status.ts"
import { type CoordinatorHarness, startCoordinator } from "../fixtures/coordinator.ts"
import { until } from "../fixtures/harness.ts"

let h: CoordinatorHarness
let database: DatabaseShape
let api: ProducerShape
let held: ProducerShape
const relays: Array<{ relay: Relay; running: Promise<void> }> = []

const producer = (name: string) =>
  makeProducer({
    name,
    registry: apiEvents,
    // as the api publishes: one stream per aggregate type, archives also on the revocation stream
    streams: (keys) => (e) => API_REVOCATIONS.has(e.type) ? [keys.stream(e.aggregateType), keys.stream("revocation")] : [keys.stream(e.aggregateType)]
  }, { database, keys: h.keys, signer: signingKey(h.streamsKey) })

const startRelay = (name: string) => {
  const relay = makeRelay({
    producer: name,
    databaseUrl: h.dbUrl,
    database,
    redis: h.redis,
    pollMs: 50,
    batchSize: 100,
    maxAttempts: 100,
    signer: signingKey(h.streamsKey)
  })
  relays.push({ relay, running: relay.run() })
}

beforeAll(async () => {
  h = await startCoordinator("co_principals", {}, 2)
  database = makeDatabase(makeKysely(h.dbUrl, 4))
  api = producer("api")
  held = producer("api-held")
  startRelay("api")
}, 120_000)

afterAll(async () => {
  for (const r of relays) r.relay.stop()
  await Promise.all(relays.map((r) => r.running))
  await database?.db.destroy()
  await h?.close()
})

/** A test stand-in for the api's aggregates: its decider emits the event it is given. */
const emitter = (type: "zone" | "application"): Aggregate<null, DomainEvent, DomainEvent, never> => ({
  type,
  initialState: null,
  decide: (event) => Effect.succeed([event]),
  evolve: (state) => state
})

const write = (via: ProducerShape, type: "zone" | "application", id: string, zoneId: string, event: DomainEvent) =>
  Effect.runPromise(via.execute({
    aggregate: emitter(type),
    id,
    command: event,
    meta: { zoneId, actor: { kind: "admin", id: "test" }, now: new Date(), correlationId: `t-${id}-${event.type}` },
    result: () => null
  }))

const application = { name: "App", registrationMethod: "manual", credentialType: "client_secret", traits: [], allowedScopes: ["agent:lifecycle"], metadata: {}, secretVerifiers: [] }
const zone = (slug: string) => ({ slug, name: slug, description: "", metadata: {} })
const created = (id: string, via = api, zoneId = "z1") => write(via, "application", id, zoneId, { type: "ApplicationCreated", data: application })
const archived = (id: string, via = api, zoneId = "z1") => write(via, "application", id, zoneId, { type: "ApplicationArchived", data: { reason: "test" } })

const row = async (kind: string, id: string) =>
  (await sql<{ kind: string; id: string; zone_id: string; status: string }>`
    select kind, id, zone_id, status from coordinator_known_principals where kind = ${kind} and id = ${id}`.execute(database.db)).rows[0]
const projected = (kind: string, id: string, status: string) =>
  until(async () => (await row(kind, id))?.status === status, 30_000, `${kind} ${id} projected ${status}`)

const spawn = async (app: string, opts: { zone?: string; base?: string } = {}) => {
  const zoneId = opts.zone ?? "z1"
  const token = await h.token(app, { zone: zoneId })
  return h.call("POST", `/zones/${zoneId}/agents`, { token, body: { application_id: app }, ...(opts.base ? { base: opts.base } : {}) })
}

const table = async () =>
  (await sql`select kind, id, zone_id, status, updated_at from coordinator_known_principals order by kind, id`.execute(database.db)).rows

describe("when the application is active", () => {
  it("is projected active and spawns through either replica", async () => {
    await created("app-live")
    await projected("application", "app-live", "active")
    expect(await row("application", "app-live")).toEqual({ kind: "application", id: "app-live", zone_id: "z1", status: "active" })
    for (const r of h.replicas) expect((await spawn("app-live", { base: r.url })).status).toBe(201)
  })
})

describe("when the application is archived and the projection has caught up", () => {
  it("both replicas refuse a spawn with 403 application_inactive", async () => {
    await archived("app-live")
    await projected("application", "app-live", "archived")
    for (const r of h.replicas) {
      expect(await spawn("app-live", { base: r.url })).toMatchObject({ status: 403, body: { error: "application_inactive" } })
    }
  })
})

describe("when only the log has the application (its events not yet on the streams)", () => {
  it("answers from the log: an archived application is refused, a created one spawns", async () => {
    await created("app-held-archived", held)
    await archived("app-held-archived", held)
    await created("app-held-active", held)
    // nothing publishes the held outbox: the projection has no row for either
    expect(await row("application", "app-held-archived")).toBeUndefined()
    expect(await row("application", "app-held-active")).toBeUndefined()
    for (const r of h.replicas) {
      expect(await spawn("app-held-archived", { base: r.url })).toMatchObject({ status: 403, body: { error: "application_inactive" } })
      expect((await spawn("app-held-active", { base: r.url })).status).toBe(201)
    }
  })
})

describe("when the zone is archived", () => {
  it("refuses a spawn in it with 403 zone_inactive (before the application's own status), and other zones go on", async () => {
    await write(api, "zone", "z2", "z2", { type: "ZoneCreated", data: zone("z2") })
    await created("app-z2", api, "z2")
    await projected("application", "app-z2", "active")
    expect((await spawn("app-z2", { zone: "z2" })).status).toBe(201)
    await write(api, "zone", "z2", "z2", { type: "ZoneArchived", data: { reason: "test" } })
    await projected("zone", "z2", "archived")
    expect(await row("zone", "z2")).toEqual({ kind: "zone", id: "z2", zone_id: "z2", status: "archived" })
    await archived("app-z2", api, "z2")
    for (const r of h.replicas) {
      expect(await spawn("app-z2", { zone: "z2", base: r.url })).toMatchObject({ status: 403, body: { error: "zone_inactive" } })
    }
    expect((await spawn("app-other-zone")).status).toBe(201)
  })

  it("refuses from the log too, before the projection has the zone", async () => {
    await write(held, "zone", "z3", "z3", { type: "ZoneCreated", data: zone("z3") })
    await write(held, "zone", "z3", "z3", { type: "ZoneArchived", data: { reason: "test" } })
    expect(await row("zone", "z3")).toBeUndefined()
    // the test sts has no zone z3: the check runs in SQL, so ask the database as a spawn's statement does
    const refused = await sql`select coordinator_require_active('z3', 'app-x')`.execute(database.db).then(() => "allowed", (e: { code?: string; message?: string }) => `${e.code} ${e.message}`)
    expect(refused).toBe("CA403 zone_inactive")
  })
})

describe("when no api created the application", () => {
  it("is allowed: an id unknown to the projection and to the log is not refused", async () => {
    expect(await row("application", "app-unknown")).toBeUndefined()
    const r = await spawn("app-unknown")
    expect(r.status).toBe(201)
    expect(r.body).toMatchObject({ application_id: "app-unknown", status: "active" })
  })
})

describe("when one replica is killed", () => {
  it("the other goes on projecting new events and refuses their archive", async () => {
    const [dead, live] = h.replicas as [(typeof h.replicas)[0], (typeof h.replicas)[0]]
    expect(await dead.stop("SIGKILL")).toBe("SIGKILL")
    await created("app-late")
    await archived("app-late")
    // only the live replica's group member can have applied these
    await projected("application", "app-late", "archived")
    expect(await spawn("app-late", { base: live.url })).toMatchObject({ status: 403, body: { error: "application_inactive" } })
    expect((await spawn("app-unknown", { base: live.url })).status).toBe(201)
  })
})

describe("caracal projections rebuild", () => {
  it("gives the same table as the live projection", async () => {
    // publish what only the log had: the live projection takes it from the stream
    startRelay("api-held")
    await projected("application", "app-held-archived", "archived")
    await projected("application", "app-held-active", "active")
    await projected("zone", "z3", "archived")
    const live = await table()
    expect(live.length).toBe(7) // app-live, app-held-archived, app-held-active, app-z2, app-late; z2, z3
    const result = await runScript("cli/main.ts", ["projections", "rebuild", PRINCIPALS], {
      DATABASE_URL: h.dbUrl,
      REDIS_URL: stackEnv().REDIS_URL,
      CARACAL_STREAM_PREFIX: h.keys.prefix,
      // every log row's MAC is checked on the way
      STREAMS_HMAC_KEY: h.streamsKey.toString("hex")
    }, 60_000)
    expect(result.code, result.stderr).toBe(0)
    expect(result.stdout).toMatch(new RegExp(`^rebuilt ${PRINCIPALS}: \\d+ events in `))
    expect(await table()).toEqual(live)
  })
})
