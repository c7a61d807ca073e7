/**
 * How the store lays out its one LevelDB database. Every key starts with a one-byte prefix:
 *
 *   0x01 meta   0x01 + name              -> u64 big-endian or UTF-8 string
 *   0x02 log    0x02 + u64be(lsn)         -> LogEntry
 *   0x03 undo   0x03 + u64be(lsn)         -> UndoRecord (only for entries above the commit LSN)
 *   0x04 state  0x04 + key bytes          -> StoredRecord
 *   0x05 request 0x05 + request id        -> RequestRecord (retried writes apply once)
 *   0x06 request-by-time 0x06 + u64be(timestampMs) + request id -> empty (for expiry)
 *   0x07 rollback 0x07 + u64be(seq)   -> u64be(atMs) + u64be(epoch) + LogEntry (entries a
 *        truncation removed, kept for an operator to reconcile)
 *   0x20 local 0x20 + space + key -> this member's own records, never replicated, hashed,
 *        snapshotted or backed up (local-records.ts: the queued-write outbox and its tickets)
 *
 * LSNs are big-endian so that LevelDB's byte order is log order.
 */
import { epochMax, isEpoch } from '@kvstore/protocol'

export const Prefix = {
  Meta: 0x01,
  Log: 0x02,
  Undo: 0x03,
  State: 0x04,
  Request: 0x05,
  RequestByTime: 0x06,
  Rollback: 0x07,
  /** This member's own records (local-records.ts); far from the others, which may grow. */
  Local: 0x20,
} as const

/** Metadata entries, each under its own key so that one batch can update any subset. */
export const MetaName = {
  /** Layout version of the data directory. */
  Format: 'format',
  NodeId: 'nodeId',
  ClusterId: 'clusterId',
  /** Highest epoch this node has seen (the fencing token). Never decreases. */
  Epoch: 'epoch',
  /** Node id this node voted for in `epoch`, or empty. */
  Vote: 'vote',
  /** Highest LSN known to be committed. Never decreases; never above appliedLsn. */
  CommitLsn: 'commitLsn',
  /** Last LSN in the log, which is also the last LSN applied to the state. */
  AppliedLsn: 'appliedLsn',
  /** Epoch of the entry at appliedLsn. */
  LastEpoch: 'lastEpoch',
  /** First LSN still in the log; entries below it were compacted. */
  LogStartLsn: 'logStartLsn',
  /** Epoch of the entry at logStartLsn - 1 (0 when nothing was compacted). */
  CompactedEpoch: 'compactedEpoch',
  /** JSON list of {epoch, startLsn}: where each epoch begins in the log. */
  EpochRuns: 'epochRuns',
  /** Present while a snapshot is being installed: JSON {lsn, epoch}. */
  SnapshotInstall: 'snapshotInstall',
} as const
export type MetaName = (typeof MetaName)[keyof typeof MetaName]

/** The layout version this build reads and writes. */
export const layoutFormat = 1

const two32 = 2 ** 32

function lsnKey(prefix: number, lsn: number): Buffer {
  const key = Buffer.allocUnsafe(9)
  key[0] = prefix
  key.writeUInt32BE(Math.floor(lsn / two32), 1)
  key.writeUInt32BE(lsn >>> 0, 5)
  return key
}

export function logKey(lsn: number): Buffer {
  return lsnKey(Prefix.Log, lsn)
}

export function undoKey(lsn: number): Buffer {
  return lsnKey(Prefix.Undo, lsn)
}

/** Key of the rollback record with sequence number `seq` (1, 2, ... in removal order). */
export function rollbackKey(seq: number): Buffer {
  return lsnKey(Prefix.Rollback, seq)
}

/** A rollback record's value: when, at which epoch, and the removed entry's encoded bytes. */
export function encodeRollback(atMs: number, epoch: number, entry: Uint8Array): Buffer {
  return Buffer.concat([encodeU64(atMs), encodeU64(epoch), entry])
}

export function decodeRollback(bytes: Uint8Array): {
  atMs: number
  epoch: number
  entry: Uint8Array
} {
  if (bytes.length < 16) throw new Error(`rollback record has ${bytes.length} bytes, expected 16+`)
  const epoch = decodeU64(bytes.subarray(8, 16), 'rollback epoch')
  if (!isEpoch(epoch)) throw new Error(`rollback epoch ${epoch} is above ${epochMax}`)
  return {
    atMs: decodeU64(bytes.subarray(0, 8), 'rollback time'),
    epoch,
    entry: bytes.subarray(16),
  }
}

/** Reads the LSN out of a log or undo key. */
export function lsnOfKey(key: Uint8Array): number {
  if (key.length !== 9) throw new Error(`log key has ${key.length} bytes, expected 9`)
  const view = Buffer.from(key.buffer, key.byteOffset, key.length)
  return view.readUInt32BE(1) * two32 + view.readUInt32BE(5)
}

export function stateKey(key: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(key.length + 1)
  out[0] = Prefix.State
  out.set(key, 1)
  return out
}

/** The user key inside a state key (a view, not a copy). */
export function userKeyOf(stateKeyBytes: Buffer): Buffer {
  return stateKeyBytes.subarray(1)
}

export function metaKey(name: MetaName): Buffer {
  return Buffer.concat([Buffer.of(Prefix.Meta), Buffer.from(name, 'ascii')])
}

/** Bounds of one prefix, for iterators and range deletes. */
export function prefixRange(prefix: number): { gte: Buffer; lt: Buffer } {
  return { gte: Buffer.of(prefix), lt: Buffer.of(prefix + 1) }
}

/** Range of state keys that start with `keyPrefix`. */
export function stateRangeForPrefix(keyPrefix: Uint8Array): { gte: Buffer; lt: Buffer } {
  const gte = stateKey(keyPrefix)
  // The smallest key greater than every key with this prefix: drop trailing 0xff bytes, then
  // increment the last byte. An all-0xff prefix runs to the end of the state range.
  let end = gte.length
  while (end > 1 && gte[end - 1] === 0xff) end--
  if (end === 1) return { gte, lt: Buffer.of(Prefix.State + 1) }
  const lt = Buffer.from(gte.subarray(0, end))
  lt[end - 1] = (lt[end - 1] ?? 0) + 1
  return { gte, lt }
}

export function encodeU64(value: number): Buffer {
  const out = Buffer.allocUnsafe(8)
  out.writeUInt32BE(Math.floor(value / two32), 0)
  out.writeUInt32BE(value >>> 0, 4)
  return out
}

export function decodeU64(bytes: Uint8Array, what: string): number {
  if (bytes.length !== 8) throw new Error(`meta ${what} has ${bytes.length} bytes, expected 8`)
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
  const value = view.readUInt32BE(0) * two32 + view.readUInt32BE(4)
  if (!Number.isSafeInteger(value)) throw new Error(`meta ${what} is not a safe integer`)
  return value
}

export function requestKey(requestId: string): Buffer {
  return Buffer.concat([Buffer.of(Prefix.Request), Buffer.from(requestId, 'utf8')])
}

export function requestTimeKey(timestampMs: number, requestId: string): Buffer {
  return Buffer.concat([
    Buffer.of(Prefix.RequestByTime),
    encodeU64(timestampMs),
    Buffer.from(requestId, 'utf8'),
  ])
}

/** The request id inside a request key. */
export function requestIdOfKey(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.length).subarray(1).toString('utf8')
}

/** The request id inside a request-by-time key. */
export function requestIdOfTimeKey(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.length).subarray(9).toString('utf8')
}
