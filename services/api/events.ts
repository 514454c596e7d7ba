// The api's events, version 1 of each (frozen once published). Every event but an archive
// carries the aggregate's whole record as it is after the event (`…Created`, `…Updated`
// and the special ones), so a consumer — the api's own tables, the sts, the gateway —
// applies any event without the ones before it. An archive (or a revocation, a binding's
// deletion) carries only its reason; the record stays as it was, marked archived.
//
// Records carry references and metadata only, never secret material: an application's
// secret is stored as a verifier, a credential's material lives sealed in the sts.
import { Schema } from "effect"
import { EventRegistry, type EventVersion } from "../../schemas/registry.ts"

const Id = Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(128)))
const Text = (max: number) => Schema.String.pipe(Schema.check(Schema.isMaxLength(max)))
const Name = Schema.String.pipe(Schema.check(Schema.isMinLength(1), Schema.isMaxLength(200)))
const Instant = Schema.String.pipe(Schema.check(Schema.isPattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/u)))
const Scope = Schema.String.pipe(Schema.check(Schema.isPattern(/^[a-z0-9:_./-]{1,200}$/u)))
const Metadata = Schema.Record(Schema.String, Schema.Unknown)

export const ZoneV1 = Schema.Struct({ slug: Name, name: Name, description: Text(2000), metadata: Metadata })

/**
 * How the sts checks a client secret. `hmac-sha256`: the server generated the secret (256
 * random bits), so one keyed hash (key = a random salt) suffices and checks in microseconds.
 * `scrypt`: a caller chose it, so it may be guessable: a memory-hard KDF slows guessing.
 */
export const SecretVerifierV1 = Schema.Struct({
  alg: Schema.Literals(["hmac-sha256", "scrypt"]),
  salt: Text(128),
  hash: Text(256),
  /** scrypt's cost (N, r, p); absent for hmac-sha256. */
  params: Schema.optionalKey(Schema.Struct({ N: Schema.Int, r: Schema.Int, p: Schema.Int })),
  createdAt: Instant,
  /** An older secret still verifies until then (rotation's overlap window); null: no end. */
  validUntil: Schema.NullOr(Instant)
})
export const ApplicationV1 = Schema.Struct({
  name: Name,
  registrationMethod: Text(100),
  credentialType: Text(100),
  traits: Schema.Array(Text(200)),
  allowedScopes: Schema.Array(Scope),
  metadata: Metadata,
  /** The current verifier first; during a rotation's overlap, the previous one after it. */
  secretVerifiers: Schema.Array(SecretVerifierV1)
})
export const ResourceV1 = Schema.Struct({
  identifier: Name,
  name: Text(200),
  scopes: Schema.Array(Scope),
  upstreamUrl: Schema.NullOr(Text(2048)),
  prefix: Text(1024),
  credentialProviderId: Schema.NullOr(Id),
  /** Per-user consent: calls need a grant for (application, user, resource). */
  requiresGrant: Schema.Boolean,
  metadata: Metadata
})
export const ProviderV1 = Schema.Struct({
  name: Name,
  kind: Schema.Literals(["header"]),
  /** The header the gateway sets on the upstream call, and what precedes the secret in it. */
  header: Text(200),
  valuePrefix: Text(200),
  metadata: Metadata
})
export const CredentialV1 = Schema.Struct({
  providerId: Id,
  name: Text(200),
  /** Where the sts keeps the sealed material (the credential's own id): a reference, never the secret. */
  sealedBy: Schema.Literal("sts"),
  metadata: Metadata
})
export const BindingV1 = Schema.Struct({ resourceId: Id, applicationId: Id, credentialId: Schema.NullOr(Id) })
export const PolicyVersionRefV1 = Schema.Struct({ id: Id, number: Schema.Int, sha256: Text(64), createdAt: Instant })
export const PolicyV1 = Schema.Struct({
  name: Name,
  description: Text(2000),
  versions: Schema.Array(PolicyVersionRefV1)
})
export const ManifestV1 = Schema.Struct({
  policies: Schema.Array(Schema.Struct({ policyId: Id, versionId: Id }))
})
export const PolicySetVersionV1 = Schema.Struct({ id: Id, number: Schema.Int, manifest: ManifestV1, createdAt: Instant })
export const PolicySetV1 = Schema.Struct({
  name: Name,
  description: Text(2000),
  versions: Schema.Array(PolicySetVersionV1),
  activeVersionId: Schema.NullOr(Id)
})
export const GrantV1 = Schema.Struct({ applicationId: Id, userId: Name, resourceId: Id, scopes: Schema.Array(Scope) })

export const EndedV1 = Schema.Struct({ reason: Text(500) })
export const PolicyVersionAddedV1 = Schema.Struct({
  record: PolicyV1,
  versionId: Id,
  /** The Rego text, as OPA accepted it. */
  rego: Text(256 * 1024)
})

/** Every api aggregate: its type (stream `caracal:{type}:events`), its record and its event names. */
export const apiAggregates = {
  zone: { record: ZoneV1, prefix: "Zone", ended: "ZoneArchived" },
  application: { record: ApplicationV1, prefix: "Application", ended: "ApplicationArchived" },
  resource: { record: ResourceV1, prefix: "Resource", ended: "ResourceArchived" },
  provider: { record: ProviderV1, prefix: "Provider", ended: "ProviderArchived" },
  credential: { record: CredentialV1, prefix: "Credential", ended: "CredentialRevoked" },
  binding: { record: BindingV1, prefix: "Binding", ended: "BindingDeleted" },
  policy: { record: PolicyV1, prefix: "Policy", ended: "PolicyArchived" },
  policy_set: { record: PolicySetV1, prefix: "PolicySet", ended: "PolicySetArchived" },
  grant: { record: GrantV1, prefix: "Grant", ended: "GrantRevoked" }
} as const

export type ApiAggregateType = keyof typeof apiAggregates

/** Events that end someone's authority: also published on `caracal:{revocation}:events` (CONTRACTS.md). */
export const API_REVOCATIONS = new Set(["ZoneArchived", "ApplicationArchived", "BindingDeleted", "GrantRevoked", "CredentialRevoked"])

/** Events whose data is the record after them; the rest are ends ({reason}) or PolicyVersionAdded. */
export const recordEvents: ReadonlyArray<EventVersion<any>> = [
  ...Object.values(apiAggregates).flatMap((a) => [
    { type: `${a.prefix}Created`, version: 1, data: a.record },
    { type: `${a.prefix}Updated`, version: 1, data: a.record }
  ]),
  { type: "ApplicationSecretRotated", version: 1, data: ApplicationV1 },
  { type: "PolicySetVersionAdded", version: 1, data: PolicySetV1 },
  { type: "PolicySetActivated", version: 1, data: PolicySetV1 }
]

export const apiEvents: ReadonlyArray<EventVersion<any>> = [
  ...recordEvents,
  { type: "PolicyVersionAdded", version: 1, data: PolicyVersionAddedV1 },
  ...Object.values(apiAggregates).map((a) => ({ type: a.ended, version: 1, data: EndedV1 }))
]

export const events = new EventRegistry().register(...apiEvents)

export type ZoneRecord = typeof ZoneV1.Type
export type ApplicationRecord = typeof ApplicationV1.Type
export type ResourceRecord = typeof ResourceV1.Type
export type ProviderRecord = typeof ProviderV1.Type
export type CredentialRecord = typeof CredentialV1.Type
export type BindingRecord = typeof BindingV1.Type
export type GrantRecord = typeof GrantV1.Type
export type PolicyRecord = typeof PolicyV1.Type
export type PolicySetRecord = typeof PolicySetV1.Type
export type SecretVerifier = typeof SecretVerifierV1.Type
