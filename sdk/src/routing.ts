// Which resource a URL belongs to (its upstreamPrefix, longest first) and the W3C trace
// headers a governed call carries.

export interface ResourceBinding {
  readonly resourceId: string
  readonly upstreamPrefix: string
}

export interface Route {
  readonly resourceId: string
  /** The URL minus the prefix, without a leading slash. */
  readonly rest: string
}

/**
 * Sorted once, longest prefix first. A prefix matches at a path boundary only, so
 * `http://up/api` does not capture `http://up/apiary`.
 */
export const makeRouter = (resources: ReadonlyArray<ResourceBinding>) => {
  const sorted = [...resources].sort((a, b) => b.upstreamPrefix.length - a.upstreamPrefix.length)
  return (url: string): Route | undefined => {
    for (const r of sorted) {
      const p = r.upstreamPrefix
      if (!url.startsWith(p)) continue
      const next = url.charAt(p.length)
      if (!p.endsWith("/") && next !== "" && next !== "/" && next !== "?" && next !== "#") continue
      return { resourceId: r.resourceId, rest: url.slice(p.length).replace(/^\/+/, "") }
    }
    return undefined
  }
}

const hex = (bytes: number) => {
  const b = globalThis.crypto.getRandomValues(new Uint8Array(bytes))
  let s = ""
  for (const x of b) s += x.toString(16).padStart(2, "0")
  return s
}

export const newTraceId = () => hex(16)

/** A traceparent for one outgoing call: the trace's id and a new span id, sampled. */
export const traceparentFor = (traceId: string) => `00-${traceId}-${hex(8)}-01`

const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/

/** The trace id of an incoming traceparent, to continue its trace. */
export const traceIdOf = (traceparent: string | null | undefined): string | undefined =>
  traceparent ? TRACEPARENT.exec(traceparent.trim())?.[1] : undefined

/** Adds members to a W3C baggage header, keeping the caller's (a caller's own key wins). */
export const withBaggage = (existing: string | null, members: Record<string, string>): string => {
  const have = new Set((existing ?? "").split(",").map((m) => m.split("=")[0]!.trim()).filter(Boolean))
  const added = Object.entries(members).filter(([k]) => !have.has(k)).map(([k, v]) => `${k}=${encodeURIComponent(v)}`)
  return [...(existing ? [existing] : []), ...added].join(",")
}
