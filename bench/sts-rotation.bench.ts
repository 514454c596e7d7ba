// Zone key rotation under load: per-call exchanges run without pause while the zone's key
// is rotated (lead 2 s, retired keys kept 4 s, JWKS max-age 1 s, mandates of 2 s). Every
// exchange must succeed; every mandate must verify against a freshly fetched JWKS until it
// expires; the retired key must leave the JWKS on schedule. Prints the failures beside the
// number of exchanges, and when the old key left beside when it was due to.
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, type JWK, jwtVerify } from "jose"
import { startApi } from "../test/fixtures/api.ts"
import { until } from "../test/fixtures/harness.ts"
import { report } from "./lib.ts"

const LEAD_S = 2
const KEEP_S = 4
const TTL_S = 2
const h = await startApi("bench_rotation", { LOG_LEVEL: "warn" }, 1, {
  LOG_LEVEL: "warn",
  JWKS_MAX_AGE_S: "1",
  ZONE_KEY_NEXT_LEAD_S: String(LEAD_S),
  ZONE_KEY_RETIRED_KEEP_S: String(KEEP_S),
  TOKEN_RATE_PER_MINUTE: "10000000"
})
const post = async (path: string, body: unknown) => {
  const r = await h.call("POST", path, { body })
  if (r.status !== 201 && r.status !== 200) throw new Error(`${path}: ${r.status} ${r.text}`)
  return r.body
}
const zone = (await post("/v1/zones", { slug: "rotation" })).id as string
const app = await post(`/v1/zones/${zone}/applications`, { name: "rotation" })
const resource = await post(`/v1/zones/${zone}/resources`, { identifier: "api", scopes: ["read"] })
await post(`/v1/zones/${zone}/bindings`, { resource_id: resource.id, application_id: app.id })
const policy = await post(`/v1/zones/${zone}/policies`, { name: "allow", rego: `package caracal.authz\n\nresult := {"allow": true, "reason": "ok"}\n` })
const set = await post(`/v1/zones/${zone}/policy-sets`, { name: "s" })
const version = await post(`/v1/zones/${zone}/policy-sets/${set.id}/versions`, { manifest: { policies: [{ policy_id: policy.id }] } })
await post(`/v1/zones/${zone}/policy-sets/${set.id}/activate`, { version_id: version.versions[0].id })

const send = (params: Record<string, string>) =>
  fetch(`${h.sts.url}/oauth/2/token`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: new URLSearchParams(params).toString() })
const jwks = async () => ((await (await fetch(`${h.sts.url}/.well-known/jwks.json?zone_id=${zone}`)).json()) as { keys: Array<JWK> }).keys
// the subject is short-lived too, renewed every second: no mandate may outlive its key's publication
let subject = ""
const renew = async () => {
  const r = await send({ grant_type: "client_credentials", zone_id: zone, application_id: app.id, client_secret: app.client_secret, ttl_seconds: String(TTL_S) })
  if (r.status !== 200) return false
  subject = ((await r.json()) as { access_token: string }).access_token
  return true
}
await until(renew, 60_000, "a first mandate")
const renewal = setInterval(() => void renew(), 1000)
const oldKid = (await jwks())[0]!.kid!

let exchanges = 0
let failures = 0
let verifyFailures = 0
let followed = 0
const minted: Array<{ token: string; exp: number }> = []
let running = true
const worker = async () => {
  while (running) {
    exchanges++
    const r = await send({
      grant_type: "urn:ietf:params:oauth:grant-type:token-exchange",
      subject_token: subject,
      subject_token_type: "urn:ietf:params:oauth:token-type:jwt",
      resource: "api",
      ttl_seconds: String(TTL_S)
    })
    if (r.status !== 200) {
      failures++
      if (failures <= 3) console.error(`exchange failed: ${r.status} ${await r.text()}`)
      continue
    }
    const token = ((await r.json()) as { access_token: string }).access_token
    // one in five is followed to its expiry (the verifiers must keep up with the exchanges)
    if (exchanges % 5 === 0) minted.push({ token, exp: decodeJwt(token).exp! * 1000 })
  }
}
// a verifier's view of the JWKS, refreshed every 200 ms (a cache honouring max-age 1 s would be staler)
let published = await jwks()
const refresher = setInterval(() => void jwks().then((k) => (published = k), () => undefined), 200)
// verifies each followed mandate against that view shortly before it expires
const verifier = async () => {
  while (running || minted.length > 0) {
    const next = minted.shift()
    if (next === undefined) {
      await new Promise((r) => setTimeout(r, 50))
      continue
    }
    followed++
    const wait = next.exp - 300 - Date.now()
    if (wait > 0) await new Promise((r) => setTimeout(r, wait))
    try {
      await jwtVerify(next.token, createLocalJWKSet({ keys: published }), { issuer: h.issuer, algorithms: ["ES256"] })
    } catch (e) {
      verifyFailures++
      if (verifyFailures <= 3) console.error(`mandate did not verify: ${String(e)}`)
    }
  }
}
const workers = [worker(), worker(), worker(), worker()]
const verifiers = [verifier(), verifier(), verifier(), verifier()]
await new Promise((r) => setTimeout(r, 2000))
const rotated = await post(`/v1/zones/${zone}/keys/rotate`, {})
const rotatedAt = Date.now()
// the new key must sign from its activation on; the old one must leave after KEEP_S more
let newSigning = 0
await until(async () => {
  const r = await send({ grant_type: "client_credentials", zone_id: zone, application_id: app.id, client_secret: app.client_secret })
  const kid = decodeProtectedHeader(((await r.json()) as { access_token: string }).access_token).kid
  if (kid === rotated.kid && newSigning === 0) newSigning = Date.now()
  return kid === rotated.kid
}, 30_000, "the new key signs")
await until(async () => !(await jwks()).some((k) => k.kid === oldKid), 30_000, "the old key leaves the JWKS")
const oldLeft = Date.now()
await new Promise((r) => setTimeout(r, 1000))
running = false
clearInterval(renewal)
clearInterval(refresher)
await Promise.all(workers)
await Promise.all(verifiers)
report({ bench: "sts-rotation", metric: "exchanges_failed_across_rotation", value: failures, unit: "exchanges", ceiling: exchanges })
report({ bench: "sts-rotation", metric: "mandates_not_verifying_before_expiry", value: verifyFailures, unit: "mandates", ceiling: followed })
report({ bench: "sts-rotation", metric: "new_key_signs_after_rotation_s", value: (newSigning - rotatedAt) / 1000, unit: "s", ceiling: LEAD_S })
report({ bench: "sts-rotation", metric: "old_key_left_jwks_after_rotation_s", value: (oldLeft - rotatedAt) / 1000, unit: "s", ceiling: LEAD_S + KEEP_S })
await h.close()
