// The sts service: configuration, connections, migrations, /health, /ready (Postgres,
// Redis, OPA), /metrics, its producer (key events), and the internal routes the api calls
// (sealed credentials, policy checks, the credential release), and the token endpoint.
import { Effect, Layer } from "effect"
import { Producer, type ProducerDefinition } from "../../core/producer.ts"
import { runService } from "../../core/service.ts"
import { httpProbe } from "../../core/http/probe.ts"
import { stsSpec } from "./config.ts"
import { events } from "./events.ts"
import { InternalRoutes, stsErrors } from "./internal.ts"
import { keyErrors, KeyRoutes } from "./key-routes.ts"
import { ZoneKeys } from "./keys.ts"
import { CredentialReseal, ReleaseRoutes } from "./release.ts"
import { DirectoryConsumer, exchangeContextWith, StsAuditLog, StsDirectory, TokenFront } from "./token-layer.ts"
import { DecideRoutes, PolicyEngine } from "./policy-engine.ts"
import { policySyncLayer } from "./policy-sync.ts"

// the exchange's context: the zone keys and directory are the same instances the background work
// keeps current; one layer value, so the token endpoint and the credential release share one build
const Exchange = exchangeContextWith(Effect.service(ZoneKeys), Effect.service(PolicyEngine)).pipe(
  Layer.provide([ZoneKeys.layer, PolicyEngine.layer, StsDirectory.layer, StsAuditLog])
)
const ExchangeRoutes = ReleaseRoutes.pipe(Layer.provide(Exchange))
// the token endpoint, the hot path, is a plain Node handler in front of the router (token-route.ts)
const TokenEndpoint = TokenFront.pipe(Layer.provide(Exchange))

/** The sts's producer: zone key events on caracal:{zone_key}:events. */
export const stsProducer: ProducerDefinition = { name: "sts", registry: events, streams: (keys) => (e) => [keys.stream(e.aggregateType)] }

if (import.meta.main) {
  runService({
    name: "sts",
    spec: stsSpec,
    producer: Producer.layer(stsSpec, stsProducer),
    // zone keys: one ZoneKeys (one cache) shared by the routes and its background work (same layer, built once)
    routes: Layer.mergeAll(InternalRoutes, KeyRoutes.pipe(Layer.provide(ZoneKeys.layer)), DecideRoutes, ExchangeRoutes),
    // policy sync: the api's policy events projected (sts-policies), OPA reconciled with them
    background: Layer.mergeAll(
      ZoneKeys.background.pipe(Layer.provide(ZoneKeys.layer)),
      policySyncLayer,
      DirectoryConsumer.pipe(Layer.provide(StsDirectory.layer)),
      // credentials sealed under ZONE_KEK_PREVIOUS: re-sealed under ZONE_KEK
      CredentialReseal
    ),
    front: TokenEndpoint,
    mapError: (e) => stsErrors(e) ?? keyErrors(e),
    // OPA unreachable means every exchange would be denied: the STS is not ready without it
    readyChecksFrom: (vars) => [{ name: "opa", check: httpProbe(`${vars.OPA_URL}/health`) }]
  })
}
