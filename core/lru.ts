// A bounded map that forgets its least recently used entry first (a Map keeps insertion
// order: a hit is moved to the end, the first entry is the oldest).
export class Lru<K, V> {
  private readonly entries = new Map<K, V>()
  private readonly max: number
  constructor(max: number) {
    this.max = max
  }
  get(key: K): V | undefined {
    const hit = this.entries.get(key)
    if (hit !== undefined) {
      this.entries.delete(key)
      this.entries.set(key, hit)
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
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value!)
  }
  delete(key: K) {
    this.entries.delete(key)
  }
  get size(): number {
    return this.entries.size
  }
}
