/**
 * Backups of a leaderless cluster, on real processes: each member is backed up on its own (no
 * single LSN), at slightly different moments, so the backups differ; every member restored
 * from its own backup, the cluster converges by anti-entropy alone (no read touches the keys
 * first), and every acknowledged write is there.
 */
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { restore, type RestoreResult } from '@kvstore/storage'
import { LeaderlessCluster, waitFor } from '@kvstore/testkit'
import { rootTls, testCertsDir } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const tmp = useTempDir('kv-leaderless-backup-')
const args = ['--mode', 'leaderless', '--replicas', '3', '--anti-entropy-interval-ms', '300']

describe('leaderless backup and restore', () => {
  it('restores every member from its own backup; anti-entropy converges them', async () => {
    const cluster = await LeaderlessCluster.start(3, args, { dir: join(tmp(), 'old') })
    const client = new KvClient({ ...rootTls(), url: cluster.urls })
    const backups = join(tmp(), 'backups')
    try {
      for (let i = 0; i < 100; i++) await client.put(`early/${i}`, `e${i}`, { w: 'all' })
      // n3 first; then more writes; then the others: n3's backup lacks the late keys.
      const n3 = await client.backup({ to: join(backups, 'n3'), from: 'n3' })
      expect(n3.member).toBe('n3')
      for (let i = 0; i < 50; i++) await client.put(`late/${i}`, `l${i}`, { w: 'all' })
      for (const id of ['n1', 'n2']) await client.backup({ to: join(backups, id), from: id })
      // --all-members takes every member at once, into one directory each.
      const all = await client.backupAllMembers({ to: join(backups, 'all') })
      expect(all.members.map((m) => m.member).sort()).toEqual(['n1', 'n2', 'n3'])
      expect(all.members.every((m) => m.manifest.mode === 'leaderless')).toBe(true)
    } finally {
      await client.close()
      await cluster.close()
    }

    const clusterId = (await readFile(join(testCertsDir(), 'cluster-id'), 'utf8')).trim()
    const parent = join(tmp(), 'restored')
    await mkdir(parent, { recursive: true })
    const results: Record<string, RestoreResult> = {}
    for (const id of ['n1', 'n2', 'n3']) {
      results[id] = (await restore({
        from: join(backups, id),
        target: { kind: 'backup' },
        dataDir: join(parent, id),
        nodeId: id,
        clusterId,
      })) as RestoreResult
    }
    // The backups differ: n3's holds the 50 late keys fewer.
    const keysOf = (id: string) => (results[id] as RestoreResult).digest.keys
    expect(keysOf('n1') - keysOf('n3')).toBe(50)
    expect(keysOf('n2')).toBe(keysOf('n1'))

    const restored = await LeaderlessCluster.start(3, args, { dir: parent })
    const restoredClient = new KvClient({ ...rootTls(), url: restored.urls })
    try {
      // Anti-entropy alone brings the late keys to n3: no read has touched them yet.
      await waitFor(
        async () => {
          for (let i = 0; i < 50; i++) {
            if ((await restored.local('n3', `late/${i}`)) === null) return false
          }
          return true
        },
        { timeoutMs: 30_000, message: 'anti-entropy to bring the late keys to n3' },
      )
      for (let i = 0; i < 100; i++) {
        const got = await restoredClient.get(`early/${i}`, { r: 'all' })
        expect(got?.value.toString()).toBe(`e${i}`)
      }
      for (let i = 0; i < 50; i++) {
        const got = await restoredClient.get(`late/${i}`, { r: 'all' })
        expect(got?.value.toString()).toBe(`l${i}`)
      }
      await restoredClient.put('after-restore', 'yes', { w: 'all' })
    } finally {
      await restoredClient.close()
      await restored.close()
    }
  })
})
