// Policy sync: the api's policy and policy set events, projected into sts tables (migration
// 0015), and OPA made to serve what those tables say (naming in opa.ts).
//
// The projection `sts-policies` (a consumer group on caracal:{policy}:events and
// caracal:{policy_set}:events, shared by the replicas; `caracal projections rebuild sts-policies`)
// keeps every version's text, every set's activation, and each zone's active set: the zone's
// live (not archived) set activated last, by log position — so activating a set replaces the
// zone's previous one, and archiving it falls back to the latest other live activated set (the
// one the api still shows as active), or to none (decisions: no_active_policy). A set version
// pins its policy versions, so archiving a policy changes nothing that is loaded; activate
// another version to stop using it.
//
// Pushing to OPA happens after commit, by a reconciler, not inside the projection's
// transaction. Inside, an OPA outage would fail the batch until the entries went to the
// dead-letter stream, and two replicas applying two sets' events of one zone could push in
// the other order than they commit. Instead the transaction ends with a NOTIFY (delivered only
// on commit, to every replica), and each replica's reconciler then makes its OPA equal to the
// tables, under one advisory lock, listing OPA after taking it: the last push reads the last
// committed state, whatever order the replicas run in. A failed push loses nothing — the tables
// are the truth — it is retried with backoff. The same reconcile runs at start (an OPA restarted
// empty, or started after the sts, gets everything back), when a marker module has gone from
// OPA (checked every 30 s), every 5 minutes regardless, and soon after a decision found a zone
// with an active set but nothing loaded. It works with one OPA shared by every replica and
// with one OPA per replica (a sidecar): every replica reconciles its own OPA_URL.
import { Effect, Layer, Option, Queue, Redacted } from "effect"
import { type Kysely, sql, type Transaction } from "kysely"
import pg from "pg"
import { type ConsumerDefinition, Consumer } from "../../core/consumer-layer.ts"
import { loadSpec } from "../../core/config/load.ts"
import { Database } from "../../core/db/database.ts"
import type { Tables } from "../../core/db/tables.ts"
import { type PgProjection, refreshPostgres } from "../../core/projection.ts"
import type { Envelope } from "../../schemas/envelope.ts"
import { events as apiEvents, type PolicySetRecord } from "../api/events.ts"
import { stsSpec } from "./config.ts"
import {
  makeOpa,
  markerId,
  markerModule,
  markerPath,
  modulesPrefix,
  type Opa,
  pointerId,
  pointerModule,
  policyModuleId,
  versionPackage
} from "./opa.ts"
import { InvalidPolicy, rewriteModule } from "./policies.ts"

export const POLICIES = "sts-policies"
/** NOTIFY channel: a batch that changed the tables committed; reconcile. */
export const POLICY_CHANNEL = "caracal_sts_policies"

const SET_RECORD_EVENTS = ["PolicySetCreated", "PolicySetUpdated", "PolicySetVersionAdded", "PolicySetActivated"]

/** The manifest of the record's active version, or null when none is active. */
const activeManifest = (record: PolicySetRecord) => {
  if (record.activeVersionId === null) return null
  return record.versions.find((v) => v.id === record.activeVersionId)?.manifest.policies ?? null
}

/** Recomputes the zones' active sets from their sets; a row changes only when the active version does. */
const recomputeZones = (trx: Transaction<Tables>, zones: ReadonlyArray<string>) =>
  sql`with pick as (
      select distinct on (zone_id) zone_id, id, active_version_id, manifest from sts_policy_sets
      where zone_id = any(${zones}::text[]) and not archived
        and active_version_id is not null and manifest is not null and activated_position is not null
      order by zone_id, activated_position desc
    ), gone as (
      delete from sts_zone_policies z where z.zone_id = any(${zones}::text[])
        and not exists (select 1 from pick p where p.zone_id = z.zone_id)
    )
    insert into sts_zone_policies (zone_id, policy_set_id, set_version_id, manifest, updated_at)
    select zone_id, id, active_version_id, manifest, now() from pick
    on conflict (zone_id) do update set policy_set_id = excluded.policy_set_id, set_version_id = excluded.set_version_id,
      manifest = excluded.manifest, updated_at = excluded.updated_at
    where (sts_zone_policies.policy_set_id, sts_zone_policies.set_version_id)
      is distinct from (excluded.policy_set_id, excluded.set_version_id)`.execute(trx)

/** Applies events in order (policy changes are rare: a statement per event), then the zones they touched. */
export const applyPolicyEvents = async (trx: Transaction<Tables>, events: ReadonlyArray<Envelope>): Promise<void> => {
  const zones = new Set<string>()
  for (const e of events) {
    if (e.type === "PolicyVersionAdded") {
      const d = e.data as { versionId: string; rego: string }
      await sql`insert into sts_policy_versions (version_id, policy_id, zone_id, rego, added_at)
        values (${d.versionId}, ${e.aggregate.id}, ${e.zoneId}, ${d.rego}, ${e.occurredAt}::timestamptz)
        on conflict (version_id) do nothing`.execute(trx)
      // a text that arrives after its set's activation (another stream) completes the zone
      zones.add(e.zoneId)
    } else if (SET_RECORD_EVENTS.includes(e.type)) {
      const record = e.data as PolicySetRecord
      const manifest = activeManifest(record)
      // an activation moves the set to the front of its zone; another record event keeps its place
      const activated = e.type === "PolicySetActivated" || manifest !== null ? e.position : null
      await sql`insert into sts_policy_sets (id, zone_id, active_version_id, manifest, activated_position, updated_at)
        values (${e.aggregate.id}, ${e.zoneId}, ${record.activeVersionId}, ${manifest === null ? null : JSON.stringify(manifest)}::jsonb,
          ${activated}::bigint, ${e.occurredAt}::timestamptz)
        on conflict (id) do update set active_version_id = excluded.active_version_id, manifest = excluded.manifest,
          activated_position = ${e.type === "PolicySetActivated"
        ? sql`excluded.activated_position`
        : sql`coalesce(sts_policy_sets.activated_position, excluded.activated_position)`},
          updated_at = excluded.updated_at`.execute(trx)
      zones.add(e.zoneId)
    } else if (e.type === "PolicySetArchived") {
      await sql`update sts_policy_sets set archived = true, updated_at = ${e.occurredAt}::timestamptz
        where id = ${e.aggregate.id}`.execute(trx)
      zones.add(e.zoneId)
    }
  }
  if (zones.size === 0) return
  await recomputeZones(trx, [...zones])
  // delivered at commit, to every replica's reconciler (and never for a batch rolled back)
  await sql`select pg_notify(${POLICY_CHANNEL}, '')`.execute(trx)
}

export const policiesProjection: PgProjection = {
  name: POLICIES,
  // Policy{Created,Updated,Archived} carry nothing the sts loads: versions are pinned by sets
  handles: new Set(["PolicyVersionAdded", ...SET_RECORD_EVENTS, "PolicySetArchived"]),
  apply: (trx, e) => applyPolicyEvents(trx, [e]),
  applyBatch: applyPolicyEvents,
  // the consumer writes them: a rebuild holds it off until it commits
  tables: ["sts_policy_sets", "sts_policy_versions", "sts_zone_policies"],
  reset: async (trx) => {
    await sql`delete from sts_zone_policies`.execute(trx)
    await sql`delete from sts_policy_sets`.execute(trx)
    await sql`delete from sts_policy_versions`.execute(trx)
  }
}

/** The consumer that keeps it: a group on the api's policy and policy set streams. */
export const policiesConsumer: ConsumerDefinition = {
  mode: "group",
  name: POLICIES,
  streams: (keys) => [keys.stream("policy"), keys.stream("policy_set")],
  registry: apiEvents,
  projection: policiesProjection
}

/** A zone's active set, as decisions read it (undefined: none, deny without asking OPA). */
export const activeSetOf = async (db: Kysely<Tables>, zoneId: string) => {
  const { rows } = await sql<{ policy_set_id: string; set_version_id: string }>`
    select policy_set_id, set_version_id from sts_zone_policies where zone_id = ${zoneId}`.execute(db)
  return rows[0]
}

// ---------------------------------------------------------------- reconcile OPA with the tables

interface Wanted {
  readonly zoneId: string
  readonly pointer: { readonly id: string; readonly text: string }
  readonly modules: ReadonlyArray<{ readonly id: string; readonly text: string }>
}

interface DesiredRow {
  zone_id: string
  set_version_id: string
  policy_id: string
  version_id: string
  rego: string | null
}

const desiredRows = async (trx: Transaction<Tables>) =>
  (await sql<DesiredRow>`
    select z.zone_id, z.set_version_id, m."policyId" as policy_id, m."versionId" as version_id, v.rego
    from sts_zone_policies z
    cross join lateral jsonb_to_recordset(z.manifest) as m("policyId" text, "versionId" text)
    left join sts_policy_versions v on v.version_id = m."versionId"
    order by z.zone_id`.execute(trx)).rows

export interface ReconcileReport {
  readonly zones: number
  readonly put: number
  readonly deleted: number
  /** Zones served nothing (fail closed): a text missing from the log, or refused by OPA. */
  readonly failed: ReadonlyArray<{ readonly zoneId: string; readonly why: string }>
}

/** Tries `op` on each item, again and again while a round makes progress (modules depend on siblings). */
const inRounds = async <T>(items: ReadonlyArray<T>, op: (t: T) => Promise<boolean>): Promise<ReadonlyArray<T>> => {
  let left = [...items]
  while (left.length > 0) {
    const next: Array<T> = []
    for (const t of left) if (!(await op(t))) next.push(t)
    if (next.length === left.length) return next
    left = next
  }
  return left
}

const describe = (body: unknown) => JSON.stringify(body).slice(0, 500)

/**
 * Makes OPA hold exactly what the tables say for this deployment's zones (module ids under
 * `<ns>/zones/`): each zone's version modules, then its pointer (the switch), then the
 * removal of everything else. Runs under an advisory lock (per deployment and OPA URL) and
 * reads OPA after taking it.
 * Throws when OPA cannot be asked (the caller retries); a zone whose modules OPA refuses is
 * served nothing and reported.
 */
export const reconcile = (db: Kysely<Tables>, opa: Opa, ns: string): Promise<ReconcileReport> =>
  db.transaction().execute(async (trx) => {
    // one reconcile at a time per (deployment, OPA): replicas on other OPAs do not wait for this one
    await sql`select pg_advisory_xact_lock(hashtext('caracal:sts:policy-sync'), hashtext(${`${ns} ${opa.baseUrl}`}))`.execute(trx)
    let rows = await desiredRows(trx)
    const missing = [...new Set(rows.filter((r) => r.rego === null).map((r) => r.policy_id))]
    if (missing.length > 0) {
      // read-your-writes: a set activated before its policy's text reached this projection
      for (const id of missing) await refreshPostgres(db, apiEvents, policiesProjection, { type: "policy", id })
      rows = await desiredRows(trx)
    }
    const failed: Array<{ zoneId: string; why: string }> = []
    const wanted: Array<Wanted> = []
    const byZone = Map.groupBy(rows, (r) => r.zone_id)
    for (const [zoneId, zoneRows] of byZone) {
      const setVersion = zoneRows[0]!.set_version_id
      const pkg = versionPackage(zoneId, setVersion)
      const modules: Array<{ id: string; text: string }> = []
      let why: string | undefined
      for (const r of zoneRows) {
        if (r.rego === null) {
          why = `policy version ${r.version_id} is not in the log`
          break
        }
        const text = rewriteModule(r.version_id, r.rego, pkg)
        if (text instanceof InvalidPolicy) {
          why = text.message
          break
        }
        const id = policyModuleId(ns, zoneId, setVersion, r.policy_id, r.version_id)
        if (!modules.some((m) => m.id === id)) modules.push({ id, text })
      }
      if (why !== undefined) failed.push({ zoneId, why })
      else wanted.push({ zoneId, pointer: { id: pointerId(ns, zoneId), text: pointerModule(zoneId, setVersion) }, modules })
    }

    const held = await opa.list()
    const keep = new Set<string>()
    // what this run put: a zone that then fails has its part-loaded modules removed below
    const putNow = new Set<string>()
    const putOne = async (m: { id: string; text: string }) => {
      if (held.get(m.id) === m.text) return true
      const res = await opa.put(m.id, m.text)
      if (res.status === 200) {
        putNow.add(m.id)
        return true
      }
      if (res.status === 400) return false
      throw new Error(`OPA answered ${res.status} to PUT ${m.id}: ${describe(res.body)}`)
    }
    for (const w of wanted) {
      const refused = await inRounds(w.modules, putOne)
      if (refused.length > 0) {
        failed.push({ zoneId: w.zoneId, why: `OPA refused ${refused.map((m) => m.id).join(", ")}` })
        continue
      }
      // the switch: the zone's decisions read the new version from here on
      if (!(await putOne(w.pointer))) {
        failed.push({ zoneId: w.zoneId, why: "OPA refused the zone's pointer module" })
        continue
      }
      keep.add(w.pointer.id)
      for (const m of w.modules) keep.add(m.id)
    }

    // pointers first: a zone stops reading a version before that version's modules go
    const stale = [...new Set([...held.keys(), ...putNow])].filter((id) => id.startsWith(modulesPrefix(ns)) && !keep.has(id))
      .sort((a, b) => Number(b.endsWith("/active")) - Number(a.endsWith("/active")))
    let deleted = 0
    const left = await inRounds(stale, async (id) => {
      const res = await opa.remove(id)
      if (res.status === 200 || res.status === 404) {
        deleted++
        return true
      }
      if (res.status === 400) return false
      throw new Error(`OPA answered ${res.status} to DELETE ${id}: ${describe(res.body)}`)
    })
    if (left.length > 0) throw new Error(`OPA kept stale modules: ${left.join(", ")}`)
    if (held.get(markerId(ns)) !== markerModule(ns)) {
      const res = await opa.put(markerId(ns), markerModule(ns))
      if (res.status !== 200) throw new Error(`OPA answered ${res.status} to PUT ${markerId(ns)}`)
    }
    return { zones: wanted.length + failed.length, put: putNow.size, deleted, failed }
  })

/** Whether OPA still holds this deployment's marker (false: it lost its modules, or cannot say). */
const markerPresent = async (opa: Opa, ns: string) => {
  try {
    const res = await opa.evaluate(markerPath(ns), {}, AbortSignal.timeout(5_000))
    return res.status === 200 && (res.body as { result?: unknown } | undefined)?.result === true
  } catch {
    return false
  }
}

// ---------------------------------------------------------------- the reconciler

/** Decisions that find a zone with an active set but nothing loaded say so here (see opa drift). */
const driftListeners = new Set<() => void>()
export const reportDrift = () => {
  for (const wake of driftListeners) wake()
}

/**
 * What this process knows of committed policy changes, for what it caches from the tables
 * (the policy engine's active sets): `generation` moves at every NOTIFY and every change of
 * listener; `listening` counts connected listeners. With none connected a change could go
 * unheard, so nothing cached may be used.
 */
export const policyChanges = { generation: 0, listening: 0 }

/** LISTENs on its own connection, reconnecting; `onWake` also fires after each (re)connection. */
const listen = (url: string, onWake: () => void, onError: (e: unknown) => void) => {
  let stopped = false
  let client: pg.Client | undefined
  let counted: pg.Client | undefined
  let timer: ReturnType<typeof setTimeout> | undefined
  const uncount = (c: pg.Client) => {
    if (counted !== c) return
    counted = undefined
    policyChanges.listening--
    policyChanges.generation++
  }
  const lost = (c: pg.Client) => {
    uncount(c)
    if (client !== c) return
    client = undefined
    c.end().catch(() => undefined)
    if (!stopped) timer = setTimeout(connect, 1_000)
  }
  const connect = async () => {
    if (stopped) return
    const c = new pg.Client({ connectionString: url })
    client = c
    c.on("error", (e) => {
      onError(e)
      lost(c)
    })
    c.on("end", () => lost(c))
    c.on("notification", () => {
      policyChanges.generation++
      onWake()
    })
    try {
      await c.connect()
      await c.query(`listen ${POLICY_CHANNEL}`)
      if (client === c) {
        counted = c
        policyChanges.listening++
        policyChanges.generation++
      }
      // whatever was committed while this connection was away
      onWake()
    } catch (e) {
      onError(e)
      lost(c)
    }
  }
  void connect()
  return async () => {
    stopped = true
    clearTimeout(timer)
    const c = client
    client = undefined
    if (c !== undefined) uncount(c)
    await c?.end().catch(() => undefined)
  }
}

const CHECK_MS = 30_000
const FULL_MS = 5 * 60_000
const DRIFT_MIN_INTERVAL_MS = 2_000

/** The reconciler: at start, on every committed change (NOTIFY), on drift, and periodically. */
export const reconcilerLayer = Layer.effectDiscard(Effect.gen(function*() {
  const vars = yield* loadSpec(stsSpec)
  const database = yield* Database
  const opa = makeOpa(vars.OPA_URL)
  const ns = vars.REDIS_KEY_PREFIX
  const wake = yield* Queue.sliding<string>(1)
  const context = yield* Effect.context<never>()
  const warn = (message: string) => (e: unknown) =>
    Effect.runForkWith(context)(Effect.logWarning(message).pipe(Effect.annotateLogs({ error: String(e) })))

  yield* Effect.acquireRelease(
    Effect.sync(() => listen(Redacted.value(vars.DATABASE_URL), () => Queue.offerUnsafe(wake, "change"), warn("policy sync: listener"))),
    (stop) => Effect.promise(stop)
  )
  let lastDrift = 0
  const onDrift = () => {
    if (Date.now() - lastDrift < DRIFT_MIN_INTERVAL_MS) return
    lastDrift = Date.now()
    Queue.offerUnsafe(wake, "drift")
  }
  yield* Effect.acquireRelease(Effect.sync(() => driftListeners.add(onDrift)), () => Effect.sync(() => driftListeners.delete(onDrift)))

  const loop = Effect.gen(function*() {
    let failures = 0
    let lastRun = 0
    Queue.offerUnsafe(wake, "start")
    for (;;) {
      const backoff = Math.min(30_000, 500 * 2 ** Math.min(failures, 6))
      const woken = yield* Queue.take(wake).pipe(Effect.timeoutOption(failures > 0 ? backoff : CHECK_MS))
      const why = Option.isSome(woken)
        ? woken.value
        : failures > 0
        ? "retry"
        : Date.now() - lastRun > FULL_MS
        ? "periodic"
        : (yield* Effect.promise(() => markerPresent(opa, ns)))
        ? undefined
        : "marker missing"
      if (why === undefined) continue
      const started = performance.now()
      const outcome = yield* Effect.result(Effect.tryPromise(() => reconcile(database.db, opa, ns)))
      lastRun = Date.now()
      if (outcome._tag === "Failure") {
        failures++
        yield* Effect.logWarning("policy sync: OPA could not be reconciled; retrying").pipe(
          Effect.annotateLogs({ trigger: why, attempt: failures, error: String(outcome.failure.cause ?? outcome.failure) })
        )
        continue
      }
      failures = 0
      const r = outcome.success
      for (const f of r.failed) {
        yield* Effect.logError("policy sync: a zone's active policy cannot be loaded; its decisions deny").pipe(
          Effect.annotateLogs({ zone_id: f.zoneId, why: f.why })
        )
      }
      if (r.put > 0 || r.deleted > 0 || why === "start") {
        yield* Effect.logInfo("policy sync: OPA reconciled").pipe(Effect.annotateLogs({
          trigger: why,
          zones: r.zones,
          put: r.put,
          deleted: r.deleted,
          ms: Math.round(performance.now() - started)
        }))
      }
    }
  })
  yield* Effect.forkScoped(loop)
}))

/** The background work of the policy sync: the projection's consumer and the reconciler. */
export const policySyncLayer = Layer.mergeAll(Consumer.layer(stsSpec, policiesConsumer), reconcilerLayer)
