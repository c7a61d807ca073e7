/**
 * The ESLint layering rule (eslint.config.js) refuses imports against the package layering.
 * This lints small sources placed, by path, in each package, with the repository's own
 * config, so that a change that weakens the rule fails here rather than going unnoticed.
 */
import { fileURLToPath } from 'node:url'
import { ESLint } from 'eslint'
import tseslint from 'typescript-eslint'

const root = fileURLToPath(new URL('../../..', import.meta.url))

// The repository's config, without type information: these sources are not on disk, and the
// layering rule needs none.
const eslint = new ESLint({
  cwd: root,
  overrideConfig: [
    { languageOptions: { parserOptions: { projectService: false, project: null } } },
    tseslint.configs.disableTypeChecked,
  ],
})

/** The layering errors ESLint reports for `source` placed at `path`. */
async function refusals(path: string, source: string): Promise<string[]> {
  const [result] = await eslint.lintText(`${source}\nexport {}\n`, { filePath: path })
  return (result?.messages ?? [])
    .filter((m) => m.ruleId === 'no-restricted-imports' || m.fatal === true)
    .map((m) => m.message)
}

describe('the layering rule', () => {
  it.each([
    ['packages/protocol/src/x.ts', `import '@kvstore/core'`, /protocol may not depend on core/],
    ['packages/storage/src/x.ts', `import '@kvstore/node'`, /storage may not depend on node/],
    ['packages/storage/src/x.ts', `import '@kvstore/core'`, /storage may not depend on core/],
    [
      'packages/core/src/x.ts',
      `import type { Store } from '@kvstore/storage'`,
      /core may not depend on storage/,
    ],
    ['packages/core/src/x.ts', `export * from '@kvstore/node'`, /core may not depend on node/],
    [
      'packages/core/src/sub/x.ts',
      `import { Store } from '../../../storage/src/store.js'`,
      /may not reach into another by a relative path/,
    ],
    [
      'packages/node/src/x.ts',
      `import { KvClient } from '@kvstore/client'`,
      /node may not depend on client/,
    ],
    [
      'packages/client/src/x.ts',
      `import { runNode } from '@kvstore/node'`,
      /client may not depend on node/,
    ],
    [
      'packages/client/src/x.ts',
      `import { Store } from '@kvstore/storage'`,
      /client may not depend on storage/,
    ],
    [
      'packages/client/src/x.ts',
      `import { parseConfig } from '../../node/src/config.js'`,
      /may not reach into another by a relative path/,
    ],
    [
      'packages/cli/src/kv.ts',
      `import { runNode } from '@kvstore/node'`,
      /cli may not depend on node/,
    ],
    [
      'packages/cli/src/kv-node.ts',
      `import { Store } from '@kvstore/storage'`,
      /cli may not depend on storage/,
    ],
    [
      'packages/cli/src/kv-command.ts',
      `import { restore } from '@kvstore/storage'`,
      /cli may not depend on storage/,
    ],
    [
      'packages/cli/src/offline.ts',
      `import { runNode } from '@kvstore/node'`,
      /cli may not depend on node/,
    ],
    [
      'packages/node/src/x.ts',
      `import { freePort } from '@kvstore/testkit'`,
      /shipped code never imports it/,
    ],
    [
      'packages/client/src/x.ts',
      `import { seeded } from '@kvstore/testkit/prng'`,
      /shipped code never imports it/,
    ],
    [
      'packages/bench/src/x.ts',
      `import { KvNode } from '../../node/src/node.js'`,
      /may not reach into another by a relative path/,
    ],
    ['packages/router/src/x.ts', `import '@kvstore/node'`, /router may not depend on node/],
    [
      'packages/router/src/x.ts',
      `import { KvClient } from '@kvstore/client'`,
      /router may not depend on client/,
    ],
    [
      'packages/router/src/x.ts',
      `import { Store } from '@kvstore/storage'`,
      /router may not depend on storage/,
    ],
  ])('refuses, in %s: %s', async (path, source, message) => {
    const messages = await refusals(path, source)
    expect(messages).toHaveLength(1)
    expect(messages[0]).toMatch(message)
  })

  it.each([
    ['packages/core/src/x.ts', `import { epochMax } from '@kvstore/protocol/limits'`],
    ['packages/storage/src/x.ts', `import { KvError } from '@kvstore/protocol'`],
    ['packages/node/src/x.ts', `import { Store } from '@kvstore/storage'`],
    ['packages/node/src/cluster/x.ts', `import { clusterOf } from '../config.js'`],
    ['packages/client/src/x.ts', `import { HashRing } from '@kvstore/core'`],
    ['packages/cli/src/kv-node.ts', `import { runNode } from '@kvstore/node'`],
    ['packages/cli/src/x.ts', `import { KvClient } from '@kvstore/client'`],
    ['packages/router/src/x.ts', `import { encodeRouterSession } from '@kvstore/protocol'`],
    ['packages/cli/src/offline.ts', `import { restore } from '@kvstore/storage'`],
    ['packages/bench/src/x.ts', `import { freePort } from '@kvstore/testkit'`],
    ['packages/node/test/x.test.ts', `import { freePort } from '@kvstore/testkit'`],
  ])('allows, in %s: %s', async (path, source) => {
    expect(await refusals(path, source)).toEqual([])
  })
})
