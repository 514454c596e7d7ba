// Relay leadership as a lease in Postgres (relay_leases): one row per producer holds the
// current holder, its expiry and an epoch that grows at every change of leader. A relay
// renews while it leads; when it stops renewing (crashed, frozen, cut off from Postgres) the
// lease runs out and a standby takes it with the next epoch. The epoch is the fencing token
// the publish itself checks (relay-fence.ts): holding the lease is not proof of leadership,
// being the highest epoch at the stream is.
//
// The fence outlives the database: Redis keeps the highest epoch it saw even when Postgres is
// recreated (a fresh development database, a restore), and a counter starting again at 1 would
// be refused at every stream forever. So a new epoch is at least the current time in
// milliseconds: later than any epoch an earlier database could have given out, and still
// one more than the last within this one.
import { sql } from "kysely"
import type { DatabaseShape } from "./db/database.ts"

export interface Lease {
  readonly epoch: bigint
  /** Local deadline (performance.now()) after which this relay must assume it lost the lease. */
  readonly validUntil: number
}

/** Takes the lease if it is free or expired; undefined when another relay holds it. */
export const acquireLease = async (database: DatabaseShape, producer: string, holder: string, leaseMs: number): Promise<Lease | undefined> => {
  const asked = performance.now()
  await sql`insert into relay_leases (producer) values (${producer}) on conflict do nothing`.execute(database.db)
  const { rows } = await sql<{ epoch: string }>`
    update relay_leases set epoch = greatest(epoch + 1, (extract(epoch from clock_timestamp()) * 1000)::bigint), holder = ${holder}, expires_at = now() + make_interval(secs => ${leaseMs / 1000})
    where producer = ${producer} and expires_at < now()
    returning epoch::text as epoch`.execute(database.db)
  const row = rows[0]
  // the local deadline counts from before the request: never later than the database's
  return row ? { epoch: BigInt(row.epoch), validUntil: asked + leaseMs } : undefined
}

/** Extends the lease this relay holds; undefined when it has been taken over meanwhile. */
export const renewLease = async (database: DatabaseShape, producer: string, holder: string, lease: Lease, leaseMs: number): Promise<Lease | undefined> => {
  const asked = performance.now()
  const { rows } = await sql`
    update relay_leases set expires_at = now() + make_interval(secs => ${leaseMs / 1000})
    where producer = ${producer} and holder = ${holder} and epoch = ${lease.epoch.toString()}::bigint
    returning 1`.execute(database.db)
  return rows.length === 1 ? { epoch: lease.epoch, validUntil: asked + leaseMs } : undefined
}

/** Gives the lease up at shutdown, so that a standby takes over at once rather than at expiry. */
export const releaseLease = (database: DatabaseShape, producer: string, holder: string, lease: Lease) =>
  sql`update relay_leases set expires_at = '-infinity' where producer = ${producer} and holder = ${holder}
    and epoch = ${lease.epoch.toString()}::bigint`.execute(database.db)
