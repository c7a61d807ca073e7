/**
 * What process tests set up per file: a temporary directory, and a standalone node running in
 * the test process itself, each removed after the file's tests.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll } from 'vitest'
import { KvNode, parseConfig } from '@kvstore/node'
import { securityArgs } from './certs.js'

/**
 * A fresh temporary directory for this file's tests (or this describe block's), made before
 * they run and deleted after; call the returned function for its path.
 */
export function useTempDir(prefix: string): () => string {
  let dir: string | undefined
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix))
  })
  afterAll(async () => {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })
  return () => {
    if (dir === undefined) throw new Error('the temporary directory is made in beforeAll')
    return dir
  }
}

/**
 * A standalone node in this process (real LevelDB, real sockets), with its certificate from
 * the run's certs and auth on, started before the tests and stopped after; call the returned
 * function for it.
 */
export function useStandaloneNode(prefix: string): () => KvNode {
  const dir = useTempDir(prefix)
  let node: KvNode | undefined
  beforeAll(async () => {
    const { config } = parseConfig(
      [
        '--port',
        '0',
        '--data-dir',
        join(dir(), 'data'),
        '--log-level',
        'silent',
        ...securityArgs(),
      ],
      {},
    )
    node = await KvNode.start(config)
  })
  afterAll(async () => {
    await node?.stop()
  })
  return () => {
    if (node === undefined) throw new Error('the node starts in beforeAll')
    return node
  }
}
