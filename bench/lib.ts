// Shared by the benchmarks: the one output format, percentiles, closed- and open-loop load,
// and what the whole machine was doing meanwhile.
import { readFileSync } from "node:fs"

export interface Figure {
  readonly bench: string
  readonly metric: string
  readonly value: number
  readonly unit: string
  readonly ceiling: number
}

const fmt = (n: number) => (Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 1 ? n.toFixed(2) : n.toFixed(4))

/** Prints `bench=<name> metric=<what> value=<v> unit=<u> ceiling=<c> ratio=<v/c>`. */
export const report = (f: Figure) => {
  const ratio = f.ceiling === 0 ? 0 : f.value / f.ceiling
  process.stdout.write(`bench=${f.bench} metric=${f.metric} value=${fmt(f.value)} unit=${f.unit} ceiling=${fmt(f.ceiling)} ratio=${ratio.toFixed(3)}\n`)
}

export const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

/** Runs `task` with `concurrency` workers until `total` tasks are done; returns ops/s. */
export const throughput = async (total: number, concurrency: number, task: (i: number) => Promise<unknown>) => {
  let next = 0
  const start = performance.now()
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < total) await task(next++)
  }))
  return total / ((performance.now() - start) / 1000)
}

/**
 * Offers `task` open-loop at `rate` per second for `seconds` (each start on a fixed schedule,
 * whatever the earlier ones are doing); returns every task's latency in ms, sorted.
 */
export const openLoop = async (rate: number, seconds: number, task: (i: number) => Promise<unknown>) => {
  const latencies: Array<number> = []
  const inflight: Array<Promise<void>> = []
  const start = performance.now()
  for (let i = 0; i < rate * seconds; i++) {
    const due = start + (i * 1000) / rate
    const wait = due - performance.now()
    if (wait > 1) await new Promise((r) => setTimeout(r, wait))
    inflight.push((async () => {
      const t = performance.now()
      await task(i)
      latencies.push(performance.now() - t)
    })())
  }
  await Promise.all(inflight)
  return latencies.sort((a, b) => a - b)
}

/**
 * A service's collection pauses so far (its /metrics), as `<kind>_sum` seconds and
 * `<kind>_count`; two of them subtracted give a phase's (BENCH_GC=1 prints them).
 */
export const gcPauses = async (baseUrl: string): Promise<Record<string, number>> => {
  const text = await (await fetch(`${baseUrl}/metrics`)).text()
  const out: Record<string, number> = {}
  for (const m of text.matchAll(/^nodejs_gc_pause_seconds_(sum|count)\{kind="(\w+)"\} ([0-9.e+-]+)$/gm)) out[`${m[2]}_${m[1]}`] = Number(m[3])
  return out
}

/** Prints the pauses between two readings of gcPauses when BENCH_GC=1. */
export const printGcBetween = (label: string, before: Record<string, number>, after: Record<string, number>) => {
  if (process.env.BENCH_GC !== "1") return
  console.log(label, Object.fromEntries(Object.keys(after).map((k) => [k, after[k]! - (before[k] ?? 0)])))
}

/** The machine's CPU time so far, all cores and processes (/proc/stat, in clock ticks). */
const cpuTimes = () => {
  // user nice system idle iowait irq softirq steal (guest time is counted in user already)
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1, 9).map(Number)
  return { busy: f[0]! + f[1]! + f[2]! + f[5]! + f[6]!, steal: f[7]!, all: f.reduce((a, b) => a + b, 0) }
}

/** Microseconds in which some runnable task waited for a core (PSI, /proc/pressure/cpu); 0 where the kernel has none. */
const cpuStall = () => {
  try {
    return Number(/^some .*total=(\d+)/m.exec(readFileSync("/proc/pressure/cpu", "utf8"))?.[1] ?? 0)
  } catch {
    return 0
  }
}

/**
 * Runs `run` and answers how busy the whole machine was meanwhile: every process (the service,
 * OPA, Postgres, Redis, this one), as a share of all cores; the share the hypervisor reported
 * taking (steal); and the share of the time in which some task waited for a core (CPU
 * pressure: on a VM the host throttles, this rises while the cores look idle). A latency
 * target at a load where the shared cores are mostly busy is a target for the machine's
 * queueing as much as for the service.
 */
export const machineCpuDuring = async <A>(run: () => Promise<A>) => {
  const a = cpuTimes()
  const stall0 = cpuStall()
  const t0 = performance.now()
  const result = await run()
  const b = cpuTimes()
  const stalledPct = ((cpuStall() - stall0) / 1000 / (performance.now() - t0)) * 100
  const all = Math.max(1, b.all - a.all)
  return { result, busyPct: ((b.busy - a.busy) / all) * 100, stealPct: ((b.steal - a.steal) / all) * 100, stalledPct }
}
