// A bounded map that forgets its least recently used entry first (a Map keeps insertion
// order: a hit is moved to the end, the first entry is the oldest). A hit on the entry that
// is already last is not moved: on a hot key that would be a delete and a set per read, and a
// long-lived map that churns keeps its replaced tables' entries alive (core/in-flight.ts).
export class Lru<K, V> {
  private readonly entries = new Map<K, V>()
  private readonly max: number
  private newest: K | undefined = undefined
  constructor(max: number) {
    this.max = max
  }
  get(key: K): V | undefined {
    const hit = this.entries.get(key)
    if (hit !== undefined && this.newest !== key) {
      this.entries.delete(key)
      this.entries.set(key, hit)
      this.newest = key
    }
    return hit
  }
  /** The entry without refreshing its place (cheaper on a hot path; eviction order becomes insertion order for it). */
  peek(key: K): V | undefined {
    return this.entries.get(key)
  }
  set(key: K, value: V) {
    this.entries.delete(key)
    this.entries.set(key, value)
    this.newest = key
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!)
  }
  delete(key: K) {
    this.entries.delete(key)
    if (this.newest === key) this.newest = undefined
  }
  get size(): number {
    return this.entries.size
  }
}
