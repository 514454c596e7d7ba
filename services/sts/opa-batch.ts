// Decisions asked of OPA together when many are waiting. Every token exchange needs one, and
// on this path the request's cost (a write and a read on a socket, OPA's HTTP handling and
// JSON parsing) is most of the decision's: measured on the development machine, OPA spent
// 365 µs of CPU on a single decision, 135 µs per decision in batches of 8, 100 µs in batches
// of 16, and writing the requests was a fifth of the sts's main thread's busy time. So at
// most `maxInFlight` requests are out at once; decisions arriving meanwhile wait and go in the
// next request, up to `maxBatch` of them, through the marker module's batch rule (opa.ts
// `batchPath`). Alone, a decision is the plain Data API call it always was: no added wait at
// low load. A batch's members share its decision_id (OPA logs the batch as one decision).
//
// Each member keeps its own outcome: a batch OPA answers with anything but 200 (one zone's
// evaluation error fails the whole request) is asked again member by member, and a batch
// answered without a result (OPA lost the marker module: restarted empty) the same way, so
// the policy engine sees exactly what a single call would have told it. A member whose signal
// has fired by the time its turn comes is not sent.
import { batchPath, decisionPath, type Opa, type OpaAnswer, zoneSegment } from "./opa.ts"

interface Waiting {
  readonly zoneId: string
  readonly input: unknown
  readonly signal: AbortSignal
  readonly resolve: (answer: OpaAnswer) => void
  readonly reject: (cause: unknown) => void
}

export interface DecisionQueue {
  /** The zone's result on `input`, as `POST /v1/data/<zone's decision path>` would answer it. */
  readonly ask: (zoneId: string, input: unknown, signal: AbortSignal) => Promise<OpaAnswer>
}

export const makeDecisionQueue = (opa: Opa, options: {
  /** REDIS_KEY_PREFIX: whose marker module holds the batch rule. */
  readonly ns: string
  readonly maxInFlight: number
  readonly maxBatch: number
  /** A batch request's own deadline (its members have theirs). */
  readonly timeoutMs: number
  /** Told the size of every request sent (1: a decision asked alone), for /metrics. */
  readonly onSend?: (decisions: number) => void
}): DecisionQueue => {
  const waiting: Array<Waiting> = []
  let inFlight = 0

  const alone = (w: Waiting) => opa.evaluate(decisionPath(w.zoneId), w.input, w.signal).then(w.resolve, w.reject)

  const together = async (group: ReadonlyArray<Waiting>) => {
    let res: OpaAnswer
    try {
      res = await opa.evaluate(
        batchPath(options.ns),
        { items: group.map((w) => ({ zone: zoneSegment(w.zoneId), input: w.input })) },
        AbortSignal.timeout(options.timeoutMs)
      )
    } catch (cause) {
      // OPA could not be asked: it could not have answered any of them alone either
      for (const w of group) w.reject(cause)
      return
    }
    const body = res.body as { result?: unknown; decision_id?: unknown } | undefined
    const results = body?.result
    if (res.status !== 200 || typeof results !== "object" || results === null || Array.isArray(results)) {
      await Promise.all(group.map(alone))
      return
    }
    // one request, one decision log entry in OPA: its decision_id is each member's
    group.forEach((w, i) =>
      w.resolve({ status: 200, body: { result: (results as Record<string, unknown>)[String(i)], decision_id: body?.decision_id } })
    )
  }

  // decisions asked in one turn of the event loop (the poll phase hands the sts every request
  // that arrived meanwhile) leave together, at its end
  let gathering = false
  const pump = () => {
    gathering = false
    while (inFlight < options.maxInFlight && waiting.length > 0) {
      const group: Array<Waiting> = []
      while (group.length < options.maxBatch && waiting.length > 0) {
        const w = waiting.shift()!
        if (w.signal.aborted) w.reject(w.signal.reason)
        else group.push(w)
      }
      if (group.length === 0) continue
      inFlight++
      options.onSend?.(group.length)
      void (group.length === 1 ? alone(group[0]!) : together(group)).finally(() => {
        inFlight--
        gather()
      })
    }
  }
  const gather = () => {
    if (gathering || waiting.length === 0) return
    gathering = true
    setImmediate(pump)
  }

  return {
    ask: (zoneId, input, signal) =>
      new Promise<OpaAnswer>((resolve, reject) => {
        waiting.push({ zoneId, input, signal, resolve, reject })
        gather()
      })
  }
}
