// The gateway service (port 8081): every request but /health, /ready and /metrics is a
// governed call (proxy.ts), decided on the in-memory projections every replica keeps
// (layers.ts) and recorded on the audit stream before the upstream sees it.
import { runService } from "../../core/service.ts"
import { gatewaySpec } from "./config.ts"
import { GatewayBackgroundLive, GatewayFrontLive } from "./layers.ts"

if (import.meta.main) {
  runService({
    name: "gateway",
    spec: gatewaySpec,
    front: GatewayFrontLive,
    background: GatewayBackgroundLive
  })
}
