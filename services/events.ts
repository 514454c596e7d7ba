// Every event type Caracal publishes, with all of its frozen versions: each service's own
// registrations (services/<name>/events.ts) merged into one registry, for the readers of
// every event — the CLI's replay and rebuilds, `npm run schemas` and its staleness test.
// A service's producer uses its own registry, not this one.
import { EventRegistry } from "../schemas/registry.ts"
import { jsonSchemaFilesOf } from "../schemas/generate.ts"
import { apiEvents } from "./api/events.ts"
import { coordinatorEvents } from "./coordinator/events.ts"
import { stsEvents } from "./sts/events.ts"

export const events = new EventRegistry().register(...coordinatorEvents, ...apiEvents, ...stsEvents)

/** The JSON Schema documents of the envelope and of every service's events (schemas/json). */
export const jsonSchemaFiles = (): Map<string, string> => jsonSchemaFilesOf(events)
