// The last known state of recently written aggregates, so a command on a hot aggregate
// skips reloading its events. Safe under optimistic concurrency: if another writer (or
// replica) appended meanwhile, the cached sequence is stale, the append collides with the
// unique (aggregate, sequence) constraint, the entry is dropped and the retry reloads.
import { Lru } from "./lru.ts"

export interface Cached {
  readonly state: unknown
  readonly sequence: number
}

export class AggregateCache extends Lru<string, Cached> {
  constructor(max = 10_000) {
    super(max)
  }
}

// one cache per database handle: tests (and tools) may talk to several databases in one process
const caches = new WeakMap<object, AggregateCache>()
export const cacheFor = (database: object): AggregateCache => {
  let c = caches.get(database)
  if (c === undefined) caches.set(database, (c = new AggregateCache()))
  return c
}
