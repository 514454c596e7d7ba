// Every service's variable spec, for the README's configuration tables and the tests.
import { apiSpec } from "./api/config.ts"
import { auditSpec } from "./audit/config.ts"
import { coordinatorSpec } from "./coordinator/config.ts"
import { gatewaySpec } from "./gateway/config.ts"
import { stsSpec } from "./sts/config.ts"

export const serviceSpecs = { sts: stsSpec, api: apiSpec, gateway: gatewaySpec, coordinator: coordinatorSpec, audit: auditSpec } as const
export type ServiceName = keyof typeof serviceSpecs
