/**
 * The storage engine's public types: its options, its metadata, and what its reads return.
 */
import type { LogEntry, StoredRecord } from '@kvstore/protocol'

/** A pino-compatible logger; the store logs rarely (open, compaction, failure). */
export interface StoreLogger {
  info(obj: object, msg: string): void
  warn(obj: object, msg: string): void
  error(obj: object, msg: string): void
}

export const silentLogger: StoreLogger = { info() {}, warn() {}, error() {} }

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

/** Log entries encoded once, with their total size, ready for `Store.appendEncoded`. */
export interface EncodedEntries {
  entries: LogEntry[]
  encoded: Uint8Array[]
  bytes: number
}

/**
 * A change of the log, told to `Store.watchLog` listeners synchronously, once the change is
 * durable and visible to readers (watch streams follow the log with it):
 * - append: a batch completed; `entries` are the entries it appended (maybe none: a commit
 *   LSN update alone), `commitLsn` the commit LSN after it;
 * - truncate: every entry after `afterLsn` was removed (never a committed one);
 * - compact: the log now starts at `logStartLsn`;
 * - reset: a snapshot was installed; the log now starts at `logStartLsn`, with nothing in it.
 */
export type LogChange =
  | { kind: 'append'; entries: readonly LogEntry[]; commitLsn: number }
  | { kind: 'truncate'; afterLsn: number }
  | { kind: 'compact'; logStartLsn: number }
  | { kind: 'reset'; logStartLsn: number; commitLsn: number }

/** Where a log read stops: after `entriesMax` entries, or once it holds `bytesMax` bytes. */
export interface LogReadLimits {
  entriesMax: number
  bytesMax: number
}

/**
 * A log entry as stored: the exact bytes to ship to a follower, with its LSN and epoch. The
 * bytes were decoded once on the way out, to validate them.
 */
export interface RawLogEntry {
  lsn: number
  epoch: number
  data: Buffer
}
