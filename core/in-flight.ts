// A registry of short-lived things (calls in flight) in a long-lived process: a doubly linked
// list whose removed nodes let go of everything at once.
//
// Why not a Set: V8 replaces a Set's table as entries come and go (every few dozen adds when
// most entries are deleted soon after). Once the Set is old, so is each new table, and a
// replaced table stays in old space, still holding the entries it had, until the next full
// collection. Minor collections treat those stale slots as live references: every entry a
// replaced table held — a whole request graph here — survives them and is promoted. On the
// gateway that was half of what each scavenge promoted, and the scavenges' length was its p99.

interface Node<T> {
  readonly value: T
  prev: Node<T> | undefined
  next: Node<T> | undefined
  linked: boolean
}

/** A handle to take one entry out again. */
export interface Registered {
  readonly remove: () => void
}

export class InFlight<T> {
  private head: Node<T> | undefined = undefined
  private count = 0

  add(value: T): Registered {
    const node: Node<T> = { value, prev: undefined, next: this.head, linked: true }
    if (this.head !== undefined) this.head.prev = node
    this.head = node
    this.count++
    return { remove: () => this.unlink(node) }
  }

  /** The entries now, as an array: callers may remove entries while they go through it. */
  snapshot(): Array<T> {
    const out: Array<T> = []
    for (let n = this.head; n !== undefined; n = n.next) out.push(n.value)
    return out
  }

  get size(): number {
    return this.count
  }

  private unlink(node: Node<T>): void {
    if (!node.linked) return
    node.linked = false
    if (node.prev !== undefined) node.prev.next = node.next
    else this.head = node.next
    if (node.next !== undefined) node.next.prev = node.prev
    // a removed node keeps no neighbour alive (it may itself sit in old space for a while)
    node.prev = undefined
    node.next = undefined
    this.count--
  }
}
