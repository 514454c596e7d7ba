// Errors the SDK raises. A refusal keeps the server's stable `error` code (and the sts's
// `reason`), so callers branch on codes, never on message text.

export type CaracalService = "coordinator" | "sts" | "gateway" | "api" | "config"

export class CaracalError extends Error {
  override readonly name: string = "CaracalError"
  /** The server's `error` field (`max_depth_exceeded`, `access_denied`…), or `unreachable`, `invalid_config`. */
  readonly code: string
  /** HTTP status of the refusal; 0 when no answer arrived. */
  readonly status: number
  readonly service: CaracalService
  /** The sts's `reason` on access_denied (`session_terminated`, the policy's reason…). */
  readonly reason: string | undefined
  readonly description: string

  constructor(opts: { code: string; status: number; service: CaracalService; description: string; reason?: string | undefined }) {
    super(`${opts.service}: ${opts.code}${opts.reason ? ` (${opts.reason})` : ""}: ${opts.description}`)
    this.code = opts.code
    this.status = opts.status
    this.service = opts.service
    this.reason = opts.reason
    this.description = opts.description
  }
}

/** A configuration value is missing or malformed; `variable` names the field or variable. */
export class CaracalConfigError extends CaracalError {
  override readonly name = "CaracalConfigError"
  readonly variable: string
  constructor(variable: string, description: string) {
    super({ code: "invalid_config", status: 0, service: "config", description: `${variable}: ${description}` })
    this.variable = variable
  }
}
