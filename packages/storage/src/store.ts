/**
 * The storage engine: one LevelDB database holding the write-ahead log, the applied state and
 * the node's metadata (see layout.ts).
 *
 * Writes go through one writer. Concurrent appends queue up while the previous batch is on its
 * way to disk, then share the next LevelDB batch and its single fsync (group commit). A log
 * append, its effect on the state and the metadata that follows from it are one atomic batch,
 * so after a crash the log and the state always agree and no half of a batch is visible.
 *
 * Entries above the commit LSN also store an undo record (the prior image of every key they
 * touched), so that `truncateAfter` can remove uncommitted entries and restore the state
 * exactly. Entries that are committed when written (a single node) need none.
 *
 * `Store` is the public face; the work is done by single-purpose modules that share one
 * `StoreContext` (context.ts):
 *   writer.ts + apply.ts  the write path: group commit, and one batch's effects
 *   reads.ts              reads of the state; log.ts reads and compacts the log
 *   truncate.ts           truncation and the rollback record
 *   snapshot.ts           consistent views of the state, and snapshot install
 *   recovery.ts           opening and checking a data directory
 *   meta.ts, digest.ts, verify.ts, limits.ts
 */
import { ClassicLevel } from 'classic-level'
import {
  decodeRequestRecord,
  decodeUndoRecord,
  isEpoch,
  limitsDefault,
  membershipKeyBytes,
  type LogEntry,
  type RequestRecord,
  type StoredRecord,
} from '@kvstore/protocol'
import { StoreContext } from './context.js'
import { digestSnapshot } from './digest.js'
import { type BatchOp, type Db, firstKey, putMeta } from './disk.js'
import { StorageError, invariant } from './invariant.js'
import {
  MetaName,
  Prefix,
  encodeU64,
  lsnOfKey,
  prefixRange,
  requestIdOfTimeKey,
  requestKey,
  requestTimeKey,
  stateKey,
  undoKey,
} from './layout.js'
import { storageLimits } from './limits.js'
import {
  asEntry,
  asRawEntry,
  compact,
  deleteCompacted,
  logReadLimitsDefault,
  readLog,
} from './log.js'
import { listPage, readRecord } from './reads.js'
import {
  listCommitted,
  readCommitted,
  type CommittedPage,
  type CommittedRead,
} from './committed.js'
import { LocalRecords } from './local-records.js'
import { encodeEpochRuns } from './meta.js'
import { recover } from './recovery.js'
import type { RecordCache } from './record-cache.js'
import {
  addInstallRecords,
  addInstallRequests,
  beginInstall,
  finishInstall,
  openSnapshot,
  type SnapshotOptions,
} from './snapshot.js'
import { discardRollbacks, readRollbacks, truncate } from './truncate.js'
import type {
  EncodedEntries,
  HardStateUpdate,
  ListItem,
  ListOptions,
  LogChange,
  LogReadLimits,
  RawLogEntry,
  RollbackRecord,
  StateDigest,
  StateSnapshot,
  StoreOptions,
  StoreState,
} from './types.js'
import { verifyCache, verifyDirectory } from './verify.js'
import { Writer, checkPositiveInteger, encodeEntries } from './writer.js'

/**
 * The storage engine. Open it with `Store.open`; every method is safe to call concurrently,
 * and writes are applied in the order they were called.
 */
export class Store {
  readonly dir: string
  /** Exact copy of recently used state records; see record-cache.ts. */
  readonly cache: RecordCache
  private readonly ctx: StoreContext
  private readonly writer: Writer
  /** This member's own records, outside the replicated data (local-records.ts). */
  readonly local: LocalRecords
  /** Deletion of compacted log entries, chained; see compactLog. */
  private deleting: Promise<void> = Promise.resolve()

  private constructor(ctx: StoreContext, options: StoreOptions) {
    this.ctx = ctx
    this.dir = options.dir
    this.cache = ctx.cache
    // The writer first: when the store fails, its queue is refused before the owner hears.
    this.writer = new Writer(ctx, options)
    this.local = new LocalRecords(ctx, this.writer.fsync)
    const onFatal = options.onFatal
    if (onFatal) ctx.onFailure(onFatal)
    checkPositiveInteger('rollbackEntriesMax', ctx.rollbackEntriesMax, Number.MAX_SAFE_INTEGER)
  }

  /**
   * Opens (or creates) a data directory and recovers it: checks that the metadata, the log
   * and the state agree, and finishes a log compaction that a crash interrupted.
   */
  static async open(options: StoreOptions): Promise<Store> {
    checkPositiveInteger(
      'groupCommitWritesMax',
      options.groupCommitWritesMax ?? limitsDefault.groupCommitWritesMax,
      Number.MAX_SAFE_INTEGER,
    )
    checkPositiveInteger(
      'groupCommitBytesMax',
      options.groupCommitBytesMax ?? limitsDefault.groupCommitBytesMax,
      Number.MAX_SAFE_INTEGER,
    )
    if (options.nodeId.length === 0) throw new StorageError('nodeId must not be empty')
    const db = await openDb(options)
    try {
      const state = await recover(db, options)
      const store = new Store(new StoreContext(db, options, state), options)
      const firstRollback = await firstKey(db, prefixRange(Prefix.Rollback))
      const lastRollback = await firstKey(db, prefixRange(Prefix.Rollback), true)
      if (firstRollback !== undefined && lastRollback !== undefined) {
        store.ctx.rollbackFirst = lsnOfKey(firstRollback)
        store.ctx.rollbackNext = lsnOfKey(lastRollback) + 1
      }
      store.ctx.logger.info(
        {
          dir: options.dir,
          appliedLsn: state.appliedLsn,
          commitLsn: state.commitLsn,
          logStartLsn: state.logStartLsn,
          epoch: state.epoch,
        },
        'storage opened',
      )
      return store
    } catch (err) {
      await db.close().catch(() => {})
      throw err
    }
  }

  // ---------------------------------------------------------------- state of the store

  get fsync(): boolean {
    return this.writer.fsync
  }

  get groupCommitWritesMax(): number {
    return this.writer.groupCommitWritesMax
  }

  get groupCommitBytesMax(): number {
    return this.writer.groupCommitBytesMax
  }

  get writeQueueWritesMax(): number {
    return this.writer.writeQueueWritesMax
  }

  get writeQueueBytesMax(): number {
    return this.writer.writeQueueBytesMax
  }

  /** The durable metadata, as of the last completed batch. */
  get meta(): Readonly<StoreState> {
    return this.ctx.state
  }

  get appliedLsn(): number {
    return this.ctx.state.appliedLsn
  }

  get commitLsn(): number {
    return this.ctx.state.commitLsn
  }

  /** Writes waiting for the writer, and their bytes. */
  get queueDepth(): { writes: number; bytes: number } {
    return this.writer.queueDepth
  }

  /** The failure that stopped the store, or null while it is healthy. */
  get failed(): Error | null {
    return this.ctx.failure
  }

  get isClosing(): boolean {
    return this.ctx.closing
  }

  /** True while a snapshot is being installed. */
  get isInstallingSnapshot(): boolean {
    return this.ctx.installing !== null
  }

  /** How many truncations removed entries since the store was opened. */
  get truncations(): number {
    return this.ctx.truncationCount
  }

  /** Entries moved to the rollback record since the store was opened. */
  get rolledBack(): number {
    return this.ctx.rolledBackCount
  }

  /** Rollback records held now. */
  get rollbackCount(): number {
    return this.ctx.rollbackNext - this.ctx.rollbackFirst
  }

  /**
   * Rollback records after sequence number `afterSeq`, oldest first, at most `limit`: the
   * entries truncations removed because a new leader never had them (unconfirmed writes).
   */
  rollbacks(afterSeq: number, limit: number): Promise<RollbackRecord[]> {
    return readRollbacks(this.ctx, afterSeq, limit)
  }

  /** Deletes rollback records up to and including `throughSeq` (once reconciled). */
  discardRollbacks(throughSeq: number): Promise<number> {
    return discardRollbacks(this.ctx, throughSeq)
  }

  /**
   * Calls `listener` synchronously whenever keys of the reserved space (U+0000 first: the
   * auth store) change in the state: with those keys after a batch (their records are in the
   * read cache already, so `getSync` sees them), or with 'all' after a truncation or a
   * snapshot install, which may change any of them.
   */
  watchReserved(listener: (keys: Buffer[] | 'all') => void): void {
    this.ctx.watchReserved(listener)
  }

  /**
   * Calls `listener` synchronously after every change of the log: appends (with the commit
   * LSN after them), truncations, compactions and snapshot installs (see `LogChange`). Watch
   * streams follow the committed log with it.
   */
  watchLog(listener: (change: LogChange) => void): void {
    this.ctx.watchLog(listener)
  }

  // ---------------------------------------------------------------- reads

  /**
   * Reads a key's record synchronously from LevelDB (memtable, block cache, then disk). Sees
   * every batch that has completed. Returns null when the key has no record.
   */
  getSync(key: Uint8Array): StoredRecord | null {
    this.ctx.assertReadable()
    return this.ctx.readRecordSync(key)
  }

  /**
   * The record `key` had just before the entry at `lsn`, from that entry's undo record (kept
   * for entries above the commit LSN): null when the key did not exist then; undefined when
   * the entry has no undo record or did not change the key.
   */
  async priorRecord(lsn: number, key: Uint8Array): Promise<StoredRecord | null | undefined> {
    this.ctx.assertReadable()
    const bytes = await this.ctx.db.get(undoKey(lsn))
    if (bytes === undefined) return undefined
    const wanted = Buffer.from(key.buffer, key.byteOffset, key.length)
    const image = decodeUndoRecord(bytes).images.find((i) => i.key.equals(wanted))
    return image === undefined ? undefined : image.prior
  }

  /** The key's record if the read cache holds it, else undefined (then use `get`). */
  getCached(key: Uint8Array): StoredRecord | undefined {
    this.ctx.assertReadable()
    return this.ctx.cache.get(
      Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1'),
      false,
    )
  }

  /**
   * Reads a key's record: from the cache, or else from LevelDB in libuv's thread pool.
   * Returns null when the key has no record.
   */
  get(key: Uint8Array): Promise<StoredRecord | null> {
    return readRecord(this.ctx, key)
  }

  /** One page of keys in key order, from a single consistent LevelDB iterator. */
  list(options: ListOptions): Promise<{ items: ListItem[]; more: boolean }> {
    return listPage(this.ctx, options)
  }

  /**
   * The key's record as of the commit LSN (never a write that could still be rolled back),
   * without waiting: uncommitted entries are undone from their undo records (committed.ts).
   * `knownCommitLsn` is a commit LSN the caller knows (the replication core's), which may run
   * ahead of the stored one by a metadata write; the read shows the later of the two.
   */
  getCommitted(key: Uint8Array, knownCommitLsn?: number): Promise<CommittedRead> {
    return readCommitted(this.ctx, key, knownCommitLsn)
  }

  /** One page of keys as of the commit LSN, from one consistent LevelDB snapshot. */
  listCommitted(options: ListOptions, knownCommitLsn?: number): Promise<CommittedPage> {
    return listCommitted(this.ctx, options, knownCommitLsn)
  }

  /**
   * Reads log entries from `fromLsn` on, stopping at `limits.entriesMax` entries or once
   * `limits.bytesMax` bytes are read (at least one entry is returned if any exists). Each is
   * decoded once, which validates it. With `{ raw: true }` it returns each entry's stored bytes
   * with its LSN and epoch instead (what a leader ships, without encoding it again).
   */
  readLog(fromLsn: number, limits?: LogReadLimits, options?: { raw?: false }): Promise<LogEntry[]>
  readLog(fromLsn: number, limits: LogReadLimits, options: { raw: true }): Promise<RawLogEntry[]>
  readLog(
    fromLsn: number,
    limits: LogReadLimits = logReadLimitsDefault,
    options: { raw?: boolean } = {},
  ): Promise<LogEntry[] | RawLogEntry[]> {
    return options.raw === true
      ? readLog(this.ctx, fromLsn, limits, asRawEntry)
      : readLog(this.ctx, fromLsn, limits, asEntry)
  }

  /**
   * Opens a consistent view of the state. Its LSN and records come from one LevelDB snapshot,
   * so writes that land afterwards are invisible to it.
   */
  openSnapshot(options?: SnapshotOptions): Promise<StateSnapshot> {
    return openSnapshot(this.ctx, options)
  }

  /** Hashes the whole applied state at one consistent LSN (the format is in digest.ts). */
  async digest(): Promise<StateDigest> {
    const snapshot = await this.openSnapshot()
    try {
      return await digestSnapshot(snapshot)
    } finally {
      await snapshot.close()
    }
  }

  /** The entry that applied a client request id, if it is still remembered. */
  getRequest(requestId: string): RequestRecord | null {
    this.ctx.assertOpen()
    const bytes = this.ctx.db.getSync(requestKey(requestId))
    if (bytes === undefined) return null
    try {
      return decodeRequestRecord(bytes)
    } catch (err) {
      throw this.ctx.corrupt(`corrupt request record: ${(err as Error).message}`, err)
    }
  }

  /**
   * Forgets request ids whose entries are older than `cutoffMs` (at most `max` per call).
   * Each replica does this on its own: the records are not part of the state digest.
   */
  expireRequests(
    cutoffMs: number,
    max: number = storageLimits.requestExpiryEntriesMaxDefault,
  ): Promise<number> {
    const db = this.ctx.db
    return this.writer.exclusive(async () => {
      const keys = await db
        .keys({
          gte: prefixRange(Prefix.RequestByTime).gte,
          lt: requestTimeKey(cutoffMs, ''),
          limit: max,
        })
        .all()
      if (keys.length === 0) return 0
      const ops: BatchOp[] = []
      for (const key of keys) {
        ops.push({ type: 'del', key }, { type: 'del', key: requestKey(requestIdOfTimeKey(key)) })
      }
      await db.batch(ops)
      return keys.length
    })
  }

  // ---------------------------------------------------------------- snapshot install

  /**
   * Starts replacing the whole state with a snapshot taken at `lsn` (a follower too far
   * behind the leader's log). Crash-safe: a marker is made durable first, and a node that
   * restarts with it discards the partial state and starts over as an empty follower.
   */
  beginSnapshotInstall(lsn: number, epoch: number): Promise<void> {
    return this.writer.exclusive(() => beginInstall(this.ctx, lsn, epoch))
  }

  /** Writes one chunk of snapshot records, each validated before it is written. */
  addSnapshotRecords(records: { key: Uint8Array; record: Uint8Array }[]): Promise<void> {
    return this.writer.exclusive(() => addInstallRecords(this.ctx, records))
  }

  /** Writes the request ids of a snapshot, each record validated before it is written. */
  addSnapshotRequests(requests: { id: string; record: Uint8Array }[]): Promise<void> {
    return this.writer.exclusive(() => addInstallRequests(this.ctx, requests))
  }

  /**
   * Ends a snapshot install: the log now starts after the snapshot, and everything up to it
   * counts as applied and committed. Returns the digest of the installed state.
   */
  finishSnapshotInstall(): Promise<StateDigest> {
    return this.endSnapshotInstall().then(() => this.digest())
  }

  /** `finishSnapshotInstall` without the digest (a restore checks its records as it loads them). */
  endSnapshotInstall(): Promise<void> {
    return this.writer.exclusive(() => finishInstall(this.ctx))
  }

  // ---------------------------------------------------------------- writes

  /**
   * Throws the error an append of `bytes` would be refused with right now (storage failed,
   * closing, or the write queue full), so a caller can refuse a write before giving it an LSN.
   */
  admit(bytes: number): void {
    this.writer.admit(bytes)
  }

  /**
   * Appends entries to the log and applies them to the state in one atomic batch, shared with
   * any other appends queued meanwhile. Entries must continue the log without a gap. With
   * `commitLsn`, the commit LSN advances in the same batch. Resolves once the batch is durable
   * (fsynced, unless fsync is off).
   */
  append(entries: LogEntry[], options: { commitLsn?: number } = {}): Promise<void> {
    if (entries.length === 0) return Promise.resolve()
    return this.writer.append(encodeEntries(entries), options.commitLsn)
  }

  /** Like `append`, for entries already encoded with `encodeEntries` (and admitted). */
  appendEncoded(batch: EncodedEntries, options: { commitLsn?: number } = {}): Promise<void> {
    return this.writer.append(batch, options.commitLsn)
  }

  /**
   * Persists epoch, vote and commit LSN changes, in order with appends. The epoch never goes
   * down and the commit LSN never goes down nor passes the applied LSN.
   */
  setHardState(update: HardStateUpdate): Promise<void> {
    return this.writer.setHardState(update)
  }

  /**
   * Removes every log entry after `lsn` and restores the state those entries changed, in one
   * atomic batch. Refuses (InvariantError) to cut at or below the commit LSN's entries.
   * Returns the removed entries, oldest first, so they can be kept for reconciliation.
   */
  truncateAfter(lsn: number): Promise<LogEntry[]> {
    return this.writer.exclusive(() => truncate(this.ctx, lsn))
  }

  /**
   * Compacts the log: entries below `retainFromLsn` (only committed ones may go) are gone for
   * every reader once this resolves, with the new log start durable. Their deletion from disk
   * follows in the background (see `compactionSettled`); a crash midway leaves a state that
   * recovery finishes.
   */
  async compactLog(retainFromLsn: number): Promise<void> {
    const oldStart = this.ctx.state.logStartLsn
    await this.writer.exclusive(() => compact(this.ctx, retainFromLsn))
    const end = this.ctx.state.logStartLsn
    if (end > oldStart) {
      this.deleting = this.deleting.then(() =>
        deleteCompacted(this.ctx, this.writer, oldStart, end),
      )
    }
  }

  /** Resolves once the entries of every compaction so far have been deleted from disk. */
  compactionSettled(): Promise<void> {
    return this.deleting
  }

  /**
   * For a restore only, on a data directory no node has opened yet: once the log is empty
   * (everything applied was compacted), starts the epochs over at `epoch` (a new cluster's
   * fencing tokens owe nothing to the old one's) with no vote.
   */
  resetEpochsForRestore(epoch: number): Promise<void> {
    return this.writer.exclusive(async () => {
      const ctx = this.ctx
      invariant(
        ctx.state.logStartLsn === ctx.state.appliedLsn + 1 &&
          ctx.state.commitLsn === ctx.state.appliedLsn,
        'epochs are reset only on an empty, fully committed log',
      )
      invariant(isEpoch(epoch) && epoch >= 1, () => `epoch ${epoch} is out of range`)
      await ctx.db.batch(
        [
          putMeta(MetaName.Epoch, encodeU64(epoch)),
          putMeta(MetaName.Vote, Buffer.alloc(0)),
          // The old cluster's configuration goes: the new cluster's is what its members'
          // --members say (as etcd's snapshot restore takes --initial-cluster), and its first
          // leader writes it to the log. (It is left out of the digest, which stays the same.)
          { type: 'del', key: stateKey(membershipKeyBytes) },
          putMeta(MetaName.LastEpoch, encodeU64(epoch)),
          putMeta(MetaName.CompactedEpoch, encodeU64(epoch)),
          putMeta(MetaName.EpochRuns, encodeEpochRuns([])),
        ],
        { sync: true },
      )
      ctx.state = {
        ...ctx.state,
        epoch,
        vote: '',
        lastEpoch: epoch,
        compactedEpoch: epoch,
        epochRuns: [],
      }
    })
  }

  /** Waits for every queued write, then closes LevelDB. New writes are refused meanwhile. */
  async close(): Promise<void> {
    const ctx = this.ctx
    if (ctx.closed) return
    ctx.closing = true
    await this.writer.whenIdle()
    await this.local.whenIdle()
    ctx.closed = true
    await ctx.db.close()
    ctx.logger.info({ appliedLsn: ctx.state.appliedLsn }, 'storage closed')
  }

  /** Resolves once no write is queued or in flight. */
  whenIdle(): Promise<void> {
    return this.writer.whenIdle()
  }

  // ---------------------------------------------------------------- checks

  /**
   * Checks the whole data directory: the log is contiguous from its start to the applied LSN,
   * every record decodes, undo records only exist for log entries, and, when the log still
   * starts at LSN 1, replaying it from scratch gives exactly the stored state.
   */
  async verify(): Promise<{ entries: number; keys: number; replayChecked: boolean }> {
    this.ctx.assertOpen()
    await this.writer.whenIdle()
    return verifyDirectory(this.ctx)
  }

  /**
   * Checks that every cached record equals the record in LevelDB. For tests: the cache must
   * never hold a stale record, whatever the interleaving of reads and writes.
   */
  async verifyCache(): Promise<number> {
    await this.writer.whenIdle()
    return verifyCache(this.ctx)
  }

  /** Decodes a stored record read from disk; a bad one is corruption, which stops the store. */
  decodeRecordFromDisk(bytes: Uint8Array, key: Uint8Array): StoredRecord {
    return this.ctx.decodeRecordFromDisk(bytes, key)
  }
}

/** Opens LevelDB, turning its errors into ones that name the directory. */
async function openDb(options: StoreOptions): Promise<Db> {
  const db: Db = new ClassicLevel<Buffer, Buffer>(options.dir, {
    keyEncoding: 'buffer',
    valueEncoding: 'buffer',
    createIfMissing: true,
    cacheSize: options.cacheBytes ?? storageLimits.levelCacheBytesDefault,
    writeBufferSize: options.writeBufferBytes ?? storageLimits.levelWriteBufferBytesDefault,
  })
  try {
    await db.open()
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause
    if (cause?.code === 'LEVEL_LOCKED') {
      throw new StorageError(
        `data directory ${options.dir} is in use by another process (LevelDB lock is held)`,
        { cause: err },
      )
    }
    throw new StorageError(`cannot open data directory ${options.dir}: ${(err as Error).message}`, {
      cause: err,
    })
  }
  return db
}
