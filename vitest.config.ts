import { defineConfig } from 'vitest/config'

// Workspace packages resolve to their TypeScript sources (the "source" export condition), so
// unit tests need no build. Tests that start node processes run the built `dist` instead,
// exactly as a user would; `pnpm test` builds first.
export default defineConfig({
  resolve: { conditions: ['source'] },
  ssr: { resolve: { conditions: ['source'], externalConditions: ['source'] } },
  test: {
    globals: true,
    pool: 'forks',
    poolOptions: { forks: { minForks: 1, maxForks: 2 } },
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // One CA, cluster id and set of certificates for the whole run (test/support/certs.ts).
    globalSetup: ['test/support/global-setup.ts'],
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['packages/*/test/**/*.test.ts'] },
      },
      {
        extends: true,
        test: {
          name: 'process',
          include: ['test/**/*.test.ts'],
          // Every fetch trusts the test CA and logs in as root with its client certificate.
          setupFiles: ['test/support/setup.ts'],
          // These start real node processes and load them; one file at a time.
          poolOptions: { forks: { singleFork: true } },
          testTimeout: 120_000,
        },
      },
    ],
  },
})
