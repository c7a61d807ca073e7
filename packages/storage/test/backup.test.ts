/**
 * Backups, the log archive and restore, on real LevelDB directories: a backup round-trips and
 * verifies; every kind of damage is found with its code before anything is restored; and a
 * restore to any LSN equals replaying the log to that LSN (a property over random histories
 * with batches and deletes).
 */
import { readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { KvError, encodeLogEntry, type LogEntry, type Op } from '@kvstore/protocol'
import {
  Store,
  archiveDirs,
  baseDirName,
  listSegments,
  openArchiveDir,
  pruneArchive,
  restore,
  verifyBackup,
  writeBackup,
  writeSegment,
  type RestoreResult,
  type RestoreTarget,
} from '../src/index.js'
import { del, entry, openStore, prngFor, put, useTempDir } from './helpers.js'

const temp = useTempDir()

async function backupOf(store: Store, dir: string): Promise<void> {
  const snapshot = await store.openSnapshot()
  try {
    await writeBackup(
      dir,
      snapshot,
      {
        clusterId: 'c1',
        nodeId: 'n1',
        mode: 'single-leader',
        role: 'leader',
        lsnTimeMs: 1_700_000_000_000 + snapshot.appliedLsn,
        takenAtMs: Date.now(),
      },
      { fileBytesMax: 512 },
    )
  } finally {
    await snapshot.close()
  }
}

/** A random history: puts, deletes, and batches of both, over a small key space. */
function randomHistory(seed: number, length: number, firstLsn = 1): LogEntry[] {
  const draw = prngFor(seed)
  const out: LogEntry[] = []
  for (let i = 0; i < length; i++) {
    const lsn = firstLsn + i
    const ops: Op[] = []
    const n = draw() < 0.25 ? 2 + Math.floor(draw() * 4) : 1
    const used = new Set<string>()
    for (let j = 0; j < n; j++) {
      const key = `users/${Math.floor(draw() * 20)}`
      if (used.has(key)) continue
      used.add(key)
      ops.push(
        draw() < 0.2 ? del(key) : put(key, `v${lsn}.${j}.${'x'.repeat(Math.floor(draw() * 50))}`),
      )
    }
    const e = entry(lsn, ops, 1 + Math.floor(i / 40))
    // Request ids travel with the state: some entries carry one.
    if (draw() < 0.3) e.requestId = `req-${seed}-${lsn}`
    out.push(e)
  }
  return out
}

async function appendAll(store: Store, entries: LogEntry[]): Promise<void> {
  for (const e of entries) {
    if (e.epoch > store.meta.epoch) await store.setHardState({ epoch: e.epoch })
    await store.append([e], { commitLsn: e.lsn })
  }
}

/** Archives entries into segments of random sizes. */
async function archiveEntries(dir: string, entries: LogEntry[], seed: number): Promise<void> {
  const draw = prngFor(seed ^ 0x5eed)
  for (let i = 0; i < entries.length;) {
    const size = 1 + Math.floor(draw() * 7)
    const chunk = entries.slice(i, i + size)
    await writeSegment(
      dir,
      chunk.map((e) => ({ lsn: e.lsn, timestampMs: e.timestampMs, data: encodeLogEntry(e) })),
    )
    i += size
  }
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<KvError> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  )
  expect(err, String(err)).toBeInstanceOf(KvError)
  expect((err as KvError).code, (err as Error).message).toBe(code)
  return err as KvError
}

describe('backup', () => {
  it('round-trips a state with its request ids and verifies offline', async () => {
    const store = await openStore(join(temp.dir, 'src'))
    const history = randomHistory(7, 200)
    await appendAll(store, history)
    const expected = await store.digest()
    const dir = join(temp.dir, 'backup')
    await backupOf(store, dir)
    const check = await verifyBackup(dir)
    expect(check.digest).toBe(expected.digest)
    expect(check.keys).toBe(expected.keys)
    expect(check.manifest.lsn).toBe(200)
    expect(check.requests).toBe(history.filter((e) => e.requestId !== '').length)
    // Small files: the state is split across several.
    expect(check.manifest.files.filter((f) => f.kind === 'state').length).toBeGreaterThan(1)
    for (const name of await readdir(dir)) {
      expect((await stat(join(dir, name))).mode & 0o077).toBe(0)
    }
    expect((await stat(dir)).mode & 0o077).toBe(0)

    const restored = (await restore({
      from: dir,
      target: { kind: 'backup' },
      dataDir: join(temp.dir, 'restored'),
      nodeId: 'n1',
      clusterId: 'c2',
    })) as RestoreResult
    expect(restored.digest.digest).toBe(expected.digest)
    const opened = await Store.open({
      dir: join(temp.dir, 'restored'),
      nodeId: 'n1',
      clusterId: 'c2',
    })
    expect(opened.meta).toMatchObject({
      clusterId: 'c2',
      epoch: 1,
      lastEpoch: 1,
      appliedLsn: 200,
      commitLsn: 200,
      logStartLsn: 201,
      vote: '',
    })
    const withId = history.find((e) => e.requestId !== '') as LogEntry
    expect(opened.getRequest(withId.requestId)?.lsn).toBe(withId.lsn)
    await opened.close()
    await store.close()
  })

  it('refuses a damaged backup with KV_ERR_BACKUP_CORRUPT and restores nothing', async () => {
    const store = await openStore(join(temp.dir, 'src'))
    await appendAll(store, randomHistory(3, 100))
    const dir = join(temp.dir, 'backup')
    await backupOf(store, dir)
    await store.close()
    const manifestPath = join(dir, 'manifest.json')
    const manifestText = await readFile(manifestPath, 'utf8')
    const stateFile = join(dir, 'state-000001.kvb')
    const original = await readFile(stateFile)
    const dataDir = join(temp.dir, 'restored')
    const attempt = () =>
      restore({ from: dir, target: { kind: 'backup' }, dataDir, nodeId: 'n1', clusterId: 'c2' })

    // A flipped byte in a state file.
    const flipped = Buffer.from(original)
    const mid = Math.floor(flipped.length / 2)
    flipped[mid] = (flipped[mid] as number) ^ 0x40
    await writeFile(stateFile, flipped)
    const err = await expectCode(attempt(), 'KV_ERR_BACKUP_CORRUPT')
    expect(err.details.file).toBe('state-000001.kvb')
    await expectCode(verifyBackup(dir), 'KV_ERR_BACKUP_CORRUPT')
    await writeFile(stateFile, original)

    // A missing file.
    await rm(stateFile)
    await expectCode(attempt(), 'KV_ERR_BACKUP_CORRUPT')
    await writeFile(stateFile, original)

    // A truncated manifest.
    await writeFile(manifestPath, manifestText.slice(0, manifestText.length / 2))
    await expectCode(attempt(), 'KV_ERR_BACKUP_CORRUPT')
    // An edited manifest (a digest that is not the state's) fails its own checksum.
    await writeFile(manifestPath, manifestText.replace(/"keys": \d+/, '"keys": 1'))
    await expectCode(attempt(), 'KV_ERR_BACKUP_CORRUPT')
    await writeFile(manifestPath, manifestText)

    await expect(stat(dataDir)).rejects.toThrow(/ENOENT/)
    expect((await readdir(temp.dir)).filter((n) => n.includes('restoring'))).toEqual([])
    await verifyBackup(dir)
  })

  it('refuses to restore into a directory with data, or one a running node holds', async () => {
    const store = await openStore(join(temp.dir, 'src'))
    await appendAll(store, randomHistory(5, 20))
    const dir = join(temp.dir, 'backup')
    await backupOf(store, dir)
    // The running store's own directory: its LevelDB lock is held.
    const err = await expectCode(
      restore({
        from: dir,
        target: { kind: 'backup' },
        dataDir: join(temp.dir, 'src'),
        nodeId: 'n1',
        clusterId: 'c2',
      }),
      'KV_ERR_DATA_DIR_IN_USE',
    )
    expect(err.message).toMatch(/running node/)
    await store.close()
    await expectCode(
      restore({
        from: dir,
        target: { kind: 'backup' },
        dataDir: join(temp.dir, 'src'),
        nodeId: 'n1',
        clusterId: 'c2',
      }),
      'KV_ERR_DATA_DIR_IN_USE',
    )
  })
})

describe('archive and point-in-time restore', () => {
  /**
   * The property: for random histories (batches, deletes, epochs changing), a base backup at
   * a random LSN b plus the archive restores to every LSN t in [b, end] exactly the state of
   * replaying the log from scratch to t.
   */
  it('restores to every LSN exactly as replaying the log to it', async () => {
    for (const seed of [1, 2, 3]) {
      const length = 60
      const history = randomHistory(seed, length)
      const baseLsn = 5 + Math.floor(prngFor(seed)() * 20)
      const source = await openStore(join(temp.dir, `src-${seed}`))
      await appendAll(source, history.slice(0, baseLsn))
      const archive = join(temp.dir, `archive-${seed}`)
      await openArchiveDir(archive, 'c1')
      await backupOf(source, join(archive, archiveDirs.base, baseDirName(baseLsn)))
      await appendAll(source, history.slice(baseLsn))
      // Segments overlap the base (from LSN 1), as an archiver that ran all along leaves them.
      await archiveEntries(archive, history, seed)
      await source.close()

      // The reference: the log replayed from scratch, one LSN at a time.
      const reference = await openStore(join(temp.dir, `ref-${seed}`))
      await appendAll(reference, history.slice(0, baseLsn))
      for (let t = baseLsn; t <= length; t++) {
        if (t > baseLsn) await appendAll(reference, [history[t - 1] as LogEntry])
        const expected = await reference.digest()
        const dataDir = join(temp.dir, `restored-${seed}-${t}`)
        const result = (await restore({
          from: archive,
          target: { kind: 'lsn', lsn: t },
          dataDir,
          nodeId: 'n2',
          clusterId: 'c2',
        })) as RestoreResult
        expect(result.lsn).toBe(t)
        expect(result.digest.digest, `seed ${seed}, lsn ${t}`).toBe(expected.digest)
        await rm(dataDir, { recursive: true })
      }
      await reference.close()
    }
  })

  it('restores to a moment: the last entry at or before it, never past it', async () => {
    const history = randomHistory(11, 50)
    const source = await openStore(join(temp.dir, 'src'))
    await appendAll(source, history.slice(0, 10))
    const archive = join(temp.dir, 'archive')
    await openArchiveDir(archive, 'c1')
    await backupOf(source, join(archive, archiveDirs.base, baseDirName(10)))
    await appendAll(source, history.slice(10))
    await archiveEntries(archive, history.slice(10), 11)
    await source.close()
    const at = (history[29] as LogEntry).timestampMs
    const result = (await restore({
      from: archive,
      target: { kind: 'time', timeMs: at },
      dataDir: join(temp.dir, 'restored'),
      nodeId: 'n1',
      clusterId: 'c2',
    })) as RestoreResult
    expect(result.lsn).toBe(30)
    expect(result.timeMs).toBe(at)
    // Past the archive's end: refused, not silently cut short.
    await expectCode(
      restore({
        from: archive,
        target: { kind: 'time', timeMs: at + 1_000_000 },
        dataDir: join(temp.dir, 'r2'),
        nodeId: 'n1',
        clusterId: 'c2',
      }),
      'KV_ERR_RESTORE_TARGET',
    )
    // Before the backup.
    await expectCode(
      restore({
        from: join(archive, archiveDirs.base, baseDirName(10)),
        archive,
        target: { kind: 'lsn', lsn: 5 },
        dataDir: join(temp.dir, 'r3'),
        nodeId: 'n1',
        clusterId: 'c2',
      }),
      'KV_ERR_RESTORE_TARGET',
    )
    // --latest goes to the end.
    const latest = (await restore({
      from: archive,
      target: { kind: 'latest' },
      dataDir: join(temp.dir, 'r4'),
      nodeId: 'n1',
      clusterId: 'c2',
    })) as RestoreResult
    expect(latest.lsn).toBe(50)
  })

  it('finds a flipped byte, a truncated segment or a missing one before writing anything', async () => {
    const history = randomHistory(13, 40)
    const source = await openStore(join(temp.dir, 'src'))
    await appendAll(source, history.slice(0, 5))
    const archive = join(temp.dir, 'archive')
    await openArchiveDir(archive, 'c1')
    await backupOf(source, join(archive, archiveDirs.base, baseDirName(5)))
    await source.close()
    for (let from = 6; from <= 40; from += 5) {
      const chunk = history.slice(from - 1, from + 4)
      await writeSegment(
        archive,
        chunk.map((e) => ({ lsn: e.lsn, timestampMs: e.timestampMs, data: encodeLogEntry(e) })),
      )
    }
    const segments = await listSegments(archive)
    const victim = segments[3] as (typeof segments)[number]
    const path = join(archive, archiveDirs.segments, victim.file)
    const original = await readFile(path)
    const dataDir = join(temp.dir, 'restored')
    const attempt = (target: RestoreTarget = { kind: 'lsn', lsn: 40 }) =>
      restore({ from: archive, target, dataDir, nodeId: 'n1', clusterId: 'c2' })

    for (const at of [10, 50, 90, original.length - 3]) {
      const flipped = Buffer.from(original)
      flipped[at] = (flipped[at] as number) ^ 0x01
      await writeFile(path, flipped)
      const err = await expectCode(attempt(), 'KV_ERR_ARCHIVE_CORRUPT')
      expect(err.details).toMatchObject({ fromLsn: victim.fromLsn, toLsn: victim.toLsn })
    }
    await truncate(path, original.length - 10)
    await expectCode(attempt(), 'KV_ERR_ARCHIVE_CORRUPT')
    await rm(path)
    const gap = await expectCode(attempt(), 'KV_ERR_ARCHIVE_GAP')
    expect(gap.details).toMatchObject({ fromLsn: victim.fromLsn, toLsn: victim.toLsn })
    expect(gap.message).toContain(`${victim.fromLsn} to ${victim.toLsn}`)
    // --latest does not stop early silently either: more is archived past the gap.
    const latestGap = await expectCode(attempt({ kind: 'latest' }), 'KV_ERR_ARCHIVE_GAP')
    expect(latestGap.details).toMatchObject({ fromLsn: victim.fromLsn, toLsn: victim.toLsn })
    // --to-lsn just before the gap is reachable.
    const before = (await attempt({ kind: 'lsn', lsn: victim.fromLsn - 1 })) as RestoreResult
    expect(before.lsn).toBe(victim.fromLsn - 1)
    await rm(dataDir, { recursive: true, force: true })
    // Nothing was written by the failed attempts.
    await writeFile(path, original)
    const ok = (await attempt()) as RestoreResult
    expect(ok.lsn).toBe(40)
  })

  it('keeps the newest base backups and the segments they need', async () => {
    const history = randomHistory(17, 30)
    const source = await openStore(join(temp.dir, 'src'))
    const archive = join(temp.dir, 'archive')
    await openArchiveDir(archive, 'c1')
    for (const lsn of [10, 20, 30]) {
      await appendAll(source, history.slice(source.appliedLsn, lsn))
      await backupOf(source, join(archive, archiveDirs.base, baseDirName(lsn)))
    }
    await archiveEntries(archive, history, 17)
    await source.close()
    const before = await listSegments(archive)
    const removed = await pruneArchive(archive, 2)
    expect(removed.bases).toBe(1)
    const after = await listSegments(archive)
    expect(after.every((s) => s.toLsn > 20)).toBe(true)
    expect(before.length - after.length).toBe(removed.segments)
    // What is left still restores from the oldest kept base.
    const result = (await restore({
      from: archive,
      target: { kind: 'lsn', lsn: 25 },
      dataDir: join(temp.dir, 'restored'),
      nodeId: 'n1',
      clusterId: 'c2',
    })) as RestoreResult
    expect(result.base.lsn).toBe(20)
    expect(result.lsn).toBe(25)
  })

  it("refuses an archive of another cluster, or another member's", async () => {
    const archive = join(temp.dir, 'archive')
    await openArchiveDir(archive, 'c1')
    await expectCode(openArchiveDir(archive, 'c9'), 'KV_ERR_CLUSTER_MISMATCH')
    // The first member to archive into it claims it; another is refused, the same one is not.
    await openArchiveDir(archive, 'c1', 'n2')
    const err = await expectCode(openArchiveDir(archive, 'c1', 'n3'), 'KV_ERR_INVALID_ARGUMENT')
    expect(err.message).toMatch(/written by member n2/)
    await openArchiveDir(archive, 'c1', 'n2')
    // Its files are private: they hold the auth store's writes.
    expect((await stat(archive)).mode & 0o077).toBe(0)
    expect((await stat(join(archive, 'archive.json'))).mode & 0o077).toBe(0)
  })
})
