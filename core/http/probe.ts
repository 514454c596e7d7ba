// A readiness probe of an HTTP dependency (a policy engine, another service): 2xx within the timeout, or not ready.
import { Effect } from "effect"

export const httpProbe = (url: string, timeoutMs = 2000): Effect.Effect<void, Error> =>
  Effect.tryPromise({
    try: async (signal) => {
      const res = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) })
      await res.body?.cancel()
      if (!res.ok) throw new Error(`${url} answered ${res.status}`)
    },
    catch: (e) => (e instanceof Error ? e : new Error(String(e)))
  })
