// The CLI's exit codes (README: "Exit codes"). `caracal run` otherwise exits with its
// child's code, or dies by the child's signal.
export const EXIT = {
  ok: 0,
  /** A refusal, a missing record, bad arguments or input. */
  failed: 1,
  /** caracal.toml, .env or a CARACAL_* variable is missing or invalid. */
  config: 2,
  /** A service did not answer. */
  unreachable: 3,
  /** Authentication or authority refused (401/403; a credential or MCP launch the sts refused). */
  denied: 4,
  /** caracal run: the command does not exist. */
  notFound: 127,
  /** caracal run: the command cannot be executed. */
  notExecutable: 126
} as const
