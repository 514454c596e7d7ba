// A controllable clock for pure code that takes "now" as a value (deciders, claim checks),
// and Effect's TestClock for code that reads the Effect clock.
export { TestClock } from "effect/testing"

export interface ManualClock {
  readonly now: () => Date
  readonly advance: (ms: number) => void
  readonly set: (at: Date | string) => void
}

export const manualClock = (start: Date | string = "2026-01-01T00:00:00.000Z"): ManualClock => {
  let t = new Date(start).getTime()
  return {
    now: () => new Date(t),
    advance: (ms) => void (t += ms),
    set: (at) => void (t = new Date(at).getTime())
  }
}
