// Every event type Caracal publishes, with all of its frozen versions. Services register
// their events here so that the CLI, the audit service and `npm run schemas` see them all.
import { coordinatorEvents } from "./coordinator.ts"
import { EventRegistry } from "./registry.ts"

export const events = new EventRegistry().register(...coordinatorEvents)
