// Shared by the benchmarks: the one output format, percentiles, and a bounded timer.
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
