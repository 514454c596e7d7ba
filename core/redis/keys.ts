// The one builder for every Redis key and stream name. Each stream name carries a
// hash tag ({...}) so that a stream and its companion keys land in one Redis Cluster
// slot; a prefix lets tests (and several deployments) share one Redis.

export interface Keys {
  readonly prefix: string
  /** The stream of one aggregate type, e.g. `caracal:{agent}:events`. */
  readonly stream: (aggregateType: string, shard?: number) => string
  /** The dead-letter stream beside a stream. */
  readonly deadLetters: (stream: string) => string
  /** The highest relay epoch that published to a stream (same hash slot as the stream). */
  readonly fence: (stream: string) => string
  /** A rate-limit counter (lives in db1). */
  readonly rateLimit: (scope: string, id: string) => string
  /** Any other key, namespaced. */
  readonly key: (...parts: ReadonlyArray<string>) => string
}

/** The fence beside a stream: the stream's name carries the hash tag, so the suffix keeps the slot. */
export const fenceKey = (stream: string) => `${stream}:fence`

const SAFE = /^[A-Za-z0-9_.:-]+$/

const part = (p: string) => {
  if (!SAFE.test(p)) throw new Error(`invalid key part: ${JSON.stringify(p)}`)
  return p
}

export const makeKeys = (prefix = "caracal"): Keys => {
  part(prefix)
  const stream = (aggregateType: string, shard?: number) =>
    `${prefix}:{${part(aggregateType)}${shard === undefined ? "" : `.${shard}`}}:events`
  return {
    prefix,
    stream,
    deadLetters: (s) => `${s}:dlq`,
    fence: fenceKey,
    rateLimit: (scope, id) => `${prefix}:rl:{${part(scope)}}:${part(id)}`,
    key: (...parts) => [prefix, ...parts.map(part)].join(":")
  }
}
