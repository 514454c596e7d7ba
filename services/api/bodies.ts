// Request bodies of the api's routes, validated strictly (an unknown field is a 400, so a
// typo never passes silently), and the same schemas document the routes (openapi.ts).
import { Schema } from "effect"

const str = (min: number, max: number) => Schema.String.pipe(Schema.check(Schema.isMinLength(min), Schema.isMaxLength(max)))
const pattern = (re: RegExp, description: string) =>
  Schema.String.pipe(Schema.check(Schema.isPattern(re)), Schema.annotate({ description }))

export const Id = str(1, 128)
export const Slug = pattern(/^[a-z0-9][a-z0-9-]{0,62}$/u, "lowercase letters, digits and dashes; 1-63 characters")
/** Resource identifiers: what mandates' `aud` and the gateway's X-Caracal-Resource carry (e.g. `api`, `mcp:github`). */
export const Identifier = pattern(/^[a-z0-9][a-z0-9:_.-]{0,127}$/u, "lowercase letters, digits and : _ . -; 1-128 characters")
export const Scope = pattern(/^[a-z0-9:_./-]{1,200}$/u, "lowercase letters, digits and : _ . / -")
const Scopes = Schema.Array(Scope).pipe(Schema.check(Schema.isMaxLength(200)))
const Name = str(1, 200)
const Description = str(0, 2000)
const Metadata = Schema.Record(Schema.String, Schema.Unknown).pipe(Schema.annotate({ description: "free-form, at most 16 KiB of JSON" }))
const HttpUrl = pattern(/^https?:\/\/[^\s/?#]+([/?#][^\s]*)?$/u, "an http or https URL").pipe(Schema.check(Schema.isMaxLength(2048)))
const Prefix = pattern(/^(\/[^\s?#]*)?$/u, "a path beginning with / (or empty)").pipe(Schema.check(Schema.isMaxLength(1024)))
const Rego = str(1, 256 * 1024)
const opt = Schema.optionalKey

export const ZoneCreate = Schema.Struct({ slug: Slug, name: opt(Name), description: opt(Description), metadata: opt(Metadata) })
export const ZonePatch = Schema.Struct({ name: opt(Name), description: opt(Description), metadata: opt(Metadata) })

const appFields = {
  registration_method: opt(str(1, 100)),
  credential_type: opt(str(1, 100)),
  traits: opt(Schema.Array(str(1, 200)).pipe(Schema.check(Schema.isMaxLength(100)))),
  allowed_scopes: opt(Scopes),
  metadata: opt(Metadata)
}
export const ApplicationCreate = Schema.Struct({
  name: Name,
  ...appFields,
  /** For compatibility: a caller-chosen secret (stored with scrypt); by default the server generates one. */
  client_secret: opt(str(32, 512))
})
export const ApplicationPatch = Schema.Struct({ name: opt(Name), ...appFields })
export const SecretRotate = Schema.Struct({
  /** How long the previous secret keeps verifying (default 3600 s; 0 ends it at once). */
  overlap_seconds: opt(Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 30 * 86_400 })))),
  client_secret: opt(str(32, 512))
})

const resourceFields = {
  name: opt(str(0, 200)),
  upstream_url: opt(Schema.NullOr(HttpUrl)),
  prefix: opt(Prefix),
  credential_provider_id: opt(Schema.NullOr(Id)),
  requires_grant: opt(Schema.Boolean),
  metadata: opt(Metadata)
}
export const ResourceCreate = Schema.Struct({ identifier: Identifier, scopes: Scopes, ...resourceFields })
export const ResourcePatch = Schema.Struct({ scopes: opt(Scopes), ...resourceFields })

const HeaderName = pattern(/^[A-Za-z0-9-]{1,100}$/u, "an HTTP header name")
export const ProviderCreate = Schema.Struct({
  name: Name,
  kind: opt(Schema.Literal("header")),
  header: opt(HeaderName),
  value_prefix: opt(str(0, 200)),
  metadata: opt(Metadata)
})
export const ProviderPatch = Schema.Struct({ name: opt(Name), header: opt(HeaderName), value_prefix: opt(str(0, 200)), metadata: opt(Metadata) })

/** The secret itself: sent on to the sts to be sealed, never stored, logged or echoed by the api. */
const Material = Schema.Union([str(1, 16 * 1024), Schema.Record(Schema.String, str(0, 16 * 1024))])
export const CredentialCreate = Schema.Struct({ provider_id: Id, name: opt(str(0, 200)), material: Material, metadata: opt(Metadata) })
export const CredentialPatch = Schema.Struct({ name: opt(str(0, 200)), metadata: opt(Metadata) })

export const BindingCreate = Schema.Struct({ resource_id: Id, application_id: Id, credential_id: opt(Schema.NullOr(Id)) })
export const BindingPatch = Schema.Struct({ credential_id: Schema.NullOr(Id) })

export const PolicyCreate = Schema.Struct({ name: Name, description: opt(Description), rego: opt(Rego) })
export const PolicyPatch = Schema.Struct({ name: opt(Name), description: opt(Description) })
export const PolicyVersionCreate = Schema.Struct({ rego: Rego })

export const PolicySetCreate = Schema.Struct({ name: Name, description: opt(Description) })
export const PolicySetPatch = Schema.Struct({ name: opt(Name), description: opt(Description) })
export const PolicySetVersionCreate = Schema.Struct({
  manifest: Schema.Struct({
    policies: Schema.Array(Schema.Struct({ policy_id: Id, version_id: opt(Id) })).pipe(Schema.check(Schema.isMaxLength(32)))
  })
})
export const PolicySetActivate = Schema.Struct({ version_id: Id })

export const GrantCreate = Schema.Struct({ application_id: Id, user_id: str(1, 200), resource_id: Id, scopes: Scopes })
export const GrantPatch = Schema.Struct({ scopes: Scopes })

export const Archive = Schema.Struct({ reason: opt(str(1, 500)) })

export const Bootstrap = Schema.Struct({ upstream_url: opt(HttpUrl) })
