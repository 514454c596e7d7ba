// POST /v1/local/bootstrap (CARACAL_MODE=development only): a demo zone with an
// application, a resource bound to an upstream, and an allowing policy set, so that a
// first run has something to call. Idempotent: each piece is looked up by its name
// first; only a newly created application answers with its secret.
import { Effect } from "effect"
import { createHash } from "node:crypto"
import { v7 as uuidv7 } from "uuid"
import * as B from "./bodies.ts"
import type { Caller } from "./commands.ts"
import type { PolicyRecord, PolicySetRecord } from "./events.ts"
import { answer, route } from "./route-kit.ts"
import type { ApiDeps } from "./routes.ts"
import { generateSecret, verifierFor } from "./secrets.ts"

export const DEMO = {
  zoneSlug: "demo",
  application: "demo-agent",
  resource: "demo-api",
  scopes: ["demo:read", "demo:write"],
  policy: "allow-all",
  policySet: "default",
  upstream: "http://127.0.0.1:8090"
} as const

export const ALLOW_ALL_REGO = `package caracal.authz

# The demo zone allows every request its bindings permit.
result := {"allow": true, "reason": "demo zone: everything bound is allowed"}
`

export const bootstrapRoute = (deps: ApiDeps) =>
  route<typeof B.Bootstrap.Type>({
    method: "POST",
    path: "/v1/local/bootstrap",
    tag: "meta",
    summary: "Development only: create (or find) the demo zone, application, resource, binding and policy set",
    body: B.Bootstrap,
    status: 200,
    run: (ctx) =>
      Effect.gen(function*() {
        const { commands, queries, sts } = deps
        // the pieces are found by name: their own commands need no idempotency keys
        const caller: Caller = { actorId: ctx.caller.actorId, requestId: ctx.caller.requestId }
        const ensure = (type: Parameters<typeof queries.find>[0], zone: string, where: Record<string, string>, record: Record<string, unknown>, id = uuidv7()) =>
          Effect.gen(function*() {
            const found = yield* Effect.promise(() => queries.find(type, zone, where))
            if (found) return { id: found.id, created: false }
            yield* commands.create(type, caller, zone, id, record)
            return { id, created: true }
          })

        const existingZone = yield* Effect.promise(() => queries.zoneBySlug(DEMO.zoneSlug))
        const zone = existingZone?.id ?? uuidv7()
        if (!existingZone) {
          yield* commands.create("zone", caller, zone, zone, { slug: DEMO.zoneSlug, name: "Demo", description: "created by npm start", metadata: {} })
        }
        const secret = generateSecret()
        const app = yield* ensure("application", zone, { name: DEMO.application }, {
          name: DEMO.application,
          registrationMethod: "bootstrap",
          credentialType: "client_secret",
          traits: [],
          allowedScopes: ["agent:lifecycle"],
          metadata: {},
          secretVerifiers: [verifierFor(secret, true, new Date())]
        })
        const resource = yield* ensure("resource", zone, { identifier: DEMO.resource }, {
          identifier: DEMO.resource,
          name: "Demo upstream",
          scopes: [...DEMO.scopes],
          upstreamUrl: ctx.body.upstream_url ?? DEMO.upstream,
          prefix: "",
          credentialProviderId: null,
          requiresGrant: false,
          metadata: {}
        })
        yield* ensure("binding", zone, { applicationId: app.id, resourceId: resource.id }, {
          resourceId: resource.id,
          applicationId: app.id,
          credentialId: null
        })
        const policy = yield* ensure("policy", zone, { name: DEMO.policy }, { name: DEMO.policy, description: "allows everything", versions: [] })
        const policyRow = yield* Effect.promise(() => queries.one("policy", zone, policy.id))
        let versions = (policyRow!.record as unknown as PolicyRecord).versions
        if (versions.length === 0) {
          yield* sts.compilePolicy(zone, { [policy.id]: ALLOW_ALL_REGO })
          const versionId = uuidv7()
          const now = new Date().toISOString()
          const sha256 = createHash("sha256").update(ALLOW_ALL_REGO).digest("hex")
          yield* commands.change("policy", caller, zone, policy.id, "PolicyVersionAdded", undefined, (current) => {
            const record = { ...current, versions: [{ id: versionId, number: 1, sha256, createdAt: now }] }
            return { record, data: { record, versionId, rego: ALLOW_ALL_REGO } }
          })
          versions = [{ id: versionId, number: 1, sha256, createdAt: now }]
        }
        const set = yield* ensure("policy_set", zone, { name: DEMO.policySet }, { name: DEMO.policySet, description: "demo", versions: [], activeVersionId: null })
        const setRow = yield* Effect.promise(() => queries.one("policy_set", zone, set.id))
        const setRecord = setRow!.record as unknown as PolicySetRecord
        if (setRecord.activeVersionId === null) {
          const versionId = setRecord.versions[0]?.id ?? uuidv7()
          const now = new Date().toISOString()
          yield* commands.change("policy_set", caller, zone, set.id, "PolicySetActivated", undefined, (current) => {
            const s = current as unknown as PolicySetRecord
            const withVersion = s.versions.length > 0 ? s.versions : [{
              id: versionId,
              number: 1,
              manifest: { policies: [{ policyId: policy.id, versionId: versions[0]!.id }] },
              createdAt: now
            }]
            return { record: { ...s, versions: withVersion, activeVersionId: withVersion[0]!.id } }
          })
        }
        return answer({
          zone_id: zone,
          application_id: app.id,
          // shown when the application was created by this call only: a secret is never kept to be shown again
          client_secret: app.created ? secret : null,
          resource: DEMO.resource,
          resource_id: resource.id,
          policy_set_id: set.id
        }, 200)
      })
  })
