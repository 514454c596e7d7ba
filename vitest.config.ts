import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // two cores: integration files start real processes; more workers only add contention
    maxWorkers: 2
  }
})
