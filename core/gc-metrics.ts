// Garbage collection pauses, on every service's /metrics: a pause stops every request in
// flight, so a tail latency (p99) that a service's own work does not explain is usually
// here. Node reports each collection's kind and duration (perf_hooks); they are counted
// into one histogram per kind.
import { Effect, Metric } from "effect"
import { constants, PerformanceObserver } from "node:perf_hooks"

const pauses = Metric.histogram("nodejs_gc_pause_seconds", {
  description: "Garbage collection pauses by kind (minor: scavenge; major: mark-compact; incremental; weakcb)",
  boundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]
})

const KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: "minor",
  [constants.NODE_PERFORMANCE_GC_MAJOR]: "major",
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb"
}

let observing = false

/** Starts counting this process's collections (once per process, whoever asks first). */
export const observeGc = () => {
  if (observing) return
  observing = true
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = KINDS[((entry as { detail?: { kind?: number } }).detail)?.kind ?? -1] ?? "other"
      Effect.runSync(Metric.update(Metric.withAttributes(pauses, { kind }), entry.duration / 1000))
    }
  }).observe({ entryTypes: ["gc"] })
}
