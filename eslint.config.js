// @ts-check
import js from '@eslint/js'
import globals from 'globals'
import tseslint from 'typescript-eslint'

/*
 * Layering (the design handbook's "Packages" table): dependencies point one way,
 * protocol -> storage -> core -> node, then client -> cli, with router, chaos, bench and sim on top.
 * A wrong import fails lint, not review. Each shipped package lists what of ours it may
 * import; everything else of ours is refused, by package name (`@kvstore/x`) and by relative
 * path into another package (`../../x/src/...`). packages/node/test/lint-layering.test.ts
 * runs ESLint on bad imports, so the rule cannot silently rot.
 */
const ourPackages = [
  'protocol',
  'storage',
  'core',
  'node',
  'client',
  'cli',
  'router',
  'chaos',
  'bench',
  'sim',
  'testkit',
]

/** What of ours each shipped package's sources may import (besides themselves). */
const mayImport = {
  // Codecs, error codes, limits and shared types; no I/O.
  protocol: [],
  // The LevelDB layout knows nothing of the network or of replication.
  storage: ['protocol'],
  // Pure state machines: protocol's types and pure helpers only.
  core: ['protocol'],
  node: ['protocol', 'storage', 'core'],
  // The SDK never depends on the server.
  client: ['protocol', 'core'],
  // The commands use the SDK; kv-node.ts alone starts a node (see below).
  cli: ['protocol', 'client'],
  // A stateless proxy: the wire contract (error codes, limits, shard map, identities) only. It
  // speaks HTTP to the nodes like any client, and loads neither LevelDB nor the server.
  router: ['protocol'],
}

/** Refuses relative imports into another package: packages import each other by name. */
const relativeIntoPackage = {
  regex: `^(\\.\\./)+(packages/)?(${ourPackages.join('|')})(/|$)`,
  message:
    'a package may not reach into another by a relative path; import it by name (@kvstore/...), if the layering allows it at all.',
}

/** A `no-restricted-imports` setting that refuses the packages of ours in `refused`. */
function refuse(pkg, refused) {
  return [
    'error',
    {
      patterns: [
        ...refused.map((name) => ({
          group: [`@kvstore/${name}`, `@kvstore/${name}/**`],
          message:
            name === 'testkit'
              ? 'the test kit is for tests and benchmarks; shipped code never imports it.'
              : `${pkg} may not depend on ${name} (layering: see the top of eslint.config.js).`,
        })),
        relativeIntoPackage,
      ],
    },
  ]
}

const layering = [
  // Every package, tools on top (chaos, bench, sim, testkit) included: by name only.
  { files: ['packages/*/src/**/*.ts'], rules: { 'no-restricted-imports': refuse('', []) } },
  // Shipped packages: only what they may import (a later block replaces the rule's options).
  ...Object.entries(mayImport).map(([pkg, allowed]) => ({
    files: [`packages/${pkg}/src/**/*.ts`],
    rules: {
      'no-restricted-imports': refuse(
        pkg,
        ourPackages.filter((name) => name !== pkg && !allowed.includes(name)),
      ),
    },
  })),
  // cli needs the node package for one thing: starting a node (`kv-node`).
  {
    files: ['packages/cli/src/kv-node.ts'],
    rules: {
      'no-restricted-imports': refuse(
        'cli',
        ourPackages.filter((name) => !['cli', 'node', ...mayImport.cli].includes(name)),
      ),
    },
  },
  // And the storage package for one file: the offline commands (`kv backup verify`, `kv restore`,
  // `kv-cluster --restore-from`) read backups and build data directories with no node running,
  // so they need the backup format and LevelDB. kv loads offline.ts only for those commands.
  {
    files: ['packages/cli/src/offline.ts'],
    rules: {
      'no-restricted-imports': refuse(
        'cli',
        ourPackages.filter((name) => !['cli', 'storage', ...mayImport.cli].includes(name)),
      ),
    },
  },
]

export default tseslint.config(
  {
    ignores: [
      '**/dist/**',
      '**/node_modules/**',
      'coverage/**',
      '.data/**',
      'bench-results/**',
      '.tools/**',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: { ...globals.node },
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // A forgotten promise in a storage engine is a lost write or an unhandled crash.
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
      // Logs go through pino with node id, role and epoch; commands write to process.stdout.
      'no-console': 'error',
      eqeqeq: ['error', 'always'],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
  ...layering,
)
