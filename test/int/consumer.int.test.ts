// Consumer groups and projections: applied once despite duplicates and crashes, poison
// parked with its reason, catch-up + follow, rebuild equals live.
import { Redis } from "ioredis"
import { sql } from "kysely"
import { randomBytes } from "node:crypto"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import type { ReceivedEvent } from "../../core/consumer.ts"
import { applyDeliveredToPostgres, applyToPostgres, catchUpPostgres, LogTampered, MemoryProjectionRunner, rebuildPostgres, upcastRow } from "../../core/projection.ts"
import { entryFields } from "../../core/relay.ts"
import { sign } from "../../core/signing.ts"
import { stackEnv } from "../../core/testing/index.ts"
import { makeHarness, type Harness, until } from "../fixtures/harness.ts"
import { balancesProjection, ledgerTable, registry, memoryBalances } from "../fixtures/ledger.ts"

// each test gets its own database and stream: a group created at "0" would otherwise see earlier tests' entries
let h: Harness
beforeEach(async (ctx) => {
  h = await makeHarness(ctx.task.name.slice(0, 12))
})
afterEach(() => h.close())

const table = async (name: string) =>
  (await sql<Record<string, unknown>>`select * from ${sql.table(name)} order by account_id`.execute(h.db.database.db)).rows

const fresh = async (name: string) => {
  await ledgerTable(name).execute(h.db.database.db)
  return balancesProjection(name)
}

const applier = (projection: ReturnType<typeof balancesProjection>, applied: Array<string>) => async (e: ReceivedEvent) => {
  const outcome = await applyToPostgres(h.db.database.db, registry, projection, e.envelope)
  if (outcome === "applied") applied.push(`${e.envelope.aggregate.id}@${e.envelope.sequence}`)
}

describe("when the relay crashed after XADD and before marking the rows sent", () => {
  it("the events are delivered twice and applied once", async () => {
    const projection = await fresh("p_crash")
    const applied: Array<string> = []
    const delivered: Array<string> = []
    const consumer = h.consumer("g-crash", async (e) => {
      delivered.push(`${e.envelope.aggregate.id}@${e.envelope.sequence}`)
      await applier(projection, applied)(e)
    })
    const consuming = consumer.run()
    // the first relay "crashes" right after its XADD: it throws and stops before marking sent
    let crashed = false
    const first = h.relay({
      afterPublish: async () => {
        if (!crashed) {
          crashed = true
          first.stop()
          throw new Error("relay crashed (fault injection)")
        }
      }
    })
    await h.run("crash-1", { _tag: "Open", owner: "c" })
    await h.run("crash-1", { _tag: "Deposit", amount: 3 })
    await first.run()
    expect(crashed).toBe(true)
    const second = h.relay()
    const relaying = second.run()
    try {
      await until(async () => (await sql<{ n: string }>`select count(*) as n from outbox where status = 'pending'`.execute(h.db.database.db)).rows[0]!.n === "0", 10_000, "outbox drained")
      await until(() => delivered.filter((d) => d.startsWith("crash-1")).length >= 4, 10_000, "both deliveries")
      expect(delivered.filter((d) => d === "crash-1@1")).toHaveLength(2)
      expect(applied.filter((d) => d.startsWith("crash-1"))).toEqual(["crash-1@1", "crash-1@2"])
      expect(await table("p_crash")).toEqual((await table("balances")).filter((r) => r.account_id === "crash-1"))
    } finally {
      second.stop()
      consumer.stop()
      await Promise.all([relaying, consuming])
    }
  })
})

describe("when a consumer dies after reading and before XACK", () => {
  it("another member of the group claims the entries once idle, and effects apply exactly once", async () => {
    const projection = await fresh("p_kill")
    const applied: Array<string> = []
    const apply = applier(projection, applied)
    const relay = h.relay()
    const relaying = relay.run()
    // consumer A commits the effect of the first entry it reads, then dies before acknowledging anything
    const a = h.consumer("g-kill", async (e) => {
      await apply(e)
      a.stop()
      throw new Error("killed before XACK (fault injection)")
    }, { consumer: "A", claimIdleMs: 400, count: 5 })
    const aRun = a.run()
    for (let i = 0; i < 5; i++) await h.run(`kill-${i}`, { _tag: "Open", owner: "k" })
    await aRun
    const pendingForA = (await h.redis.redis.xpending(h.stream, "g-kill")) as [number, string, string, Array<[string, string]>]
    expect(pendingForA[0]).toBeGreaterThan(0)
    const b = h.consumer("g-kill", apply, { consumer: "B", claimIdleMs: 400, claimIntervalMs: 200 })
    const bRun = b.run()
    try {
      await until(async () => ((await h.redis.redis.xpending(h.stream, "g-kill")) as [number])[0] === 0, 15_000, "group drained")
      expect(b.stats.claimed).toBeGreaterThan(0)
      for (let i = 0; i < 5; i++) expect(applied.filter((x) => x === `kill-${i}@1`)).toHaveLength(1)
      expect((await table("p_kill")).map((r) => r.account_id)).toEqual(["kill-0", "kill-1", "kill-2", "kill-3", "kill-4"])
    } finally {
      b.stop()
      relay.stop()
      await Promise.all([bRun, relaying])
    }
  })
})

describe("when poison reaches the group", () => {
  it("unsigned, bad-signature, corrupt-JSON and unknown-version entries are dead-lettered with their reasons, acknowledged, never applied; good ones flow", async () => {
    const projection = await fresh("p_poison")
    const applied: Array<string> = []
    const consumer = h.consumer("g-poison", applier(projection, applied), { claimIdleMs: 60_000 })
    const running = consumer.run()
    const stream = h.stream
    const good = (id: string, sequence: number, type = "AccountOpened", schemaVersion = 1, data: unknown = { owner: "p" }) => ({
      id: crypto.randomUUID(), type, schemaVersion, zoneId: "z1", aggregate: { type: "account", id }, sequence,
      position: "1", occurredAt: new Date().toISOString(), actor: { kind: "t", id: "t" }, correlationId: "c", causationId: null, data
    })
    const r = h.redis.redis
    try {
      await r.xadd(stream, "*", "e", JSON.stringify(good("poison-unsigned", 1)))
      const signed = entryFields(stream, good("poison-badsig", 1), h.signer)
      const sig = signed[5]!
      signed[5] = (sig[0] === "A" ? "B" : "A") + sig.slice(1) // flip one character of the MAC
      await r.xadd(stream, "*", ...signed)
      // a correctly signed corrupt payload: the signature holds, the JSON does not
      const bytes = "{not json"
      await r.xadd(stream, "*", "e", bytes, "k", h.signer.id, "s", sign(h.signer, stream, bytes))
      await r.xadd(stream, "*", ...entryFields(stream, good("poison-v9", 1, "AccountOpened", 9), h.signer))
      await r.xadd(stream, "*", ...entryFields(stream, good("poison-good", 1), h.signer))
      await until(() => applied.includes("poison-good@1"), 10_000, "good entry applied")
      await until(async () => ((await r.xpending(stream, "g-poison")) as [number])[0] === 0, 10_000, "all acknowledged")
      const dlq = (await r.xrange(h.redis.keys.deadLetters(stream), "-", "+")) as Array<[string, Array<string>]>
      const reasons = dlq.map(([, f]) => f[f.indexOf("reason") + 1])
      expect(reasons).toEqual(expect.arrayContaining(["unsigned", "bad_signature", "corrupt_json", "unknown_event_version"]))
      // the original entry travels with its reason
      expect(dlq.every(([, f]) => f.includes("fields") && f.includes("id"))).toBe(true)
      expect(applied.filter((x) => x.startsWith("poison-") && x !== "poison-good@1")).toEqual([])
      expect((await table("p_poison")).map((x) => x.account_id)).toEqual(["poison-good"])
    } finally {
      consumer.stop()
      await running
    }
  })

  it("an entry whose handler keeps failing is parked after the delivery limit and the group moves on", async () => {
    const seen: Array<string> = []
    const stream = h.redis.keys.stream("failing")
    const c2 = h.consumer("g-fail", async (e) => {
      seen.push(e.envelope.aggregate.id)
      if (e.envelope.aggregate.id === "always-fails") throw new Error("handler broke")
    }, { claimIdleMs: 50, claimIntervalMs: 50, maxDeliveries: 3, consumer: "F", streams: [stream] })
    const running = c2.run()
    const env = (id: string) => ({
      id: crypto.randomUUID(), type: "AccountOpened", schemaVersion: 1, zoneId: "z1", aggregate: { type: "account", id }, sequence: 1,
      position: "1", occurredAt: new Date().toISOString(), actor: { kind: "t", id: "t" }, correlationId: "c", causationId: null, data: { owner: "f" }
    })
    try {
      await until(async () => (await h.redis.redis.exists(stream)) === 1, 5000, "group created")
      await h.redis.redis.xadd(stream, "*", ...entryFields(stream, env("always-fails"), h.signer))
      await h.redis.redis.xadd(stream, "*", ...entryFields(stream, env("works"), h.signer))
      await until(async () => (await h.redis.redis.xlen(h.redis.keys.deadLetters(stream))) === 1, 10_000, "parked")
      const parked = (await h.redis.redis.xrange(h.redis.keys.deadLetters(stream), "-", "+")) as Array<[string, Array<string>]>
      const f = parked[0]![1]
      expect(f[f.indexOf("reason") + 1]).toMatch(/^max_deliveries/)
      expect(seen.filter((x) => x === "always-fails").length).toBe(3)
      expect(seen).toContain("works")
    } finally {
      c2.stop()
      await running
    }
  })
})

describe("a projection that catches up from the log and then follows the stream", () => {
  it("sees every event once across the switch, and a rebuild from the log equals the live state row by row", async () => {
    for (let i = 0; i < 30; i++) {
      await h.run(`cu-${i}`, { _tag: "Open", owner: `o${i}` })
      await h.run(`cu-${i}`, { _tag: "Deposit", amount: i + 1 })
    }
    const projection = await fresh("p_follow")
    // catch up from Postgres while nothing is published yet
    const caught = await catchUpPostgres(h.db.database.db, registry, projection)
    expect(caught.applied).toBeGreaterThan(0)
    // then follow the stream (which replays everything already caught up, plus new events)
    const relay = h.relay()
    const applied: Array<string> = []
    // this one consumes in batches: one transaction per read
    const consumer = h.consumer("g-follow", applier(projection, applied), {
      handleBatch: async (events) => {
        await applyDeliveredToPostgres(h.db.database.db, registry, projection, events.map((e) => e.envelope))
        for (const e of events) applied.push(`${e.envelope.aggregate.id}@${e.envelope.sequence}:${e.entryId}`)
      }
    })
    const runs = [relay.run(), consumer.run()]
    try {
      for (let i = 0; i < 30; i++) await h.run(`cu-${i}`, { _tag: i % 3 === 0 ? "Close" : "Deposit", ...(i % 3 === 0 ? { reason: "r" } : { amount: 2 }) } as never)
      await until(async () => JSON.stringify(await table("p_follow")) === JSON.stringify(await table("balances")), 15_000, "projection equals live")
      expect(consumer.stats.handled).toBeGreaterThan(0)
      // rebuild from the log: dropped and replayed, it equals the inline state
      await rebuildPostgres(h.db.database.db, registry, projection)
      expect(await table("p_follow")).toEqual(await table("balances"))
    } finally {
      relay.stop()
      consumer.stop()
      await Promise.all(runs)
    }
  })
})

describe("when a row of the log was altered in Postgres", () => {
  it("a verified rebuild refuses it, names its position and leaves the previous state in place", async () => {
    for (let i = 0; i < 5; i++) {
      await h.run(`mac-${i}`, { _tag: "Open", owner: "m" })
      await h.run(`mac-${i}`, { _tag: "Deposit", amount: 10 })
    }
    const projection = await fresh("p_mac")
    const first = await rebuildPostgres(h.db.database.db, registry, projection, { verifier: h.verifier })
    expect(first.applied).toBe(10)
    const before = await table("p_mac")
    expect(before).toEqual(await table("balances"))
    // someone with table rights rewrites a deposit behind the application's back
    const db = h.db.database.db
    await sql`alter table events disable trigger events_no_update`.execute(db)
    const { rows } = await sql<{ position: string }>`update events set data = '{"amount": 1000000}'
      where aggregate_id = 'mac-3' and sequence = 2 returning position::text`.execute(db)
    await sql`alter table events enable trigger events_no_update`.execute(db)
    const error = await rebuildPostgres(db, registry, projection, { verifier: h.verifier }).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(LogTampered)
    expect((error as LogTampered).position).toBe(rows[0]!.position)
    expect((error as LogTampered).verdict).toBe("bad_signature")
    expect(await table("p_mac")).toEqual(before)
  })
})

describe("when a batch handler fails", () => {
  it("the read is retried entry by entry, so the good entries still apply once", async () => {
    const projection = await fresh("p_batchfail")
    const applied: Array<string> = []
    let batches = 0
    const relay = h.relay()
    const consumer = h.consumer("g-batchfail", applier(projection, applied), {
      count: 50,
      handleBatch: async () => {
        batches++
        throw new Error("batch refused (fault injection)")
      }
    })
    for (let i = 0; i < 10; i++) await h.run(`bf-${i}`, { _tag: "Open", owner: "b" })
    const runs = [relay.run(), consumer.run()]
    try {
      await until(() => applied.length === 10, 10_000, "all applied one by one")
      expect(batches).toBeGreaterThan(0)
      expect(new Set(applied).size).toBe(10)
      expect((await table("p_batchfail")).length).toBe(10)
    } finally {
      relay.stop()
      consumer.stop()
      await Promise.all(runs)
    }
  })
})

describe("an in-memory projection (as the gateway keeps)", () => {
  it("catches up from the log, then applies delivered events once, filling gaps from the log", async () => {
    for (let i = 0; i < 3; i++) await h.run(`mem-${i}`, { _tag: "Open", owner: "m" })
    const balances = new Map<string, number>()
    const runner = new MemoryProjectionRunner(memoryBalances, balances, h.db.database.db, registry)
    await until(async () => (await runner.catchUp()) >= 0 && balances.size === 3, 10_000, "caught up")
    // three deposits; the stream delivers the third first, then a duplicate of the first
    const outs = []
    for (let i = 0; i < 3; i++) outs.push(await h.run("mem-0", { _tag: "Deposit", amount: 10 ** i }))
    const envelopes = outs.map((o) => upcastRow(registry, o.events[0]!))
    expect(await runner.apply(envelopes[2]!)).toBe("applied")
    expect(balances.get("mem-0")).toBe(111) // 1 and 10 came from the log first
    expect(await runner.apply(envelopes[0]!)).toBe("duplicate")
    expect(await runner.apply(envelopes[1]!)).toBe("duplicate")
    expect(balances.get("mem-0")).toBe(111)
  })
})

describe("when two appliers take batches of the same aggregates at once (two consumers, or a redelivery)", () => {
  it("each event is applied once, neither deadlocks nor fails, and the projection equals the live state", async () => {
    for (let i = 0; i < 40; i++) await h.run(`two-${i}`, { _tag: "Open", owner: `o${i}` })
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 40; i++) await h.run(`two-${i}`, { _tag: "Deposit", amount: round + 1 })
    }
    const projection = await fresh("p_two")
    // the stream's envelopes, in stream order (not applied by the collecting consumer)
    const received: Array<ReceivedEvent> = []
    const relay = h.relay()
    const collector = h.consumer("g-collect", async (e) => void received.push(e))
    const runs = [relay.run(), collector.run()]
    try {
      await until(async () => received.length === 160, 15_000, "every event on the stream")
    } finally {
      relay.stop()
      collector.stop()
      await Promise.all(runs)
    }
    const envelopes = received.map((e) => e.envelope)
    // both appliers take every event from the front at once, one in batches of 7, the other in
    // batches of 11 each reversed (a batch holds an aggregate at most once: 40 of them per
    // round), so the two meet the same checkpoint rows at once, in opposite orders
    const batches = (size: number) => Array.from({ length: Math.ceil(envelopes.length / size) }, (_, b) => envelopes.slice(b * size, (b + 1) * size))
    const apply = async (list: Array<Array<(typeof envelopes)[number]>>) => {
      let applied = 0
      for (const batch of list) applied += await applyDeliveredToPostgres(h.db.database.db, registry, projection, batch)
      return applied
    }
    const [a, b] = await Promise.all([apply(batches(7)), apply(batches(11).map((batch) => [...batch].reverse()))])
    // an event one applier reached first (or filled in from the log, for a batch that arrived
    // ahead of its aggregate's earlier events) is a duplicate to the other
    expect(a + b).toBeLessThanOrEqual(160)
    // every deposit counted once: a double application would show in balance and deposits
    expect(await table("p_two")).toEqual(await table("balances"))
  })
})

describe("when a batch's acknowledgement fails while the next read is already answered", () => {
  it("the member reads its own pending entries again at once and applies the answered read, instead of leaving it to the idle claim", async () => {
    const projection = await fresh("p_ackfail")
    const applied: Array<string> = []
    // the consumer's connection belongs to a user whose XACK right this test takes away and gives back
    const user = `ackless_${randomBytes(4).toString("hex")}`
    const admin = h.redis.redis
    await admin.call("ACL", "SETUSER", user, "on", "nopass", "~*", "&*", "+@all")
    const own = new Redis(stackEnv().REDIS_URL, { username: user, password: "x" })
    own.on("error", () => {})
    const errors: Array<string> = []
    let batches = 0
    const relay = h.relay()
    const consumer = h.consumer("g-ackfail", applier(projection, applied), {
      redis: own,
      count: 2,
      claimIdleMs: 120_000, // the idle claim must not be what rescues the answered read
      handleBatch: async (events) => {
        await applyDeliveredToPostgres(h.db.database.db, registry, projection, events.map((e) => e.envelope))
        for (const e of events) applied.push(`${e.envelope.aggregate.id}@${e.envelope.sequence}`)
        if (++batches > 1) return
        // this batch's XACK will be refused; the next read finds two more entries already there
        await admin.call("ACL", "SETUSER", user, "-xack")
        await h.run("af-2", { _tag: "Open", owner: "a" })
        await h.run("af-3", { _tag: "Open", owner: "a" })
        await until(async () => (await admin.xlen(h.stream)) >= 4, 10_000, "two more entries on the stream")
      },
      onError: (e) => {
        errors.push(e instanceof Error ? e.message : String(e))
        void admin.call("ACL", "SETUSER", user, "+xack")
      }
    })
    await h.run("af-0", { _tag: "Open", owner: "a" })
    await h.run("af-1", { _tag: "Open", owner: "a" })
    const relaying = relay.run()
    await until(async () => (await admin.xlen(h.stream)) >= 2, 10_000, "the first two entries on the stream")
    const consuming = consumer.run()
    try {
      await until(async () => (await table("p_ackfail")).length === 4, 10_000, "the answered read applied without waiting for the claim")
      expect(errors.some((m) => /NOPERM/i.test(m))).toBe(true)
      // every entry applied once, and nothing left pending once XACK is allowed again
      expect(new Set(applied).size).toBe(applied.length)
      expect(applied.sort()).toEqual(["af-0@1", "af-1@1", "af-2@1", "af-3@1"])
      await until(async () => ((await admin.xpending(h.stream, "g-ackfail")) as [number])[0] === 0, 10_000, "every entry acknowledged")
    } finally {
      relay.stop()
      consumer.stop()
      await Promise.all([relaying, consuming])
      own.disconnect()
      await admin.call("ACL", "DELUSER", user)
    }
  })
})
