/**
 * The disaster test, on real processes: a 3-node cluster with a follower archiving its log;
 * a known dataset written under load; the digest and LSN recorded at a moment T; then every
 * key under users/ deleted and others overwritten. A new 3-node cluster restored to T (by
 * time, and by LSN) from the base backup plus the archive must have the digest recorded at T
 * and every write acknowledged before T. Once more with the leader killed -9 while the
 * archive runs: the archive goes on through the failover and a restore to the cluster's last
 * LSN equals the cluster.
 */
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { restore, type RestoreResult, type RestoreTarget } from '@kvstore/storage'
import { TestCluster, until } from '@kvstore/testkit'
import { rootTls, testCertsDir } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const tmp = useTempDir('kv-disaster-')

interface ArchiveStatus {
  archivedLsn: number
  lagEntries: number
  lagSeconds: number
  broken: boolean
}

async function archiveOf(cluster: TestCluster, id: string): Promise<ArchiveStatus> {
  const res = await fetch(`${cluster.member(id).url}/v1/status`)
  const status = (await res.json()) as { archive?: ArchiveStatus }
  if (status.archive === undefined)
    throw new Error(`${id} reports no archive: ${JSON.stringify(status)}`)
  return status.archive
}

/** Waits until the archive on `id` holds every entry up to `lsn`. */
async function archivedThrough(cluster: TestCluster, id: string, lsn: number): Promise<void> {
  await until(
    `the archive on ${id} to reach LSN ${lsn}`,
    async () => ((await archiveOf(cluster, id).catch(() => null))?.archivedLsn ?? 0) >= lsn,
    30_000,
    100,
  )
}

/** Quorum writers over `prefix`; every acknowledged write with its LSN and the time it was acked. */
function startLoad(client: KvClient, prefix: string, writers: number) {
  const acked: { key: string; value: string; lsn: number; ackedAtMs: number }[] = []
  let stop = false
  const run = async (w: number) => {
    for (let i = 0; !stop; i++) {
      const key = `${prefix}${w}-${i % 50}`
      const value = `w${w}-${i}`
      try {
        const res = await client.put(key, value, { ack: 'quorum' })
        acked.push({ key, value, lsn: res.lsn, ackedAtMs: Date.now() })
      } catch {
        await new Promise((r) => setTimeout(r, 20))
      }
    }
  }
  const running = Array.from({ length: writers }, (_, w) => run(w))
  return {
    acked,
    async stop() {
      stop = true
      await Promise.all(running)
    },
  }
}

/** Restores every member n1..n3 of a new cluster from `archive` into `parent`/nX. */
async function restoreCluster(
  archive: string,
  parent: string,
  target: RestoreTarget,
): Promise<RestoreResult> {
  const clusterId = (await readFile(join(testCertsDir(), 'cluster-id'), 'utf8')).trim()
  await mkdir(parent, { recursive: true })
  let first: RestoreResult | null = null
  for (const id of ['n1', 'n2', 'n3']) {
    const result = (await restore({
      from: archive,
      target,
      dataDir: join(parent, id),
      nodeId: id,
      clusterId,
    })) as RestoreResult
    if (first !== null) expect(result.digest.digest).toBe(first.digest.digest)
    first ??= result
  }
  return first as RestoreResult
}

/** The last acknowledged value of every key written before `lsn`. */
function lastBefore(
  acked: { key: string; value: string; lsn: number }[],
  lsn: number,
): Map<string, string> {
  const out = new Map<string, { value: string; lsn: number }>()
  for (const a of acked) {
    if (a.lsn > lsn) continue
    const seen = out.get(a.key)
    if (seen === undefined || seen.lsn < a.lsn) out.set(a.key, { value: a.value, lsn: a.lsn })
  }
  return new Map([...out].map(([k, v]) => [k, v.value]))
}

describe('disaster recovery from a base backup and the log archive', () => {
  it('restores a new cluster to the moment before a bad delete, by time and by LSN', async () => {
    const archive = join(tmp(), 'archive-1')
    const cluster = await TestCluster.start(3, [], { dir: join(tmp(), 'c1') })
    const client = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
    try {
      // The archiver runs on a follower, as an operator would put it.
      const archiver = cluster.followers[0]?.id as string
      await cluster.stopMember(archiver)
      await cluster.startMember(archiver, ['--archive-dir', archive, '--archive-segment-ms', '200'])
      await cluster.waitForLeader(30_000, { connected: true })

      // A known dataset, written under load.
      const load = startLoad(client, 'users/', 4)
      for (let i = 0; i < 200; i++) await client.put(`catalog/${i}`, `item-${i}`, { ack: 'quorum' })
      await new Promise((r) => setTimeout(r, 1500))
      await load.stop()

      // T: the digest and the LSN, with the cluster quiet.
      const leader = cluster.leader.id
      const atT = await cluster.digest(leader)
      await cluster.waitForApplied(atT.appliedLsn)
      await new Promise((r) => setTimeout(r, 20))
      const timeT = Date.now()
      await new Promise((r) => setTimeout(r, 20))

      // The disaster: every users/ key deleted, other keys overwritten.
      let cursor: string | null = null
      do {
        const page = await client.list({
          prefix: 'users/',
          limit: 500,
          ...(cursor !== null ? { cursor } : {}),
        })
        for (const item of page.items) await client.delete(item.key, { ack: 'quorum' })
        cursor = page.nextCursor
      } while (cursor !== null)
      for (let i = 0; i < 200; i += 2)
        await client.put(`catalog/${i}`, 'OVERWRITTEN', { ack: 'quorum' })
      const end = await cluster.digest(leader)
      expect(end.digest).not.toBe(atT.digest)
      await archivedThrough(cluster, archiver, end.appliedLsn)

      // Restore to T by time: the digest recorded at T, and every write acknowledged before it.
      const byTime = await restoreCluster(archive, join(tmp(), 'r-time'), {
        kind: 'time',
        timeMs: timeT,
      })
      expect(byTime.lsn).toBe(atT.appliedLsn)
      expect(byTime.digest.digest).toBe(atT.digest)
      const byLsn = await restoreCluster(archive, join(tmp(), 'r-lsn'), {
        kind: 'lsn',
        lsn: atT.appliedLsn,
      })
      expect(byLsn.digest.digest).toBe(atT.digest)
      await client.close()
      await cluster.stop()

      // The restored cluster runs, serves the data of T, and takes writes.
      const restored = await TestCluster.start(3, [], { dir: join(tmp(), 'r-time') })
      const restoredClient = new KvClient({ ...rootTls(), url: restored.members.map((m) => m.url) })
      try {
        const digest = await restored.digest(restored.leader.id)
        expect(digest.digest).toBe(atT.digest)
        const expected = lastBefore(load.acked, atT.appliedLsn)
        expect(expected.size).toBeGreaterThan(50)
        for (const [key, value] of expected) {
          expect((await restoredClient.get(key))?.value.toString(), key).toBe(value)
        }
        expect((await restoredClient.get('catalog/0'))?.value.toString()).toBe('item-0')
        await restoredClient.put('after-restore', 'yes', { ack: 'all' })
        await restored.waitForApplied()
      } finally {
        await restoredClient.close()
        await restored.stop()
      }
    } finally {
      await client.close().catch(() => {})
      await cluster.stop()
    }
  })

  it('archives through a leader killed -9 under load; a restore to the last LSN equals the cluster', async () => {
    const archive = join(tmp(), 'archive-2')
    const cluster = await TestCluster.start(3, [], { dir: join(tmp(), 'c2') })
    const client = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
    try {
      const archiver = cluster.followers[0]?.id as string
      await cluster.stopMember(archiver)
      await cluster.startMember(archiver, ['--archive-dir', archive, '--archive-segment-ms', '200'])
      const first = await cluster.waitForLeader(30_000, { connected: true })
      const load = startLoad(client, 'users/', 4)
      await new Promise((r) => setTimeout(r, 1000))
      // The leader dies while the archive runs; the archiver (a follower) follows the new one.
      await cluster.kill(first.id)
      const second = await cluster.waitForLeader(30_000)
      expect(second.id).not.toBe(first.id)
      await new Promise((r) => setTimeout(r, 1000))
      await load.stop()
      await cluster.startMember(first.id)
      await cluster.waitForLeader(30_000, { connected: true })
      const end = await cluster.digest(cluster.leader.id)
      await cluster.waitForApplied(end.appliedLsn)
      await archivedThrough(cluster, archiver, end.appliedLsn)
      const status = await archiveOf(cluster, archiver)
      expect(status.broken).toBe(false)

      const result = await restoreCluster(archive, join(tmp(), 'r-2'), {
        kind: 'lsn',
        lsn: end.appliedLsn,
      })
      expect(result.digest.digest).toBe(end.digest)
      // Every write acknowledged (quorum) is in the restore.
      const expected = lastBefore(load.acked, end.appliedLsn)
      expect(expected.size).toBeGreaterThan(20)
      expect(load.acked.every((a) => a.lsn <= end.appliedLsn)).toBe(true)
    } finally {
      await client.close()
      await cluster.stop()
    }
  })
})
