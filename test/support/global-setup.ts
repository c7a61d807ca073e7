/**
 * Once per test run: one CA and one cluster id, with a certificate for members n1 to n9 and
 * for the user root, and root's password (`kv certs init`, as a user makes them). Every test
 * cluster uses them: clusters of one run share the cluster id, which is harmless, since a
 * member only ever talks to the members it was given.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestProject } from 'vitest/node'
import { initCerts } from '../../packages/cli/src/certs.js'

declare module 'vitest' {
  export interface ProvidedContext {
    kvTestCertsDir: string
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-test-certs-'))
  await initCerts({
    dir: join(dir, 'certs'),
    members: Array.from({ length: 9 }, (_, i) => `n${i + 1}`),
    users: ['root', 'reader'],
  })
  project.provide('kvTestCertsDir', join(dir, 'certs'))
  return async () => {
    await rm(dir, { recursive: true, force: true })
  }
}
