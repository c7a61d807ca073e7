/**
 * The archive-restore checker has teeth: it passes an archive that holds exactly the
 * committed log, and fails one that holds an entry the cluster does not have (what an
 * archiver that took uncommitted entries, later rolled back, would leave) or lacks a segment.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { EntryKind, OpType, encodeLogEntry, type LogEntry } from '@kvstore/protocol'
import {
  Store,
  archiveDirs,
  baseDirName,
  listSegments,
  openArchiveDir,
  writeBackup,
  writeSegment,
} from '@kvstore/storage'
import { checkArchiveRestore } from '../src/checkers/archive-restore.js'

let dir = ''
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-archive-check-'))
})
afterEach(async () => {
  await rm(dir, { recursive: true, force: true })
})

function put(lsn: number, value: string): LogEntry {
  return {
    epoch: 1,
    lsn,
    kind: EntryKind.Put,
    ops: [{ type: OpType.Put, key: Buffer.from(`k${lsn % 7}`), value: Buffer.from(value) }],
    timestampMs: 1_700_000_000_000 + lsn,
    requestId: '',
    requestFingerprint: Buffer.alloc(0),
  }
}

/** A cluster's final state (40 entries), an archive with a base at 10 and segments of 5. */
async function setUp(tamper?: (entries: LogEntry[]) => LogEntry[]) {
  const store = await Store.open({ dir: join(dir, 'node'), nodeId: 'n1' })
  await store.setHardState({ epoch: 1 })
  const archive = join(dir, 'archive')
  await openArchiveDir(archive, 'c1')
  const entries = Array.from({ length: 40 }, (_, i) => put(i + 1, `v${i + 1}`))
  for (const e of entries) {
    await store.append([e], { commitLsn: e.lsn })
    if (e.lsn === 10) {
      const snapshot = await store.openSnapshot()
      await writeBackup(join(archive, archiveDirs.base, baseDirName(10)), snapshot, {
        clusterId: 'c1',
        nodeId: 'n1',
        mode: 'single-leader',
        role: 'follower',
        lsnTimeMs: e.timestampMs,
        takenAtMs: Date.now(),
      })
      await snapshot.close()
    }
  }
  const archived = tamper ? tamper(entries) : entries
  for (let i = 10; i < 40; i += 5) {
    await writeSegment(
      archive,
      archived.slice(i, i + 5).map((e) => ({
        lsn: e.lsn,
        timestampMs: e.timestampMs,
        data: encodeLogEntry(e),
      })),
    )
  }
  const digest = await store.digest()
  await store.close()
  return { archive, digest }
}

describe('archive-restore checker', () => {
  it('passes an archive that holds the committed log', async () => {
    const { archive, digest } = await setUp()
    const verdict = await checkArchiveRestore({
      archiveDir: archive,
      node: 'n2',
      lsn: 40,
      digest: digest.digest,
    })
    expect(verdict.valid, verdict.summary).toBe(true)
  })

  it('fails an archive holding an entry the cluster never committed', async () => {
    const { archive, digest } = await setUp((entries) =>
      entries.map((e) => (e.lsn === 39 ? put(39, 'rolled-back') : e)),
    )
    const verdict = await checkArchiveRestore({
      archiveDir: archive,
      node: 'n2',
      lsn: 40,
      digest: digest.digest,
    })
    expect(verdict.valid).toBe(false)
    expect(verdict.summary).toMatch(/digest/)
  })

  it('fails an archive with a segment missing, naming the LSNs', async () => {
    const { archive, digest } = await setUp()
    const segments = await listSegments(archive)
    await rm(join(archive, archiveDirs.segments, (segments[2] as { file: string }).file))
    const verdict = await checkArchiveRestore({
      archiveDir: archive,
      node: 'n2',
      lsn: 40,
      digest: digest.digest,
    })
    expect(verdict.valid).toBe(false)
    expect(verdict.summary).toMatch(/KV_ERR_ARCHIVE_GAP.*21 to 25/)
  })
})
