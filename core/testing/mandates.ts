// A stand-in mandate issuer for tests: per-zone signing keys, the JWKS endpoint exactly as the
// issuer serves it (GET /.well-known/jwks.json?zone_id=<zone>), and mandates minted the way the
// issuer mints them (see core/mandate/verify.ts for the claims: iss, use, aud, ...). It counts
// JWKS requests per zone so tests can see the verifier's cache, and it can forge: sign with keys
// it never publishes, mint expired mandates, or answer with an outage status.
import { randomBytes, randomUUID } from "node:crypto"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { exportJWK, generateKeyPair, type JWK, SignJWT } from "jose"

export type MandateAlg = "ES256" | "EdDSA" | "RS256"
export type MintUse = "ambient" | "per_call"

export interface MintClaims {
  readonly zone_id: string
  readonly client_id: string
  readonly scope: string
  readonly sub?: string
  /** The issuer's own URL by default. */
  readonly iss?: string
  /** "ambient" by default. */
  readonly use?: MintUse
  /** Per-call: the granted resource identifiers, which become `aud`. */
  readonly resources?: ReadonlyArray<string>
  /** Wins over the default: the issuer for ambient mandates, `resources` for per-call ones. */
  readonly aud?: string | ReadonlyArray<string>
  readonly jti?: string
  readonly iat?: number
  readonly nbf?: number
  /** Absolute NumericDate; wins over ttlSeconds. Use a past value for an expired mandate. */
  readonly exp?: number
  /** Lifetime from iat; 300 s by default. */
  readonly ttlSeconds?: number
  readonly agent_session_id?: string
  readonly delegation_edge_id?: string
  /** Any further claim, as is. */
  readonly extra?: Readonly<Record<string, unknown>>
}

export interface MintOptions {
  /** Sign with a fresh key the JWKS never serves: a forged mandate. Works for zones the STS does not know. */
  readonly foreignKey?: boolean
  /** Sign with another zone's current key (the claims still name zone_id). */
  readonly signWithZone?: string
  /** The header kid; by default the signing key's own (or a random one for a foreign key). */
  readonly kid?: string
  /** Leave the header kid out. */
  readonly noKid?: boolean
  /** Claims to leave out of the payload, e.g. ["zone_id"]. */
  readonly omit?: ReadonlyArray<string>
}

export interface TestSts {
  /** Base URL, e.g. http://127.0.0.1:43121 — also the default issuer. */
  readonly url: string
  /** The `iss` it mints, and the `aud` of its ambient mandates. */
  readonly issuer: string
  readonly mint: (claims: MintClaims, opts?: MintOptions) => Promise<string>
  /** Creates the zone's first key; a no-op when the zone exists. Returns its current kid. */
  readonly addZone: (zone: string, opts?: { readonly alg?: MandateAlg }) => Promise<string>
  /** Makes a new current key (new kid); the old keys stay in the JWKS unless keepOld is false. */
  readonly rotate: (zone: string, opts?: { readonly keepOld?: boolean }) => Promise<string>
  readonly currentKid: (zone: string) => string
  /** JWKS requests that named this zone, known to the STS or not. */
  readonly jwksRequests: (zone: string) => number
  /** JWKS requests of every zone together. */
  readonly jwksRequestsTotal: () => number
  /** While set, every JWKS request answers with this status (e.g. 500); undefined ends the outage. */
  readonly outage: (status: number | undefined) => void
  readonly stop: () => Promise<void>
}

interface ZoneKey {
  readonly kid: string
  readonly alg: MandateAlg
  readonly privateKey: CryptoKey
  readonly publicJwk: JWK
  served: boolean
}

export interface TestStsOptions {
  /** Zones created at start, each with one ES256 key. */
  readonly zones?: ReadonlyArray<string>
  /** The issuer URL it mints as `iss`; its own base URL by default. */
  readonly issuer?: string
}

const newKey = async (zone: string, alg: MandateAlg): Promise<ZoneKey> => {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  const kid = `${zone}-${randomBytes(6).toString("hex")}`
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: "sig" }
  return { kid, alg, privateKey, publicJwk, served: true }
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" })
  res.end(JSON.stringify(body))
}

export const startTestSts = async (opts: TestStsOptions = {}): Promise<TestSts> => {
  // newest key last: the last entry is the zone's current signing key
  const zones = new Map<string, Array<ZoneKey>>()
  const requests = new Map<string, number>()
  let requestsTotal = 0
  let outageStatus: number | undefined

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://localhost")
    if (req.method !== "GET" || url.pathname !== "/.well-known/jwks.json") return json(res, 404, { error: "not_found" })
    const zone = url.searchParams.get("zone_id")
    if (zone === null || zone === "") return json(res, 400, { error: "invalid_request", error_description: "zone_id is required" })
    requests.set(zone, (requests.get(zone) ?? 0) + 1)
    requestsTotal++
    if (outageStatus !== undefined) return json(res, outageStatus, { error: "server_error" })
    const keys = zones.get(zone)
    if (keys === undefined) return json(res, 404, { error: "not_found", error_description: "unknown zone" })
    json(res, 200, { keys: keys.filter((k) => k.served).map((k) => k.publicJwk) })
  }

  const server = createServer(handle)
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => resolve())
  })
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const issuer = opts.issuer ?? url

  const current = (zone: string): ZoneKey => {
    const key = zones.get(zone)?.at(-1)
    if (key === undefined) throw new Error(`test STS: unknown zone ${zone}; addZone it first`)
    return key
  }

  const addZone = async (zone: string, o: { readonly alg?: MandateAlg } = {}) => {
    if (!zones.has(zone)) zones.set(zone, [await newKey(zone, o.alg ?? "ES256")])
    return current(zone).kid
  }

  const rotate = async (zone: string, o: { readonly keepOld?: boolean } = {}) => {
    const old = current(zone)
    const keys = zones.get(zone) ?? []
    if (o.keepOld === false) for (const k of keys) k.served = false
    const next = await newKey(zone, old.alg)
    keys.push(next)
    return next.kid
  }

  const mint = async (claims: MintClaims, o: MintOptions = {}) => {
    const key = o.foreignKey
      ? await newKey(claims.zone_id, zones.get(claims.zone_id)?.at(-1)?.alg ?? "ES256")
      : current(o.signWithZone ?? claims.zone_id)
    const iat = claims.iat ?? Math.floor(Date.now() / 1000)
    const use = claims.use ?? "ambient"
    const aud = claims.aud ?? (use === "ambient" ? issuer : [...(claims.resources ?? [])])
    const payload: Record<string, unknown> = {
      iss: claims.iss ?? issuer,
      use,
      aud,
      sub: claims.sub ?? "agent:test",
      zone_id: claims.zone_id,
      client_id: claims.client_id,
      scope: claims.scope,
      iat,
      exp: claims.exp ?? iat + (claims.ttlSeconds ?? 300),
      jti: claims.jti ?? randomUUID(),
      ...(claims.nbf === undefined ? {} : { nbf: claims.nbf }),
      ...(claims.agent_session_id === undefined ? {} : { agent_session_id: claims.agent_session_id }),
      ...(claims.delegation_edge_id === undefined ? {} : { delegation_edge_id: claims.delegation_edge_id }),
      ...claims.extra
    }
    for (const name of o.omit ?? []) delete payload[name]
    const kid = o.kid ?? (o.foreignKey ? `forged-${randomBytes(6).toString("hex")}` : key.kid)
    return new SignJWT(payload)
      .setProtectedHeader({ alg: key.alg, typ: "JWT", ...(o.noKid ? {} : { kid }) })
      .sign(key.privateKey)
  }

  for (const zone of opts.zones ?? []) await addZone(zone)

  return {
    url,
    issuer,
    mint,
    addZone,
    rotate,
    currentKid: (zone) => current(zone).kid,
    jwksRequests: (zone) => requests.get(zone) ?? 0,
    jwksRequestsTotal: () => requestsTotal,
    outage: (status) => {
      outageStatus = status
    },
    stop: () =>
      new Promise<void>((resolve) => {
        // keep-alive sockets from fetch would hold close() open
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
