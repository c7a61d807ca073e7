/**
 * Backups and the log archive on a real 3-node single-leader cluster (TLS, auth on), with the
 * archive on a follower:
 * - committed writes reach the archive in segments and its lag (RPO) stays small; a SIGSTOP of
 *   the archiving member lets the lag grow (the leader's GET /v1/cluster shows it, from the
 *   member's heartbeat answers) and after SIGCONT the archive catches up without a gap;
 * - POST /admin/v1/backups streams a backup that verifies, with the digest GET /v1/digest gives
 *   at the same LSN; a second one meanwhile gets KV_ERR_BACKUP_BUSY; a non-admin user gets 403;
 * - past archiveHoldEntriesMax, with the archive unable to write (its directories replaced by
 *   files: ENOTDIR), compaction goes on, kv_archive_broken turns 1 and breaks are counted;
 *   once the archive can write again it takes a new base backup and broken is 0 again.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { KvClient } from '@kvstore/client'
import { BackupFrameType, BackupStreamDecoder, type ArchiveStateView } from '@kvstore/protocol'
import {
  chainSegments,
  listBases,
  listSegments,
  verifyBackup,
  writeBackupDir,
  type BackupPiece,
} from '@kvstore/storage'
import { TestCluster, metric, until, type ClusterMember } from '@kvstore/testkit'
import { caPem, rootTls } from './support/certs.js'

let cluster: TestCluster
let admin: KvClient
let dir: string
let archiving: ClusterMember

async function status(member: ClusterMember): Promise<{
  commitLsn: number
  appliedLsn: number
  logStartLsn: number
  archive: ArchiveStateView | null
}> {
  return (await (await fetch(`${member.url}/v1/status`)).json()) as never
}

async function archiveOf(member: ClusterMember): Promise<ArchiveStateView> {
  const archive = (await status(member)).archive
  if (archive === null) throw new Error(`${member.id} keeps no archive`)
  return archive
}

async function putMany(n: number, prefix: string, value: () => Uint8Array | string = () => 'v') {
  for (let i = 0; i < n; i++) await admin.put(`${prefix}/${i}`, value())
}

/** Restarts `id` with a log archive in `archiveDir` and `extra` arguments. */
async function restartArchiving(id: string, archiveDir: string, extra: string[]): Promise<void> {
  await cluster.stopMember(id)
  await cluster.startMember(id, ['--archive-dir', archiveDir, ...extra])
  await cluster.waitForLeader(30_000, { connected: true })
  await until('the first base backup', async () => (await archiveOf(cluster.member(id))).bases >= 1)
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-archive-test-'))
  cluster = await TestCluster.start(3)
  admin = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
  archiving = cluster.followers[1] as ClusterMember
  await restartArchiving(archiving.id, join(dir, 'a1'), ['--archive-segment-ms', '200'])
}, 120_000)
afterAll(async () => {
  if (archiving) cluster.resume(archiving.id)
  await admin?.close()
  await cluster?.stop()
  await rm(dir, { recursive: true, force: true })
})

describe('the log archive on a follower', () => {
  it('takes committed writes in segments, and catches up after a SIGSTOP', async () => {
    await putMany(100, 'a')
    const commit = (await status(cluster.leader)).commitLsn
    await until('the archive to reach the commit LSN', async () => {
      return (await archiveOf(archiving)).archivedLsn >= commit
    })
    expect(await metric(archiving.url, 'kv_archive_lag_seconds')).toBeLessThan(2)
    expect(await metric(archiving.url, 'kv_archive_segments_total')).toBeGreaterThan(0)
    // The leader knows the follower's archive from its heartbeat answers.
    await until('the leader to see the archive', async () => {
      const view = (await (await fetch(`${cluster.leader.url}/v1/cluster`)).json()) as {
        members: { id: string; archivedLsn?: number }[]
      }
      return (view.members.find((m) => m.id === archiving.id)?.archivedLsn ?? 0) >= commit
    })

    cluster.pause(archiving.id)
    const writes = putMany(150, 'stopped')
    await new Promise((resolve) => setTimeout(resolve, 3000))
    await writes
    const view = (await (await fetch(`${cluster.leader.url}/v1/cluster`)).json()) as {
      members: { id: string; archivedLsn?: number; archiveLagEntries?: number }[]
    }
    const seen = view.members.find((m) => m.id === archiving.id)
    expect(seen?.archiveLagEntries).toBeGreaterThanOrEqual(150)
    cluster.resume(archiving.id)

    const after = (await status(cluster.leader)).commitLsn
    await until('the archive to catch up', async () => {
      return (await archiveOf(archiving)).archivedLsn >= after
    })
    const state = await archiveOf(archiving)
    expect(state.broken).toBe(false)
    expect(state.lagEntries).toBe(0)
    expect(state.lagSeconds).toBe(0)
    const bases = await listBases(join(dir, 'a1'))
    const base = bases[bases.length - 1]?.lsn ?? 0
    const { reachedLsn } = chainSegments(await listSegments(join(dir, 'a1')), base + 1, Infinity)
    expect(reachedLsn).toBeGreaterThanOrEqual(after)
    expect(await metric(archiving.url, 'kv_archive_broken')).toBe(0)
  })
})

async function piecesOf(body: AsyncIterable<Uint8Array>): Promise<BackupPiece[]> {
  const decoder = new BackupStreamDecoder()
  const pieces: BackupPiece[] = []
  for await (const chunk of body) {
    for (const frame of decoder.push(chunk)) {
      if (frame.type === BackupFrameType.Error) throw new Error(frame.data.toString('utf8'))
      pieces.push(
        frame.type === BackupFrameType.Data
          ? { name: frame.name, data: Buffer.from(frame.data) }
          : { name: frame.name, end: true },
      )
    }
  }
  return pieces
}

describe('POST /admin/v1/backups on a follower', () => {
  it('streams a backup with the digest of GET /v1/digest; one at a time; admins only', async () => {
    // Enough incompressible data that a backup outlasts the socket buffers.
    await putMany(160, 'big', () => randomBytes(64 * 1024))
    const follower = cluster.followers[0] as ClusterMember
    // The leader's last entry: every put above was acknowledged by a quorum, so it is
    // committed (the commit LSN /v1/status shows is the durable one, which may trail it).
    const commit = (await status(cluster.leader)).appliedLsn
    await cluster.waitForApplied(commit)

    const first = await fetch(`${follower.url}/admin/v1/backups`, { method: 'POST' })
    expect(first.status).toBe(200)
    expect(first.headers.get('content-type')).toBe('application/vnd.kvstore.backup')
    expect(first.headers.get('kv-backup-node')).toBe(follower.id)
    expect(first.headers.get('kv-backup-role')).toBe('follower')
    const lsn = Number(first.headers.get('kv-backup-lsn'))
    expect(lsn).toBe(commit)
    const busy = await fetch(`${follower.url}/admin/v1/backups`, { method: 'POST' })
    expect(busy.status).toBe(429)
    expect(((await busy.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_BACKUP_BUSY',
    )
    const pieces = await piecesOf(first.body as unknown as AsyncIterable<Uint8Array>)
    const out = join(dir, 'streamed')
    await writeBackupDir(
      out,
      (async function* () {
        yield* pieces
      })(),
    )
    const check = await verifyBackup(out)
    const digest = (await (await fetch(`${follower.url}/v1/digest`)).json()) as {
      appliedLsn: number
      digest: string
    }
    expect(digest.appliedLsn).toBe(lsn)
    expect(check.manifest.lsn).toBe(lsn)
    expect(check.digest).toBe(digest.digest)
    expect(check.manifest.role).toBe('follower')

    await admin.addRole('app')
    await admin.grantPermission('app', 'readwrite', 'app/')
    await admin.addUser('alice', { password: 'alice-password', roles: ['app'] })
    const anonymous = new Agent({ connect: { ca: caPem() } })
    try {
      const login = await request(`${cluster.leader.url}/v1/auth/token`, {
        method: 'POST',
        dispatcher: anonymous,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user: 'alice', password: 'alice-password' }),
      })
      const { token } = (await login.body.json()) as { token: string }
      const denied = await request(`${follower.url}/admin/v1/backups`, {
        method: 'POST',
        dispatcher: anonymous,
        headers: { authorization: `Bearer ${token}` },
      })
      expect(denied.statusCode).toBe(403)
      expect(((await denied.body.json()) as { error: { code: string } }).error.code).toBe(
        'KV_ERR_PERMISSION_DENIED',
      )
    } finally {
      await anonymous.close()
    }
  })
})

describe('a paced backup (maxBytesPerS, kv backup create --max-rate)', () => {
  it('takes at least its bytes over the pace, and refuses a pace below the floor', async () => {
    const follower = cluster.followers[0] as ClusterMember
    const started = Date.now()
    const to = join(dir, 'paced')
    // The state holds about 10 MB of incompressible values (the test above wrote them).
    const result = await admin.backup({ to, from: follower.id, maxBytesPerS: 4 * 1024 * 1024 })
    const elapsedMs = Date.now() - started
    expect(result.bytes).toBeGreaterThan(8 * 1024 * 1024)
    // A lower bound only: pacing makes it at least this slow, however fast the machine is.
    expect(elapsedMs).toBeGreaterThanOrEqual(
      ((result.bytes - 4 * 1024 * 1024) / (4 * 1024 * 1024)) * 1000,
    )
    expect((await verifyBackup(to)).digest).toBe(result.manifest.digest)
    const tooSlow = await fetch(`${follower.url}/admin/v1/backups`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ maxBytesPerS: 1000 }),
    })
    expect(tooSlow.status).toBe(400)
    expect(((await tooSlow.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_ARGUMENT',
    )
  })
})

describe('the compaction hold limit', () => {
  it('lets compaction break an archive that cannot write, which repairs itself later', async () => {
    const archiveDir = join(dir, 'a2')
    await restartArchiving(archiving.id, archiveDir, [
      '--archive-segment-ms',
      '100',
      '--archive-hold-entries-max',
      '50',
      '--log-retention-entries',
      '10',
    ])
    // The archive's directories become files: every write fails with ENOTDIR.
    for (const sub of ['segments', 'base']) {
      await rename(join(archiveDir, sub), join(archiveDir, `${sub}.away`))
      await writeFile(join(archiveDir, sub), 'not a directory')
    }
    await putMany(200, 'held')
    const commit = (await status(cluster.leader)).commitLsn
    await cluster.waitForApplied(commit)
    const compact = await fetch(`${archiving.url}/admin/v1/compact`, { method: 'POST' })
    expect(compact.status).toBe(200)
    const { logStartLsn } = (await compact.json()) as { logStartLsn: number }
    const stuck = await archiveOf(archiving)
    // The archive was more than 50 entries behind: compaction did not wait for it.
    expect(logStartLsn).toBeGreaterThan(stuck.archivedLsn + 1)
    await until('the archive to break', async () => {
      return (await metric(archiving.url, 'kv_archive_broken')) === 1
    })
    expect(await metric(archiving.url, 'kv_archive_breaks_total')).toBe(1)
    expect(await metric(archiving.url, 'kv_archive_errors_total')).toBeGreaterThan(0)
    expect((await archiveOf(archiving)).lastError).toMatch(/ENOTDIR|not a directory/)
    // Writes never waited for the archive.
    await putMany(20, 'meanwhile')

    for (const sub of ['segments', 'base']) {
      await rm(join(archiveDir, sub))
      await rename(join(archiveDir, `${sub}.away`), join(archiveDir, sub))
    }
    await until('a new base backup to repair the archive', async () => {
      const state = await archiveOf(archiving)
      return !state.broken && state.bases === 2
    })
    expect(await metric(archiving.url, 'kv_archive_broken')).toBe(0)
    expect(await metric(archiving.url, 'kv_archive_breaks_total')).toBe(1)
    const after = (await status(cluster.leader)).commitLsn
    await until('the repaired archive to catch up', async () => {
      return (await archiveOf(archiving)).archivedLsn >= after
    })
  })
})
