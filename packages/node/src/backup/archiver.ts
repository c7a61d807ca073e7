/**
 * The log archive of one member (`--archive-dir`): base backups of its state, and every
 * committed log entry since, in segments, so that a restore can reach any LSN or moment after
 * the oldest base backup kept (the formats are in the storage package's archive.ts).
 *
 * A timer drives it. Each tick:
 * - takes a base backup when the archive has none, has broken, or `archiveBaseIntervalMs` has
 *   passed since the last one; then prunes to `archiveKeepBackups` base backups;
 * - finds the archive broken when the log no longer holds the first entry the archive lacks
 *   (compacted past it, or replaced by a snapshot install): counts it, logs it, raises
 *   kv_archive_broken, and repairs it with a new base backup;
 * - writes a segment of the committed entries not yet archived once `archiveSegmentMs` has
 *   passed since the last one, or `archiveSegmentEntriesMax` entries wait;
 * - computes the lag (entries, and the age of the oldest entry not archived: the RPO).
 *
 * Failures (disk full, permissions) are logged and counted, and retried on the next tick. The
 * archive never crashes the node and never makes a write wait: it only holds log compaction
 * back, up to `archiveHoldEntriesMax` entries (hold.ts).
 */
import { rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { KvError, decodeLogEntry } from '@kvstore/protocol'
import {
  archiveDirs,
  baseDirName,
  chainSegments,
  listBases,
  listSegments,
  openArchiveDir,
  pruneArchive,
  readManifest,
  writeBackup,
  writeSegment,
  type SegmentEntry,
  type Store,
} from '@kvstore/storage'
import type { BackupManifest } from '@kvstore/protocol'
import type { NodeConfig } from '../config.js'
import type { ArchiveFigures } from '../metrics.js'
import { archiveRetainFrom } from './hold.js'
import { openCommittedSnapshot, type BackupGate, type BackupSourceOptions } from './source.js'

/** What GET /v1/status and GET /v1/cluster show of the archive. */
export interface ArchiveState {
  dir: string
  archivedLsn: number
  lagEntries: number
  lagSeconds: number
  broken: boolean
  /** When the last segment was written (ms since the Unix epoch); null before the first. */
  lastSegmentAtMs: number | null
  /** Base backups in the archive. */
  bases: number
  lastError: string | null
}

/** A base backup just taken (POST /admin/v1/backups with target archive). */
export interface BaseBackupResult {
  lsn: number
  dir: string
  keys: number
  /** Bytes of the backup's files, the manifest included. */
  bytes: number
  files: number
  digest: string
  durationMs: number
}

export type ArchiverConfig = Pick<
  NodeConfig,
  | 'archiveSegmentMs'
  | 'archiveSegmentEntriesMax'
  | 'archiveSegmentBytesMax'
  | 'archiveHoldEntriesMax'
  | 'archiveKeepBackups'
  | 'archiveBaseIntervalMs'
>

export interface ArchiverOptions {
  dir: string
  store: Store
  config: ArchiverConfig
  /** How base backups are taken: the same committed snapshots as POST /admin/v1/backups. */
  source: BackupSourceOptions
  gate: BackupGate
  figures: ArchiveFigures
  logger: Logger
  now?: () => number
}

/** Longest pause between ticks, whatever archiveSegmentMs says (ms). */
const tickMsMax = 250

export class Archiver {
  readonly dir: string
  private readonly store: Store
  private readonly config: ArchiverConfig
  private readonly log: Logger
  private readonly figures: ArchiveFigures
  private readonly now: () => number
  private archivedLsn = 0
  /** False until the archive has a base backup (the first tick takes one). */
  private hasBase = false
  private broken = false
  /** The LSN of the base backup being taken: compaction keeps the entries after it. */
  private pendingBaseLsn: number | null = null
  private lastCutAtMs: number
  private lastSegmentAtMs: number | null = null
  private lastBaseAtMs = 0
  private bases = 0
  private lastError: string | null = null
  private lastErrorLogAtMs = 0
  /** The time of the entry at archivedLsn + 1 (the oldest one not archived), cached. */
  private oldest: { lsn: number; timestampMs: number } | null = null
  private timer: NodeJS.Timeout | null = null
  /** The tick or base backup in progress: one at a time. */
  private running: Promise<unknown> | null = null
  private stopped = false

  constructor(private readonly options: ArchiverOptions) {
    this.dir = options.dir
    this.store = options.store
    this.config = options.config
    this.log = options.logger.child({ archive: options.dir })
    this.figures = options.figures
    this.now = options.now ?? Date.now
    this.lastCutAtMs = this.now()
  }

  /**
   * Opens the archive (refusing another cluster's) and finds how far it reaches. The first
   * base backup, if one is needed, is left to the first tick: it must not delay the start.
   */
  async start(): Promise<void> {
    await openArchiveDir(this.dir, this.store.meta.clusterId, this.store.meta.nodeId)
    await this.scan()
    this.log.info(
      { archivedLsn: this.archivedLsn, bases: this.bases, hasBase: this.hasBase },
      this.hasBase ? 'log archive opened' : 'log archive opened; it has no base backup yet',
    )
    const every = Math.max(10, Math.min(this.config.archiveSegmentMs, tickMsMax))
    this.timer = setInterval(() => void this.tick(), every)
    this.timer.unref()
    void this.tick()
  }

  /** Stops the timer and waits for a tick in progress. */
  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearInterval(this.timer)
    this.timer = null
    await this.running?.catch(() => {})
  }

  /** Reads the archive: its newest base backup and the segments that follow it without a gap. */
  private async scan(): Promise<void> {
    const bases = await listBases(this.dir)
    this.bases = bases.length
    const newest = bases[bases.length - 1]
    if (newest === undefined) {
      this.hasBase = false
      return
    }
    this.hasBase = true
    this.lastBaseAtMs = newest.manifest.takenAtMs
    const { reachedLsn } = chainSegments(await listSegments(this.dir), newest.lsn + 1, Infinity)
    this.archivedLsn = reachedLsn
    this.figures.lsn = reachedLsn
  }

  /** This member's committed LSN: what the archive may take. */
  private committedLsn(): number {
    return Math.min(this.store.commitLsn, this.store.appliedLsn)
  }

  /** Where log compaction may go (see hold.ts). */
  hold(retainFrom: number): number {
    const archivedLsn =
      this.pendingBaseLsn ?? (this.hasBase && !this.broken ? this.archivedLsn : null)
    return archiveRetainFrom(retainFrom, {
      archivedLsn,
      committedLsn: this.committedLsn(),
      holdEntriesMax: this.config.archiveHoldEntriesMax,
    })
  }

  /** Runs one tick unless one (or a base backup) is running. */
  tick(): Promise<void> {
    if (this.stopped || this.running !== null) return Promise.resolve()
    const run = this.step()
      .catch((err: unknown) => this.failed(err))
      .finally(() => {
        this.running = null
      })
    this.running = run
    return run
  }

  /** A base backup now (POST /admin/v1/backups, target archive), after the tick in progress. */
  async baseBackupNow(): Promise<BaseBackupResult> {
    while (this.running !== null) await this.running.catch(() => {})
    if (this.stopped) throw new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down')
    const run = this.takeBase().finally(() => {
      this.running = null
    })
    this.running = run
    return run
  }

  private failed(err: unknown): void {
    // Another backup holds the slot: the next tick tries again.
    if (err instanceof KvError && err.code === 'KV_ERR_BACKUP_BUSY') return
    this.figures.errors++
    const message = (err as Error).message
    this.lastError = message
    // At most one line a second: a full disk must not flood the log.
    const now = this.now()
    if (now - this.lastErrorLogAtMs >= 1000) {
      this.lastErrorLogAtMs = now
      this.log.error(
        { err: message, code: (err as NodeJS.ErrnoException).code, archivedLsn: this.archivedLsn },
        'log archive write failed; retrying on the next tick',
      )
    }
  }

  private async step(): Promise<void> {
    if (this.hasBase && !this.broken && this.store.meta.logStartLsn > this.archivedLsn + 1) {
      this.broken = true
      this.figures.broken = 1
      this.figures.breaks++
      this.log.error(
        {
          archivedLsn: this.archivedLsn,
          logStartLsn: this.store.meta.logStartLsn,
          committedLsn: this.committedLsn(),
          archiveHoldEntriesMax: this.config.archiveHoldEntriesMax,
        },
        'the log archive is broken: the log no longer holds entries it has not archived (compacted past archiveHoldEntriesMax, or replaced by a snapshot); taking a new base backup',
      )
    }
    const interval = this.config.archiveBaseIntervalMs
    if (
      !this.hasBase ||
      this.broken ||
      (interval > 0 && this.now() - this.lastBaseAtMs >= interval)
    ) {
      await this.takeBase()
    }
    if (this.hasBase && !this.broken) await this.cutSegments()
    this.lastError = null
    await this.measure()
  }

  /** Writes segments while they are due; each one at most entries/bytes max. */
  private async cutSegments(): Promise<void> {
    const { archiveSegmentMs, archiveSegmentEntriesMax, archiveSegmentBytesMax } = this.config
    for (;;) {
      if (this.stopped) return
      const committed = this.committedLsn()
      const pending = committed - this.archivedLsn
      if (pending <= 0) {
        this.lastCutAtMs = this.now()
        return
      }
      if (this.now() - this.lastCutAtMs < archiveSegmentMs && pending < archiveSegmentEntriesMax) {
        return
      }
      const from = this.archivedLsn + 1
      if (from < this.store.meta.logStartLsn) return // broken: the next tick repairs it
      const raw = await this.store.readLog(
        from,
        {
          entriesMax: Math.min(pending, archiveSegmentEntriesMax),
          bytesMax: archiveSegmentBytesMax,
        },
        { raw: true },
      )
      if (raw.length === 0 || raw[0]?.lsn !== from) return
      const first = decodeLogEntry(raw[0].data)
      const last = decodeLogEntry((raw[raw.length - 1] as { data: Buffer }).data)
      // The header keeps the times of the first and last entries; those between need none.
      const entries: SegmentEntry[] = raw.map((e, i) => ({
        lsn: e.lsn,
        timestampMs: i === 0 ? first.timestampMs : i === raw.length - 1 ? last.timestampMs : 0,
        data: e.data,
      }))
      const info = await writeSegment(this.dir, entries)
      const size = (await stat(join(this.dir, archiveDirs.segments, info.file))).size
      this.archivedLsn = info.toLsn
      this.figures.lsn = info.toLsn
      this.figures.segments++
      this.figures.bytes += size
      this.lastCutAtMs = this.now()
      this.lastSegmentAtMs = this.lastCutAtMs
    }
  }

  /**
   * Takes a base backup into the archive now: a committed snapshot of this member, written to
   * base/<lsn>/, then retention. Holds compaction at its LSN while it is written.
   */
  private async takeBase(): Promise<BaseBackupResult> {
    const started = this.now()
    const release = this.options.gate.acquire()
    try {
      const { snapshot, origin } = await openCommittedSnapshot(this.options.source)
      const lsn = snapshot.appliedLsn
      this.pendingBaseLsn = lsn
      let manifest: BackupManifest
      const dir = join(this.dir, archiveDirs.base, baseDirName(lsn))
      try {
        manifest = await this.existingBase(dir, lsn)
          .then((m) => m ?? writeBackup(dir, snapshot, origin))
          .finally(() => snapshot.close())
      } finally {
        this.pendingBaseLsn = null
      }
      const bytes = manifest.files.reduce((sum, f) => sum + f.bytes, 0)
      const manifestBytes = (await stat(join(dir, 'manifest.json'))).size
      this.figures.baseBackups++
      this.figures.bytes += bytes + manifestBytes
      const repaired = this.broken
      // The chain goes on from the base backup (segments beyond it may already be there).
      const { reachedLsn } = chainSegments(await listSegments(this.dir), lsn + 1, Infinity)
      this.archivedLsn = Math.max(lsn, reachedLsn)
      this.figures.lsn = this.archivedLsn
      this.hasBase = true
      this.broken = false
      this.figures.broken = 0
      this.lastBaseAtMs = this.now()
      this.lastCutAtMs = this.now()
      this.oldest = null
      const pruned = await pruneArchive(this.dir, this.config.archiveKeepBackups)
      this.bases = (await listBases(this.dir)).length
      const durationMs = this.now() - started
      this.log.info(
        { lsn, keys: manifest.keys, bytes, durationMs, pruned, repaired },
        repaired ? 'base backup taken; the log archive is whole again' : 'base backup taken',
      )
      return {
        lsn,
        dir,
        keys: manifest.keys,
        bytes: bytes + manifestBytes,
        files: manifest.files.length + 1,
        digest: manifest.digest,
        durationMs,
      }
    } finally {
      release()
    }
  }

  /** The base backup already at `dir` (same LSN: the same state), or null; a partial one goes. */
  private async existingBase(dir: string, lsn: number): Promise<BackupManifest | null> {
    try {
      const manifest = await readManifest(dir)
      if (manifest.lsn === lsn) return manifest
    } catch (err) {
      if (!(err instanceof KvError) || err.code !== 'KV_ERR_BACKUP_CORRUPT') throw err
    }
    await rm(dir, { recursive: true, force: true })
    return null
  }

  /** The lag figures: entries not archived, and the age of the oldest of them. */
  private async measure(): Promise<void> {
    const committed = this.committedLsn()
    const lagEntries = this.hasBase ? Math.max(0, committed - this.archivedLsn) : committed
    this.figures.lagEntries = lagEntries
    if (lagEntries === 0) {
      this.figures.lagSeconds = 0
      return
    }
    const lsn = this.hasBase && !this.broken ? this.archivedLsn + 1 : this.store.meta.logStartLsn
    if (this.oldest?.lsn !== lsn) {
      this.oldest = null
      if (lsn >= this.store.meta.logStartLsn && lsn <= this.store.appliedLsn) {
        try {
          const [entry] = await this.store.readLog(lsn, { entriesMax: 1, bytesMax: Infinity })
          if (entry?.lsn === lsn) this.oldest = { lsn, timestampMs: entry.timestampMs }
        } catch {
          // compacted meanwhile: measured on the next tick
        }
      }
    }
    if (this.oldest !== null) {
      this.figures.lagSeconds = Math.max(0, (this.now() - this.oldest.timestampMs) / 1000)
    }
  }

  /** What GET /v1/status and GET /v1/cluster show. */
  state(): ArchiveState {
    return {
      dir: this.dir,
      archivedLsn: this.archivedLsn,
      lagEntries: this.figures.lagEntries,
      lagSeconds: this.figures.lagSeconds,
      broken: this.broken,
      lastSegmentAtMs: this.lastSegmentAtMs,
      bases: this.bases,
      lastError: this.lastError,
    }
  }

  /** The archived LSN this member reports to the leader (null before its first base backup). */
  get reportedLsn(): number | null {
    return this.hasBase ? this.archivedLsn : null
  }
}
