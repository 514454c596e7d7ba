// Shared test helpers: every issue's tests reuse these.
export * from "./clock.ts"
export * from "./database.ts"
export * from "./mandates.ts"
export * from "./process.ts"
export * from "./redis.ts"
export * from "./stack.ts"
export * from "./decider.ts"
export * from "./opa.ts"
