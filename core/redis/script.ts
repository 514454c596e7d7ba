// A Lua script on a hot path: EVALSHA, and EVAL once when the server does not have the script
// (after a restart or a SCRIPT FLUSH), which also loads it for the next calls. Not ioredis's
// defineCommand: its script command adds a second old-space function per call, and the call's
// arguments must be released once it has answered (see command.ts).
import { createHash } from "node:crypto"
import type { Redis } from "ioredis"
import { sendReleasing } from "./command.ts"

/** The server does not have the script (EVALSHA did not run): send it with EVAL. */
export const isNoScript = (e: unknown) => e instanceof Error && e.message.startsWith("NOSCRIPT")

const send = <A>(redis: Redis, name: "evalsha" | "eval", script: string, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) =>
  sendReleasing<A>(redis, name, [script, keys.length, ...keys, ...args])

/** The SHA-1 EVALSHA names a script by. */
export const scriptSha = (lua: string) => createHash("sha1").update(lua).digest("hex")

export type LuaScript<A> = (redis: Redis, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) => Promise<A>

/** A script with `keys.length` keys, run by its SHA-1. */
export const luaScript = <A>(lua: string): LuaScript<A> => {
  const sha = scriptSha(lua)
  return (redis, keys, args) =>
    send<A>(redis, "evalsha", sha, keys, args).catch((e: unknown) => isNoScript(e) ? send<A>(redis, "eval", lua, keys, args) : Promise.reject(e))
}
