// Where the local stack is, for tests: the same defaults the CLI and the dev tools read
// (core/stack-env.ts), re-exported here so tests keep importing them from core/testing.
export { repoRoot, type StackEnv, stackEnv } from "../stack-env.ts"
