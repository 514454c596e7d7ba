// The CLI's pure parts: argument parsing, signature verdicts, tables, the progress bar,
// configuration, and how failures read.
import { ConfigProvider, Effect, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { describe, expect, it } from "vitest"
import { sign, signingKey, Verifier } from "../../core/signing.ts"
import { stackEnv } from "../../core/stack-env.ts"
import { loadCliEnv } from "../../cli/env.ts"
import { judge, parseAggregate, parsePosition, peekEnvelope } from "../../cli/events.ts"
import { messageOf } from "../../cli/main.ts"
import { requeueTarget } from "../../cli/outbox.ts"
import { makeTable, UsageError } from "../../cli/output.ts"
import { formatDuration, progressBar } from "../../cli/projections.ts"

describe("replay arguments", () => {
  it("reads --aggregate as TYPE or TYPE/ID (the id may contain slashes)", () => {
    expect(parseAggregate("agent")).toEqual({ type: "agent", id: undefined })
    expect(parseAggregate("agent/a-1")).toEqual({ type: "agent", id: "a-1" })
    expect(parseAggregate("file/a/b")).toEqual({ type: "file", id: "a/b" })
    for (const bad of ["", "/x", "agent/"]) expect(() => parseAggregate(bad)).toThrow(UsageError)
  })

  it("takes positions as decimal integers, kept exact beyond 2^53", () => {
    expect(parsePosition("--from", undefined)).toBeUndefined()
    expect(parsePosition("--from", "9007199254740993")).toBe(9007199254740993n)
    for (const bad of ["-1", "1.5", "x", "", "12345678901234567890"]) expect(() => parsePosition("--to", bad)).toThrow(/^--to must be a log position/)
  })
})

describe("signature verdicts", () => {
  const key = signingKey(randomBytes(32))
  const verifier = new Verifier([key])
  const stream = "caracal:{account}:events"
  const bytes = '{"id":"e1","type":"AccountOpened"}'
  const entry = (e: string, signed = true, on = stream): { stream: string; fields: Record<string, string> } => ({
    stream: on,
    fields: signed ? { e, k: key.id, s: sign(key, on, e) } : { e }
  })

  it("valid only when the MAC holds and the bytes equal the log's", () => {
    expect(judge(verifier, bytes, [entry(bytes)])).toBe("valid")
    expect(judge(verifier, bytes, [entry(bytes.replace("e1", "e2"))])).toBe("invalid") // re-signed other bytes
    expect(judge(verifier, bytes, [{ stream, fields: { ...entry(bytes).fields, e: bytes.replace("Opened", "Closed") } }])).toBe("invalid")
    expect(judge(verifier, bytes, [entry(bytes, true, "caracal:{other}:events")].map((x) => ({ ...x, stream })))).toBe("invalid")
    expect(judge(verifier, bytes, [entry(bytes, false)])).toBe("unsigned")
    expect(judge(new Verifier([signingKey(randomBytes(32))]), bytes, [entry(bytes)])).toBe("unknown_key")
    expect(judge(verifier, bytes, [])).toBe("not_published")
    expect(judge(new Verifier([]), bytes, [entry(bytes)])).toBe("not_checked")
  })

  it("a duplicate delivery stays valid, but any tampered copy condemns the event", () => {
    expect(judge(verifier, bytes, [entry(bytes), entry(bytes)])).toBe("valid")
    expect(judge(verifier, bytes, [entry(bytes), entry(bytes, false)])).toBe("unsigned")
    expect(judge(verifier, bytes, [entry(bytes, false), entry(bytes.replace("e1", "e9")), entry(bytes)])).toBe("invalid")
  })

  it("peeks into payloads leniently: a broken one still names its event id", () => {
    const env = { id: "0190-1", type: "FundsDeposited", aggregate: { type: "account", id: "a-1" }, sequence: 2 }
    expect(peekEnvelope(JSON.stringify(env))).toEqual({ id: "0190-1", type: "FundsDeposited", aggregate: "account/a-1", sequence: 2 })
    expect(peekEnvelope(JSON.stringify(env).replace("}", "]"))).toEqual({ id: "0190-1", type: undefined, aggregate: undefined, sequence: undefined })
    expect(peekEnvelope("[1,2]").id).toBeUndefined()
    expect(peekEnvelope(undefined).id).toBeUndefined()
  })
})

describe("output", () => {
  it("aligns columns, keeps widths across batches, prints the header once and - for missing values", () => {
    const table = makeTable<{ a: string; b: number | null }>([{ header: "NAME", value: (r) => r.a }, { header: "N", value: (r) => r.b }])
    expect(table([{ a: "x", b: 1 }, { a: "longer", b: null }])).toEqual(["NAME    N", "x       1", "longer  -"])
    expect(table([{ a: "y", b: 22 }])).toEqual(["y       22"])
    expect(table([])).toEqual([])
  })

  it("draws the progress bar clamped to 100% when the log grew during the rebuild", () => {
    expect(progressBar(0, 0, 10)).toBe("[##########] 100%  0/0 events")
    expect(progressBar(1, 3, 10)).toBe("[###.......]  33%  1/3 events")
    expect(progressBar(7, 5, 10)).toBe("[##########] 100%  7/7 events")
    expect([formatDuration(12.4), formatDuration(1234)]).toEqual(["12 ms", "1.23 s"])
  })

  it("validates --requeue: ids, or all with a producer", () => {
    expect(requeueTarget(["3", "1", "3"], undefined)).toEqual({ all: false, ids: ["3", "1"] })
    expect(requeueTarget(["all"], "api")).toEqual({ all: true, producer: "api" })
    expect(() => requeueTarget(["all"], undefined)).toThrow("--requeue all needs --producer")
    expect(() => requeueTarget(["all", "1"], "api")).toThrow("cannot be combined")
    expect(() => requeueTarget(["0", "-2"], undefined)).toThrow("not an id: 0, -2")
  })

  it("turns failures into one readable line", () => {
    expect(messageOf(new UsageError("bad flag"))).toBe("bad flag")
    const refused = Object.assign(new Error("connect ECONNREFUSED ::1:5432"), { code: "ECONNREFUSED" })
    expect(messageOf(new AggregateError([refused, new Error("connect ECONNREFUSED 127.0.0.1:5432")], ""))).toBe(
      "connect ECONNREFUSED ::1:5432; connect ECONNREFUSED 127.0.0.1:5432"
    )
    expect(messageOf(Object.assign(new Error(""), { code: "ETIMEDOUT" }))).toBe("ETIMEDOUT")
  })
})

describe("connection settings", () => {
  const load = (env: Record<string, string>) =>
    Effect.runPromise(Effect.result(loadCliEnv.pipe(Effect.provide(ConfigProvider.layer(ConfigProvider.fromUnknown(env))))))

  it("falls back to the local stack, the caracal prefix and no verification", async () => {
    const r = await load({})
    if (r._tag !== "Success") throw new Error(String(r.failure))
    expect(Redacted.value(r.success.databaseUrl)).toBe(stackEnv().DATABASE_URL)
    expect(Redacted.value(r.success.redisUrl)).toBe(stackEnv().REDIS_URL)
    expect(r.success.prefix).toBe("caracal")
    expect(r.success.verifier.enabled).toBe(false)
  })

  it("verifies with the current key and the previous ones, and never shows the secrets", async () => {
    const current = randomBytes(32)
    const previous = randomBytes(32)
    const r = await load({
      DATABASE_URL: "postgres://u:hunter2hunter2@db.example:5432/c",
      STREAMS_HMAC_KEY: current.toString("hex"),
      STREAMS_HMAC_PREVIOUS_KEYS: `${randomBytes(16).toString("hex")}, ${previous.toString("hex")}`,
      CARACAL_STREAM_PREFIX: "prod"
    })
    if (r._tag !== "Success") throw new Error(String(r.failure))
    const old = signingKey(previous)
    expect(r.success.verifier.verify("s", "x", old.id, sign(old, "s", "x"))).toBe("valid")
    expect(r.success.prefix).toBe("prod")
    expect(`${String(r.success.databaseUrl)} ${JSON.stringify(r.success)}`).not.toContain("hunter2")
  })

  it("names the variable that is wrong", async () => {
    const cases: Array<[Record<string, string>, string]> = [
      [{ CARACAL_STREAM_PREFIX: "a b" }, "CARACAL_STREAM_PREFIX: must contain only letters"],
      [{ STREAMS_HMAC_KEY: "00".repeat(32) }, "STREAMS_HMAC_KEY: must not be all zeros"],
      [{ STREAMS_HMAC_PREVIOUS_KEYS: "abc" }, "STREAMS_HMAC_PREVIOUS_KEYS: each key must be hex-encoded"],
      [{ REDIS_URL: "http://x" }, "REDIS_URL: must be a URL with scheme redis or rediss"]
    ]
    for (const [env, message] of cases) {
      const r = await load(env)
      expect(r._tag === "Failure" ? r.failure.message : "loaded").toContain(message)
    }
  })
})
