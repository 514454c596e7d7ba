// Structured logs: one JSON object per line on stdout, flat so that `jq .request_id`
// works without knowing Effect's nesting of annotations.
import { Cause, Layer, Logger, References } from "effect"

export type LevelName = "debug" | "info" | "warn" | "error"

const effectLevel = { debug: "Debug", info: "Info", warn: "Warn", error: "Error" } as const

const levelName = (l: string): string => l.toLowerCase()

export const jsonLine = (service: string) =>
  Logger.make<unknown, void>(({ cause, date, fiber, logLevel, message }) => {
    const parts = Array.isArray(message) ? message : [message]
    const line: Record<string, unknown> = {
      time: date.toISOString(),
      level: levelName(logLevel),
      service,
      message: parts.map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join(" ")
    }
    for (const [k, v] of Object.entries(fiber.getRef(References.CurrentLogAnnotations))) line[k] = v
    // Causes are summarised, not dumped: a stack trace in a log is fine, but never a secret's value,
    // and Redacted values print as <redacted> through their own toJSON.
    if (cause.reasons.length > 0) line.cause = Cause.pretty(cause)
    process.stdout.write(JSON.stringify(line) + "\n")
  })

export const LoggingLive = (service: string, level: LevelName) =>
  Layer.mergeAll(
    Logger.layer([jsonLine(service)]),
    Layer.succeed(References.MinimumLogLevel, effectLevel[level])
  )
