// Policy decisions: `PolicyEngine.decide(zoneId, input)` asks OPA for the zone's
// `data.caracal.zones.<z>.authz.result` (opa.ts) and reads it fail-closed:
//   - a zone without an active policy set (policy-sync.ts) → deny `no_active_policy`, OPA not asked;
//   - an undefined result (nothing loaded yet, or OPA lost it) → deny `no_active_policy`, and the
//     reconciler is told (it reloads the zone within seconds);
//   - only an explicit `allow: true` grants; reason = the result's `reason` (else policy_allowed/policy_denied);
//   - Postgres or OPA unreachable, a non-200 answer (an evaluation error), or no answer within
//     OPA_TIMEOUT_MS → PolicyUnavailable (the token endpoint answers 503): never an allow.
// `POST /internal/v1/decide {zone_id, input}` (signed, CONTRACTS.md internal calls) asks the
// same for operators and tests: 200 {allow, reason, decision_id} or 503 temporarily_unavailable.
import { Context, Effect, Layer, Metric, Schema } from "effect"
import { HttpRouter, HttpServerResponse as Res } from "effect/http"
import type { Kysely } from "kysely"
import { loadSpec } from "../../core/config/load.ts"
import { Database } from "../../core/db/database.ts"
import type { Tables } from "../../core/db/tables.ts"
import { errorResponse, httpError } from "../../core/http/errors.ts"
import { requireSignedCall, serviceHmacKeys } from "../../core/internal-call.ts"
import { RedisClient } from "../../core/redis/redis.ts"
import { stsSpec } from "./config.ts"
import { type Decision, makeOpa, newDecisionId, PolicyUnavailable, readDecision } from "./opa.ts"
import { type DecisionQueue, makeDecisionQueue } from "./opa-batch.ts"
import { activeSetOf, policyChanges, reportDrift } from "./policy-sync.ts"

export { type Decision, PolicyUnavailable } from "./opa.ts"

const decisions = Metric.counter("caracal_policy_decisions_total", {
  description: "Policy decisions by outcome (allow, deny, unavailable)",
  incremental: true
})

const batchSize = Metric.histogram("caracal_policy_batch_size", {
  description: "Decisions per request to OPA (1: asked alone; more: gathered while two requests were out)",
  boundaries: [1, 2, 4, 8, 16, 32, 64]
})

const noActivePolicy = (): Decision => ({ allow: false, reason: "no_active_policy", decisionId: newDecisionId() })

export interface PolicyEngineShape {
  /** The zone's decision on `input` (any JSON value; the token endpoint sends the object in the README). */
  readonly decide: (zoneId: string, input: unknown) => Effect.Effect<Decision, PolicyUnavailable>
  /** The same as a promise, for the token exchange's plain async code; rejects with PolicyUnavailable. */
  readonly decideNow: (zoneId: string, input: unknown) => Promise<Decision>
}

export const makePolicyEngine = (deps: {
  readonly db: Kysely<Tables>
  /** OPA, asked through the queue that batches decisions under load (opa-batch.ts). */
  readonly decisions: DecisionQueue
  readonly timeoutMs: number
  /** Logs a warning with the service's logger (the decision itself runs outside any effect). */
  readonly warn: (message: string, fields: Record<string, unknown>) => void
}): PolicyEngineShape => {
  // Each zone's active set as last read from the tables, kept while no change has been
  // committed since (the policy sync's NOTIFY moves the generation) and only while a listener
  // is connected to hear one: a decision then asks OPA alone. A read that a change overtook
  // is used once and not kept.
  const activeSets = new Map<string, { readonly generation: number; readonly value: Awaited<ReturnType<typeof activeSetOf>> }>()
  const activeSet = async (zoneId: string) => {
    const generation = policyChanges.generation
    const kept = activeSets.get(zoneId)
    if (policyChanges.listening > 0 && kept?.generation === generation) return kept.value
    const value = await activeSetOf(deps.db, zoneId)
    if (policyChanges.listening > 0 && policyChanges.generation === generation) {
      if (activeSets.size >= 10_000) activeSets.clear()
      activeSets.set(zoneId, { generation, value })
    }
    return value
  }
  const count = (outcome: "allow" | "deny" | "unavailable") =>
    Effect.runSync(Metric.update(Metric.withAttributes(decisions, { outcome }), 1))
  const fail = (reason: string, cause: unknown): never => {
    count("unavailable")
    deps.warn("policy decision unavailable", { reason, error: String(cause) })
    throw new PolicyUnavailable({ reason })
  }
  // Plain async code with one timer, not an effect: it runs once per token exchange, where an
  // effect's fibers (two forks, a timeout, a span) cost about a fifth of a millisecond of CPU,
  // a third of the exchange's own work.
  const decideNow = async (zoneId: string, input: unknown): Promise<Decision> => {
    const controller = new AbortController()
    let timer: ReturnType<typeof setTimeout> | undefined
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => {
        controller.abort()
        resolve("timeout")
      }, deps.timeoutMs)
    })
    try {
      // both asked at once (a decision waits for the slower, not for their sum); the tables have the last word
      const both = Promise.all([
        activeSet(zoneId).then((value) => ({ value }), (cause: unknown) => ({ cause })),
        deps.decisions.ask(zoneId, input, controller.signal).then((value) => ({ value }), (cause: unknown) => ({ cause }))
      ])
      const settled = await Promise.race([both, timedOut])
      if (settled === "timeout") return fail("timeout", `no decision within ${deps.timeoutMs} ms`)
      const [active, asked] = settled
      if ("cause" in active) return fail("database", active.cause)
      // a zone without an active set is denied whatever OPA says, or whether it answers at all
      if (active.value === undefined) return counted(noActivePolicy())
      if ("cause" in asked) return fail("unreachable", asked.cause)
      const res = asked.value
      if (res.status !== 200) return fail(`status ${res.status}`, JSON.stringify(res.body).slice(0, 500))
      const decision = readDecision(res.body, newDecisionId)
      if (decision !== undefined) return counted(decision)
      // the tables name an active set, OPA has nothing for the zone: it lost it, or the push is on its way
      reportDrift()
      return counted(noActivePolicy())
    } finally {
      clearTimeout(timer)
    }
  }
  const counted = (d: Decision): Decision => {
    count(d.allow ? "allow" : "deny")
    return d
  }
  return {
    decideNow,
    decide: (zoneId, input) =>
      Effect.tryPromise({
        try: () => decideNow(zoneId, input),
        catch: (e) => e instanceof PolicyUnavailable ? e : new PolicyUnavailable({ reason: String(e) })
      })
  }
}

// Measured with the sts bench on two cores: one request out at a time made larger batches, but
// every decision then waited for the one before it (p99 at half rate 29–41 ms against 19–22 ms
// with two); without batching the sts reached 0.39–0.41 of its ceiling, with it 0.51–0.67.
const OPA_MAX_IN_FLIGHT = 2
const OPA_MAX_BATCH = 64

export class PolicyEngine extends Context.Service<PolicyEngine, PolicyEngineShape>()("caracal/sts/PolicyEngine") {
  /** Reads OPA_URL and OPA_TIMEOUT_MS; needs the Database. */
  static readonly layer = Layer.effect(PolicyEngine, Effect.gen(function*() {
    const vars = yield* loadSpec(stsSpec)
    const database = yield* Database
    const context = yield* Effect.context<never>()
    return PolicyEngine.of(makePolicyEngine({
      db: database.db,
      decisions: makeDecisionQueue(makeOpa(vars.OPA_URL), {
        ns: vars.REDIS_KEY_PREFIX,
        maxInFlight: OPA_MAX_IN_FLIGHT,
        maxBatch: OPA_MAX_BATCH,
        timeoutMs: vars.OPA_TIMEOUT_MS,
        onSend: (decisions) => Effect.runSync(Metric.update(batchSize, decisions))
      }),
      timeoutMs: vars.OPA_TIMEOUT_MS,
      warn: (message, fields) => void Effect.runForkWith(context)(Effect.logWarning(message).pipe(Effect.annotateLogs(fields)))
    }))
  }))
}

const DecideBody = Schema.Struct({
  zone_id: Schema.String.pipe(Schema.check(Schema.isPattern(/^[A-Za-z0-9._:-]{1,128}$/u))),
  input: Schema.Record(Schema.String, Schema.Unknown)
})

/** POST /internal/v1/decide: the zone's decision on an input, behind the signed-call guard. */
export const DecideRoutes = HttpRouter.use((router) =>
  Effect.gen(function*() {
    const vars = yield* loadSpec(stsSpec)
    const redis = yield* RedisClient
    const engine = yield* PolicyEngine
    const signed = requireSignedCall(serviceHmacKeys(vars)).pipe(Effect.provideService(RedisClient, redis))
    yield* router.add("POST", "/internal/v1/decide", Effect.gen(function*() {
      const text = yield* signed
      const json = yield* Effect.try({ try: () => JSON.parse(text) as unknown, catch: () => httpError(400, "invalid_request", "the body must be JSON") })
      const body = yield* Schema.decodeUnknownEffect(DecideBody)(json)
      return yield* engine.decide(body.zone_id, body.input).pipe(
        Effect.map((d) => Res.jsonUnsafe({ allow: d.allow, reason: d.reason, decision_id: d.decisionId })),
        Effect.catchTag("PolicyUnavailable", () =>
          Effect.succeed(errorResponse(503, "temporarily_unavailable", "the policy engine cannot decide now")))
      )
    }))
  })
).pipe(Layer.provide(PolicyEngine.layer))
