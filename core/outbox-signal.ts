// Wakes the relay as soon as a command commits. In the process that leads a producer's
// relay this is a function call; other processes fall back to Postgres NOTIFY, which the
// leader LISTENs to. NOTIFY is not used always because it takes a database-wide lock at
// commit, which serialises every committing command (measured: about a third of the
// write throughput).
/** The NOTIFY channel that wakes a relay led by another process. */
export const OUTBOX_CHANNEL = "caracal_outbox"

type Wake = () => void

const waiters = new Map<string, Set<Wake>>()
const leading = new Set<string>()

export const outboxSignal = {
  /** The relay of `producer` in this process is the leader (or stopped being it). */
  setLeading(producer: string, isLeader: boolean) {
    if (isLeader) leading.add(producer)
    else leading.delete(producer)
  },
  leadsHere(producer: string): boolean {
    return leading.has(producer)
  },
  subscribe(producer: string, wake: Wake): () => void {
    const set = waiters.get(producer) ?? new Set()
    set.add(wake)
    waiters.set(producer, set)
    return () => set.delete(wake)
  },
  committed(producer: string) {
    for (const wake of waiters.get(producer) ?? []) wake()
  }
}
