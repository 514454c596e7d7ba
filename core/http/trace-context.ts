// W3C trace context (https://www.w3.org/TR/trace-context/): what the audit records take from
// a request's traceparent.

const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/

/** The trace id of a well-formed traceparent (an all-zero id is invalid), else null. */
export const traceIdOf = (traceparent: string | Array<string> | undefined): string | null => {
  const m = typeof traceparent === "string" ? TRACEPARENT.exec(traceparent.trim()) : null
  return m === null || /^0+$/.test(m[1]!) ? null : m[1]!
}
