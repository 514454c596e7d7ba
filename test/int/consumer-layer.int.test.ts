// The consumer layer as services use it, in its three modes, with two replicas each: a
// consumer group sharing the work (one replica stopped midway), every replica reading every
// event (their Redis connections killed midway), and a stream of records without log rows
// (duplicates and poison). Also read-your-writes from the log, and dead groups removed so
// they do not pin trimming.
import { ConfigProvider, Effect, Fiber, Layer } from "effect"
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Consumer, type ConsumerDefinition } from "../../core/consumer-layer.ts"
import { Database } from "../../core/db/database.ts"
import { MemoryProjectionRunner, refreshPostgres } from "../../core/projection.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { sign } from "../../core/signing.ts"
import { stackEnv } from "../../core/testing/index.ts"
import { trimStream } from "../../core/trim.ts"
import { coordinatorSpec } from "../../services/coordinator/config.ts"
import { makeHarness, type Harness, until } from "../fixtures/harness.ts"
import { balancesProjection, ledgerTable, registry, memoryBalances } from "../fixtures/ledger.ts"

let h: Harness
let relay: ReturnType<Harness["relay"]>
let relaying: Promise<void>
beforeAll(async () => {
  h = await makeHarness("layer")
  relay = h.relay()
  relaying = relay.run()
})
afterAll(async () => {
  relay.stop()
  await relaying
  await h.close()
})

const table = async (name: string) =>
  (await sql<Record<string, unknown>>`select * from ${sql.table(name)} order by account_id`.execute(h.db.database.db)).rows

/** Runs a consumer layer like a service would; returns a function that stops it. */
/** The name the replicas' Redis connections carry (CLIENT SETNAME), so the test can kill exactly those. */
const clientName = () => `t-${h.redis.keys.prefix}`

const start = (def: ConsumerDefinition) => {
  const infra = Layer.mergeAll(
    Database.layerFromUrl(h.db.url, 4),
    RedisClient.layerWith({ url: stackEnv().REDIS_URL, prefix: h.redis.keys.prefix, strict: false, connectionName: clientName() })
  )
  const config = ConfigProvider.layer(ConfigProvider.fromUnknown({ STREAMS_HMAC_KEY: h.signer.key.export().toString("hex") }))
  const fiber = Effect.runFork(Layer.launch(Consumer.layer(coordinatorSpec, def).pipe(Layer.provide(infra), Layer.provide(config))))
  return () => Effect.runPromise(Fiber.interrupt(fiber))
}

/** Opens ten accounts under the prefix (unless they exist), then deposits into them. */
const writeSome = async (prefix: string, n: number, open = true) => {
  for (let i = 0; i < n; i++) {
    await h.run(`${prefix}-${i % 10}`, open && i < 10 ? { _tag: "Open", owner: prefix } : { _tag: "Deposit", amount: i + 1 })
  }
}

describe("a group consumer with two replicas, one stopped midway", () => {
  it("catches up from the log, shares the stream, and ends equal to the live state with each event applied once", async () => {
    await writeSome("g", 40) // before any consumer: the catch-up reads these from the log
    await ledgerTable("p_group").execute(h.db.database.db)
    const def = (member: string): ConsumerDefinition => ({
      mode: "group", name: "ledger-balances", member, streams: () => [h.stream], registry, projection: balancesProjection("p_group")
    })
    const stopA = start(def("a"))
    const stopB = start(def("b"))
    try {
      await writeSome("g", 60, false)
      await stopA()
      await writeSome("h", 60)
      await until(async () => JSON.stringify(await table("p_group")) === JSON.stringify(await table("balances")), 20_000, "projection equals live")
      // once-only: every account's deposits counted exactly once
      const counts = (await sql<{ n: string }>`select sum(deposits)::text as n from p_group`.execute(h.db.database.db)).rows[0]!.n
      const logged = (await sql<{ n: string }>`select count(*)::text as n from events where type = 'FundsDeposited'`.execute(h.db.database.db)).rows[0]!.n
      expect(counts).toBe(logged)
    } finally {
      await stopB()
    }
  }, 60_000)
})

describe("every replica reading every event, with their Redis connections killed midway", () => {
  it("each replica's in-memory projection ends equal to the live state", async () => {
    await writeSome("m", 30)
    const makeRunner = () => new MemoryProjectionRunner(memoryBalances, new Map<string, number>(), h.db.database.db, registry)
    const runners = [makeRunner(), makeRunner()]
    const stops = runners.map((runner) =>
      start({ mode: "every-replica", name: "memory", streams: () => [h.stream], registry, runner: runner as MemoryProjectionRunner<unknown> }))
    try {
      await writeSome("n", 40)
      // drop the replicas' connections (named after this file's prefix: other test files share
      // this Redis, and their services must not see the fault): the followers' blocked reads fail and resume
      const clients = String(await h.redis.redis.call("CLIENT", "LIST")).split("\n")
      const ours = clients.filter((l) => l.includes(` name=${clientName()} `)).map((l) => /(?:^| )id=(\d+)/.exec(l)![1]!)
      expect(ours.length).toBeGreaterThanOrEqual(4)
      for (const id of ours) await h.redis.redis.call("CLIENT", "KILL", "ID", id)
      await writeSome("o", 40)
      const live = async () => new Map((await table("balances")).map((r) => [String(r.account_id), Number(r.balance)]))
      for (const runner of runners) {
        await until(async () => JSON.stringify([...runner.state].sort()) === JSON.stringify([...(await live())].sort()), 20_000, "replica equals live")
      }
    } finally {
      for (const stop of stops) await stop()
    }
  }, 60_000)
})

describe("a stream of records without log rows (stream-only), with duplicates and poison", () => {
  it("hands every good record to the handler (a duplicate at most once per replica), never a forged one, and parks the poison", async () => {
    const stream = h.redis.keys.stream("records")
    const add = (record: Record<string, unknown>, forged = false) => {
      const bytes = JSON.stringify(record)
      return h.redis.redis.xadd(stream, "*", "e", bytes, "k", h.signer.id, "s", forged ? "00".repeat(32) : sign(h.signer, stream, bytes))
    }
    const seen: Array<string> = []
    const def = (member: string): ConsumerDefinition => ({
      mode: "stream-only",
      name: "records",
      member,
      streams: () => [stream],
      decode: (json) =>
        typeof json === "object" && json !== null && typeof (json as { id?: unknown }).id === "string"
          ? { ok: true, value: json as { id: string } }
          : { ok: false, reason: "invalid_record" },
      handle: async (records) => {
        for (const r of records) seen.push(r.id)
      }
    })
    const stops = [start(def("a")), start(def("b"))]
    try {
      await add({ id: "r1", kind: "decision" })
      await add({ id: "r1", kind: "decision" }) // published twice
      await add({ id: "r2", kind: "decision" })
      await add({ id: "r3", kind: "decision" }, true) // forged signature
      await add({ nope: true }) // not a record
      await until(async () => (await h.redis.redis.xlen(h.redis.keys.deadLetters(stream))) === 2, 20_000, "poison parked")
      await until(() => seen.includes("r2"), 20_000, "records handled")
      expect(seen.filter((x) => x === "r1").length).toBeLessThanOrEqual(2)
      expect(seen).not.toContain("r3")
    } finally {
      for (const stop of stops) await stop()
    }
  }, 60_000)
})

describe("read-your-writes: a projection that has not seen an aggregate yet", () => {
  it("applies that aggregate's events from the log, once", async () => {
    await ledgerTable("p_ryw").execute(h.db.database.db)
    const projection = balancesProjection("p_ryw")
    await h.run("ryw", { _tag: "Open", owner: "r" })
    await h.run("ryw", { _tag: "Deposit", amount: 5 })
    expect((await table("p_ryw")).find((r) => r.account_id === "ryw")).toBeUndefined()
    expect(await refreshPostgres(h.db.database.db, registry, projection, { type: "account", id: "ryw" })).toBe(2)
    expect((await table("p_ryw")).find((r) => r.account_id === "ryw")).toMatchObject({ balance: "5" })
    expect(await refreshPostgres(h.db.database.db, registry, projection, { type: "account", id: "ryw" })).toBe(0)
  })
})

describe("when a group's every consumer has been idle past the dead-group limit", () => {
  it("the group is removed and no longer pins trimming; a live group still does", async () => {
    const stream = h.redis.keys.stream("trimmed")
    for (let i = 0; i < 5; i++) await h.redis.redis.xadd(stream, "*", "e", `{"i":${i}}`)
    await h.redis.redis.xgroup("CREATE", stream, "gone", "0")
    await h.redis.redis.xreadgroup("GROUP", "gone", "old-replica", "COUNT", 1, "STREAMS", stream, ">") // one pending, then silence
    await new Promise((r) => setTimeout(r, 400))
    await h.redis.redis.xgroup("CREATE", stream, "live", "0")
    await h.redis.redis.xreadgroup("GROUP", "live", "replica", "COUNT", 2, "STREAMS", stream, ">")
    await h.redis.redis.xack(stream, "live", ...((await h.redis.redis.xrange(stream, "-", "+", "COUNT", 2)) as Array<[string, unknown]>).map((e) => e[0]))
    // every entry is past the age limit; "gone" would pin all five, "live" acknowledged two
    const removed = await trimStream(h.redis.redis, stream, 0, Date.now() + 1000, 300)
    expect(removed).toBe(2)
    const groups = (await h.redis.redis.xinfo("GROUPS", stream)) as Array<Array<unknown>>
    expect(groups.map((g) => g[1])).toEqual(["live"])
  })
})
