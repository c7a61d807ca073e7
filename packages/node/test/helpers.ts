import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvNode, parseConfig } from '../src/index.js'

export interface TestNode {
  node: KvNode
  url: string
  dir: string
  stop: () => Promise<void>
}

/**
 * Starts a real node (real LevelDB, real HTTP server on an ephemeral port) for one test. These
 * tests are about the API, so the node starts with auth off unless `args` say otherwise
 * (auth.test.ts and the process tests run with it on).
 */
export async function startTestNode(args: string[] = []): Promise<TestNode> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-node-'))
  const { config } = parseConfig(
    [
      '--port',
      '0',
      '--data-dir',
      join(dir, 'data'),
      '--log-level',
      'silent',
      '--audit-log',
      'off',
      ...(args.some((a) => a === '--auth' || a.startsWith('--auth=')) ? [] : ['--auth', 'false']),
      ...args,
    ],
    {},
  )
  const node = await KvNode.start(config, {
    onFatal: (err) => {
      throw err
    },
  })
  return {
    node,
    url: node.url,
    dir,
    stop: async () => {
      await node.stop('test done')
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** The parsed error body of a response, asserting its shape. */
export function errorOf(body: string): { code: string; message: string; [k: string]: unknown } {
  const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } }
  expect(parsed.error).toBeDefined()
  expect(typeof parsed.error?.code).toBe('string')
  expect(typeof parsed.error?.message).toBe('string')
  return parsed.error as { code: string; message: string }
}
