// The repository root, and where the local stack is: the variables infra/stack.sh wrote to
// .stack.env, overridden by the environment. Development tools and the CLI use them as
// defaults for local use (`npm run caracal -- …` in a fresh checkout); tests find
// Postgres and Redis through them with no manual export. Not a test helper: the CLI
// imports it, and core/testing re-exports it.
import { existsSync, readFileSync } from "node:fs"
import path from "node:path"

export const repoRoot = path.resolve(import.meta.dirname, "..")

const fromFile = (): Record<string, string> => {
  const file = path.join(repoRoot, ".stack.env")
  if (!existsSync(file)) return {}
  const out: Record<string, string> = {}
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim())
    if (m?.[1] !== undefined && m[2] !== undefined) out[m[1]] = m[2]
  }
  return out
}

export interface StackEnv {
  readonly DATABASE_URL: string
  readonly REDIS_URL: string
  readonly OPA_URL: string
  /** The local S3 emulator. */
  readonly S3_ENDPOINT: string
}

export const stackEnv = (): StackEnv => {
  const file = fromFile()
  const pick = (k: keyof StackEnv, d: string) => process.env[`TEST_${k}`] ?? file[k] ?? d
  return {
    DATABASE_URL: pick("DATABASE_URL", "postgres://caracal:caracal@127.0.0.1:5432/caracal"),
    REDIS_URL: pick("REDIS_URL", "redis://127.0.0.1:6379"),
    OPA_URL: pick("OPA_URL", "http://127.0.0.1:8181"),
    S3_ENDPOINT: pick("S3_ENDPOINT", "http://127.0.0.1:5050")
  }
}
