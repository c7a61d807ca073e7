/**
 * Restore: builds the data directory of a new cluster member from a base backup and, with an
 * archive, the committed log entries after it, up to a target (an LSN, a moment, or as far as
 * the archive goes).
 *
 * Everything a restore needs is checked before anything is written: the backup's manifest,
 * every file's checksum and the digest of its records, and every archive segment on the way
 * to the target (its checksum, its entries, no gap). The directory is then built under a
 * temporary name beside the target and renamed into place only once it is complete, so a
 * restore that fails leaves nothing behind, and the target never holds half a restore.
 *
 * The result is a new cluster's data: its cluster id is the one given, its epochs start over
 * at 1 with no vote, its log is empty and starts after the LSN reached. LSNs (and so record
 * versions, the keys' ETags) keep their values. A log entry is a whole write (a batch is one
 * entry), so a target LSN never cuts a batch in half.
 */
import { rename, rm, rmdir, stat } from 'node:fs/promises'
import { ClassicLevel } from 'classic-level'
import { basename, dirname, join } from 'node:path'
import { KvError, type BackupManifest, type LogEntry } from '@kvstore/protocol'
import {
  BackupChecker,
  checkBackupFiles,
  readBackupRecords,
  readManifest,
  verifyBackup,
} from './backup.js'
import {
  type BaseInfo,
  type SegmentInfo,
  archiveDirs,
  chainSegments,
  listBases,
  listSegments,
  readSegment,
} from './archive.js'
import { exists, hasEntries, syncDir } from './files.js'
import { Store } from './store.js'
import type { StateDigest, StoreLogger } from './types.js'

export type RestoreTarget =
  | { kind: 'backup' }
  | { kind: 'lsn'; lsn: number }
  | { kind: 'time'; timeMs: number }
  | { kind: 'latest' }

export interface RestoreOptions {
  /** A backup directory, or an archive (then its newest base backup before the target). */
  from: string
  /** The log archive to replay from (default: `from`, when it is an archive). */
  archive?: string
  target: RestoreTarget
  dataDir: string
  nodeId: string
  clusterId: string
  /** Check everything and report what would be reached, without writing. */
  dryRun?: boolean
  logger?: StoreLogger
}

export interface RestorePlan {
  base: { dir: string; lsn: number; timeMs: number; nodeId: string; clusterId: string }
  /** The LSN and time the restore reaches. */
  lsn: number
  timeMs: number
  entries: number
  segments: number
}

export interface RestoreResult extends RestorePlan {
  dataDir: string
  clusterId: string
  epoch: number
  digest: StateDigest
  durationMs: number
}

/** Epoch a restored cluster starts at; its first election raises it. */
export const restoredEpoch = 1

/** Chunk of entries appended at a time while replaying. */
const replayChunkEntries = 1000

function targetError(message: string, details: Record<string, number> = {}): KvError {
  return new KvError('KV_ERR_RESTORE_TARGET', message, details)
}

function gapError(fromLsn: number, toLsn: number, hint: string): KvError {
  return new KvError(
    'KV_ERR_ARCHIVE_GAP',
    `the archive lacks entries ${fromLsn} to ${toLsn}${hint}; nothing was restored`,
    { fromLsn, toLsn },
  )
}

/** Refuses a data directory that holds anything, naming a running node's lock when one is held. */
async function checkDataDir(dataDir: string): Promise<void> {
  if (!(await hasEntries(dataDir))) {
    if ((await exists(dataDir)) && !(await stat(dataDir)).isDirectory()) {
      throw new KvError('KV_ERR_DATA_DIR_IN_USE', `${dataDir} exists and is not a directory`)
    }
    return
  }
  if (await exists(join(dataDir, 'LOCK'))) {
    // LevelDB holds a lock on LOCK while a node has the directory open.
    const db = new ClassicLevel(dataDir, { createIfMissing: false })
    try {
      await db.open()
    } catch (err) {
      if ((err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED') {
        throw new KvError(
          'KV_ERR_DATA_DIR_IN_USE',
          `${dataDir} is the data directory of a running node (its lock is held); a restore only builds a new data directory`,
          { dir: dataDir },
        )
      }
    } finally {
      await db.close().catch(() => {})
    }
  }
  throw new KvError(
    'KV_ERR_DATA_DIR_IN_USE',
    `${dataDir} already holds data; a restore only builds a new data directory (choose an empty or new one)`,
    { dir: dataDir },
  )
}

function baseTimeMs(manifest: BackupManifest): number {
  return manifest.lsnTimeMs > 0 ? manifest.lsnTimeMs : manifest.takenAtMs
}

/** Picks the base backup: `from` itself, or the newest in an archive that fits the target. */
async function resolveBase(
  from: string,
  target: RestoreTarget,
): Promise<{ base: BaseInfo; archive: string | null }> {
  if (await exists(join(from, 'manifest.json'))) {
    const manifest = await readManifest(from)
    return { base: { dir: from, lsn: manifest.lsn, manifest }, archive: null }
  }
  if (!(await exists(join(from, archiveDirs.base)))) {
    throw new KvError(
      'KV_ERR_BACKUP_CORRUPT',
      `${from} is neither a backup (no manifest.json) nor an archive (no base/)`,
      { file: 'manifest.json' },
    )
  }
  const bases = await listBases(from)
  const fits = bases.filter((b) =>
    target.kind === 'lsn'
      ? b.lsn <= target.lsn
      : target.kind === 'time'
        ? baseTimeMs(b.manifest) <= target.timeMs
        : true,
  )
  const base = fits[fits.length - 1]
  if (base === undefined) {
    throw targetError(
      bases.length === 0
        ? `the archive ${from} holds no base backup`
        : `the archive's oldest base backup (LSN ${bases[0]?.lsn}) is past the target`,
    )
  }
  return { base, archive: from }
}

/**
 * Works out and checks everything a restore would do: the base backup (its manifest and its
 * files; with `verifyBase`, every record and the digest too), the segments to the target
 * (each read and checked) and the LSN and time reached.
 */
export async function planRestore(
  options: RestoreOptions,
  verifyBase = true,
): Promise<{
  plan: RestorePlan
  base: BaseInfo
  archive: string | null
  chain: SegmentInfo[]
}> {
  const { target } = options
  const resolved = await resolveBase(options.from, target)
  const base = resolved.base
  // A restore checks the records as it loads them into a directory nobody sees yet (one read
  // instead of two); a dry run reads them here.
  if (verifyBase) await verifyBackup(base.dir)
  else await checkBackupFiles(base.dir, base.manifest)
  const archive = options.archive ?? resolved.archive
  const manifest = base.manifest
  const plan: RestorePlan = {
    base: {
      dir: base.dir,
      lsn: base.lsn,
      timeMs: baseTimeMs(manifest),
      nodeId: manifest.nodeId,
      clusterId: manifest.clusterId,
    },
    lsn: base.lsn,
    timeMs: baseTimeMs(manifest),
    entries: 0,
    segments: 0,
  }
  if (target.kind === 'backup') return { plan, base, archive, chain: [] }
  if (archive === null) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      'a restore to an LSN, a time or the latest entry needs the log archive (--archive DIR)',
    )
  }
  if (target.kind === 'lsn' && target.lsn < base.lsn) {
    throw targetError(`LSN ${target.lsn} is before the backup's LSN ${base.lsn}`, {
      lsn: target.lsn,
      backupLsn: base.lsn,
    })
  }
  if (target.kind === 'time' && target.timeMs < plan.base.timeMs) {
    throw targetError(
      `${new Date(target.timeMs).toISOString()} is before the backup (${new Date(plan.base.timeMs).toISOString()}); use an older base backup`,
    )
  }
  const segments = await listSegments(archive)
  const wanted = target.kind === 'lsn' ? target.lsn : Infinity
  const { chain, reachedLsn } = chainSegments(segments, base.lsn + 1, wanted)
  if (target.kind === 'lsn' && reachedLsn < target.lsn) {
    const next = segments.find((s) => s.fromLsn > reachedLsn + 1)
    throw gapError(
      reachedLsn + 1,
      next !== undefined ? Math.min(next.fromLsn - 1, target.lsn) : target.lsn,
      next === undefined ? ' (the archive ends there)' : '',
    )
  }
  // Read every segment on the way: a corrupt one is found now, before anything is written.
  let lsn = base.lsn
  let timeMs = plan.base.timeMs
  let stopped = false
  const used: SegmentInfo[] = []
  for (const info of chain) {
    const entries = await readSegment(archive, info)
    let usedAny = false
    for (const entry of entries) {
      if (entry.lsn <= base.lsn) continue
      if (target.kind === 'lsn' && entry.lsn > target.lsn) break
      if (target.kind === 'time' && entry.timestampMs > target.timeMs) {
        stopped = true
        break
      }
      lsn = entry.lsn
      timeMs = entry.timestampMs
      usedAny = true
    }
    if (usedAny) used.push(info)
    if (stopped) break
  }
  if (target.kind === 'time' && !stopped) {
    const next = segments.find((s) => s.fromLsn > lsn)
    if (next !== undefined) {
      throw gapError(lsn + 1, next.fromLsn - 1, ` before ${new Date(target.timeMs).toISOString()}`)
    }
    throw targetError(
      `the archive ends at LSN ${lsn} (${new Date(timeMs).toISOString()}), before ${new Date(target.timeMs).toISOString()}; writes after it may be missing. Use --latest to restore everything archived, or --to-lsn ${lsn}`,
      { archivedLsn: lsn },
    )
  }
  if (target.kind === 'latest') {
    // "As far as the archive goes" never stops at a hole with more archived after it.
    const next = segments.find((s) => s.fromLsn > lsn + 1)
    if (next !== undefined) {
      throw gapError(
        lsn + 1,
        next.fromLsn - 1,
        ` (entries after it are archived; a restore to the latest must not stop short of them: restore --to-lsn ${lsn}, or from a base backup taken after the gap)`,
      )
    }
  }
  plan.lsn = lsn
  plan.timeMs = timeMs
  plan.entries = lsn - base.lsn
  plan.segments = used.length
  return { plan, base, archive, chain: used }
}

/**
 * Restores into `options.dataDir` (see the top of this file). With `dryRun`, checks everything
 * and returns the plan without writing.
 */
export async function restore(options: RestoreOptions): Promise<RestoreResult | RestorePlan> {
  const started = Date.now()
  await checkDataDir(options.dataDir)
  const dryRun = options.dryRun === true
  const { plan, base, archive, chain } = await planRestore(options, dryRun)
  if (dryRun) return plan

  const tmp = join(
    dirname(options.dataDir),
    `.${basename(options.dataDir)}.restoring-${process.pid}`,
  )
  await rm(tmp, { recursive: true, force: true })
  let store: Store | null = null
  try {
    store = await Store.open({
      dir: tmp,
      nodeId: options.nodeId,
      clusterId: options.clusterId,
      fsync: false,
      ...(options.logger ? { logger: options.logger } : {}),
    })
    // The base backup, as a follower installs a snapshot.
    await store.setHardState({ epoch: base.manifest.epoch })
    await store.beginSnapshotInstall(base.lsn, base.manifest.epoch)
    // Every record is checked as it is loaded: a bad one fails the restore, whose directory
    // is then removed (nobody has seen it).
    const checker = new BackupChecker(base.manifest)
    for await (const page of readBackupRecords(base.dir, base.manifest, 'state')) {
      checker.state(page)
      for (let i = 0; i < page.length; i += replayChunkEntries) {
        await store.addSnapshotRecords(page.slice(i, i + replayChunkEntries))
      }
    }
    for await (const page of readBackupRecords(base.dir, base.manifest, 'requests')) {
      checker.requestIds(page)
      const requests = page.map(({ key, record }) => ({ id: key.toString('utf8'), record }))
      for (let i = 0; i < requests.length; i += replayChunkEntries) {
        await store.addSnapshotRequests(requests.slice(i, i + replayChunkEntries))
      }
    }
    checker.finish()
    await store.endSnapshotInstall()
    // The archived entries, in order, each applied as the original write was.
    for (const info of chain) {
      const entries = await readSegment(archive as string, info)
      const wanted = entries.filter((e) => e.lsn > base.lsn && e.lsn <= plan.lsn)
      for (let i = 0; i < wanted.length; i += replayChunkEntries) {
        const chunk: LogEntry[] = wanted.slice(i, i + replayChunkEntries)
        const last = chunk[chunk.length - 1] as LogEntry
        if (last.epoch > store.meta.epoch) await store.setHardState({ epoch: last.epoch })
        await store.append(chunk, { commitLsn: last.lsn })
      }
    }
    if (store.appliedLsn !== plan.lsn) {
      throw new Error(`restore reached LSN ${store.appliedLsn}, not the planned ${plan.lsn}`)
    }
    // A new cluster: its log starts after what was restored, its epochs start over.
    await store.compactLog(plan.lsn + 1)
    await store.compactionSettled()
    await store.resetEpochsForRestore(restoredEpoch)
    // Read back from LevelDB: with nothing replayed, it must be the backup's digest.
    const digest = await store.digest()
    if (plan.entries === 0 && digest.digest !== base.manifest.digest) {
      throw new KvError(
        'KV_ERR_BACKUP_CORRUPT',
        `the restored state's digest ${digest.digest} is not the backup's ${base.manifest.digest}`,
        { file: 'manifest.json' },
      )
    }
    await store.close()
    store = null
    if (await exists(options.dataDir)) await rmdir(options.dataDir)
    await rename(tmp, options.dataDir)
    await syncDir(dirname(options.dataDir))
    return {
      ...plan,
      dataDir: options.dataDir,
      clusterId: options.clusterId,
      epoch: restoredEpoch,
      digest,
      durationMs: Date.now() - started,
    }
  } catch (err) {
    if (store !== null) await store.close().catch(() => {})
    await rm(tmp, { recursive: true, force: true })
    throw err
  }
}

/** The LSN span an archive covers from its newest base backup, for status reports. */
export async function describeArchive(dir: string): Promise<{
  bases: { lsn: number; timeMs: number; dir: string }[]
  segments: number
  fromLsn: number
  toLsn: number
}> {
  const bases = await listBases(dir)
  const segments = await listSegments(dir)
  const oldest = bases[0]
  const { reachedLsn } = chainSegments(segments, (oldest?.lsn ?? 0) + 1, Infinity)
  return {
    bases: bases.map((b) => ({ lsn: b.lsn, timeMs: baseTimeMs(b.manifest), dir: b.dir })),
    segments: segments.length,
    fromLsn: oldest?.lsn ?? 0,
    toLsn: reachedLsn,
  }
}
