// Decisions asked together (services/sts/opa-batch.ts) against the real OPA: zones' packages
// and this run's marker module (with its batch rule) are loaded as the policy sync loads them;
// the queue's requests are counted by wrapping the sts's own OPA client.
import { randomBytes } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { stackEnv } from "../../core/testing/index.ts"
import { batchPath, decisionPath, makeOpa, markerId, markerModule, type Opa, type OpaAnswer, zonePackage } from "../../services/sts/opa.ts"
import { makeDecisionQueue } from "../../services/sts/opa-batch.ts"

const ns = `tbatch${randomBytes(4).toString("hex")}`
const opa = makeOpa(stackEnv().OPA_URL)
const zone = (name: string) => `${name}-${randomBytes(4).toString("hex")}`
const readers = zone("readers")
const denying = zone("denying")
const conflicting = zone("conflicting")
const unloaded = zone("unloaded")
const loaded: Array<string> = []

const put = async (id: string, text: string) => {
  const res = await opa.put(id, text)
  expect(res.status, JSON.stringify(res.body)).toBe(200)
  loaded.push(id)
}

/** The sts's client, with every request it makes recorded by path. */
const counting = () => {
  const paths: Array<string> = []
  const counted: Opa = {
    ...opa,
    evaluate: (path, input, signal) => {
      paths.push(path)
      return opa.evaluate(path, input, signal)
    }
  }
  return { counted, paths }
}

const input = (scopes: ReadonlyArray<string>) => ({ action: { use: "per_call", scopes }, context: { request_id: randomBytes(6).toString("hex") } })
const result = (a: OpaAnswer) => (a.body as { result?: unknown }).result

beforeAll(async () => {
  await put(`${ns}/zones/readers`, `package ${zonePackage(readers)}\n\ndefault result := {"allow": false, "reason": "not_a_reader"}\n\nresult := {"allow": true, "reason": "reader"} if "read" in input.action.scopes\n`)
  await put(`${ns}/zones/denying`, `package ${zonePackage(denying)}\n\nresult := {"allow": false, "reason": "zone_denies"}\n`)
  // two complete definitions that disagree: OPA loads them and fails every evaluation (500)
  await put(`${ns}/zones/conflicting/a`, `package ${zonePackage(conflicting)}\n\nresult := {"allow": true} if input.action.use\n`)
  await put(`${ns}/zones/conflicting/b`, `package ${zonePackage(conflicting)}\n\nresult := {"allow": false} if input.action.use\n`)
  await put(markerId(ns), markerModule(ns))
})

afterAll(async () => {
  for (const id of loaded.reverse()) await opa.remove(id).catch(() => undefined)
})

describe("decisions asked in one turn of the event loop", () => {
  it("leave in one request, and each member gets exactly the answer it would have got alone", async () => {
    const { counted, paths } = counting()
    const queue = makeDecisionQueue(counted, { ns, maxInFlight: 2, maxBatch: 64, timeoutMs: 5_000 })
    const asks = Array.from({ length: 30 }, (_, i) =>
      i % 3 === 0 ? { zone: readers, input: input(["read"]) } : i % 3 === 1 ? { zone: readers, input: input(["write"]) } : { zone: i % 2 === 0 ? denying : unloaded, input: input(["read"]) })
    const answers = await Promise.all(asks.map((a) => queue.ask(a.zone, a.input, AbortSignal.timeout(5_000))))
    expect(paths).toEqual([batchPath(ns)])
    for (const [i, a] of asks.entries()) {
      const alone = await opa.evaluate(decisionPath(a.zone), a.input, AbortSignal.timeout(5_000))
      expect(answers[i]!.status).toBe(200)
      expect(result(answers[i]!), `member ${i}`).toEqual(result(alone))
    }
    // the unloaded zone's members read as a zone OPA has nothing for (the policy engine's drift case)
    expect(result(answers[5]!)).toBeUndefined()
    expect(result(answers[0]!)).toEqual({ allow: true, reason: "reader" })
    expect(result(answers[1]!)).toEqual({ allow: false, reason: "not_a_reader" })
    expect(result(answers[2]!)).toEqual({ allow: false, reason: "zone_denies" })
  })

  it("a zone whose evaluation fails costs the others nothing: the batch is asked again member by member", async () => {
    const { counted, paths } = counting()
    const queue = makeDecisionQueue(counted, { ns, maxInFlight: 2, maxBatch: 64, timeoutMs: 5_000 })
    const zones = [readers, conflicting, denying, readers]
    const answers = await Promise.all(zones.map((z) => queue.ask(z, input(["read"]), AbortSignal.timeout(5_000))))
    expect(paths).toEqual([batchPath(ns), ...zones.map(decisionPath)])
    expect(answers.map((a) => a.status)).toEqual([200, 500, 200, 200])
    expect(result(answers[0]!)).toEqual({ allow: true, reason: "reader" })
    expect(result(answers[2]!)).toEqual({ allow: false, reason: "zone_denies" })
  })

  it("while the requests in flight are at the limit, later decisions wait and go together; a member whose deadline passed is not sent", async () => {
    const { counted, paths } = counting()
    const queue = makeDecisionQueue(counted, { ns, maxInFlight: 1, maxBatch: 8, timeoutMs: 5_000 })
    const first = queue.ask(readers, input(["read"]), AbortSignal.timeout(5_000))
    await new Promise((r) => setImmediate(r))
    // the first is out: these wait for it, then leave in groups of at most 8
    const expired = new AbortController()
    const later = Array.from({ length: 12 }, (_, i) => queue.ask(readers, input(i % 2 === 0 ? ["read"] : ["write"]), i === 3 ? expired.signal : AbortSignal.timeout(5_000)))
    expired.abort(new Error("deadline passed"))
    const settled = await Promise.allSettled([first, ...later])
    expect(paths).toEqual([decisionPath(readers), batchPath(ns), batchPath(ns)])
    expect(settled[4]).toMatchObject({ status: "rejected", reason: new Error("deadline passed") })
    for (const [i, s] of settled.entries()) {
      if (i === 4) continue
      expect(s.status).toBe("fulfilled")
      const reader = i === 0 || (i - 1) % 2 === 0
      expect(result((s as PromiseFulfilledResult<OpaAnswer>).value)).toEqual(reader ? { allow: true, reason: "reader" } : { allow: false, reason: "not_a_reader" })
    }
  })

  it("without the marker module (OPA restarted empty) every member is asked alone, as before", async () => {
    const { counted, paths } = counting()
    const queue = makeDecisionQueue(counted, { ns: `${ns}gone`, maxInFlight: 2, maxBatch: 64, timeoutMs: 5_000 })
    const answers = await Promise.all([readers, denying].map((z) => queue.ask(z, input(["read"]), AbortSignal.timeout(5_000))))
    expect(paths).toEqual([batchPath(`${ns}gone`), decisionPath(readers), decisionPath(denying)])
    expect(answers.map(result)).toEqual([{ allow: true, reason: "reader" }, { allow: false, reason: "zone_denies" }])
  })
})
