// The last known state of recently written aggregates, so a command on a hot aggregate
// skips reloading its events. Safe under optimistic concurrency: if another writer (or
// replica) appended meanwhile, the cached sequence is stale, the append collides with the
// unique (aggregate, sequence) constraint, the entry is dropped and the retry reloads.
export interface Cached {
  readonly state: unknown
  readonly sequence: number
}

export class AggregateCache {
  private readonly entries = new Map<string, Cached>()
  private readonly max: number
  constructor(max = 10_000) {
    this.max = max
  }
  get(key: string): Cached | undefined {
    const hit = this.entries.get(key)
    if (hit !== undefined) {
      // refresh its place in the LRU order
      this.entries.delete(key)
      this.entries.set(key, hit)
    }
    return hit
  }
  set(key: string, value: Cached) {
    this.entries.delete(key)
    this.entries.set(key, value)
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!)
  }
  delete(key: string) {
    this.entries.delete(key)
  }
}

// one cache per database handle: tests (and tools) may talk to several databases in one process
const caches = new WeakMap<object, AggregateCache>()
export const cacheFor = (database: object): AggregateCache => {
  let c = caches.get(database)
  if (c === undefined) caches.set(database, (c = new AggregateCache()))
  return c
}
