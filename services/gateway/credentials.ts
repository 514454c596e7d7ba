// The upstream credentials the gateway injects. The sts holds them sealed and releases one
// for a per-call mandate it verifies itself (POST /internal/v1/credentials/{id}/release,
// signed with SERVICE_HMAC_KEY); the answer is valid until its expires_at. Within that time
// the gateway reuses it for other calls it has itself found bound to the same credential
// (each call's mandate, binding and revocations are still checked per call), and drops it
// at once when the credential, or a binding to it, is revoked. The value lives in this
// memory only: never logged, never in an error, never in an audit record.
import { internalCall, type InternalCallOptions } from "../../core/internal-call.ts"

export interface Injected {
  readonly header: string
  readonly value: string
  readonly expiresAtMs: number
}

/** Why a credential was not released: the sts's refusal (or its absence), for the audit record. */
export class CredentialUnavailable extends Error {
  readonly status: number
  readonly reason: string
  constructor(status: number, reason: string) {
    super(`credential not released: ${reason}`)
    this.status = status
    this.reason = reason
  }
}

/** How long before its expiry a cached credential stops being handed out. */
const MARGIN_MS = 1000

export interface CredentialCache {
  /** The credential to inject for this call; `mandate` is the per-call mandate being served. */
  readonly get: (credentialId: string, mandate: string) => Promise<Injected>
  readonly drop: (credentialId: string) => void
  readonly size: () => number
}

export const makeCredentialCache = (sts: InternalCallOptions, now: () => number = Date.now): CredentialCache => {
  const cached = new Map<string, Injected>()
  const release = async (credentialId: string, mandate: string): Promise<Injected> => {
    const res = await internalCall(sts, "POST", `/internal/v1/credentials/${encodeURIComponent(credentialId)}/release`, { mandate })
    const body = res.body as { header?: unknown; value?: unknown; expires_at?: unknown; reason?: unknown; error?: unknown } | undefined
    if (res.status !== 200) {
      const reason = typeof body?.reason === "string" ? body.reason : typeof body?.error === "string" ? body.error : `status_${res.status}`
      throw new CredentialUnavailable(res.status, reason)
    }
    const expiresAtMs = typeof body?.expires_at === "string" ? Date.parse(body.expires_at) : Number.NaN
    if (typeof body?.header !== "string" || typeof body.value !== "string" || !Number.isFinite(expiresAtMs)) {
      throw new CredentialUnavailable(502, "malformed_release")
    }
    return { header: body.header.toLowerCase(), value: body.value, expiresAtMs }
  }
  return {
    get: async (credentialId, mandate) => {
      const hit = cached.get(credentialId)
      if (hit !== undefined && hit.expiresAtMs - MARGIN_MS > now()) return hit
      const fresh = await release(credentialId, mandate)
      cached.set(credentialId, fresh)
      return fresh
    },
    drop: (credentialId) => void cached.delete(credentialId),
    size: () => cached.size
  }
}
