// The caracal CLI against real Postgres and Redis: replay with signature checks (and a
// tampered entry), tail and follow, dead outbox rows, dead letters, projection rebuild,
// consumer lag, and the real process wired end to end.
import { randomBytes } from "node:crypto"
import { sql } from "kysely"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { entryFields } from "../../core/relay.ts"
import { signingKey, Verifier } from "../../core/signing.ts"
import { runScript, spawnScript, stackEnv } from "../../core/testing/index.ts"
import { groupLags, printLag } from "../../cli/consumers.ts"
import { findDeadLetter, listDeadLetters, printDeadLetters, requeueDeadLetter, showDeadLetter } from "../../cli/dlq.ts"
import { replayEvents, tailEvents } from "../../cli/events.ts"
import { listDead, printDead, runRequeue } from "../../cli/outbox.ts"
import { UsageError } from "../../cli/output.ts"
import { findProjection, projections, rebuildProjection } from "../../cli/projections.ts"
import { makeHarness, type Harness, until } from "../fixtures/harness.ts"
import { balancesProjection, ledgerTable, registry } from "../fixtures/ledger.ts"

let h: Harness
beforeEach(async (ctx) => {
  h = await makeHarness(`cli${ctx.task.name.slice(0, 8)}`)
})
afterEach(() => h.close())

type Entry = [string, Array<string>]
const lines = () => {
  const out: Array<string> = []
  return { out, write: (l: string) => void out.push(l) }
}
const db = () => h.db.database.db
const r = () => h.redis.redis
const prefix = () => h.redis.keys.prefix
const count = async (where: string) =>
  Number((await sql<{ n: string }>`select count(*)::text as n from outbox where status = ${where}`.execute(db())).rows[0]!.n)

/** Five events on two accounts, in this commit order. */
const seed = async () => {
  await h.run("acc-1", { _tag: "Open", owner: "ann" })
  await h.run("acc-2", { _tag: "Open", owner: "bob" })
  await h.run("acc-1", { _tag: "Deposit", amount: 5 })
  await h.run("acc-2", { _tag: "Close", reason: "done" })
  await h.run("acc-1", { _tag: "Deposit", amount: 7 })
}
const SEEDED = ["acc-1@1 AccountOpened", "acc-2@1 AccountOpened", "acc-1@2 FundsDeposited", "acc-2@2 AccountClosed", "acc-1@3 FundsDeposited"]

const drain = async () => {
  const relay = h.relay()
  const running = relay.run()
  try {
    await until(async () => (await count("pending")) === 0, 10_000, "outbox drained")
  } finally {
    relay.stop()
    await running
  }
}

const entryOf = async (id: string, sequence: number): Promise<Entry> => {
  const entries = (await r().xrange(h.stream, "-", "+")) as Array<Entry>
  const found = entries.find(([, f]) => {
    const e = JSON.parse(f[1]!) as { aggregate: { id: string }; sequence: number }
    return e.aggregate.id === id && e.sequence === sequence
  })
  if (!found) throw new Error(`no entry for ${id}@${sequence}`)
  return found
}

/** Replaces an entry: Redis Streams cannot rewrite one, so delete it and add the forgery. */
const replaceEntry = async (id: string, sequence: number, fields: (original: Record<string, string>) => Array<string>) => {
  const [entryId, raw] = await entryOf(id, sequence)
  const f: Record<string, string> = {}
  for (let i = 0; i < raw.length; i += 2) f[raw[i]!] = raw[i + 1]!
  await r().xdel(h.stream, entryId)
  await r().xadd(h.stream, "*", ...fields(f))
}

const replayJson = async (verifier: Verifier = h.verifier, opts: Partial<Parameters<typeof replayEvents>[1]> = {}) => {
  const o = lines()
  await replayEvents({ db: db(), redis: r(), verifier, prefix: prefix(), out: o.write }, { types: [], json: true, ...opts })
  return o.out.map((l) => JSON.parse(l) as { position: string; type: string; aggregate: { id: string }; sequence: number; signature: string; data: unknown })
}
const summary = (rows: Awaited<ReturnType<typeof replayJson>>) => rows.map((e) => `${e.aggregate.id}@${e.sequence} ${e.type} ${e.signature}`)

const keyHex = (k = h.signer) => k.key.export().toString("hex")

const cli = (args: ReadonlyArray<string>, env: Record<string, string>) => runScript("cli/main.ts", args, env)

describe("events replay", () => {
  it("prints a relayed log in order, all valid; a tampered stream entry shows as invalid and the others stay valid", async () => {
    await seed()
    await drain()
    const before = await replayJson()
    expect(summary(before)).toEqual(SEEDED.map((s) => `${s} valid`))
    const positions = before.map((e) => BigInt(e.position))
    expect([...positions].sort((a, b) => (a < b ? -1 : 1))).toEqual(positions)
    // one byte of the payload changed, the old key id and MAC kept
    await replaceEntry("acc-1", 2, (f) => ["e", f.e!.replace('"amount":5', '"amount":6'), "k", f.k!, "s", f.s!])
    expect(summary(await replayJson())).toEqual([
      "acc-1@1 AccountOpened valid",
      "acc-2@1 AccountOpened valid",
      "acc-1@2 FundsDeposited invalid",
      "acc-2@2 AccountClosed valid",
      "acc-1@3 FundsDeposited valid"
    ])
  })

  it("tells re-signed forgeries, unsigned copies, foreign keys and unpublished events apart", async () => {
    await seed()
    await drain()
    // signed with the real key, but over bytes that differ from the log
    await replaceEntry("acc-2", 2, (f) => {
      const forged = { ...(JSON.parse(f.e!) as object), data: { reason: "forged" } } as Parameters<typeof entryFields>[1]
      return entryFields(h.stream, forged, h.signer)
    })
    await replaceEntry("acc-2", 1, (f) => ["e", f.e!])
    await h.run("acc-3", { _tag: "Open", owner: "cy" }) // committed, never relayed
    expect(summary(await replayJson())).toEqual([
      "acc-1@1 AccountOpened valid",
      "acc-2@1 AccountOpened unsigned",
      "acc-1@2 FundsDeposited valid",
      "acc-2@2 AccountClosed invalid",
      "acc-1@3 FundsDeposited valid",
      "acc-3@1 AccountOpened not_published"
    ])
    const stranger = new Verifier([signingKey(randomBytes(32))])
    expect((await replayJson(stranger)).map((e) => e.signature)).toEqual(["unknown_key", "unsigned", "unknown_key", "unknown_key", "unknown_key", "not_published"])
    const o = lines()
    await replayEvents({ db: db(), redis: undefined, verifier: new Verifier([]), prefix: prefix(), out: o.write }, { types: [], json: true })
    expect(o.out.map((l) => (JSON.parse(l) as { signature: string }).signature)).toEqual(Array(6).fill("not_checked"))
  })

  it("still finds the entry once the sent outbox rows are pruned (through the aggregate type's default stream)", async () => {
    await seed()
    await drain()
    await sql`delete from outbox`.execute(db())
    expect(summary(await replayJson())).toEqual(SEEDED.map((s) => `${s} valid`))
  })

  it("filters by aggregate, type, zone and position range", async () => {
    await seed()
    await h.run("acc-9", { _tag: "Open", owner: "zed" }, { zoneId: "z2" })
    await drain()
    const all = await replayJson()
    const ids = (rows: typeof all) => rows.map((e) => `${e.aggregate.id}@${e.sequence}`)
    expect(ids(await replayJson(h.verifier, { aggregate: "account/acc-1" }))).toEqual(["acc-1@1", "acc-1@2", "acc-1@3"])
    expect(ids(await replayJson(h.verifier, { aggregate: "account" }))).toHaveLength(6)
    expect(ids(await replayJson(h.verifier, { aggregate: "nothing" }))).toEqual([])
    expect(ids(await replayJson(h.verifier, { types: ["AccountOpened", "AccountClosed"] }))).toEqual(["acc-1@1", "acc-2@1", "acc-2@2", "acc-9@1"])
    expect(ids(await replayJson(h.verifier, { zone: "z2" }))).toEqual(["acc-9@1"])
    expect(ids(await replayJson(h.verifier, { from: all[1]!.position, to: all[3]!.position }))).toEqual(["acc-2@1", "acc-1@2", "acc-2@2"])
    await expect(replayJson(h.verifier, { from: "-1" })).rejects.toThrow(UsageError)
    await expect(replayJson(h.verifier, { from: all[3]!.position, to: all[1]!.position })).rejects.toThrow("--from must not be after --to")
    await expect(replayJson(h.verifier, { aggregate: "account/" })).rejects.toThrow("--aggregate must be TYPE or TYPE/ID")
  })

  it("prints aligned columns for people", async () => {
    await seed()
    await drain()
    const o = lines()
    await replayEvents({ db: db(), redis: r(), verifier: h.verifier, prefix: prefix(), out: o.write, batchSize: 2 }, { types: [], json: false, aggregate: "account/acc-1" })
    const [header, ...rows] = o.out
    expect(header!.split(/\s{2,}/)).toEqual(["POSITION", "OCCURRED_AT", "TYPE", "AGGREGATE", "SEQ", "ACTOR", "SIGNATURE"])
    expect(rows.map((l) => l.split(/\s{2,}/).slice(2))).toEqual([
      ["AccountOpened v1", "account/acc-1", "1", "test:t", "valid"],
      ["FundsDeposited v2", "account/acc-1", "2", "test:t", "valid"],
      ["FundsDeposited v2", "account/acc-1", "3", "test:t", "valid"]
    ])
    // a later batch keeps the first batch's columns
    for (const l of rows) expect(l.indexOf("valid")).toBe(header!.indexOf("SIGNATURE"))
    expect(rows.map((l) => l.split(/\s+/)[1])).toEqual(rows.map((l) => new Date(l.split(/\s+/)[1]!).toISOString()))
  })
})

describe("the caracal process", () => {
  it("replays with keys from the environment (including a rotated-out one), and exits", async () => {
    await seed()
    await drain()
    const base = { DATABASE_URL: h.db.url, REDIS_URL: stackEnv().REDIS_URL }
    const rotated = await cli(["events", "replay", "--json", "--aggregate", "account/acc-1"], {
      ...base,
      STREAMS_HMAC_KEY: randomBytes(32).toString("hex"),
      STREAMS_HMAC_PREVIOUS_KEYS: ` ${keyHex()} `
    })
    expect(rotated.stderr).toBe("")
    expect(rotated.code).toBe(0)
    expect(rotated.stdout.trim().split("\n").map((l) => {
      const e = JSON.parse(l) as { type: string; sequence: number; signature: string }
      return `${e.sequence} ${e.type} ${e.signature}`
    })).toEqual(["1 AccountOpened valid", "2 FundsDeposited valid", "3 FundsDeposited valid"])
    const unkeyed = await cli(["events", "replay", "--type", "AccountClosed"], base)
    expect(unkeyed.code).toBe(0)
    expect(unkeyed.stdout.trim().split("\n").map((l) => l.split(/\s{2,}/).slice(2))).toEqual([
      ["TYPE", "AGGREGATE", "SEQ", "ACTOR", "SIGNATURE"],
      ["AccountClosed v1", "account/acc-2", "2", "test:t", "not_checked"]
    ])
  })

  it("reports bad input and bad configuration as one message with exit code 1, and unknown commands with usage", async () => {
    const base = { DATABASE_URL: h.db.url, REDIS_URL: stackEnv().REDIS_URL }
    const secret = "s3cr3t-password"
    const runs = await Promise.all([
      cli(["events", "replay", "--from", "x"], base),
      cli(["events", "replay"], { ...base, STREAMS_HMAC_KEY: "not-hex" }),
      cli(["projections", "rebuild", "nope"], base),
      cli(["outbox", "dead", "--requeue", "all"], base),
      cli(["events", "tail"], { ...base, REDIS_URL: `redis://:${secret}@127.0.0.1:1` }),
      cli(["nope"], base)
    ])
    expect(runs.map((x) => x.code)).toEqual([1, 1, 1, 1, 1, 1])
    expect(runs[0]!.stderr).toContain('--from must be a log position (a non-negative integer), got "x"')
    expect(runs[1]!.stderr).toContain("STREAMS_HMAC_KEY: must be hex-encoded")
    // every registered projection, by name
    expect(runs[2]!.stderr).toContain(`unknown projection "nope"; known projections: ${[...projections.keys()].sort().join(", ")}`)
    expect(runs[3]!.stderr).toContain("--requeue all needs --producer")
    expect(runs[4]!.stderr).toContain("cannot connect to Redis at 127.0.0.1:1")
    expect(runs[4]!.stderr).not.toContain(secret)
    expect(runs[5]!.stderr).toContain('Unknown subcommand "nope" for "caracal"')
    for (const x of runs) {
      expect(x.stdout + x.stderr).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m) // no stack traces
    }
  })

  it("follows a stream for a bounded time, then closes its connections and exits", async () => {
    await seed()
    await drain()
    const running = spawnScript("cli/main.ts", ["events", "tail", "--stream", h.stream, "--count", "1", "--follow", "--for-ms", "1500", "--json"], {
      DATABASE_URL: h.db.url,
      REDIS_URL: stackEnv().REDIS_URL,
      STREAMS_HMAC_KEY: keyHex()
    })
    await until(() => running.stdout().includes("\n"), 10_000, "initial entry printed")
    await r().xadd(h.stream, "*", "e", JSON.stringify({ id: "late", type: "Late", aggregate: { type: "account", id: "acc-1" }, sequence: 4 }))
    expect(await running.exited).toBe(0)
    expect(running.stdout().trim().split("\n").map((l) => {
      const t = JSON.parse(l) as { type: string; sequence: number; signature: string }
      return `${t.type}@${t.sequence} ${t.signature}`
    })).toEqual(["FundsDeposited@3 valid", "Late@4 unsigned"])
  })
})

describe("events tail", () => {
  it("prints the last N entries of every event stream (not the DLQs), with signature status", async () => {
    await seed()
    await drain()
    const other = h.redis.keys.stream("other")
    await r().xadd(other, "*", ...entryFields(other, { id: "x", type: "Other", aggregate: { type: "other", id: "o" }, sequence: 1 } as never, h.signer))
    await r().xadd(h.redis.keys.deadLetters(h.stream), "*", "reason", "unsigned")
    // entries of two streams within one millisecond have equal ids: keep the expected order unambiguous
    await new Promise((res) => setTimeout(res, 5))
    await replaceEntry("acc-2", 2, (f) => ["e", f.e!.replace("done", "dome"), "k", f.k!, "s", f.s!])
    const o = lines()
    await tailEvents({ redis: r(), verifier: h.verifier, prefix: prefix(), out: o.write }, { streams: [], count: 2, json: true })
    expect(o.out.map((l) => {
      const t = JSON.parse(l) as { stream: string; type: string; aggregate: string; sequence: number; signature: string }
      return `${t.stream} ${t.type} ${t.aggregate}@${t.sequence} ${t.signature}`
    })).toEqual([
      `${h.stream} FundsDeposited account/acc-1@3 valid`,
      `${other} Other other/o@1 valid`,
      `${h.stream} AccountClosed account/acc-2@2 bad_signature`
    ])
    const human = lines()
    await tailEvents({ redis: r(), verifier: new Verifier([]), prefix: prefix(), out: human.write }, { streams: [h.stream], count: 1, json: false })
    expect(human.out.map((l) => l.split(/\s{2,}/))).toEqual([
      ["STREAM", "ENTRY", "TYPE", "AGGREGATE", "SEQ", "SIGNATURE"],
      [h.stream, expect.stringMatching(/^\d+-\d+$/), "AccountClosed", "account/acc-2", "2", "not_checked"]
    ])
    await expect(tailEvents({ redis: r(), verifier: h.verifier, prefix: prefix(), out: o.write }, { streams: [], count: 0, json: true })).rejects.toThrow("--count")
  })

  it("follows new entries until the signal aborts", async () => {
    await seed()
    await drain()
    const o = lines()
    const stop = new AbortController()
    const following = tailEvents({ redis: r(), verifier: h.verifier, prefix: prefix(), out: o.write }, { streams: [h.stream], count: 1, json: true, follow: stop.signal })
    await until(() => o.out.length === 1, 5_000, "initial entry")
    await h.run("acc-1", { _tag: "Deposit", amount: 1 })
    await drain()
    await until(() => o.out.length === 2, 5_000, "followed entry")
    stop.abort()
    await following
    expect(o.out.map((l) => (JSON.parse(l) as { sequence: number; signature: string })).map((t) => `${t.sequence} ${t.signature}`)).toEqual(["3 valid", "4 valid"])
  })
})

describe("outbox dead", () => {
  it("lists rows the relay gave up on, re-queues only dead ones, and the relay then publishes them", async () => {
    // a plain string where the stream should be: every XADD gets WRONGTYPE, a ReplyError charged to the row
    await r().set(h.stream, "in the way")
    await h.run("d-1", { _tag: "Open", owner: "a" })
    await h.run("d-2", { _tag: "Open", owner: "b" })
    await h.run("d-3", { _tag: "Open", owner: "c" })
    const relay = h.relay({ maxAttempts: 1 })
    const running = relay.run()
    await until(async () => (await count("dead")) === 3, 10_000, "rows dead")
    relay.stop()
    await running
    const dead = await listDead(db())
    expect(dead.map((d) => [d.producer, d.stream, d.aggregate_key, d.attempts])).toEqual([
      ["ledger", h.stream, "account/d-1", 1],
      ["ledger", h.stream, "account/d-2", 1],
      ["ledger", h.stream, "account/d-3", 1]
    ])
    expect(dead.every((d) => d.last_error?.includes("WRONGTYPE"))).toBe(true)
    expect(await listDead(db(), "someone-else")).toEqual([])
    const human = lines()
    await printDead(db(), human.write, { json: false })
    expect(human.out[0]!.split(/\s{2,}/)).toEqual(["ID", "PRODUCER", "STREAM", "AGGREGATE", "ATTEMPTS", "CREATED_AT", "LAST_ERROR"])
    expect(human.out.slice(1).map((l) => l.split(/\s{2,}/).slice(0, 5))).toEqual(dead.map((d) => [d.id, "ledger", h.stream, d.aggregate_key, "1"]))
    const asJson = lines()
    await printDead(db(), asJson.write, { json: true, producer: "ledger" })
    expect(asJson.out.map((l) => (JSON.parse(l) as { id: string }).id)).toEqual(dead.map((d) => d.id))

    await r().del(h.stream)
    const one = lines()
    await runRequeue(db(), one.write, { values: [dead[0]!.id, "999999"], json: false })
    expect(one.out).toEqual([`re-queued 1 dead outbox row: ${dead[0]!.id}`, "not re-queued (not dead, or no such row): 999999"])
    // again: it is pending now, not dead, so nothing happens
    const again = lines()
    await runRequeue(db(), again.write, { values: [dead[0]!.id], json: true })
    expect(again.out.map((l) => JSON.parse(l))).toEqual([{ requeued: 0, ids: [], skipped: [dead[0]!.id] }])
    await expect(runRequeue(db(), one.write, { values: ["all"], json: false })).rejects.toThrow("--requeue all needs --producer")
    await expect(runRequeue(db(), one.write, { values: ["1x"], json: false })).rejects.toThrow('--requeue takes outbox ids or "all"; not an id: 1x')
    const rest = lines()
    await runRequeue(db(), rest.write, { values: ["all"], producer: "ledger", json: false })
    expect(rest.out).toEqual([`re-queued 2 dead outbox rows: ${dead[1]!.id}, ${dead[2]!.id}`])
    const row = (await sql<{ status: string; attempts: number }>`select status, attempts from outbox where id = ${dead[1]!.id}::bigint`.execute(db())).rows[0]
    expect(row).toEqual({ status: "pending", attempts: 0 })

    await drain()
    expect(await count("sent")).toBe(3)
    const published = ((await r().xrange(h.stream, "-", "+")) as Array<Entry>).map(([, f]) => (JSON.parse(f[1]!) as { aggregate: { id: string } }).aggregate.id)
    expect(published).toEqual(["d-1", "d-2", "d-3"])
  })
})

describe("dlq", () => {
  it("lists, shows and re-queues dead letters so that the group reads them again", async () => {
    const unsignedBytes = JSON.stringify({ id: "0190aaaa-0000-7000-8000-000000000001", type: "AccountOpened", aggregate: { type: "account", id: "q-1" }, sequence: 1 })
    const originalId = await r().xadd(h.stream, "*", "e", unsignedBytes)
    const consumer = h.consumer("g-dlq", async () => {}, { consumer: "c1" })
    const consuming = consumer.run()
    await until(() => consumer.stats.deadLettered === 1, 10_000, "dead-lettered")
    consumer.stop()
    await consuming
    const dlq = h.redis.keys.deadLetters(h.stream)

    const listed = await listDeadLetters(r(), prefix())
    expect(listed.map((d) => [d.dlq, d.reason, d.stream, d.id, d.group, d.consumer])).toEqual([[dlq, "unsigned", h.stream, originalId, "g-dlq", "c1"]])
    const entryId = listed[0]!.entryId
    const human = lines()
    await printDeadLetters({ redis: r(), prefix: prefix(), out: human.write }, { json: false, stream: h.stream })
    expect(human.out.map((l) => l.split(/\s{2,}/).slice(0, 6))).toEqual([
      ["DLQ", "ENTRY", "REASON", "ORIGINAL_ID", "TYPE", "GROUP"],
      [dlq, entryId, "unsigned", originalId, "AccountOpened", "g-dlq"]
    ])

    const shown = lines()
    await showDeadLetter({ redis: r(), prefix: prefix(), out: shown.write }, entryId, { json: true })
    const detail = JSON.parse(shown.out[0]!) as { reason: string; fields: Record<string, string>; envelope: { aggregate: { id: string } } }
    expect(detail.reason).toBe("unsigned")
    expect(detail.fields).toEqual({ e: unsignedBytes })
    expect(detail.envelope.aggregate.id).toBe("q-1")
    const text = lines()
    await showDeadLetter({ redis: r(), prefix: prefix(), out: text.write }, entryId, { json: false, stream: dlq })
    expect(text.out.slice(0, 3)).toEqual([`dlq         ${dlq}`, `entry       ${entryId}`, "reason      unsigned"])
    expect(text.out).toContain("fields")
    expect(text.out.join("\n")).toContain('    "id": "q-1"') // the original payload, decoded and indented

    await expect(findDeadLetter(r(), prefix(), "1-0")).rejects.toThrow(`no dead letter 1-0 (searched ${dlq})`)
    await expect(findDeadLetter(r(), prefix(), "latest")).rejects.toThrow("not a stream entry id")

    const moved = await requeueDeadLetter(r(), prefix(), entryId, h.stream)
    expect(moved.stream).toBe(h.stream)
    expect(await r().xlen(dlq)).toBe(0)
    // the group had acknowledged the original; the copy is new to it
    const again = (await r().xreadgroup("GROUP", "g-dlq", "c2", "COUNT", 10, "STREAMS", h.stream, ">")) as Array<[string, Array<Entry>]>
    expect(again[0]![1]).toEqual([[moved.entryId, ["e", unsignedBytes]]])
    expect(await listDeadLetters(r(), prefix())).toEqual([])
  })
})

describe("projections rebuild", () => {
  it("drops and replays a projection with a progress bar, and names the known projections for an unknown one", async () => {
    await seed()
    await ledgerTable("p_cli").execute(db())
    await sql`insert into p_cli values ('stale', 'x', 99, 9, 'Open')`.execute(db())
    const projection = balancesProjection("p_cli")
    const o = lines()
    const bar: Array<string> = []
    let t = 1000
    const result = await rebuildProjection({ db: db(), registry, out: o.write, progress: (c) => void bar.push(c), now: () => (t += 600), batchSize: 2 }, projection)
    expect(result.applied).toBe(5)
    expect(o.out).toEqual(["rebuilt balances:p_cli: 5 events in 600 ms"])
    expect(bar).toEqual([
      "\r[..............................]   0%  0/5 events",
      "\r[############..................]  40%  2/5 events",
      "\r[########################......]  80%  4/5 events",
      "\r[##############################] 100%  5/5 events",
      "\n"
    ])
    const rows = (await sql`select account_id, owner, balance, deposits, status from p_cli order by account_id`.execute(db())).rows
    expect(rows).toEqual((await sql`select account_id, owner, balance, deposits, status from balances order by account_id`.execute(db())).rows)
    expect(rows.map((x) => (x as { account_id: string }).account_id)).toEqual(["acc-1", "acc-2"])

    const known = new Map([["b", projection], ["a", projection]])
    expect(findProjection("b", known)).toBe(projection)
    expect(() => findProjection("c", known)).toThrow('unknown projection "c"; known projections: a, b')
  })
})

describe("consumers lag", () => {
  it("reports consumers, pending, lag, the oldest pending age and the last delivered id, computing lag when Redis cannot", async () => {
    const stream = h.redis.keys.stream("lag")
    const [sec] = await r().time()
    const base = Number(sec) * 1000 - 60_000 // entries published a minute ago
    for (let i = 1; i <= 5; i++) await r().xadd(stream, `${base}-${i}`, "e", "{}")
    await r().xgroup("CREATE", stream, "g-read", "0")
    await r().xgroup("CREATE", stream, "g-idle", "$")
    await r().xreadgroup("GROUP", "g-read", "c1", "COUNT", 3, "STREAMS", stream, ">")
    const lag = await groupLags(r(), [stream])
    expect(lag.map((g) => ({ ...g, oldestPendingMs: g.oldestPendingMs === null ? null : "set" }))).toEqual([
      { stream, group: "g-idle", consumers: 0, pending: 0, lag: 0, oldestPendingMs: null, lastDeliveredId: `${base}-5` },
      { stream, group: "g-read", consumers: 1, pending: 3, lag: 2, oldestPendingMs: "set", lastDeliveredId: `${base}-3` }
    ])
    expect(lag[1]!.oldestPendingMs).toBeGreaterThanOrEqual(60_000)
    expect(lag[1]!.oldestPendingMs).toBeLessThan(70_000)
    // a deletion in the undelivered range makes Redis 7 report lag as null
    await r().xdel(stream, `${base}-5`)
    const info = (await r().xinfo("GROUPS", stream)) as Array<Array<unknown>>
    expect(info.find((g) => g[1] === "g-read")![info[0]!.indexOf("lag") + 1]).toBeNull()
    expect((await groupLags(r(), [stream])).find((g) => g.group === "g-read")!.lag).toBe(1)

    const o = lines()
    await printLag({ redis: r(), prefix: prefix(), out: o.write }, { streams: [], json: false })
    expect(o.out.map((l) => l.split(/\s{2,}/))).toEqual([
      ["STREAM", "GROUP", "CONSUMERS", "PENDING", "LAG", "OLDEST_PENDING_MS", "LAST_DELIVERED"],
      [stream, "g-idle", "0", "0", "0", "-", `${base}-5`],
      [stream, "g-read", "1", "3", "1", expect.stringMatching(/^6\d{4}$/), `${base}-3`]
    ])
    await expect(groupLags(r(), [`${stream}-missing`])).rejects.toThrow(`no such stream: ${stream}-missing`)
  })
})
