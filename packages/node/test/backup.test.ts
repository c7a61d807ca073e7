/**
 * Backups and the log archive on a real node (standalone, real LevelDB, real HTTP): the
 * compaction hold as a pure function and in the node, the hold's limit breaking and repairing
 * the archive, segments and their lag, and POST /admin/v1/backups (stream and archive).
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BackupFrameType, BackupStreamDecoder, type ArchiveStateView } from '@kvstore/protocol'
import {
  listBases,
  listSegments,
  chainSegments,
  verifyBackup,
  writeBackupDir,
  type BackupPiece,
} from '@kvstore/storage'
import { until } from '@kvstore/testkit'
import { archiveRetainFrom } from '../src/backup/hold.js'
import { errorOf, startTestNode, type TestNode } from './helpers.js'

describe('archiveRetainFrom: how far compaction may go while the archive needs entries', () => {
  const hold = (archivedLsn: number | null, committedLsn: number, holdEntriesMax = 100) => ({
    archivedLsn,
    committedLsn,
    holdEntriesMax,
  })

  it('keeps the first entry the archive lacks', () => {
    expect(archiveRetainFrom(500, hold(120, 200))).toBe(121)
    expect(archiveRetainFrom(100, hold(120, 200))).toBe(100)
    expect(archiveRetainFrom(121, hold(120, 200))).toBe(121)
  })

  it('lets compaction go on once the archive is more than holdEntriesMax behind', () => {
    expect(archiveRetainFrom(500, hold(399, 499))).toBe(400)
    expect(archiveRetainFrom(500, hold(398, 499))).toBe(500)
    expect(archiveRetainFrom(500, hold(0, 499, 0))).toBe(500)
    expect(archiveRetainFrom(500, hold(499, 499, 0))).toBe(500)
  })

  it('holds nothing without an archive, or one that holds nothing now', () => {
    expect(archiveRetainFrom(500, null)).toBe(500)
    expect(archiveRetainFrom(500, hold(null, 499))).toBe(500)
  })
})

async function json<T>(url: string, init?: RequestInit): Promise<{ status: number; body: T }> {
  const res = await fetch(url, init)
  const text = await res.text()
  return { status: res.status, body: (text === '' ? null : JSON.parse(text)) as T }
}

async function archiveOf(node: TestNode): Promise<ArchiveStateView> {
  const { body } = await json<{ archive: ArchiveStateView | null }>(`${node.url}/v1/status`)
  if (body.archive === null) throw new Error('no archive in /v1/status')
  return body.archive
}

async function putMany(node: TestNode, n: number, prefix = 'k'): Promise<void> {
  for (let i = 0; i < n; i++) {
    const res = await fetch(`${node.url}/v1/kv/${prefix}/${i}`, { method: 'PUT', body: `v${i}` })
    expect(res.status).toBe(200)
    await res.arrayBuffer()
  }
}

async function logStart(node: TestNode): Promise<number> {
  return (await json<{ logStartLsn: number }>(`${node.url}/v1/status`)).body.logStartLsn
}

describe('the log archive of a node', () => {
  let dir: string
  let node: TestNode | null = null
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-archive-'))
  })
  afterEach(async () => {
    await node?.stop()
    node = null
    await rm(dir, { recursive: true, force: true })
  })

  it('holds log compaction back until the archive has the entries', async () => {
    // Segments only every minute: entries wait in the log, and compaction (retention 0) wants
    // them all gone.
    node = await startTestNode([
      '--archive-dir',
      dir,
      '--archive-segment-ms',
      '60000',
      '--log-retention-entries',
      '0',
    ])
    const n = node
    await until('the first base backup', async () => (await archiveOf(n)).bases === 1)
    const base = (await archiveOf(n)).archivedLsn
    await putMany(n, 40)
    const compact = await json<{ logStartLsn: number; appliedLsn: number }>(
      `${n.url}/admin/v1/compact`,
      { method: 'POST' },
    )
    expect(compact.status).toBe(200)
    // Without the hold, the log would start after the last entry.
    expect(compact.body.logStartLsn).toBe(base + 1)
    expect(compact.body.appliedLsn).toBeGreaterThanOrEqual(base + 40)
    await until(
      'the lag measured',
      async () => (await archiveOf(n)).lagEntries === compact.body.appliedLsn - base,
    )
    const state = await archiveOf(n)
    expect(state.broken).toBe(false)
    expect(state.archivedLsn).toBe(base)
    expect(state.lagSeconds).toBeGreaterThanOrEqual(0)
    expect(n.node.metrics.archive.breaks).toBe(0)
  })

  it('writes segments that continue the base backup, and catches up', async () => {
    node = await startTestNode([
      '--archive-dir',
      dir,
      '--archive-segment-ms',
      '50',
      '--archive-segment-entries-max',
      '7',
    ])
    const n = node
    await until('the first base backup', async () => (await archiveOf(n)).bases === 1)
    await putMany(n, 30)
    const applied = n.node.store.appliedLsn
    await until('the archive catches up', async () => (await archiveOf(n)).archivedLsn >= applied)
    const state = await archiveOf(n)
    expect(state.lagEntries).toBe(0)
    expect(state.lagSeconds).toBe(0)
    expect(state.lastSegmentAtMs).not.toBeNull()
    const [basesInfo] = await listBases(dir)
    const segments = await listSegments(dir)
    expect(segments.every((s) => s.toLsn - s.fromLsn + 1 <= 7)).toBe(true)
    const { reachedLsn } = chainSegments(segments, (basesInfo?.lsn ?? 0) + 1, Infinity)
    expect(reachedLsn).toBe(applied)
    expect(n.node.metrics.archive.segments).toBe(segments.length)
    const metrics = await (await fetch(`${n.url}/metrics`)).text()
    expect(metrics).toMatch(new RegExp(`^kv_archive_lsn ${applied}$`, 'm'))
    expect(metrics).toMatch(/^kv_archive_broken 0$/m)
  })

  it('lets compaction go past the hold limit, breaks, and repairs with a new base backup', async () => {
    node = await startTestNode([
      '--archive-dir',
      dir,
      '--archive-segment-ms',
      '60000',
      '--log-retention-entries',
      '0',
      '--archive-hold-entries-max',
      '10',
    ])
    const n = node
    await until('the first base backup', async () => (await archiveOf(n)).bases === 1)
    await putMany(n, 30)
    const compact = await json<{ logStartLsn: number; appliedLsn: number }>(
      `${n.url}/admin/v1/compact`,
      { method: 'POST' },
    )
    expect(compact.body.logStartLsn).toBe(compact.body.appliedLsn + 1)
    await until('a break and its repair', async () => {
      const state = await archiveOf(n)
      return n.node.metrics.archive.breaks === 1 && !state.broken && state.bases === 2
    })
    expect((await archiveOf(n)).archivedLsn).toBeGreaterThanOrEqual(compact.body.appliedLsn)
    expect(await logStart(n)).toBe(compact.body.appliedLsn + 1)
  })
})

/** Reads a backup stream into pieces (throws on an Error frame). */
async function piecesOf(res: Response): Promise<BackupPiece[]> {
  const decoder = new BackupStreamDecoder()
  const pieces: BackupPiece[] = []
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    for (const frame of decoder.push(chunk)) {
      if (frame.type === BackupFrameType.Error) throw new Error(frame.data.toString('utf8'))
      pieces.push(
        frame.type === BackupFrameType.Data
          ? { name: frame.name, data: Buffer.from(frame.data) }
          : { name: frame.name, end: true },
      )
    }
  }
  expect(decoder.buffered).toBe(0)
  return pieces
}

describe('POST /admin/v1/backups', () => {
  let dir: string
  let node: TestNode
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-backups-'))
    node = await startTestNode(['--archive-dir', join(dir, 'archive')])
    await putMany(node, 200, 'b')
    // Enough incompressible bytes that a backup outlasts the socket buffers of a client that
    // does not read.
    for (let i = 0; i < 160; i++) {
      const res = await fetch(`${node.url}/v1/kv/big/${i}`, {
        method: 'PUT',
        body: randomBytes(64 * 1024),
      })
      expect(res.status).toBe(200)
      await res.arrayBuffer()
    }
  })
  afterAll(async () => {
    await node.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('streams a backup that verifies, with the digest of GET /v1/digest', async () => {
    const digest = (await json<{ appliedLsn: number; digest: string }>(`${node.url}/v1/digest`))
      .body
    const res = await fetch(`${node.url}/admin/v1/backups`, { method: 'POST' })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('application/vnd.kvstore.backup')
    expect(Number(res.headers.get('kv-backup-lsn'))).toBe(digest.appliedLsn)
    expect(res.headers.get('kv-backup-node')).toBe('n1')
    expect(res.headers.get('kv-backup-role')).toBe('leader')
    const pieces = await piecesOf(res)
    expect(pieces[pieces.length - 1]).toEqual({ name: 'manifest.json', end: true })
    const out = join(dir, 'streamed')
    await writeBackupDir(
      out,
      (async function* () {
        yield* pieces
      })(),
    )
    const check = await verifyBackup(out)
    expect(check.digest).toBe(digest.digest)
    expect(check.manifest.lsn).toBe(digest.appliedLsn)
    expect(check.manifest.lsnTimeMs).toBeGreaterThan(0)
    expect(check.keys).toBe(360)
  })

  it('refuses a second backup while one is in flight, and frees the slot when a client leaves', async () => {
    const first = new AbortController()
    const res = await fetch(`${node.url}/admin/v1/backups`, {
      method: 'POST',
      signal: first.signal,
    })
    expect(res.status).toBe(200)
    const second = await fetch(`${node.url}/admin/v1/backups`, { method: 'POST', body: '{}' })
    expect(second.status).toBe(429)
    expect(errorOf(await second.text()).code).toBe('KV_ERR_BACKUP_BUSY')
    first.abort()
    await until('the slot to be free', () => node.node.context.backups.gate.busy === 0)
    const third = await fetch(`${node.url}/admin/v1/backups`, {
      method: 'POST',
      body: '{"target":"stream"}',
    })
    expect(third.status).toBe(200)
    await third.arrayBuffer()
  })

  it('takes a base backup into the archive on request', async () => {
    const res = await json<{ lsn: number; dir: string; files: number; digest: string }>(
      `${node.url}/admin/v1/backups`,
      { method: 'POST', body: '{"target":"archive"}' },
    )
    expect(res.status).toBe(200)
    expect(res.body.lsn).toBe(node.node.store.appliedLsn)
    const check = await verifyBackup(res.body.dir)
    expect(check.digest).toBe(res.body.digest)
    expect(check.files).toBe(res.body.files)
  })

  it('refuses bad bodies with coded errors', async () => {
    for (const body of ['{"target":"tape"}', '{"target":"stream","x":1}']) {
      const res = await fetch(`${node.url}/admin/v1/backups`, { method: 'POST', body })
      expect(res.status).toBe(400)
      expect(errorOf(await res.text()).code).toBe('KV_ERR_INVALID_ARGUMENT')
    }
    const res = await fetch(`${node.url}/admin/v1/backups`, { method: 'POST', body: 'nope' })
    expect(res.status).toBe(400)
    expect(errorOf(await res.text()).code).toBe('KV_ERR_MALFORMED_BODY')
    const get = await fetch(`${node.url}/admin/v1/backups`)
    expect(get.status).toBe(405)
    await get.arrayBuffer()
  })
})

describe('POST /admin/v1/backups without an archive', () => {
  it('refuses target archive', async () => {
    const node = await startTestNode()
    try {
      const res = await fetch(`${node.url}/admin/v1/backups`, {
        method: 'POST',
        body: '{"target":"archive"}',
      })
      expect(res.status).toBe(400)
      const error = errorOf(await res.text())
      expect(error.code).toBe('KV_ERR_INVALID_ARGUMENT')
      expect(error.message).toMatch(/--archive-dir/)
      const status = await json<{ archive: unknown }>(`${node.url}/v1/status`)
      expect(status.body.archive).toBeNull()
    } finally {
      await node.stop()
    }
  })
})
