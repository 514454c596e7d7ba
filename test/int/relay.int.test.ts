// The outbox relay: nothing lost, per-aggregate order with several relays, crash between
// XADD and marking sent, Redis outages.
import { sql } from "kysely"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { classify } from "../../core/consumer.ts"
import { makeRelay } from "../../core/relay.ts"
import { freePort, stackEnv } from "../../core/testing/index.ts"
import { spawn } from "node:child_process"
import { Redis } from "ioredis"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import path from "node:path"
import { makeHarness, type Harness, until } from "../fixtures/harness.ts"
import { registry } from "../fixtures/ledger.ts"

let h: Harness
beforeAll(async () => {
  h = await makeHarness("relay")
})
afterAll(() => h.close())

const streamEvents = async (redis: Redis, stream: string) => {
  const entries = (await redis.xrange(stream, "-", "+")) as Array<[string, Array<string>]>
  return entries.map(([id, raw]) => {
    const c = classify(stream, id, raw, registry, h.verifier)
    if (!c.ok) throw new Error(`bad entry ${id}: ${c.reason}`)
    return c.event.envelope
  })
}

const pending = async () => Number((await sql<{ n: string }>`select count(*) as n from outbox where status = 'pending'`.execute(h.db.database.db)).rows[0]!.n)

describe("when a transaction holds a lower outbox row open while a higher one commits", () => {
  it("publishes both; none is skipped", async () => {
    const relay = h.relay()
    const running = relay.run()
    try {
      const db = h.db.database.db
      await db.connection().execute(async (c) => {
        await sql`begin`.execute(c)
        // the open transaction takes the lower ids (event position and outbox id) first
        const { rows } = await sql<{ position: string }>`insert into events (id, zone_id, aggregate_type, aggregate_id, sequence, type, schema_version, occurred_at, actor, correlation_id, data)
          values (gen_random_uuid(), 'z1', 'account', 'slow', 1, 'AccountOpened', 1, now(), '{"kind":"t","id":"t"}', 'c', '{"owner":"s"}') returning position::text`.execute(c)
        await sql`insert into outbox (producer, stream, event_position, aggregate_key) values ('ledger', ${h.stream}, ${rows[0]!.position}, 'account/slow')`.execute(c)
        await h.run("fast", { _tag: "Open", owner: "f" })
        await until(async () => (await streamEvents(h.redis.redis, h.stream)).some((e) => e.aggregate.id === "fast"), 10_000, "fast published")
        await sql`commit`.execute(c)
      })
      await until(async () => (await streamEvents(h.redis.redis, h.stream)).some((e) => e.aggregate.id === "slow"), 10_000, "slow published")
      // the entries are on the stream before the rows are marked sent
      await until(async () => (await pending()) === 0, 10_000, "outbox drained")
    } finally {
      relay.stop()
      await running
    }
  })
})

describe("when two relays run and 1,000 events of one aggregate interleave with others", () => {
  it("the stream carries that aggregate's sequence strictly increasing", async () => {
    const a = h.relay({ batchSize: 32 })
    const b = h.relay({ batchSize: 32 })
    const runs = [a.run(), b.run()]
    try {
      await h.run("seq-hot", { _tag: "Open", owner: "o" })
      for (let i = 0; i < 5; i++) await h.run(`seq-other-${i}`, { _tag: "Open", owner: "o" })
      // 1,000 deposits on one account, in parallel with deposits on five others
      const hot = (async () => {
        for (let i = 0; i < 999; i++) await h.run("seq-hot", { _tag: "Deposit", amount: 1 })
      })()
      const others = Promise.all(Array.from({ length: 5 }, async (_, k) => {
        for (let i = 0; i < 60; i++) await h.run(`seq-other-${k}`, { _tag: "Deposit", amount: 1 })
      }))
      await Promise.all([hot, others])
      await until(async () => (await pending()) === 0, 30_000, "outbox drained")
      const seen = (await streamEvents(h.redis.redis, h.stream)).filter((e) => e.aggregate.id === "seq-hot").map((e) => e.sequence)
      expect(seen).toHaveLength(1000)
      for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThan(seen[i - 1]!)
      // exactly one of them led at a time
      expect([a.stats.leader, b.stats.leader].filter(Boolean)).toHaveLength(1)
    } finally {
      a.stop()
      b.stop()
      await Promise.all(runs)
    }
  })
})

describe("when Redis is down for 10 seconds while commands keep committing", () => {
  it("no command fails, and afterwards every outbox row is delivered (outbox count = delivered count)", async () => {
    const port = await freePort()
    // AOF with fsync on every write: what was delivered before the outage survives the restart
    const dir = mkdtempSync(path.join(tmpdir(), "caracal-outage-"))
    const start = () => spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", dir], { stdio: "ignore" })
    let server = start()
    const redis = new Redis(`redis://127.0.0.1:${port}`, { maxRetriesPerRequest: 1, retryStrategy: () => 100 })
    redis.on("error", () => {})
    await until(async () => (await redis.ping().catch(() => "")) === "PONG", 10_000, "redis up")
    const stream = `outage:{account}:events`
    const relay = makeRelay({ producer: "outage", databaseUrl: h.db.url, database: h.db.database, redis, pollMs: 50, batchSize: 50, maxAttempts: 3, signer: h.signer })
    const running = relay.run()
    const { execute } = await import("../../core/command.ts")
    const { Effect } = await import("effect")
    const { account } = await import("../fixtures/ledger.ts")
    const runOutage = (id: string, command: Parameters<typeof h.run>[1]) =>
      Effect.runPromise(execute(h.db.database, registry, {
        aggregate: account, id, command, meta: h.meta(), producer: "outage", streams: () => [stream], result: () => null
      }))
    try {
      await runOutage("out-1", { _tag: "Open", owner: "o" })
      await until(async () => (await redis.xlen(stream).catch(() => 0)) === 1, 10_000, "first delivered")
      await new Promise<void>((r) => { server.once("exit", () => r()); server.kill("SIGKILL") })
      const deadline = Date.now() + 10_000
      let committed = 1
      while (Date.now() < deadline) {
        await runOutage("out-1", { _tag: "Deposit", amount: 1 }) // throws if a command failed
        committed++
        await new Promise((r) => setTimeout(r, 20))
      }
      server = start()
      await until(async () => (await redis.xlen(stream).catch(() => 0)) >= committed, 30_000, "all delivered after Redis returned")
      await until(async () => (await sql<{ n: string }>`select count(*) as n from outbox where producer = 'outage' and status <> 'sent'`.execute(h.db.database.db)).rows[0]!.n === "0", 10_000, "all marked sent")
      const rows = await sql<{ status: string; n: string }>`select status, count(*) as n from outbox where producer = 'outage' group by status`.execute(h.db.database.db)
      expect(rows.rows).toEqual([{ status: "sent", n: String(committed) }])
      expect(await redis.xlen(stream)).toBe(committed)
      expect(committed).toBeGreaterThan(50)
    } finally {
      relay.stop()
      await running
      redis.disconnect()
      server.kill("SIGKILL")
    }
  }, 90_000)
})

void stackEnv

describe("when the database is recreated but Redis keeps the fence of the old one", () => {
  it("the relay of the fresh database still publishes (its epoch is later than any the old one gave out)", async () => {
    // what a relay of the previous database left beside the stream: a high epoch
    await h.redis.redis.set(`${h.stream}:fence`, "1000")
    const relay = h.relay()
    const running = relay.run()
    try {
      await h.run("reborn", { _tag: "Open", owner: "r" })
      await until(async () => (await streamEvents(h.redis.redis, h.stream)).some((e) => e.aggregate.id === "reborn"), 10_000, "published past the old fence")
    } finally {
      relay.stop()
      await running
    }
  })
})

describe("when Redis has forgotten the fencing script (a restart, a SCRIPT FLUSH)", () => {
  it("publishes at once with the script sent again, and charges no row a failed attempt", async () => {
    const relay = h.relay()
    const running = relay.run()
    try {
      await h.run("before-flush", { _tag: "Open", owner: "b" })
      await until(async () => (await streamEvents(h.redis.redis, h.stream)).some((e) => e.aggregate.id === "before-flush"), 10_000, "published")
      await h.redis.redis.script("FLUSH")
      await h.run("after-flush", { _tag: "Open", owner: "a" })
      await until(async () => (await streamEvents(h.redis.redis, h.stream)).some((e) => e.aggregate.id === "after-flush"), 10_000, "published after the flush")
      const errors = await sql<{ n: string }>`select count(*) as n from outbox where last_error is not null`.execute(h.db.database.db)
      expect(Number(errors.rows[0]!.n)).toBe(0)
    } finally {
      relay.stop()
      await running
    }
  })
})
