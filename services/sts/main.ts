// The sts service: configuration, connections, migrations, /health, /ready (Postgres,
// Redis, OPA), /metrics, and the internal routes the api calls (sealed credentials, policy
// checks). The token exchange arrives with its issue.
import { runService } from "../../core/service.ts"
import { httpProbe } from "../../core/http/probe.ts"
import { stsSpec } from "./config.ts"
import { InternalRoutes, stsErrors } from "./internal.ts"

if (import.meta.main) {
  runService({
    name: "sts",
    spec: stsSpec,
    routes: InternalRoutes,
    mapError: stsErrors,
    // OPA unreachable means every exchange would be denied: the STS is not ready without it
    readyChecksFrom: (vars) => [{ name: "opa", check: httpProbe(`${vars.OPA_URL}/health`) }]
  })
}
