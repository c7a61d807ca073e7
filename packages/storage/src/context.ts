/**
 * What every part of the store shares: the database, the metadata as of the last completed
 * batch, the read cache, and the store's health. The write path, log reading, snapshots and
 * verification are modules that work on one `StoreContext`; `Store` is their public face.
 */
import {
  KvError,
  decodeLogEntry,
  decodeStoredRecord,
  type LogEntry,
  type StoredRecord,
} from '@kvstore/protocol'
import { type Db, storageFailedError } from './disk.js'
import { StorageError } from './invariant.js'
import { stateKey } from './layout.js'
import { storageLimits } from './limits.js'
import { RecordCache } from './record-cache.js'
import {
  type LogChange,
  type StoreLogger,
  type StoreOptions,
  type StoreState,
  silentLogger,
} from './types.js'

/** A snapshot install in progress: the state is partial and reads are refused. */
export interface Installing {
  lsn: number
  epoch: number
  records: number
}

export class StoreContext {
  readonly db: Db
  readonly logger: StoreLogger
  /** Exact copy of recently used state records; see record-cache.ts. */
  readonly cache: RecordCache
  readonly readHook: ((key: Buffer) => Promise<void>) | undefined
  /** The durable metadata, as of the last completed batch. */
  state: StoreState
  /** The failure that stopped the store, or null while it is healthy. */
  failure: Error | null = null
  closing = false
  closed = false
  installing: Installing | null = null
  /** Truncations (and snapshot installs) since the store was opened. */
  truncationCount = 0
  /** Rollback records held: sequence numbers [rollbackFirst, rollbackNext). */
  rollbackFirst = 1
  rollbackNext = 1
  readonly rollbackEntriesMax: number
  /** Entries moved to the rollback record since the store was opened. */
  rolledBackCount = 0
  private readonly reservedListeners: ((keys: Buffer[] | 'all') => void)[] = []
  /** Watch streams follow the log through these (see Store.watchLog). */
  private readonly logListeners: ((change: LogChange) => void)[] = []
  /** Called in order when the store fails: the writer's queue first, then the owner. */
  private readonly failureListeners: ((err: Error) => void)[] = []

  constructor(db: Db, options: StoreOptions, state: StoreState) {
    this.db = db
    this.logger = options.logger ?? silentLogger
    this.cache = new RecordCache(options.readCacheBytes ?? storageLimits.readCacheBytesDefault)
    this.readHook = options.readHook
    this.state = state
    this.rollbackEntriesMax = options.rollbackEntriesMax ?? storageLimits.rollbackEntriesMaxDefault
  }

  /** Adds a listener called once, when the store fails. */
  onFailure(listener: (err: Error) => void): void {
    this.failureListeners.push(listener)
  }

  /** Stops the store: every queued and future write is refused. Only the first call counts. */
  fail(err: Error): void {
    if (this.failure) return
    this.failure = err
    this.logger.error({ err }, 'storage failed; refusing all further writes')
    for (const listener of this.failureListeners) listener(err)
  }

  watchReserved(listener: (keys: Buffer[] | 'all') => void): void {
    this.reservedListeners.push(listener)
  }

  reservedChanged(keys: Buffer[] | 'all'): void {
    for (const listener of this.reservedListeners) listener(keys)
  }

  watchLog(listener: (change: LogChange) => void): void {
    this.logListeners.push(listener)
  }

  logChanged(change: LogChange): void {
    for (const listener of this.logListeners) listener(change)
  }

  assertOpen(): void {
    if (this.closed) throw new KvError('KV_ERR_SHUTTING_DOWN', 'storage is closed')
  }

  assertReadable(): void {
    this.assertOpen()
    if (this.installing !== null) {
      throw new KvError('KV_ERR_REPLICA_BEHIND', 'this replica is installing a snapshot', {
        snapshotLsn: this.installing.lsn,
      })
    }
  }

  /**
   * A key's record, synchronously: from the cache, else from LevelDB (memtable, block cache,
   * then disk), which sees every batch that has completed. Null when the key has no record.
   */
  readRecordSync(key: Uint8Array): StoredRecord | null {
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

  /** Decodes a stored record read from disk; a bad one is corruption, which stops the store. */
  decodeRecordFromDisk(bytes: Uint8Array, key: Uint8Array): StoredRecord {
    try {
      return decodeStoredRecord(bytes)
    } catch (err) {
      throw this.corrupt(
        `corrupt state record for key ${JSON.stringify(Buffer.from(key).toString('utf8'))}: ${(err as Error).message}`,
        err,
      )
    }
  }

  /** Decodes a log entry read from disk under `lsn`; a bad one is corruption. */
  decodeEntryFromDisk(bytes: Uint8Array, lsn: number): LogEntry {
    let entry: LogEntry
    try {
      entry = decodeLogEntry(bytes)
    } catch (err) {
      throw this.corrupt(`corrupt log entry ${lsn}: ${(err as Error).message}`, err)
    }
    if (entry.lsn !== lsn) throw this.corrupt(`log entry stored under ${lsn} says lsn ${entry.lsn}`)
    return entry
  }

  /** Fails the store for damaged data and returns the error its caller should throw. */
  corrupt(message: string, cause?: unknown): KvError {
    const failure = new StorageError(message, cause === undefined ? undefined : { cause })
    this.fail(failure)
    return storageFailedError(failure)
  }
}
