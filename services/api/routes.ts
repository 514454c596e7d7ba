// The api's routes: for each aggregate, create / get / list / update / archive under
// /v1/zones (and /v1/zones/{zone}/…), plus the actions that are not plain updates
// (secret rotation, policy versions, policy set activation, key rotation), the token
// pass-through and the development bootstrap. Each route names the body schema it
// validates with (bodies.ts); the same list is the OpenAPI document (openapi.ts).
import { Effect } from "effect"
import { HttpServerResponse as Res } from "effect/http"
import { Lru } from "../../core/lru.ts"
import { createHash } from "node:crypto"
import { v7 as uuidv7 } from "uuid"
import { httpError } from "../../core/http/errors.ts"
import * as B from "./bodies.ts"
import type { Caller, Commands } from "./commands.ts"
import { type Changed, type Rec, rejected } from "./domain/record.ts"
import type { ApiAggregateType, ApplicationRecord, PolicyRecord, PolicySetRecord, ResourceRecord, SecretVerifier } from "./events.ts"
import type { ListOptions, Page, Queries } from "./queries.ts"
import { answer, type Ctx, route, type RouteSpec } from "./route-kit.ts"
import { generateSecret, verifierFor } from "./secrets.ts"
import type { StsClient } from "./sts-client.ts"

export interface ApiDeps {
  readonly commands: Commands
  readonly queries: Queries
  readonly sts: StsClient
  readonly development: boolean
}

const DEFAULT_SCOPES = ["agent:lifecycle"]
const METADATA_MAX_BYTES = 16 * 1024
const LIST_MAX = 1000
const LIST_DEFAULT = 100
const DEFAULT_OVERLAP_SECONDS = 3600

const checkMetadata = (m: unknown) =>
  m !== undefined && JSON.stringify(m).length > METADATA_MAX_BYTES
    ? Effect.fail(httpError(400, "invalid_request", `metadata must be at most ${METADATA_MAX_BYTES} bytes of JSON`))
    : Effect.void

/** Defined fields of a PATCH body, renamed to the record's camelCase. */
const patchOf = (body: Record<string, unknown>): Rec =>
  Object.fromEntries(
    Object.entries(body).filter(([, v]) => v !== undefined).map(([k, v]) => [k.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase()), v])
  )

const cursorOf = (id: string) => Buffer.from(id, "utf8").toString("base64url")
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const listOptions = (query: URLSearchParams, filters: Readonly<Record<string, string>>) =>
  Effect.gen(function*() {
    const limitRaw = query.get("limit") ?? String(LIST_DEFAULT)
    const limit = Number(limitRaw)
    if (!/^\d{1,4}$/.test(limitRaw) || limit < 1 || limit > LIST_MAX) {
      return yield* httpError(400, "invalid_request", `limit must be 1-${LIST_MAX}`)
    }
    const cursor = query.get("cursor")
    let after: string | undefined
    if (cursor !== null) {
      after = /^[A-Za-z0-9_-]{1,200}$/.test(cursor) ? Buffer.from(cursor, "base64url").toString("utf8") : ""
      if (!UUID.test(after)) return yield* httpError(400, "invalid_request", "malformed cursor")
    }
    const status = query.get("status") ?? undefined
    if (status !== undefined && status !== "active" && status !== "archived") {
      return yield* httpError(400, "invalid_request", "status must be active or archived")
    }
    const where: Record<string, string> = {}
    for (const [param, field] of Object.entries(filters)) {
      const v = query.get(param)
      if (v !== null) {
        if (v.length > 200) return yield* httpError(400, "invalid_request", `${param} is too long`)
        where[field] = v
      }
    }
    return { after, limit, status, where } satisfies ListOptions
  })

/** Pages whose answers are kept, and the largest kept (16 × 2 MiB at most). */
const PAGES_KEPT = 16
const PAGE_KEPT_MAX_BYTES = 2 * 1024 * 1024

/**
 * A page's answer, laid out in one buffer from the records' kept answers (queries.ts): text
 * would cost a UTF-8 scan for its length and an encoding on the way out. The last pages
 * answered are kept by what they are made of, so a page read again unchanged is the same
 * buffer: a new 400 KB buffer per answer is memory outside V8's heap, which V8 reclaims with
 * a full collection every few dozen answers (each 7-30 ms, every request in flight waiting).
 */
const pageAnswerer = () => {
  const kept = new Lru<string, Buffer>(PAGES_KEPT)
  return (p: Page) => {
    const tail = `],"next_cursor":${JSON.stringify(p.last === null ? null : cursorOf(p.last))}}`
    const key = `${p.identity}|${tail}`
    let body = kept.get(key)
    if (body === undefined) {
      const head = Buffer.from(`{"items":[`)
      let size = head.length + Buffer.byteLength(tail)
      for (const part of p.parts) size += part.length
      body = Buffer.allocUnsafe(size)
      let at = head.copy(body)
      for (const part of p.parts) at += part.copy(body, at)
      body.write(tail, at)
      if (size <= PAGE_KEPT_MAX_BYTES) kept.set(key, body)
    }
    return Res.uint8Array(body, { status: 200, contentType: "application/json" })
  }
}

interface Made {
  readonly record: Rec
  readonly reveal: Record<string, unknown>
}

const isMade = (x: Rec | Made): x is Made => "reveal" in x && "record" in x

interface RecordRoutes<C, P> {
  readonly type: Exclude<ApiAggregateType, "zone">
  /** Path segment under /v1/zones/{zone}/ */
  readonly segment: string
  readonly tag: string
  readonly create: import("effect").Schema.Codec<C, unknown>
  readonly patch: import("effect").Schema.Codec<P, unknown>
  /**
   * The record a create makes, after the checks it needs (references, defaults), and what
   * the first answer shows beyond it (an application's generated secret: never stored).
   */
  readonly toRecord: (body: C, zone: string) => Effect.Effect<Rec | Made, unknown>
  /** A PATCH's change; checks that need reads run before it (checkPatch). */
  readonly applyPatch?: (current: Rec, patch: Rec) => Changed | ReturnType<typeof rejected>
  readonly checkPatch?: (body: P, zone: string, id: string) => Effect.Effect<void, unknown>
  readonly filters: Readonly<Record<string, string>>
  /** The id a create uses (a credential's is the sts's). */
  readonly idFor?: (body: C, zone: string, caller: Caller) => Effect.Effect<string, unknown>
  /** Runs after a create that was not a replay (a policy's first version). */
  readonly afterCreate?: (body: C, zone: string, id: string, caller: Caller) => Effect.Effect<unknown, unknown>
  readonly endVerb: string
}

export const makeRoutes = (deps: ApiDeps): ReadonlyArray<RouteSpec> => {
  const { commands, queries, sts } = deps
  const pageAnswer = pageAnswerer()

  /** The route's zone: 404 zone_not_found; a write needs it live (409 zone_archived). */
  const zoneOf = (ctx: { params: Readonly<Record<string, string>> }, forWrite: boolean) =>
    Effect.gen(function*() {
      const zone = ctx.params.zone ?? ""
      const row = yield* Effect.promise(() => queries.one("zone", zone, zone))
      if (row === undefined) return yield* rejected(404, "zone_not_found", "no such zone")
      if (forWrite && row.status !== "active") return yield* rejected(409, "zone_archived", "this zone is archived")
      return zone
    })

  const live = (type: ApiAggregateType, zone: string, id: string) =>
    Effect.gen(function*() {
      const row = yield* Effect.promise(() => queries.live(type, zone, id))
      if (row === undefined) return yield* rejected(404, `${type}_not_found`, `no such ${type.replace("_", " ")} in this zone`)
      return row
    })

  const shown = (type: ApiAggregateType, zone: string, id: string, status: number, extra: Record<string, unknown> = {}) =>
    Effect.gen(function*() {
      const row = yield* Effect.promise(() => queries.shown(type, zone, id))
      // the command just wrote it in the same statement as its events: a miss is a bug
      if (row === undefined) return yield* Effect.die(new Error(`${type} ${id} missing after its command`))
      return shownAnswer(row, status, extra)
    })

  const recordRoutes = <C, P>(r: RecordRoutes<C, P>): ReadonlyArray<RouteSpec> => {
    const base = `/v1/zones/{zone}/${r.segment}`
    return [
      route<C>({
        method: "POST",
        path: base,
        tag: r.tag,
        summary: `Create a ${r.type.replace("_", " ")}`,
        body: r.create,
        status: 201,
        run: (ctx) =>
          Effect.gen(function*() {
            const zone = yield* zoneOf(ctx, true)
            yield* checkMetadata((ctx.body as { metadata?: unknown }).metadata)
            const id = r.idFor ? yield* r.idFor(ctx.body, zone, ctx.caller) : uuidv7()
            const made = yield* r.toRecord(ctx.body, zone)
            const out = yield* commands.create(r.type, ctx.caller, zone, id, isMade(made) ? made.record : made)
            if (!out.replayed && r.afterCreate) yield* r.afterCreate(ctx.body, zone, out.result.id, ctx.caller)
            // a replay answers without what was shown once (a secret is never kept to be shown again)
            return yield* shown(r.type, zone, out.result.id, 201, out.replayed || !isMade(made) ? {} : made.reveal)
          })
      }),
      route({
        method: "GET",
        path: base,
        tag: r.tag,
        summary: `List ${r.segment.replace("-", " ")}`,
        query: [
          { name: "limit", description: `page size, 1-${LIST_MAX} (default ${LIST_DEFAULT})` },
          { name: "cursor", description: "next_cursor of the previous page" },
          { name: "status", description: "active or archived" },
          ...Object.keys(r.filters).map((name) => ({ name, description: `only records whose ${name} is this` }))
        ],
        status: 200,
        run: (ctx) =>
          Effect.gen(function*() {
            const o = yield* listOptions(ctx.query, r.filters)
            const zone = ctx.params.zone ?? ""
            const page = yield* Effect.promise(() => queries.page(r.type, zone, o))
            // records listed under it prove the zone exists: it is looked up only for an empty page (404 zone_not_found)
            if (page.count === 0) yield* zoneOf(ctx, false)
            return pageAnswer(page)
          })
      }),
      route({
        method: "GET",
        path: `${base}/{id}`,
        tag: r.tag,
        summary: `Get a ${r.type.replace("_", " ")}`,
        status: 200,
        run: (ctx) =>
          Effect.gen(function*() {
            const zone = yield* zoneOf(ctx, false)
            const row = yield* Effect.promise(() => queries.shown(r.type, zone, ctx.params.id!))
            if (row === undefined) return yield* rejected(404, `${r.type}_not_found`, `no such ${r.type.replace("_", " ")} in this zone`)
            return shownAnswer(row, 200)
          })
      }),
      route<P>({
        method: "PATCH",
        path: `${base}/{id}`,
        tag: r.tag,
        summary: `Update a ${r.type.replace("_", " ")} (If-Match: its ETag)`,
        body: r.patch,
        status: 200,
        run: (ctx) =>
          Effect.gen(function*() {
            const zone = yield* zoneOf(ctx, true)
            yield* checkMetadata((ctx.body as { metadata?: unknown }).metadata)
            if (r.checkPatch) yield* r.checkPatch(ctx.body, zone, ctx.params.id!)
            const patch = patchOf(ctx.body as Record<string, unknown>)
            const apply = r.applyPatch ?? ((current: Rec, p: Rec) => ({ record: { ...current, ...p } }))
            const event = `${prefixOf(r.type)}Updated`
            yield* commands.change(r.type, ctx.caller, zone, ctx.params.id!, event, ctx.ifMatch, (current) => apply(current, patch))
            return yield* shown(r.type, zone, ctx.params.id!, 200)
          })
      }),
      route<typeof B.Archive.Type>({
        method: "DELETE",
        path: `${base}/{id}`,
        tag: r.tag,
        summary: `${r.endVerb} a ${r.type.replace("_", " ")} (history stays in the log)`,
        body: B.Archive,
        status: 200,
        run: (ctx) =>
          Effect.gen(function*() {
            const zone = yield* zoneOf(ctx, false)
            yield* commands.end(r.type, ctx.caller, zone, ctx.params.id!, ctx.body.reason ?? "requested", ctx.ifMatch)
            return yield* shown(r.type, zone, ctx.params.id!, 200)
          })
      })
    ]
  }

  // ---------------------------------------------------------------- zones
  const zoneRoutes: ReadonlyArray<RouteSpec> = [
    route<typeof B.ZoneCreate.Type>({
      method: "POST",
      path: "/v1/zones",
      tag: "zones",
      summary: "Create a zone (the sts provisions its signing key from the zone event)",
      body: B.ZoneCreate,
      status: 201,
      run: (ctx) =>
        Effect.gen(function*() {
          yield* checkMetadata(ctx.body.metadata)
          const id = uuidv7()
          const b = ctx.body
          const out = yield* commands.create("zone", ctx.caller, id, id, {
            slug: b.slug,
            name: b.name ?? b.slug,
            description: b.description ?? "",
            metadata: b.metadata ?? {}
          })
          return yield* shown("zone", out.result.id, out.result.id, 201)
        })
    }),
    route({
      method: "GET",
      path: "/v1/zones",
      tag: "zones",
      summary: "List zones",
      query: [
        { name: "limit", description: `page size, 1-${LIST_MAX} (default ${LIST_DEFAULT})` },
        { name: "cursor", description: "next_cursor of the previous page" },
        { name: "status", description: "active or archived" },
        { name: "slug", description: "only the zone with this slug" }
      ],
      status: 200,
      run: (ctx) =>
        Effect.gen(function*() {
          const o = yield* listOptions(ctx.query, { slug: "slug" })
          return pageAnswer(yield* Effect.promise(() => queries.page("zone", undefined, o)))
        })
    }),
    route({
      method: "GET",
      path: "/v1/zones/{zone}",
      tag: "zones",
      summary: "Get a zone",
      status: 200,
      run: (ctx) =>
        Effect.gen(function*() {
          const zone = yield* zoneOf(ctx, false)
          return yield* shown("zone", zone, zone, 200)
        })
    }),
    route<typeof B.ZonePatch.Type>({
      method: "PATCH",
      path: "/v1/zones/{zone}",
      tag: "zones",
      summary: "Update a zone (If-Match: its ETag)",
      body: B.ZonePatch,
      status: 200,
      run: (ctx) =>
        Effect.gen(function*() {
          const zone = yield* zoneOf(ctx, true)
          yield* checkMetadata(ctx.body.metadata)
          const patch = patchOf(ctx.body)
          yield* commands.change("zone", ctx.caller, zone, zone, "ZoneUpdated", ctx.ifMatch, (current) => ({ record: { ...current, ...patch } }))
          return yield* shown("zone", zone, zone, 200)
        })
    }),
    route<typeof B.Archive.Type>({
      method: "DELETE",
      path: "/v1/zones/{zone}",
      tag: "zones",
      summary: "Archive a zone (its mandates are revoked; history stays in the log)",
      body: B.Archive,
      status: 200,
      run: (ctx) =>
        Effect.gen(function*() {
          const zone = yield* zoneOf(ctx, false)
          yield* commands.end("zone", ctx.caller, zone, zone, ctx.body.reason ?? "requested", ctx.ifMatch)
          return yield* shown("zone", zone, zone, 200)
        })
    }),
    route({
      method: "POST",
      path: "/v1/zones/{zone}/keys/rotate",
      tag: "zones",
      summary: "Ask the sts to rotate the zone's signing key",
      status: 200,
      run: (ctx) =>
        Effect.gen(function*() {
          const zone = yield* zoneOf(ctx, true)
          const out = yield* sts.rotateKey(zone)
          return answer(out, 200)
        })
    })
  ]

  // ---------------------------------------------------------------- applications
  const applicationRoutes = recordRoutes<typeof B.ApplicationCreate.Type, typeof B.ApplicationPatch.Type>({
    type: "application",
    segment: "applications",
    tag: "applications",
    create: B.ApplicationCreate,
    patch: B.ApplicationPatch,
    filters: { name: "name" },
    endVerb: "Archive",
    toRecord: (b) =>
      Effect.sync(() => {
        const now = new Date()
        const secret = b.client_secret ?? generateSecret()
        const record = {
          name: b.name,
          registrationMethod: b.registration_method ?? "manual",
          credentialType: b.credential_type ?? "client_secret",
          traits: b.traits ?? [],
          allowedScopes: b.allowed_scopes ?? DEFAULT_SCOPES,
          metadata: b.metadata ?? {},
          secretVerifiers: [verifierFor(secret, b.client_secret === undefined, now)]
        } satisfies ApplicationRecord
        // a generated secret is shown in this answer only; a caller's own is never echoed
        return { record, reveal: b.client_secret === undefined ? { client_secret: secret } : {} }
      })
  })

  const rotateSecret = route<typeof B.SecretRotate.Type>({
    method: "POST",
    path: "/v1/zones/{zone}/applications/{id}/secret",
    tag: "applications",
    summary: "Rotate an application's client secret; the previous one verifies for overlap_seconds",
    body: B.SecretRotate,
    status: 200,
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx, true)
        const now = new Date()
        const secret = ctx.body.client_secret ?? generateSecret()
        const fresh = verifierFor(secret, ctx.body.client_secret === undefined, now)
        const overlap = ctx.body.overlap_seconds ?? DEFAULT_OVERLAP_SECONDS
        const until = new Date(now.getTime() + overlap * 1000).toISOString()
        const out = yield* commands.change("application", ctx.caller, zone, ctx.params.id!, "ApplicationSecretRotated", ctx.ifMatch, (current) => {
          const app = current as unknown as ApplicationRecord
          const previous = app.secretVerifiers
            .filter((v) => v.validUntil === null || Date.parse(v.validUntil) > now.getTime())
            .map((v): SecretVerifier => ({ ...v, validUntil: v.validUntil === null || v.validUntil > until ? until : v.validUntil }))
          return { record: { ...app, secretVerifiers: overlap === 0 ? [fresh] : [fresh, ...previous] } }
        })
        return yield* shown("application", zone, ctx.params.id!, 200, out.replayed || ctx.body.client_secret !== undefined ? {} : {
          client_secret: secret,
          previous_secret_valid_until: overlap === 0 ? now.toISOString() : until
        })
      })
  })

  // ---------------------------------------------------------------- providers and credentials
  const providerRoutes = recordRoutes<typeof B.ProviderCreate.Type, typeof B.ProviderPatch.Type>({
    type: "provider",
    segment: "providers",
    tag: "credentials",
    create: B.ProviderCreate,
    patch: B.ProviderPatch,
    filters: { name: "name" },
    endVerb: "Archive",
    toRecord: (b) =>
      Effect.succeed({
        name: b.name,
        kind: b.kind ?? "header",
        header: b.header ?? "authorization",
        valuePrefix: b.value_prefix ?? "Bearer ",
        metadata: b.metadata ?? {}
      })
  })

  const credentialRoutes = recordRoutes<typeof B.CredentialCreate.Type, typeof B.CredentialPatch.Type>({
    type: "credential",
    segment: "credentials",
    tag: "credentials",
    create: B.CredentialCreate,
    patch: B.CredentialPatch,
    filters: { provider_id: "providerId" },
    endVerb: "Revoke",
    // the material goes to the sts, which seals it and names it; the api keeps the name only.
    // A repeated Idempotency-Key answers from its first result without sealing a second copy.
    idFor: (b, zone, caller) =>
      Effect.gen(function*() {
        const prior = yield* Effect.promise(() => queries.priorAnswer(caller))
        if (prior !== undefined) return prior
        yield* live("provider", zone, b.provider_id)
        return yield* sts.sealCredential(zone, b.provider_id, b.material)
      }),
    toRecord: (b) => Effect.succeed({ providerId: b.provider_id, name: b.name ?? "", sealedBy: "sts", metadata: b.metadata ?? {} })
  })

  // ---------------------------------------------------------------- resources and bindings
  const resourceRoutes = recordRoutes<typeof B.ResourceCreate.Type, typeof B.ResourcePatch.Type>({
    type: "resource",
    segment: "resources",
    tag: "resources",
    create: B.ResourceCreate,
    patch: B.ResourcePatch,
    filters: { identifier: "identifier" },
    endVerb: "Archive",
    toRecord: (b, zone) =>
      Effect.gen(function*() {
        if (b.credential_provider_id) yield* live("provider", zone, b.credential_provider_id)
        return {
          identifier: b.identifier,
          name: b.name ?? b.identifier,
          scopes: [...new Set(b.scopes)],
          upstreamUrl: b.upstream_url ?? null,
          prefix: b.prefix ?? "",
          credentialProviderId: b.credential_provider_id ?? null,
          requiresGrant: b.requires_grant ?? false,
          metadata: b.metadata ?? {}
        } satisfies ResourceRecord
      }),
    checkPatch: (b, zone) => (b.credential_provider_id ? Effect.asVoid(live("provider", zone, b.credential_provider_id)) : Effect.void)
  })

  const bindingRoutes = recordRoutes<typeof B.BindingCreate.Type, typeof B.BindingPatch.Type>({
    type: "binding",
    segment: "bindings",
    tag: "resources",
    create: B.BindingCreate,
    patch: B.BindingPatch,
    filters: { application_id: "applicationId", resource_id: "resourceId" },
    endVerb: "Delete",
    toRecord: (b, zone) =>
      Effect.gen(function*() {
        yield* live("resource", zone, b.resource_id)
        yield* live("application", zone, b.application_id)
        if (b.credential_id) yield* live("credential", zone, b.credential_id)
        return { resourceId: b.resource_id, applicationId: b.application_id, credentialId: b.credential_id ?? null }
      }),
    checkPatch: (b, zone) => (b.credential_id ? Effect.asVoid(live("credential", zone, b.credential_id)) : Effect.void)
  })

  // ---------------------------------------------------------------- grants
  const withinResource = (zone: string, resourceId: string, scopes: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      const resource = (yield* live("resource", zone, resourceId)).record as unknown as ResourceRecord
      const beyond = scopes.filter((s) => !resource.scopes.includes(s))
      if (beyond.length > 0) {
        return yield* rejected(403, "grant_scopes_exceed_resource", `scopes not offered by the resource: ${beyond.join(" ")}`)
      }
    })
  const grantRoutes = recordRoutes<typeof B.GrantCreate.Type, typeof B.GrantPatch.Type>({
    type: "grant",
    segment: "grants",
    tag: "grants",
    create: B.GrantCreate,
    patch: B.GrantPatch,
    filters: { application_id: "applicationId", user_id: "userId", resource_id: "resourceId" },
    endVerb: "Revoke",
    toRecord: (b, zone) =>
      Effect.gen(function*() {
        yield* live("application", zone, b.application_id)
        yield* withinResource(zone, b.resource_id, b.scopes)
        return { applicationId: b.application_id, userId: b.user_id, resourceId: b.resource_id, scopes: [...new Set(b.scopes)] }
      }),
    checkPatch: (b, zone, id) =>
      Effect.gen(function*() {
        // a grant's resource never changes: the new scopes are bounded by it (an archived grant is refused by its decider)
        const grant = yield* Effect.promise(() => queries.one("grant", zone, id))
        if (grant?.status === "active") yield* withinResource(zone, (grant.record as { resourceId: string }).resourceId, b.scopes)
      })
  })

  // ---------------------------------------------------------------- policies and policy sets
  const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex")

  /** OPA (through the sts) accepts the text, or 422 invalid_policy with OPA's message. */
  const compiled = (zone: string, modules: Record<string, string>) => sts.compilePolicy(zone, modules)

  const addVersion = (caller: Caller, zone: string, policyId: string, rego: string, expected: number | undefined) =>
    Effect.gen(function*() {
      yield* compiled(zone, { [policyId]: rego })
      const versionId = uuidv7()
      const now = new Date().toISOString()
      return yield* commands.change("policy", caller, zone, policyId, "PolicyVersionAdded", expected, (current) => {
        const p = current as unknown as PolicyRecord
        const record = {
          ...p,
          versions: [...p.versions, { id: versionId, number: p.versions.length + 1, sha256: sha256(rego), createdAt: now }]
        }
        return { record, data: { record, versionId, rego } }
      })
    })

  const policyRoutes = recordRoutes<typeof B.PolicyCreate.Type, typeof B.PolicyPatch.Type>({
    type: "policy",
    segment: "policies",
    tag: "policies",
    create: B.PolicyCreate,
    patch: B.PolicyPatch,
    filters: { name: "name" },
    endVerb: "Archive",
    toRecord: (b, zone) =>
      Effect.gen(function*() {
        // a text given at creation is checked first, so that a rejected one creates nothing
        if (b.rego !== undefined) yield* compiled(zone, { new: b.rego })
        return { name: b.name, description: b.description ?? "", versions: [] }
      }),
    // the text becomes version 1 in a second command: a crash between leaves a policy without versions, which a POST …/versions completes
    afterCreate: (b, zone, id, caller) =>
      b.rego === undefined ? Effect.void : addVersion({ ...caller, idempotencyKey: undefined }, zone, id, b.rego, undefined)
  })
  const policyVersion = route<typeof B.PolicyVersionCreate.Type>({
    method: "POST",
    path: "/v1/zones/{zone}/policies/{id}/versions",
    tag: "policies",
    summary: "Add a version (Rego text, validated by OPA through the sts: 422 invalid_policy)",
    body: B.PolicyVersionCreate,
    status: 201,
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx, true)
        yield* live("policy", zone, ctx.params.id!)
        yield* addVersion(ctx.caller, zone, ctx.params.id!, ctx.body.rego, ctx.ifMatch)
        return yield* shown("policy", zone, ctx.params.id!, 201)
      })
  })

  const policySetRoutes = recordRoutes<typeof B.PolicySetCreate.Type, typeof B.PolicySetPatch.Type>({
    type: "policy_set",
    segment: "policy-sets",
    tag: "policies",
    create: B.PolicySetCreate,
    patch: B.PolicySetPatch,
    filters: { name: "name" },
    endVerb: "Archive",
    toRecord: (b) => Effect.succeed({ name: b.name, description: b.description ?? "", versions: [], activeVersionId: null })
  })

  const policySetVersion = route<typeof B.PolicySetVersionCreate.Type>({
    method: "POST",
    path: "/v1/zones/{zone}/policy-sets/{id}/versions",
    tag: "policies",
    summary: "Add a version: a manifest of policy versions (default: each policy's latest)",
    body: B.PolicySetVersionCreate,
    status: 201,
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx, true)
        const entries = yield* Effect.forEach(ctx.body.manifest.policies, (e) =>
          Effect.gen(function*() {
            const policy = (yield* live("policy", zone, e.policy_id)).record as unknown as PolicyRecord
            const version = e.version_id === undefined ? policy.versions[policy.versions.length - 1] : policy.versions.find((v) => v.id === e.version_id)
            if (version === undefined) return yield* rejected(404, "policy_version_not_found", `policy ${e.policy_id} has no such version`)
            return { policyId: e.policy_id, versionId: version.id }
          }))
        const versionId = uuidv7()
        const now = new Date().toISOString()
        yield* commands.change("policy_set", ctx.caller, zone, ctx.params.id!, "PolicySetVersionAdded", ctx.ifMatch, (current) => {
          const s = current as unknown as PolicySetRecord
          return {
            record: { ...s, versions: [...s.versions, { id: versionId, number: s.versions.length + 1, manifest: { policies: entries }, createdAt: now }] }
          }
        })
        return yield* shown("policy_set", zone, ctx.params.id!, 201)
      })
  })

  const policySetActivate = route<typeof B.PolicySetActivate.Type>({
    method: "POST",
    path: "/v1/zones/{zone}/policy-sets/{id}/activate",
    tag: "policies",
    summary: "Activate a version, once OPA (through the sts) accepts its policies together",
    body: B.PolicySetActivate,
    status: 200,
    run: (ctx) =>
      Effect.gen(function*() {
        const zone = yield* zoneOf(ctx, true)
        const set = (yield* live("policy_set", zone, ctx.params.id!)).record as unknown as PolicySetRecord
        const version = set.versions.find((v) => v.id === ctx.body.version_id)
        if (version === undefined) return yield* rejected(404, "policy_set_version_not_found", "this policy set has no such version")
        const texts = yield* Effect.promise(() => queries.versionTexts(version.manifest.policies.map((p) => p.versionId)))
        yield* compiled(zone, Object.fromEntries(texts.map((t) => [`${t.policy_id}/${t.id}`, t.rego])))
        yield* commands.change("policy_set", ctx.caller, zone, ctx.params.id!, "PolicySetActivated", ctx.ifMatch, (current) => ({
          record: { ...current, activeVersionId: version.id }
        }))
        return yield* shown("policy_set", zone, ctx.params.id!, 200)
      })
  })

  // ---------------------------------------------------------------- token pass-through
  const token = route({
    method: "POST",
    path: "/oauth/2/token",
    tag: "tokens",
    summary: "The sts's token endpoint, passed through unchanged (for clients that know only the api's URL)",
    status: 200,
    admin: false,
    run: (ctx) =>
      Effect.gen(function*() {
        const body = yield* ctx.request.text
        const out = yield* sts.passThrough(ctx.request.headers, body)
        return Res.text(out.body, { status: out.status, headers: out.headers })
      })
  })

  return [
    ...zoneRoutes,
    ...policyRoutes,
    policyVersion,
    ...applicationRoutes,
    rotateSecret,
    ...providerRoutes,
    ...credentialRoutes,
    ...resourceRoutes,
    ...bindingRoutes,
    ...grantRoutes,
    ...policySetRoutes,
    policySetVersion,
    policySetActivate,
    token
  ]
}

/** One record's answer with its ETag; what is shown once (a secret) joins it only here. */
const shownAnswer = (row: { readonly json: string; readonly version: number }, status: number, extra: Record<string, unknown> = {}) =>
  Object.keys(extra).length === 0
    ? Res.setHeader(Res.text(row.json, { status, contentType: "application/json" }), "etag", `"${row.version}"`)
    : answer({ ...(JSON.parse(row.json) as object), ...extra }, status, row.version)

const prefixOf = (type: ApiAggregateType) =>
  type.split("_").map((w) => w[0]!.toUpperCase() + w.slice(1)).join("")
