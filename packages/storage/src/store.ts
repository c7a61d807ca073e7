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
 */
import { createHash, randomUUID } from 'node:crypto'
import { ClassicLevel } from 'classic-level'
import {
  DecodeError,
  EntryKind,
  KvError,
  OpType,
  decodeLogEntry,
  decodeRequestRecord,
  decodeStoredRecord,
  decodeUndoRecord,
  encodeLogEntry,
  encodeRequestRecord,
  encodeStoredRecord,
  encodeUndoRecord,
  type RequestRecord,
  epochMax,
  isEpoch,
  isLsn,
  limitsDefault,
  lsnMax,
  type LogEntry,
  type StoredRecord,
  type UndoImage,
} from '@kvstore/protocol'
import { hashDigestRecord } from './digest.js'
import { InvariantError, StorageError, invariant } from './invariant.js'
import { RecordCache } from './record-cache.js'
import {
  MetaName,
  Prefix,
  decodeRollback,
  encodeRollback,
  rollbackKey,
  decodeU64,
  encodeU64,
  layoutFormat,
  logKey,
  lsnOfKey,
  metaKey,
  prefixRange,
  requestIdOfTimeKey,
  requestIdOfKey,
  requestKey,
  requestTimeKey,
  stateKey,
  stateRangeForPrefix,
  undoKey,
  userKeyOf,
} from './layout.js'

type Db = ClassicLevel<Buffer, Buffer>
type BatchOp = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer }
type ChainedBatch = ReturnType<Db['batch']>

/** A pino-compatible logger; the store logs rarely (open, compaction, failure). */
export interface StoreLogger {
  info(obj: object, msg: string): void
  warn(obj: object, msg: string): void
  error(obj: object, msg: string): void
}

const silentLogger: StoreLogger = { info() {}, warn() {}, error() {} }

export interface StoreOptions {
  /** Data directory; created if missing. */
  dir: string
  /** This node's id. A data directory created by another node id is refused. */
  nodeId: string
  /** Cluster id to record in a new data directory (random when omitted); checked when reopening. */
  clusterId?: string
  /** Fsync every batch before acknowledging it. Default true. */
  fsync?: boolean
  /** Most log entries per LevelDB batch; 1 turns group commit off. */
  groupCommitWritesMax?: number
  /** Most bytes of encoded entries per LevelDB batch. */
  groupCommitBytesMax?: number
  /** Most appends waiting for the writer before `KV_ERR_OVERLOADED`. */
  writeQueueWritesMax?: number
  /** Most bytes waiting for the writer before `KV_ERR_OVERLOADED`. */
  writeQueueBytesMax?: number
  /** LevelDB block cache size. Default 64 MiB. */
  cacheBytes?: number
  /** LevelDB memtable size. Default 16 MiB. */
  writeBufferBytes?: number
  /** Decoded records kept in memory for reads (LRU, write-through). 0 turns it off. Default 64 MiB. */
  readCacheBytes?: number
  /**
   * For tests only: awaited between an asynchronous LevelDB read and the cache fill that
   * follows it, so a test can make writes land inside that window deterministically.
   */
  readHook?: (key: Buffer) => Promise<void>
  logger?: StoreLogger
  /** Called after every batch reaches the disk, for metrics. */
  onBatch?: (stats: BatchStats) => void
  /**
   * Most rollback records kept (entries a truncation removed); the oldest go first. Default
   * 100 000.
   */
  rollbackEntriesMax?: number
  /**
   * Called once when the store fails (an I/O error or a broken invariant). From then on every
   * write is refused with `KV_ERR_STORAGE`; the node should stop and recover by restarting.
   */
  onFatal?: (err: Error) => void
}

/** What one group-committed batch carried. */
export interface BatchStats {
  /** Log entries in the batch. */
  entries: number
  /** Callers whose writes shared the batch. */
  writers: number
  /** Encoded bytes of the entries. */
  bytes: number
  /** Time from handing the batch to LevelDB until it was durable. */
  durationMs: number
}

/** The node's metadata as the store holds it, durable as of the last completed batch. */
export interface StoreState {
  nodeId: string
  clusterId: string
  epoch: number
  vote: string
  commitLsn: number
  appliedLsn: number
  lastEpoch: number
  logStartLsn: number
  compactedEpoch: number
  /** Where each epoch begins in the log, oldest first (entries from logStartLsn on). */
  epochRuns: EpochRun[]
}

/** A log entry that a truncation removed (it never reached a majority), kept for reconciling. */
export interface RollbackRecord {
  /** Position in the rollback record, 1 upward; the next record has a higher one. */
  seq: number
  /** When the entry was removed. */
  atMs: number
  /** This node's epoch when it removed the entry (the new leader's). */
  epoch: number
  entry: LogEntry
}

/** The first LSN written in an epoch. */
export interface EpochRun {
  epoch: number
  startLsn: number
}

/** Fields of the hard state that callers may change; omitted fields keep their value. */
export interface HardStateUpdate {
  epoch?: number
  vote?: string
  commitLsn?: number
}

/** One key of a list page. */
export interface ListItem {
  key: Buffer
  record: StoredRecord
}

export interface ListOptions {
  /** Only keys that start with these bytes. */
  prefix?: Buffer
  /** First key to return (inclusive). */
  start?: Buffer
  /** Return keys strictly after this one (a cursor). */
  after?: Buffer
  /** Most keys to return. */
  limit: number
  /** Stop once the page holds this many bytes of keys and values (at least one key is returned). */
  bytesMax?: number
}

/** A consistent view of the state at one LSN. Close it when done. */
export interface StateSnapshot {
  readonly appliedLsn: number
  readonly lastEpoch: number
  /** Iterates every key in key order, `chunk` keys per read. */
  records(chunk?: number): AsyncGenerator<ListItem>
  /** The same keys with their records still encoded, as chunks (for shipping a snapshot). */
  rawChunks(chunk?: number): AsyncGenerator<{ key: Buffer; record: Buffer }[]>
  /** The remembered client request ids with their encoded records, as chunks. */
  requestChunks(chunk?: number): AsyncGenerator<{ id: string; record: Buffer }[]>
  close(): Promise<void>
}

/** A hash of the whole applied state. Equal states give equal digests. */
export interface StateDigest {
  appliedLsn: number
  /** Hex SHA-256 over every key, version and value in key order (the auth store's too). */
  digest: string
  /** Keys of the data (the auth store's records are not counted). */
  keys: number
  /** Sum of key and value bytes of the data. */
  bytes: number
  /** Records of the auth store (reserved keys). */
  reservedKeys: number
}

interface AppendJob {
  kind: 'append'
  entries: LogEntry[]
  encoded: Uint8Array[]
  bytes: number
  commitLsn: number | undefined
  resolve: () => void
  reject: (err: Error) => void
}

interface MetaJob {
  kind: 'meta'
  update: HardStateUpdate
  bytes: number
  resolve: () => void
  reject: (err: Error) => void
}

interface ExclusiveJob {
  kind: 'exclusive'
  run: () => Promise<void>
  bytes: number
  resolve: () => void
  reject: (err: Error) => void
}

type Job = AppendJob | MetaJob | ExclusiveJob

const u64Names = [
  MetaName.Format,
  MetaName.Epoch,
  MetaName.CommitLsn,
  MetaName.AppliedLsn,
  MetaName.LastEpoch,
  MetaName.LogStartLsn,
  MetaName.CompactedEpoch,
] as const

function checkPositiveInteger(name: string, value: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new StorageError(`${name} must be an integer from 1 to ${max}, got ${value}`)
  }
}

/**
 * The storage engine. Open it with `Store.open`; every method is safe to call concurrently,
 * and writes are applied in the order they were called.
 */
export class Store {
  readonly dir: string
  readonly fsync: boolean
  readonly groupCommitWritesMax: number
  readonly groupCommitBytesMax: number
  readonly writeQueueWritesMax: number
  readonly writeQueueBytesMax: number

  private readonly db: Db
  /** Exact copy of recently used state records; see record-cache.ts. */
  readonly cache: RecordCache
  private readonly logger: StoreLogger
  private readonly onBatch: ((stats: BatchStats) => void) | undefined
  private readonly readHook: ((key: Buffer) => Promise<void>) | undefined
  private readonly onFatal: ((err: Error) => void) | undefined
  private readonly reservedListeners: ((keys: Buffer[] | 'all') => void)[] = []
  private state: StoreState
  private readonly queue: Job[] = []
  private queueHead = 0
  private queuedWrites = 0
  private queuedBytes = 0
  private draining = false
  private drainScheduled = false
  private failure: Error | null = null
  /** Deletion of compacted log entries, chained; see compactLog. */
  private deleting: Promise<void> = Promise.resolve()
  private truncationCount = 0
  /** Rollback records held: sequence numbers [rollbackFirst, rollbackNext). */
  private rollbackFirst = 1
  private rollbackNext = 1
  private readonly rollbackEntriesMax: number
  /** Entries moved to the rollback record since the store was opened. */
  private rolledBackCount = 0
  /** Set while a snapshot is being installed: the state is partial and reads are refused. */
  private installing: { lsn: number; epoch: number; records: number } | null = null
  private closing = false
  private closed = false
  private idleWaiters: (() => void)[] = []

  private constructor(db: Db, options: StoreOptions, state: StoreState) {
    this.db = db
    this.dir = options.dir
    this.fsync = options.fsync ?? true
    this.groupCommitWritesMax = options.groupCommitWritesMax ?? limitsDefault.groupCommitWritesMax
    this.groupCommitBytesMax = options.groupCommitBytesMax ?? limitsDefault.groupCommitBytesMax
    this.writeQueueWritesMax = options.writeQueueWritesMax ?? limitsDefault.writeQueueWritesMax
    this.writeQueueBytesMax = options.writeQueueBytesMax ?? limitsDefault.writeQueueBytesMax
    this.logger = options.logger ?? silentLogger
    this.cache = new RecordCache(options.readCacheBytes ?? 64 * 1024 * 1024)
    this.onBatch = options.onBatch
    this.readHook = options.readHook
    this.onFatal = options.onFatal
    this.state = state
    this.rollbackEntriesMax = options.rollbackEntriesMax ?? 100_000
    checkPositiveInteger('rollbackEntriesMax', this.rollbackEntriesMax, Number.MAX_SAFE_INTEGER)
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
    const db: Db = new ClassicLevel<Buffer, Buffer>(options.dir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      createIfMissing: true,
      cacheSize: options.cacheBytes ?? 64 * 1024 * 1024,
      writeBufferSize: options.writeBufferBytes ?? 16 * 1024 * 1024,
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
      throw new StorageError(
        `cannot open data directory ${options.dir}: ${(err as Error).message}`,
        {
          cause: err,
        },
      )
    }
    try {
      const state = await recover(db, options)
      const store = new Store(db, options, state)
      const firstRollback = await firstKey(db, prefixRange(Prefix.Rollback))
      const lastRollback = await firstKey(db, prefixRange(Prefix.Rollback), true)
      if (firstRollback !== undefined && lastRollback !== undefined) {
        store.rollbackFirst = lsnOfKey(firstRollback)
        store.rollbackNext = lsnOfKey(lastRollback) + 1
      }
      store.logger.info(
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

  /** The durable metadata, as of the last completed batch. */
  get meta(): Readonly<StoreState> {
    return this.state
  }

  get appliedLsn(): number {
    return this.state.appliedLsn
  }

  get commitLsn(): number {
    return this.state.commitLsn
  }

  /** Writes waiting for the writer, and their bytes. */
  get queueDepth(): { writes: number; bytes: number } {
    return { writes: this.queuedWrites, bytes: this.queuedBytes }
  }

  /** The failure that stopped the store, or null while it is healthy. */
  get failed(): Error | null {
    return this.failure
  }

  get isClosing(): boolean {
    return this.closing
  }

  /** How many truncations removed entries since the store was opened. */
  get truncations(): number {
    return this.truncationCount
  }

  /** Entries moved to the rollback record since the store was opened. */
  get rolledBack(): number {
    return this.rolledBackCount
  }

  /** Rollback records held now. */
  get rollbackCount(): number {
    return this.rollbackNext - this.rollbackFirst
  }

  /**
   * Rollback records after sequence number `afterSeq`, oldest first, at most `limit`: the
   * entries truncations removed because a new leader never had them (unconfirmed writes).
   */
  async rollbacks(afterSeq: number, limit: number): Promise<RollbackRecord[]> {
    const out: RollbackRecord[] = []
    const from = Math.max(afterSeq + 1, 1)
    for await (const [key, value] of this.db.iterator({
      gte: rollbackKey(from),
      lt: prefixRange(Prefix.Rollback).lt,
      limit,
    })) {
      const { atMs, epoch, entry } = decodeRollback(value)
      out.push({ seq: lsnOfKey(key), atMs, epoch, entry: decodeLogEntry(entry) })
    }
    return out
  }

  /** Deletes rollback records up to and including `throughSeq` (once reconciled). */
  async discardRollbacks(throughSeq: number): Promise<number> {
    const first = this.rollbackFirst
    const last = Math.min(throughSeq, this.rollbackNext - 1)
    if (last < first) return 0
    this.rollbackFirst = last + 1
    await this.db.clear({ gte: rollbackKey(first), lt: rollbackKey(last + 1) })
    return last - first + 1
  }

  /**
   * Calls `listener` synchronously whenever keys of the reserved space (U+0000 first: the
   * auth store) change in the state: with those keys after a batch (their records are in the
   * read cache already, so `getSync` sees them), or with 'all' after a truncation or a
   * snapshot install, which may change any of them.
   */
  watchReserved(listener: (keys: Buffer[] | 'all') => void): void {
    this.reservedListeners.push(listener)
  }

  private reservedChanged(keys: Buffer[] | 'all'): void {
    for (const listener of this.reservedListeners) listener(keys)
  }

  // ---------------------------------------------------------------- reads

  /**
   * Reads a key's record synchronously from LevelDB (memtable, block cache, then disk). Sees
   * every batch that has completed. Returns null when the key has no record.
   */
  getSync(key: Uint8Array): StoredRecord | null {
    this.assertReadable()
    const id = Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1')
    const cached = this.cache.get(id)
    if (cached !== undefined) return cached
    const bytes = this.db.getSync(stateKey(key))
    if (bytes === undefined) return null
    const record = this.decodeRecordFromDisk(bytes, key)
    // Synchronous: no write can have landed since the read.
    this.cache.fillSync(id, record)
    return record
  }

  /** The key's record if the read cache holds it, else undefined (then use `get`). */
  getCached(key: Uint8Array): StoredRecord | undefined {
    this.assertReadable()
    return this.cache.get(
      Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1'),
      false,
    )
  }

  /**
   * Reads a key's record: from the cache, or else from LevelDB in libuv's thread pool.
   * Returns null when the key has no record.
   */
  async get(key: Uint8Array): Promise<StoredRecord | null> {
    this.assertReadable()
    const id = Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1')
    const cached = this.cache.get(id)
    if (cached !== undefined) return cached
    this.cache.beginFill(id)
    let record: StoredRecord | null = null
    try {
      const bytes = await this.db.get(stateKey(key))
      if (this.readHook) await this.readHook(Buffer.from(key))
      record = bytes === undefined ? null : this.decodeRecordFromDisk(bytes, key)
    } finally {
      // Cached only if no write of this key landed while the read was in flight.
      this.cache.endFill(id, record)
    }
    return record
  }

  /** One page of keys in key order, from a single consistent LevelDB iterator. */
  async list(options: ListOptions): Promise<{ items: ListItem[]; more: boolean }> {
    this.assertReadable()
    // Without a prefix the page starts past the reserved space (keys starting with U+0000,
    // the auth store), which no client key can be in: user keys hold no control characters.
    const range = options.prefix
      ? stateRangeForPrefix(options.prefix)
      : { gte: stateKey(Buffer.of(0x01)), lt: prefixRange(Prefix.State).lt }
    let gte: Buffer | undefined = range.gte
    let gt: Buffer | undefined
    if (options.start && Buffer.compare(stateKey(options.start), gte) > 0) {
      gte = stateKey(options.start)
    }
    if (options.after) {
      const afterKey = stateKey(options.after)
      if (Buffer.compare(afterKey, gte) >= 0) {
        gt = afterKey
        gte = undefined
      }
    }
    const bytesMax = options.bytesMax ?? Infinity
    const iterator = this.db.iterator({
      ...(gte ? { gte } : {}),
      ...(gt ? { gt } : {}),
      lt: range.lt,
      limit: options.limit + 1,
    })
    try {
      const items: ListItem[] = []
      let bytes = 0
      // Read in chunks and stop at the byte budget: a page of large values must not be
      // loaded whole.
      for (;;) {
        const rows = await iterator.nextv(Math.min(100, options.limit + 1 - items.length))
        if (rows.length === 0) return { items, more: false }
        for (const [key, value] of rows) {
          if (items.length === options.limit || (items.length > 0 && bytes >= bytesMax)) {
            return { items, more: true }
          }
          const userKey = userKeyOf(key)
          const record = this.decodeRecordFromDisk(value, userKey)
          if (record.tombstone) continue
          items.push({ key: Buffer.from(userKey), record })
          bytes += key.length + record.value.length
        }
      }
    } finally {
      await iterator.close()
    }
  }

  /**
   * Reads log entries from `fromLsn` on, stopping at `entriesMax` entries or once `bytesMax`
   * bytes are collected (at least one entry is returned if any exists).
   */
  async readLog(
    fromLsn: number,
    limits: { entriesMax: number; bytesMax: number } = { entriesMax: 1000, bytesMax: 4 << 20 },
  ): Promise<LogEntry[]> {
    this.assertOpen()
    invariant(
      fromLsn >= this.state.logStartLsn,
      () => `log read from ${fromLsn} is below the log start ${this.state.logStartLsn}`,
    )
    const entries: LogEntry[] = []
    let bytes = 0
    const iterator = this.db.iterator({
      gte: logKey(fromLsn),
      lt: prefixRange(Prefix.Log).lt,
      limit: limits.entriesMax,
    })
    try {
      let expected = fromLsn
      for await (const [key, value] of iterator) {
        const lsn = lsnOfKey(key)
        if (lsn !== expected) {
          throw new StorageError(`log gap: expected lsn ${expected}, found ${lsn}`)
        }
        entries.push(this.decodeEntryFromDisk(value, lsn))
        bytes += value.length
        expected++
        if (bytes >= limits.bytesMax) break
      }
    } finally {
      await iterator.close()
    }
    return entries
  }

  /**
   * Opens a consistent view of the state. Its LSN and records come from one LevelDB snapshot,
   * so writes that land afterwards are invisible to it.
   */
  async openSnapshot(): Promise<StateSnapshot> {
    this.assertReadable()
    const snapshot = this.db.snapshot()
    try {
      const appliedBytes = await this.db.get(metaKey(MetaName.AppliedLsn), { snapshot })
      const lastEpochBytes = await this.db.get(metaKey(MetaName.LastEpoch), { snapshot })
      if (appliedBytes === undefined || lastEpochBytes === undefined) {
        throw new StorageError('metadata missing in snapshot')
      }
      const appliedLsn = decodeU64(appliedBytes, MetaName.AppliedLsn)
      const lastEpoch = decodeU64(lastEpochBytes, MetaName.LastEpoch)
      const db = this.db
      const decode = (bytes: Buffer, key: Buffer): StoredRecord =>
        this.decodeRecordFromDisk(bytes, key)
      let closed = false
      return {
        appliedLsn,
        lastEpoch,
        async *records(chunk = 1000): AsyncGenerator<ListItem> {
          const iterator = db.iterator({ ...prefixRange(Prefix.State), snapshot })
          try {
            for (;;) {
              const rows = await iterator.nextv(chunk)
              if (rows.length === 0) return
              for (const [key, value] of rows) {
                const userKey = userKeyOf(key)
                yield { key: userKey, record: decode(value, userKey) }
              }
            }
          } finally {
            await iterator.close()
          }
        },
        async *rawChunks(chunk = 1000): AsyncGenerator<{ key: Buffer; record: Buffer }[]> {
          const iterator = db.iterator({ ...prefixRange(Prefix.State), snapshot })
          try {
            for (;;) {
              const rows = await iterator.nextv(chunk)
              if (rows.length === 0) return
              yield rows.map(([key, value]) => ({
                key: Buffer.from(userKeyOf(key)),
                record: value,
              }))
            }
          } finally {
            await iterator.close()
          }
        },
        async *requestChunks(chunk = 1000): AsyncGenerator<{ id: string; record: Buffer }[]> {
          const iterator = db.iterator({ ...prefixRange(Prefix.Request), snapshot })
          try {
            for (;;) {
              const rows = await iterator.nextv(chunk)
              if (rows.length === 0) return
              yield rows.map(([key, value]) => ({ id: requestIdOfKey(key), record: value }))
            }
          } finally {
            await iterator.close()
          }
        },
        async close(): Promise<void> {
          if (closed) return
          closed = true
          await snapshot.close()
        },
      }
    } catch (err) {
      await snapshot.close()
      throw err
    }
  }

  /** Hashes the whole applied state at one consistent LSN. */
  async digest(): Promise<StateDigest> {
    const snapshot = await this.openSnapshot()
    try {
      const hash = createHash('sha256')
      let keys = 0
      let reservedKeys = 0
      let bytes = 0
      for await (const { key, record } of snapshot.records()) {
        hashDigestRecord(hash, key, record)
        // The auth store's records are hashed (replicas must agree on them too) but are not
        // keys of the data.
        if (key[0] === 0x00) {
          reservedKeys++
          continue
        }
        keys++
        bytes += key.length + record.value.length
      }
      return {
        appliedLsn: snapshot.appliedLsn,
        digest: hash.digest('hex'),
        keys,
        bytes,
        reservedKeys,
      }
    } finally {
      await snapshot.close()
    }
  }

  /**
   * Log entries from `fromLsn` on, as stored (the exact bytes to ship) with their LSN and
   * epoch; each is decoded once to validate it.
   */
  async readLogRaw(
    fromLsn: number,
    limits: { entriesMax: number; bytesMax: number },
  ): Promise<{ lsn: number; epoch: number; data: Buffer }[]> {
    this.assertOpen()
    invariant(
      fromLsn >= this.state.logStartLsn,
      () => `log read from ${fromLsn} is below the log start ${this.state.logStartLsn}`,
    )
    const out: { lsn: number; epoch: number; data: Buffer }[] = []
    let bytes = 0
    const iterator = this.db.iterator({
      gte: logKey(fromLsn),
      lt: prefixRange(Prefix.Log).lt,
      limit: limits.entriesMax,
    })
    try {
      let expected = fromLsn
      for await (const [key, value] of iterator) {
        const lsn = lsnOfKey(key)
        if (lsn !== expected)
          throw new StorageError(`log gap: expected lsn ${expected}, found ${lsn}`)
        const entry = this.decodeEntryFromDisk(value, lsn)
        out.push({ lsn, epoch: entry.epoch, data: value })
        bytes += value.length
        expected++
        if (bytes >= limits.bytesMax) break
      }
    } finally {
      await iterator.close()
    }
    return out
  }

  /** The entry that applied a client request id, if it is still remembered. */
  getRequest(requestId: string): RequestRecord | null {
    this.assertOpen()
    const bytes = this.db.getSync(requestKey(requestId))
    if (bytes === undefined) return null
    try {
      return decodeRequestRecord(bytes)
    } catch (err) {
      const failure = new StorageError(`corrupt request record: ${(err as Error).message}`, {
        cause: err,
      })
      this.fail(failure)
      throw storageFailedError(failure)
    }
  }

  /**
   * Forgets request ids whose entries are older than `cutoffMs` (at most `max` per call).
   * Each replica does this on its own: the records are not part of the state digest.
   */
  expireRequests(cutoffMs: number, max = 10_000): Promise<number> {
    let expired = 0
    return new Promise<void>((resolve, reject) => {
      this.enqueue({
        kind: 'exclusive',
        bytes: 0,
        run: async () => {
          const keys = await this.db
            .keys({
              gte: prefixRange(Prefix.RequestByTime).gte,
              lt: requestTimeKey(cutoffMs, ''),
              limit: max,
            })
            .all()
          if (keys.length === 0) return
          const ops: BatchOp[] = []
          for (const key of keys) {
            ops.push(
              { type: 'del', key },
              { type: 'del', key: requestKey(requestIdOfTimeKey(key)) },
            )
          }
          await this.db.batch(ops)
          expired = keys.length
        },
        resolve,
        reject,
      })
    }).then(() => expired)
  }

  /**
   * Starts replacing the whole state with a snapshot taken at `lsn` (a follower too far
   * behind the leader's log). Crash-safe: a marker is made durable first, and a node that
   * restarts with it discards the partial state and starts over as an empty follower.
   */
  beginSnapshotInstall(lsn: number, epoch: number): Promise<void> {
    return this.exclusive(async () => {
      // An install that was cut off (its stream broke, or its copy did not match) is simply
      // started over: everything it wrote is cleared below.
      invariant(
        lsn >= this.state.commitLsn,
        () => `snapshot at ${lsn} is below the commit LSN ${this.state.commitLsn}`,
      )
      invariant(
        isLsn(lsn) && isEpoch(epoch),
        () => `snapshot at lsn ${lsn}, epoch ${epoch} is out of range`,
      )
      await this.db.put(
        metaKey(MetaName.SnapshotInstall),
        Buffer.from(JSON.stringify({ lsn, epoch }), 'utf8'),
        { sync: true },
      )
      this.installing = { lsn, epoch, records: 0 }
      this.cache.clear()
      for (const prefix of [
        Prefix.State,
        Prefix.Log,
        Prefix.Undo,
        Prefix.Request,
        Prefix.RequestByTime,
      ]) {
        await this.db.clear(prefixRange(prefix))
      }
    })
  }

  /** Writes one chunk of snapshot records, each validated before it is written. */
  addSnapshotRecords(records: { key: Uint8Array; record: Uint8Array }[]): Promise<void> {
    return this.exclusive(async () => {
      const installing = this.installing
      invariant(installing !== null, 'no snapshot install is running')
      const ops: BatchOp[] = []
      for (const { key, record } of records) {
        const decoded = decodeStoredRecord(record)
        invariant(
          decoded.version <= installing.lsn,
          () => `snapshot record version ${decoded.version} is past the snapshot ${installing.lsn}`,
        )
        ops.push({ type: 'put', key: stateKey(key), value: toBuffer(record) })
      }
      await this.db.batch(ops)
      installing.records += records.length
    })
  }

  /** Writes the request ids of a snapshot, each record validated before it is written. */
  addSnapshotRequests(requests: { id: string; record: Uint8Array }[]): Promise<void> {
    return this.exclusive(async () => {
      const installing = this.installing
      invariant(installing !== null, 'no snapshot install is running')
      const ops: BatchOp[] = []
      for (const { id, record } of requests) {
        const decoded = decodeRequestRecord(record)
        invariant(
          decoded.lsn <= installing.lsn,
          () => `request ${id} at lsn ${decoded.lsn} is past the snapshot ${installing.lsn}`,
        )
        ops.push({ type: 'put', key: requestKey(id), value: toBuffer(record) })
        ops.push({ type: 'put', key: requestTimeKey(decoded.timestampMs, id), value: emptyBuffer })
      }
      await this.db.batch(ops)
    })
  }

  /**
   * Ends a snapshot install: the log now starts after the snapshot, and everything up to it
   * counts as applied and committed. Returns the digest of the installed state.
   */
  finishSnapshotInstall(): Promise<StateDigest> {
    return this.exclusive(async () => {
      const installing = this.installing
      invariant(installing !== null, 'no snapshot install is running')
      const { lsn, epoch } = installing
      const commitLsn = Math.max(this.state.commitLsn, lsn)
      await this.db.batch(
        [
          { type: 'put', key: metaKey(MetaName.AppliedLsn), value: encodeU64(lsn) },
          { type: 'put', key: metaKey(MetaName.LastEpoch), value: encodeU64(epoch) },
          { type: 'put', key: metaKey(MetaName.CommitLsn), value: encodeU64(commitLsn) },
          { type: 'put', key: metaKey(MetaName.LogStartLsn), value: encodeU64(lsn + 1) },
          { type: 'put', key: metaKey(MetaName.CompactedEpoch), value: encodeU64(epoch) },
          { type: 'put', key: metaKey(MetaName.EpochRuns), value: encodeEpochRuns([]) },
          { type: 'del', key: metaKey(MetaName.SnapshotInstall) },
        ],
        { sync: true },
      )
      this.state = {
        ...this.state,
        appliedLsn: lsn,
        lastEpoch: epoch,
        commitLsn,
        logStartLsn: lsn + 1,
        compactedEpoch: epoch,
        epochRuns: [],
      }
      this.installing = null
      this.truncationCount++
      this.cache.clear()
      this.reservedChanged('all')
      this.logger.info({ snapshotLsn: lsn, records: installing.records }, 'snapshot installed')
    }).then(() => this.digest())
  }

  /** Runs `run` alone in the writer, in order with every other write. */
  private exclusive<T>(run: () => Promise<T>): Promise<T> {
    let result: T
    return new Promise<void>((resolve, reject) => {
      this.enqueue({
        kind: 'exclusive',
        bytes: 0,
        run: async () => {
          result = await run()
        },
        resolve,
        reject,
      })
    }).then(() => result)
  }

  // ---------------------------------------------------------------- writes

  /**
   * Appends entries to the log and applies them to the state in one atomic batch, shared with
   * any other appends queued meanwhile. Entries must continue the log without a gap. With
   * `commitLsn`, the commit LSN advances in the same batch. Resolves once the batch is durable
   * (fsynced, unless fsync is off).
   */
  append(entries: LogEntry[], options: { commitLsn?: number } = {}): Promise<void> {
    if (entries.length === 0) return Promise.resolve()
    return this.appendEncoded(encodeEntries(entries), options)
  }

  /** Like `append`, for entries already encoded with `encodeEntries` (and admitted). */
  appendEncoded(batch: EncodedEntries, options: { commitLsn?: number } = {}): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.enqueue({
        kind: 'append',
        entries: batch.entries,
        encoded: batch.encoded,
        bytes: batch.bytes,
        commitLsn: options.commitLsn,
        resolve,
        reject,
      })
    })
  }

  /**
   * Persists epoch, vote and commit LSN changes, in order with appends. The epoch never goes
   * down and the commit LSN never goes down nor passes the applied LSN.
   */
  setHardState(update: HardStateUpdate): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.enqueue({ kind: 'meta', update, bytes: 64, resolve, reject })
    })
  }

  /**
   * Removes every log entry after `lsn` and restores the state those entries changed, in one
   * atomic batch. Refuses (InvariantError) to cut at or below the commit LSN's entries.
   * Returns the removed entries, oldest first, so they can be kept for reconciliation.
   */
  truncateAfter(lsn: number): Promise<LogEntry[]> {
    let removed: LogEntry[] = []
    return new Promise<void>((resolve, reject) => {
      this.enqueue({
        kind: 'exclusive',
        bytes: 0,
        run: async () => {
          removed = await this.runTruncate(lsn)
        },
        resolve,
        reject,
      })
    }).then(() => removed)
  }

  /**
   * Compacts the log: entries below `retainFromLsn` (only committed ones may go) are gone for
   * every reader once this resolves, with the new log start durable. Their deletion from disk
   * follows in the background (see `compactionSettled`); a crash midway leaves a state that
   * recovery finishes.
   */
  async compactLog(retainFromLsn: number): Promise<void> {
    const oldStart = this.state.logStartLsn
    await this.exclusive(() => this.runCompact(retainFromLsn))
    const end = this.state.logStartLsn
    if (end > oldStart) {
      this.deleting = this.deleting.then(() => this.deleteCompacted(oldStart, end))
    }
  }

  /** Resolves once the entries of every compaction so far have been deleted from disk. */
  compactionSettled(): Promise<void> {
    return this.deleting
  }

  /**
   * Deletes compacted entries (and their undo records) in [from, end) by key, in bounded
   * chunks that are each their own job, so writes keep flowing between them. Readers already
   * see the log start at `end`; a crash midway leaves entries below it, which recovery deletes.
   */
  private async deleteCompacted(from: number, end: number): Promise<void> {
    try {
      for (let start = from; start < end && !this.closing; start += compactChunkEntries) {
        const to = Math.min(end, start + compactChunkEntries)
        await this.exclusive(async () => {
          const batch = this.db.batch()
          for (let lsn = start; lsn < to; lsn++) batch.del(logKey(lsn)).del(undoKey(lsn))
          await batch.write()
        })
      }
    } catch (err) {
      if (!this.closing) {
        this.logger.warn(
          { err: (err as Error).message },
          'deleting compacted log entries failed; the next start finishes it',
        )
      }
    }
  }

  /** Waits for every queued write, then closes LevelDB. New writes are refused meanwhile. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closing = true
    await this.whenIdle()
    this.closed = true
    await this.db.close()
    this.logger.info({ appliedLsn: this.state.appliedLsn }, 'storage closed')
  }

  /** Resolves once no write is queued or in flight. */
  whenIdle(): Promise<void> {
    if (!this.draining && this.queueHead === this.queue.length) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /**
   * Checks the whole data directory: the log is contiguous from its start to the applied LSN,
   * every record decodes, undo records only exist for log entries, and, when the log still
   * starts at LSN 1, replaying it from scratch gives exactly the stored state.
   */
  async verify(): Promise<{ entries: number; keys: number; replayChecked: boolean }> {
    this.assertOpen()
    await this.whenIdle()
    const { logStartLsn, appliedLsn } = this.state
    let expected = logStartLsn
    const replay = logStartLsn === 1 ? new Map<string, StoredRecord>() : null
    // Entries below the recorded log start are compacted; their deletion may still be running.
    const logRange = { gte: logKey(logStartLsn), lt: prefixRange(Prefix.Log).lt }
    for await (const [key, value] of this.db.iterator(logRange)) {
      const lsn = lsnOfKey(key)
      if (lsn !== expected)
        throw new StorageError(`log gap: expected lsn ${expected}, found ${lsn}`)
      const entry = this.decodeEntryFromDisk(value, lsn)
      if (replay) {
        for (const op of entry.ops) {
          const k = op.key.toString('latin1')
          if (op.type === OpType.Put) {
            replay.set(k, { value: op.value, version: lsn, tombstone: false })
          } else {
            replay.delete(k)
          }
        }
      }
      expected++
    }
    if (expected - 1 !== appliedLsn) {
      throw new StorageError(`log ends at ${expected - 1} but appliedLsn is ${appliedLsn}`)
    }
    const undoRange = { gte: undoKey(logStartLsn), lt: prefixRange(Prefix.Undo).lt }
    for await (const key of this.db.keys(undoRange)) {
      const lsn = lsnOfKey(key)
      if (lsn > appliedLsn) {
        throw new StorageError(`undo record ${lsn} has no log entry`)
      }
    }
    let keys = 0
    for await (const [key, value] of this.db.iterator(prefixRange(Prefix.State))) {
      const userKey = userKeyOf(key)
      const record = this.decodeRecordFromDisk(value, userKey)
      keys++
      if (replay) {
        const k = userKey.toString('latin1')
        const expectedRecord = replay.get(k)
        if (
          !expectedRecord ||
          expectedRecord.version !== record.version ||
          !expectedRecord.value.equals(record.value)
        ) {
          throw new StorageError(`state of key ${JSON.stringify(k)} does not match the log`)
        }
        replay.delete(k)
      }
    }
    if (replay && replay.size > 0) {
      const [first] = replay.keys()
      throw new StorageError(`${replay.size} keys in the log are missing from the state (${first})`)
    }
    return { entries: appliedLsn - logStartLsn + 1, keys, replayChecked: replay !== null }
  }

  /**
   * Checks that every cached record equals the record in LevelDB. For tests: the cache must
   * never hold a stale record, whatever the interleaving of reads and writes.
   */
  async verifyCache(): Promise<number> {
    await this.whenIdle()
    let checked = 0
    for (const [id, cached] of this.cache.entriesForCheck()) {
      const key = Buffer.from(id, 'latin1')
      const bytes = await this.db.get(stateKey(key))
      const stored = bytes === undefined ? null : decodeStoredRecord(bytes)
      if (
        stored === null ||
        stored.version !== cached.version ||
        stored.tombstone !== cached.tombstone ||
        !stored.value.equals(cached.value)
      ) {
        throw new StorageError(
          `cache holds version ${cached.version} of ${JSON.stringify(key.toString())}, LevelDB holds ${stored?.version ?? 'nothing'}`,
        )
      }
      checked++
    }
    return checked
  }

  // ---------------------------------------------------------------- writer

  /**
   * Throws the error an append of `bytes` would be refused with right now (storage failed,
   * closing, or the write queue full), so a caller can refuse a write before giving it an LSN.
   */
  admit(bytes: number): void {
    if (this.failure) throw storageFailedError(this.failure)
    if (this.closing) throw new KvError('KV_ERR_SHUTTING_DOWN', 'storage is closing')
    if (
      this.queuedWrites + 1 > this.writeQueueWritesMax ||
      this.queuedBytes + bytes > this.writeQueueBytesMax
    ) {
      throw new KvError('KV_ERR_OVERLOADED', 'too many writes are waiting for the disk', {
        queuedWrites: this.queuedWrites,
        queuedBytes: this.queuedBytes,
      })
    }
  }

  private enqueue(job: Job): void {
    try {
      if (job.kind === 'append') this.admit(job.bytes)
      else if (this.failure) throw storageFailedError(this.failure)
      else if (this.closing) throw new KvError('KV_ERR_SHUTTING_DOWN', 'storage is closing')
    } catch (err) {
      job.reject(err as Error)
      return
    }
    if (job.kind === 'append') {
      this.queuedWrites++
      this.queuedBytes += job.bytes
    }
    this.queue.push(job)
    if (!this.draining && !this.drainScheduled) {
      // Let every write that arrives in this turn of the event loop join the first batch.
      this.drainScheduled = true
      setImmediate(() => {
        this.drainScheduled = false
        void this.drain()
      })
    }
  }

  private takeJob(): Job | undefined {
    if (this.queueHead >= this.queue.length) return undefined
    const job = this.queue[this.queueHead]
    this.queue[this.queueHead] = undefined as unknown as Job
    this.queueHead++
    if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue.splice(0, this.queueHead)
      this.queueHead = 0
    }
    if (job?.kind === 'append') {
      this.queuedWrites--
      this.queuedBytes -= job.bytes
    }
    return job
  }

  private peekJob(): Job | undefined {
    return this.queueHead < this.queue.length ? this.queue[this.queueHead] : undefined
  }

  private async drain(): Promise<void> {
    if (this.draining) return
    this.draining = true
    try {
      while (this.peekJob() !== undefined) {
        if (this.failure) {
          this.rejectQueued(storageFailedError(this.failure))
          break
        }
        const head = this.peekJob()
        if (head?.kind === 'exclusive') {
          this.takeJob()
          try {
            await head.run()
            head.resolve()
          } catch (err) {
            head.reject(err as Error)
            // A refused call (a broken precondition, a malformed record from a peer) leaves
            // the store as it was; anything else is an I/O failure.
            if (!(err instanceof InvariantError) && !(err instanceof DecodeError))
              this.fail(err as Error)
          }
          continue
        }
        await this.writeGroup()
      }
    } finally {
      this.draining = false
      if (this.peekJob() === undefined) {
        const waiters = this.idleWaiters
        this.idleWaiters = []
        for (const resolve of waiters) resolve()
      } else {
        void this.drain()
      }
    }
  }

  /** Builds one batch from the queued appends and meta updates, writes it, resolves them. */
  private async writeGroup(): Promise<void> {
    const chained = this.db.batch()
    const builder = new BatchBuilder(this, this.state, chained)
    const members: (AppendJob | MetaJob)[] = []
    let entries = 0
    let bytes = 0
    for (;;) {
      const job = this.peekJob()
      if (job === undefined || job.kind === 'exclusive') break
      if (job.kind === 'append' && members.length > 0) {
        if (entries + job.entries.length > this.groupCommitWritesMax) break
        if (bytes + job.bytes > this.groupCommitBytesMax) break
      }
      this.takeJob()
      try {
        if (job.kind === 'append') {
          builder.addAppend(job)
          entries += job.entries.length
          bytes += job.bytes
        } else {
          builder.addMeta(job.update)
        }
        members.push(job)
      } catch (err) {
        // The job broke an invariant (a gap, a lower epoch): refuse it and stop the store,
        // because the caller's view of the log is wrong.
        job.reject(err as Error)
        this.fail(err as Error)
        for (const member of members) member.reject(storageFailedError(err as Error))
        await chained.close()
        return
      }
    }
    if (members.length === 0) {
      await chained.close()
      return
    }
    const started = performance.now()
    try {
      await builder.finish().write({ sync: this.fsync })
    } catch (err) {
      const failure = new StorageError(`batch write failed: ${(err as Error).message}`, {
        cause: err,
      })
      this.fail(failure)
      for (const member of members) member.reject(storageFailedError(failure))
      return
    }
    const durationMs = performance.now() - started
    this.state = builder.next
    builder.applyToCache(this.cache)
    if (builder.reservedKeys.length > 0) this.reservedChanged(builder.reservedKeys)
    for (const member of members) member.resolve()
    this.onBatch?.({ entries, writers: members.length, bytes, durationMs })
  }

  private async runTruncate(lsn: number): Promise<LogEntry[]> {
    const { commitLsn, appliedLsn, logStartLsn } = this.state
    invariant(Number.isSafeInteger(lsn) && lsn >= 0, `truncation point ${lsn} is not an lsn`)
    invariant(
      lsn >= commitLsn,
      () =>
        `refusing to truncate after ${lsn}: entries up to the commit LSN ${commitLsn} are committed`,
    )
    if (lsn >= appliedLsn) return []
    invariant(lsn >= logStartLsn - 1, `truncation point ${lsn} is below the log start`)
    const removed = await this.readLog(lsn + 1, {
      entriesMax: appliedLsn - lsn,
      bytesMax: Infinity,
    })
    invariant(removed.length === appliedLsn - lsn, 'log is shorter than its applied LSN')
    const ops: BatchOp[] = []
    // Walk back from the newest entry: the image that wins for a key is the one from before
    // the oldest removed entry that touched it.
    const restore = new Map<string, { key: Buffer; prior: StoredRecord | null }>()
    for (let i = removed.length - 1; i >= 0; i--) {
      const entry = removed[i]
      if (entry === undefined) continue
      const undoBytes = await this.db.get(undoKey(entry.lsn))
      invariant(
        undoBytes !== undefined,
        () => `entry ${entry.lsn} above the commit LSN has no undo`,
      )
      const undo = decodeUndoRecord(undoBytes)
      invariant(undo.lsn === entry.lsn, `undo record ${undo.lsn} is stored under ${entry.lsn}`)
      for (const image of undo.images) {
        restore.set(image.key.toString('latin1'), { key: image.key, prior: image.prior })
      }
      ops.push({ type: 'del', key: logKey(entry.lsn) }, { type: 'del', key: undoKey(entry.lsn) })
    }
    for (const { key, prior } of restore.values()) {
      if (prior === null) ops.push({ type: 'del', key: stateKey(key) })
      else
        ops.push({ type: 'put', key: stateKey(key), value: Buffer.from(encodeStoredRecord(prior)) })
    }
    let lastEpoch = this.state.compactedEpoch
    if (lsn >= logStartLsn) {
      const [last] = await this.readLog(lsn, { entriesMax: 1, bytesMax: Infinity })
      invariant(last !== undefined && last.lsn === lsn, `entry ${lsn} is missing`)
      lastEpoch = last.epoch
    }
    // Entries a client wrote go to the rollback record, in the same batch; no-ops do not.
    const atMs = Date.now()
    let rolled = 0
    for (const entry of removed) {
      if (entry.kind === EntryKind.Noop) continue
      ops.push({
        type: 'put',
        key: rollbackKey(this.rollbackNext + rolled),
        value: encodeRollback(atMs, this.state.epoch, encodeLogEntry(entry)),
      })
      rolled++
    }
    const held = this.rollbackNext + rolled - this.rollbackFirst
    const dropTo = this.rollbackFirst + Math.max(0, held - this.rollbackEntriesMax)
    if (dropTo > this.rollbackFirst) {
      for (let seq = this.rollbackFirst; seq < dropTo; seq++)
        ops.push({ type: 'del', key: rollbackKey(seq) })
    }
    for (const entry of removed) {
      if (entry.requestId === '') continue
      ops.push(
        { type: 'del', key: requestKey(entry.requestId) },
        { type: 'del', key: requestTimeKey(entry.timestampMs, entry.requestId) },
      )
    }
    const epochRuns = runsUpTo(this.state.epochRuns, lsn)
    ops.push(
      { type: 'put', key: metaKey(MetaName.AppliedLsn), value: encodeU64(lsn) },
      { type: 'put', key: metaKey(MetaName.LastEpoch), value: encodeU64(lastEpoch) },
      { type: 'put', key: metaKey(MetaName.EpochRuns), value: encodeEpochRuns(epochRuns) },
    )
    await this.db.batch(ops, { sync: true })
    this.cache.clear()
    this.truncationCount++
    this.reservedChanged('all')
    this.rollbackNext += rolled
    this.rollbackFirst = Math.max(this.rollbackFirst, dropTo)
    this.rolledBackCount += rolled
    this.state = { ...this.state, appliedLsn: lsn, lastEpoch, epochRuns }
    this.logger.warn(
      { fromLsn: lsn + 1, toLsn: appliedLsn, entries: removed.length },
      'log truncated; uncommitted entries removed and their state restored',
    )
    return removed
  }

  private async runCompact(retainFromLsn: number): Promise<void> {
    const { commitLsn, appliedLsn, logStartLsn } = this.state
    invariant(
      Number.isSafeInteger(retainFromLsn),
      `compaction point ${retainFromLsn} is not an lsn`,
    )
    invariant(
      retainFromLsn <= commitLsn + 1,
      () =>
        `refusing to compact below ${retainFromLsn}: entries after ${commitLsn} are not committed`,
    )
    invariant(retainFromLsn <= appliedLsn + 1, 'compaction point is past the log end')
    if (retainFromLsn <= logStartLsn) return
    const [last] = await this.readLog(retainFromLsn - 1, { entriesMax: 1, bytesMax: Infinity })
    invariant(last !== undefined, `entry ${retainFromLsn - 1} is missing`)
    const epochRuns = runsFrom(this.state.epochRuns, retainFromLsn, appliedLsn)
    await this.db.batch(
      [
        { type: 'put', key: metaKey(MetaName.LogStartLsn), value: encodeU64(retainFromLsn) },
        { type: 'put', key: metaKey(MetaName.CompactedEpoch), value: encodeU64(last.epoch) },
        { type: 'put', key: metaKey(MetaName.EpochRuns), value: encodeEpochRuns(epochRuns) },
      ],
      { sync: true },
    )
    this.state = {
      ...this.state,
      logStartLsn: retainFromLsn,
      compactedEpoch: last.epoch,
      epochRuns,
    }
    this.logger.info(
      { logStartLsn: retainFromLsn, removed: retainFromLsn - logStartLsn },
      'log compacted',
    )
  }

  private fail(err: Error): void {
    if (this.failure) return
    this.failure = err
    this.logger.error({ err }, 'storage failed; refusing all further writes')
    this.rejectQueued(storageFailedError(err))
    this.onFatal?.(err)
  }

  private rejectQueued(err: Error): void {
    for (let job = this.takeJob(); job !== undefined; job = this.takeJob()) job.reject(err)
  }

  private assertOpen(): void {
    if (this.closed) throw new KvError('KV_ERR_SHUTTING_DOWN', 'storage is closed')
  }

  private assertReadable(): void {
    this.assertOpen()
    if (this.installing !== null) {
      throw new KvError('KV_ERR_REPLICA_BEHIND', 'this replica is installing a snapshot', {
        snapshotLsn: this.installing.lsn,
      })
    }
  }

  /** True while a snapshot is being installed. */
  get isInstallingSnapshot(): boolean {
    return this.installing !== null
  }

  /** Decodes a stored record read from disk; a bad one is corruption, which stops the store. */
  decodeRecordFromDisk(bytes: Uint8Array, key: Uint8Array): StoredRecord {
    try {
      return decodeStoredRecord(bytes)
    } catch (err) {
      const failure = new StorageError(
        `corrupt state record for key ${JSON.stringify(Buffer.from(key).toString('utf8'))}: ${(err as Error).message}`,
        { cause: err },
      )
      this.fail(failure)
      throw storageFailedError(failure)
    }
  }

  private decodeEntryFromDisk(bytes: Uint8Array, lsn: number): LogEntry {
    let entry: LogEntry
    try {
      entry = decodeLogEntry(bytes)
    } catch (err) {
      const failure = new StorageError(`corrupt log entry ${lsn}: ${(err as Error).message}`, {
        cause: err,
      })
      this.fail(failure)
      throw storageFailedError(failure)
    }
    if (entry.lsn !== lsn) {
      const failure = new StorageError(`log entry stored under ${lsn} says lsn ${entry.lsn}`)
      this.fail(failure)
      throw storageFailedError(failure)
    }
    return entry
  }
}

/** Log entries encoded once, with their total size, ready for `Store.appendEncoded`. */
export interface EncodedEntries {
  entries: LogEntry[]
  encoded: Uint8Array[]
  bytes: number
}

/** Encodes (and thereby checks) log entries for an append. */
export function encodeEntries(entries: LogEntry[]): EncodedEntries {
  const encoded = entries.map((entry) => encodeLogEntry(entry))
  let bytes = 0
  for (const e of encoded) bytes += e.length
  return { entries, encoded, bytes }
}

function storageFailedError(cause: Error): KvError {
  return new KvError('KV_ERR_STORAGE', `storage failed: ${cause.message}`, {}, { cause })
}

/**
 * Collects the LevelDB operations of one group: entries, their effects on the state, undo
 * records for uncommitted entries, and the metadata that results.
 */
class BatchBuilder {
  // A chained batch: each put goes straight to the native batch, about four times cheaper
  // per op than LevelDB's array form (which clones and re-validates every op in JavaScript).
  private readonly batch: ChainedBatch
  /** State written earlier in this batch, by user key in latin1 (one char per byte). */
  private readonly overlay = new Map<string, StoredRecord | null>()
  /** Keys of the reserved space (the auth store) this batch writes. */
  readonly reservedKeys: Buffer[] = []
  private readonly store: Store
  next: StoreState
  private readonly before: StoreState

  constructor(store: Store, state: StoreState, batch: ChainedBatch) {
    this.store = store
    this.batch = batch
    this.before = state
    this.next = { ...state }
  }

  addAppend(job: AppendJob): void {
    const next = this.next
    let appliedLsn = next.appliedLsn
    let lastEpoch = next.lastEpoch
    // Check the whole job before touching the batch, so a refused job leaves no trace.
    for (const entry of job.entries) {
      invariant(
        entry.lsn === appliedLsn + 1,
        () => `append of lsn ${entry.lsn} does not follow the log end ${appliedLsn}`,
      )
      invariant(
        entry.epoch >= lastEpoch,
        () =>
          `entry ${entry.lsn} has epoch ${entry.epoch}, below the previous entry's ${lastEpoch}`,
      )
      invariant(
        entry.epoch <= next.epoch,
        () => `entry ${entry.lsn} has epoch ${entry.epoch}, above the node's epoch ${next.epoch}`,
      )
      invariant(entry.lsn < lsnMax, 'lsn overflow')
      appliedLsn = entry.lsn
      lastEpoch = entry.epoch
    }
    const commitLsn = Math.max(next.commitLsn, job.commitLsn ?? 0)
    invariant(
      commitLsn <= appliedLsn,
      () => `commit LSN ${commitLsn} would pass the log end ${appliedLsn}`,
    )
    for (let i = 0; i < job.entries.length; i++) {
      const entry = job.entries[i] as LogEntry
      const encoded = job.encoded[i] as Uint8Array
      this.batch.put(logKey(entry.lsn), toBuffer(encoded))
      const runs = next.epochRuns
      const lastRun = runs[runs.length - 1]
      if (lastRun === undefined || lastRun.epoch !== entry.epoch) {
        next.epochRuns = [...runs, { epoch: entry.epoch, startLsn: entry.lsn }]
      }
      if (entry.requestId !== '') {
        const record: RequestRecord = {
          lsn: entry.lsn,
          epoch: entry.epoch,
          timestampMs: entry.timestampMs,
          // The id stays bound to its request on every replica, and after a change of leader.
          fingerprint: entry.requestFingerprint ?? emptyBuffer,
        }
        this.batch.put(requestKey(entry.requestId), toBuffer(encodeRequestRecord(record)))
        this.batch.put(requestTimeKey(entry.timestampMs, entry.requestId), emptyBuffer)
      }
      const needUndo = entry.lsn > commitLsn
      const images: UndoImage[] | null = needUndo ? [] : null
      const seen = needUndo ? new Set<string>() : null
      for (const op of entry.ops) {
        const key = stateKey(op.key)
        const overlayKey = op.key.toString('latin1')
        if (images !== null && seen !== null && !seen.has(overlayKey)) {
          seen.add(overlayKey)
          const prior = this.overlay.has(overlayKey)
            ? (this.overlay.get(overlayKey) ?? null)
            : this.store.getSync(op.key)
          images.push({ key: op.key, prior })
        }
        if (op.key[0] === 0x00) this.reservedKeys.push(op.key)
        if (op.type === OpType.Put) {
          const record: StoredRecord = { value: op.value, version: entry.lsn, tombstone: false }
          this.batch.put(key, toBuffer(encodeStoredRecord(record)))
          this.overlay.set(overlayKey, record)
        } else {
          this.batch.del(key)
          this.overlay.set(overlayKey, null)
        }
      }
      if (images !== null) {
        this.batch.put(undoKey(entry.lsn), toBuffer(encodeUndoRecord({ lsn: entry.lsn, images })))
      }
    }
    next.appliedLsn = appliedLsn
    next.lastEpoch = lastEpoch
    next.commitLsn = commitLsn
  }

  addMeta(update: HardStateUpdate): void {
    const next = this.next
    if (update.epoch !== undefined) {
      invariant(
        Number.isSafeInteger(update.epoch) && update.epoch >= next.epoch,
        () => `epoch may not go down from ${next.epoch} to ${update.epoch}`,
      )
      invariant(isEpoch(update.epoch), () => `epoch ${update.epoch} is above ${epochMax}`)
    }
    if (update.commitLsn !== undefined) {
      invariant(
        Number.isSafeInteger(update.commitLsn) && update.commitLsn >= next.commitLsn,
        () => `commit LSN may not go down from ${next.commitLsn} to ${update.commitLsn}`,
      )
      invariant(
        update.commitLsn <= next.appliedLsn,
        () => `commit LSN ${update.commitLsn} would pass the log end ${next.appliedLsn}`,
      )
    }
    if (update.epoch !== undefined) next.epoch = update.epoch
    if (update.vote !== undefined) next.vote = update.vote
    if (update.commitLsn !== undefined) next.commitLsn = update.commitLsn
  }

  /** After the batch is durable: the final record of every key it wrote goes to the cache. */
  applyToCache(cache: RecordCache): void {
    for (const [id, record] of this.overlay) cache.written(id, record)
  }

  /** Adds the metadata that changed and returns the batch, ready to write. */
  finish(): ChainedBatch {
    const { next, before } = this
    const meta = (name: MetaName, value: Buffer): void => {
      this.batch.put(metaKey(name), value)
    }
    if (next.appliedLsn !== before.appliedLsn) meta(MetaName.AppliedLsn, encodeU64(next.appliedLsn))
    if (next.lastEpoch !== before.lastEpoch) meta(MetaName.LastEpoch, encodeU64(next.lastEpoch))
    if (next.commitLsn !== before.commitLsn) meta(MetaName.CommitLsn, encodeU64(next.commitLsn))
    if (next.epoch !== before.epoch) meta(MetaName.Epoch, encodeU64(next.epoch))
    if (next.vote !== before.vote) meta(MetaName.Vote, Buffer.from(next.vote, 'utf8'))
    if (next.epochRuns !== before.epochRuns)
      meta(MetaName.EpochRuns, encodeEpochRuns(next.epochRuns))
    return this.batch
  }
}

const emptyBuffer = Buffer.alloc(0)

function encodeEpochRuns(runs: EpochRun[]): Buffer {
  return Buffer.from(JSON.stringify(runs), 'utf8')
}

function decodeEpochRuns(bytes: Uint8Array): EpochRun[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(bytes).toString('utf8'))
  } catch (err) {
    throw new StorageError(`corrupt metadata: epoch runs are not JSON`, { cause: err })
  }
  if (!Array.isArray(parsed)) throw new StorageError('corrupt metadata: epoch runs are not a list')
  let previous: EpochRun | undefined
  return parsed.map((run: unknown) => {
    const r = run as Partial<EpochRun>
    if (
      typeof r !== 'object' ||
      r === null ||
      !isEpoch(r.epoch) ||
      !isLsn(r.startLsn, 1) ||
      (previous !== undefined &&
        ((r.epoch as number) <= previous.epoch || (r.startLsn as number) <= previous.startLsn))
    ) {
      throw new StorageError(`corrupt metadata: bad epoch run ${JSON.stringify(run)}`)
    }
    previous = { epoch: r.epoch as number, startLsn: r.startLsn as number }
    return previous
  })
}

/** The runs that still describe entries after truncating at `lsn`. */
function runsUpTo(runs: EpochRun[], lsn: number): EpochRun[] {
  return runs.filter((run) => run.startLsn <= lsn)
}

/** The runs that describe entries from `retainFromLsn` on. */
function runsFrom(runs: EpochRun[], retainFromLsn: number, lastLsn: number): EpochRun[] {
  if (lastLsn < retainFromLsn) return []
  const out: EpochRun[] = []
  for (let i = 0; i < runs.length; i++) {
    const run = runs[i] as EpochRun
    const nextStart = runs[i + 1]?.startLsn ?? Infinity
    if (nextStart <= retainFromLsn) continue
    out.push({ epoch: run.epoch, startLsn: Math.max(run.startLsn, retainFromLsn) })
  }
  return out
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
}

/** Log entries (with their undo records) deleted per job when the log is compacted. */
const compactChunkEntries = 2048

/** Deletes every log entry and undo record below `retainFromLsn` (recovery only: it scans). */
async function deleteBelow(db: Db, retainFromLsn: number): Promise<void> {
  await db.clear({ gte: prefixRange(Prefix.Log).gte, lt: logKey(retainFromLsn) })
  await db.clear({ gte: prefixRange(Prefix.Undo).gte, lt: undoKey(retainFromLsn) })
}

async function firstKey(db: Db, range: { gte: Buffer; lt: Buffer }, reverse = false) {
  const keys = await db.keys({ ...range, limit: 1, reverse }).all()
  return keys[0]
}

/** Reads and checks the metadata of an open database, creating it for a new directory. */
async function recover(db: Db, options: StoreOptions): Promise<StoreState> {
  const formatBytes = await db.get(metaKey(MetaName.Format))
  if (formatBytes === undefined) {
    const anything = await db.keys({ limit: 1 }).all()
    if (anything.length > 0) {
      throw new StorageError(
        `data directory ${options.dir} holds data but no format marker; refusing to use it`,
      )
    }
    const clusterId = options.clusterId ?? randomUUID()
    const state: StoreState = {
      nodeId: options.nodeId,
      clusterId,
      epoch: 0,
      vote: '',
      commitLsn: 0,
      appliedLsn: 0,
      lastEpoch: 0,
      logStartLsn: 1,
      compactedEpoch: 0,
      epochRuns: [],
    }
    const put = (name: MetaName, value: Buffer) => ({
      type: 'put' as const,
      key: metaKey(name),
      value,
    })
    await db.batch(
      [
        put(MetaName.NodeId, Buffer.from(state.nodeId, 'utf8')),
        put(MetaName.ClusterId, Buffer.from(state.clusterId, 'utf8')),
        put(MetaName.Epoch, encodeU64(0)),
        put(MetaName.Vote, Buffer.alloc(0)),
        put(MetaName.CommitLsn, encodeU64(0)),
        put(MetaName.AppliedLsn, encodeU64(0)),
        put(MetaName.LastEpoch, encodeU64(0)),
        put(MetaName.LogStartLsn, encodeU64(1)),
        put(MetaName.CompactedEpoch, encodeU64(0)),
        put(MetaName.EpochRuns, encodeEpochRuns([])),
        // The format marker goes last in the same atomic batch: it means "fully initialised".
        put(MetaName.Format, encodeU64(layoutFormat)),
      ],
      { sync: true },
    )
    return state
  }

  if (await discardPartialSnapshot(db)) {
    options.logger?.warn(
      { dir: options.dir },
      'discarded a snapshot install that a crash interrupted',
    )
  }
  const names = [...u64Names, MetaName.NodeId, MetaName.ClusterId, MetaName.Vote]
  const values = await db.getMany(names.map((name) => metaKey(name)))
  const raw = new Map<string, Buffer>()
  names.forEach((name, i) => {
    const value = values[i]
    if (value === undefined) throw new StorageError(`data directory is missing meta ${name}`)
    raw.set(name, value)
  })
  const u64 = (name: MetaName): number => {
    try {
      return decodeU64(raw.get(name) as Buffer, name)
    } catch (err) {
      throw new StorageError(`corrupt metadata: ${(err as Error).message}`, { cause: err })
    }
  }
  const format = u64(MetaName.Format)
  if (format !== layoutFormat) {
    throw new StorageError(
      `data directory has layout format ${format}; this build reads format ${layoutFormat}`,
    )
  }
  const state: StoreState = {
    nodeId: (raw.get(MetaName.NodeId) as Buffer).toString('utf8'),
    clusterId: (raw.get(MetaName.ClusterId) as Buffer).toString('utf8'),
    epoch: u64(MetaName.Epoch),
    vote: (raw.get(MetaName.Vote) as Buffer).toString('utf8'),
    commitLsn: u64(MetaName.CommitLsn),
    appliedLsn: u64(MetaName.AppliedLsn),
    lastEpoch: u64(MetaName.LastEpoch),
    logStartLsn: u64(MetaName.LogStartLsn),
    compactedEpoch: u64(MetaName.CompactedEpoch),
    epochRuns: [],
  }
  if (state.nodeId !== options.nodeId) {
    throw new StorageError(
      `data directory ${options.dir} belongs to node "${state.nodeId}", not "${options.nodeId}"`,
    )
  }
  if (options.clusterId !== undefined && options.clusterId !== state.clusterId) {
    throw new StorageError(
      `data directory ${options.dir} belongs to cluster "${state.clusterId}", not "${options.clusterId}"`,
    )
  }
  // The same bounds as on the wire: a value out of range was not written by this store, and a
  // node must not start from it (an epoch at 2^53 - 1 could never be raised by an election).
  for (const name of [MetaName.Epoch, MetaName.LastEpoch, MetaName.CompactedEpoch] as const) {
    const value = u64(name)
    if (!isEpoch(value)) {
      throw new StorageError(
        `corrupt metadata: ${name} ${value} is above the largest epoch ${epochMax}`,
      )
    }
  }
  for (const name of [MetaName.CommitLsn, MetaName.AppliedLsn] as const) {
    const value = u64(name)
    if (!isLsn(value)) {
      throw new StorageError(`corrupt metadata: ${name} ${value} is not below ${lsnMax}`)
    }
  }
  if (state.commitLsn > state.appliedLsn) {
    throw new StorageError(`commit LSN ${state.commitLsn} is past the log end ${state.appliedLsn}`)
  }
  if (state.logStartLsn < 1 || state.logStartLsn > state.appliedLsn + 1) {
    throw new StorageError(
      `log start ${state.logStartLsn} is inconsistent with the log end ${state.appliedLsn}`,
    )
  }
  if (state.commitLsn < state.logStartLsn - 1) {
    throw new StorageError(
      `commit LSN ${state.commitLsn} is below the compacted part of the log (log start ${state.logStartLsn})`,
    )
  }
  if (state.lastEpoch > state.epoch) {
    throw new StorageError(
      `last entry epoch ${state.lastEpoch} is above the node epoch ${state.epoch}`,
    )
  }

  // A crash during compaction can leave entries below the recorded log start: finish the job.
  const firstLog = await firstKey(db, prefixRange(Prefix.Log))
  const firstUndo = await firstKey(db, prefixRange(Prefix.Undo))
  if (
    (firstLog !== undefined && lsnOfKey(firstLog) < state.logStartLsn) ||
    (firstUndo !== undefined && lsnOfKey(firstUndo) < state.logStartLsn)
  ) {
    await deleteBelow(db, state.logStartLsn)
  }

  // The log starts exactly at the recorded log start.
  const firstRemaining = await firstKey(db, prefixRange(Prefix.Log))
  if (firstRemaining !== undefined && lsnOfKey(firstRemaining) !== state.logStartLsn) {
    throw new StorageError(
      `log starts at ${lsnOfKey(firstRemaining)} but the recorded log start is ${state.logStartLsn}`,
    )
  }

  // The log's last entry must be the applied LSN: appends and their meta are one batch.
  const lastLog = await firstKey(db, prefixRange(Prefix.Log), true)
  if (state.appliedLsn >= state.logStartLsn) {
    if (lastLog === undefined || lsnOfKey(lastLog) !== state.appliedLsn) {
      throw new StorageError(
        `log ends at ${lastLog === undefined ? 'nothing' : lsnOfKey(lastLog)} but appliedLsn is ${state.appliedLsn}`,
      )
    }
    const bytes = await db.get(lastLog)
    let entry: LogEntry
    try {
      entry = decodeLogEntry(bytes as Buffer)
    } catch (err) {
      throw new StorageError(`corrupt last log entry: ${(err as Error).message}`, { cause: err })
    }
    if (entry.lsn !== state.appliedLsn || entry.epoch !== state.lastEpoch) {
      throw new StorageError(
        `last log entry (lsn ${entry.lsn}, epoch ${entry.epoch}) disagrees with the metadata (lsn ${state.appliedLsn}, epoch ${state.lastEpoch})`,
      )
    }
  } else if (lastLog !== undefined) {
    throw new StorageError(`log holds entry ${lsnOfKey(lastLog)} past the applied LSN`)
  } else if (state.lastEpoch !== state.compactedEpoch) {
    throw new StorageError(
      `the log is empty but its last epoch ${state.lastEpoch} differs from the compacted epoch ${state.compactedEpoch}`,
    )
  }
  // Every entry above the commit LSN can still be truncated, so each must have its undo record.
  if (state.appliedLsn > state.commitLsn) {
    const undoFrom = Math.max(state.commitLsn + 1, state.logStartLsn)
    const undoKeys = await db
      .keys({ gte: undoKey(undoFrom), lt: prefixRange(Prefix.Undo).lt })
      .all()
    if (undoKeys.length !== state.appliedLsn - undoFrom + 1) {
      throw new StorageError(
        `${state.appliedLsn - undoFrom + 1} uncommitted entries but ${undoKeys.length} undo records`,
      )
    }
  }
  const lastUndo = await firstKey(db, prefixRange(Prefix.Undo), true)
  if (lastUndo !== undefined && lsnOfKey(lastUndo) > state.appliedLsn) {
    throw new StorageError(`undo record ${lsnOfKey(lastUndo)} is past the log end`)
  }

  // Where each epoch begins in the log. Directories written before this was recorded get it
  // from one pass over the log.
  const runsBytes = await db.get(metaKey(MetaName.EpochRuns))
  if (runsBytes !== undefined) {
    state.epochRuns = decodeEpochRuns(runsBytes)
  } else {
    const runs: EpochRun[] = []
    for await (const [key, value] of db.iterator(prefixRange(Prefix.Log))) {
      const entry = decodeLogEntry(value)
      if (runs[runs.length - 1]?.epoch !== entry.epoch)
        runs.push({ epoch: entry.epoch, startLsn: lsnOfKey(key) })
    }
    state.epochRuns = runs
    await db.put(metaKey(MetaName.EpochRuns), encodeEpochRuns(runs), { sync: true })
  }
  // Runs that begin before the log start only describe compacted entries: trim them.
  state.epochRuns = runsFrom(state.epochRuns, state.logStartLsn, state.appliedLsn)
  const lastRun = state.epochRuns[state.epochRuns.length - 1]
  const firstRun = state.epochRuns[0]
  if (state.appliedLsn >= state.logStartLsn) {
    if (
      lastRun === undefined ||
      lastRun.epoch !== state.lastEpoch ||
      firstRun?.startLsn !== state.logStartLsn
    ) {
      throw new StorageError(
        `epoch runs ${JSON.stringify(state.epochRuns)} disagree with the log (${state.logStartLsn}..${state.appliedLsn}, last epoch ${state.lastEpoch})`,
      )
    }
  } else if (state.epochRuns.length > 0) {
    throw new StorageError('epoch runs describe entries of an empty log')
  }
  return state
}

/**
 * A snapshot install that a crash interrupted left a partial state: discard it, and the log
 * with it. The node starts over as an empty follower (its epoch and vote are kept) and gets
 * the snapshot again.
 */
async function discardPartialSnapshot(db: Db): Promise<boolean> {
  const marker = await db.get(metaKey(MetaName.SnapshotInstall))
  if (marker === undefined) return false
  for (const prefix of [
    Prefix.State,
    Prefix.Log,
    Prefix.Undo,
    Prefix.Request,
    Prefix.RequestByTime,
  ]) {
    await db.clear(prefixRange(prefix))
  }
  const put = (name: MetaName, value: Buffer) => ({
    type: 'put' as const,
    key: metaKey(name),
    value,
  })
  await db.batch(
    [
      put(MetaName.CommitLsn, encodeU64(0)),
      put(MetaName.AppliedLsn, encodeU64(0)),
      put(MetaName.LastEpoch, encodeU64(0)),
      put(MetaName.LogStartLsn, encodeU64(1)),
      put(MetaName.CompactedEpoch, encodeU64(0)),
      put(MetaName.EpochRuns, encodeEpochRuns([])),
      { type: 'del' as const, key: metaKey(MetaName.SnapshotInstall) },
    ],
    { sync: true },
  )
  return true
}
