// A Lua script on a hot path: EVALSHA, and EVAL once when the server does not have the script
// (after a restart or a SCRIPT FLUSH), which also loads it for the next calls.
//
// Not ioredis's defineCommand: its script command wraps each call's reject in a function
// assigned to a property, and V8 allocates such a function straight in old space. Until the
// next full collection that function keeps the call's command and arguments reachable, so
// every scavenge copied and promoted the arguments of every call made since the last one (on
// the gateway, each allowed call's audit record: a third of what its scavenges promoted).
// Pipelines keep defineCommand (relay-fence.ts): one script call per batch, not per request.
import { createHash } from "node:crypto"
import type { Redis } from "ioredis"

const isNoScript = (e: unknown) => e instanceof Error && e.message.startsWith("NOSCRIPT")

export type LuaScript<A> = (redis: Redis, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) => Promise<A>

/** A script with `keys.length` keys, run by its SHA-1. */
export const luaScript = <A>(lua: string): LuaScript<A> => {
  const sha = createHash("sha1").update(lua).digest("hex")
  return (redis, keys, args) =>
    (redis.evalsha(sha, keys.length, ...keys, ...args) as Promise<A>).catch((e: unknown) =>
      isNoScript(e) ? (redis.eval(lua, keys.length, ...keys, ...args) as Promise<A>) : Promise.reject(e)
    )
}
