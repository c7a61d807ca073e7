/**
 * Every size and count the storage engine uses, in one place, with units last in each name
 * (TigerBeetle's constants.zig, the house rule "limits on everything"). The request and group
 * commit limits that a node's configuration may change live in protocol's limits.ts; this
 * module holds storage's own, and checks when it is loaded that the two fit each other.
 */
import { limitsCeiling, limitsDefault, lsnMax } from '@kvstore/protocol'
import { invariant } from './invariant.js'

const KiB = 1024
const MiB = 1024 * KiB

export const storageLimits = {
  /** LevelDB block cache, in bytes, unless `StoreOptions.cacheBytes` says otherwise. */
  levelCacheBytesDefault: 64 * MiB,
  /** LevelDB memtable, in bytes, unless `StoreOptions.writeBufferBytes` says otherwise. */
  levelWriteBufferBytesDefault: 16 * MiB,
  /** The store's read cache of decoded records (record-cache.ts), unless configured. */
  readCacheBytesDefault: 64 * MiB,
  /** Bytes the read cache charges per record on top of its key and value. */
  readCacheEntryOverheadBytes: 96,
  /** Rollback records kept (the oldest go first), unless `StoreOptions.rollbackEntriesMax`. */
  rollbackEntriesMaxDefault: 100_000,
  /** A log read given no limits stops after this many entries... */
  logReadEntriesMaxDefault: 1000,
  /** ...or once it holds this many bytes of encoded entries (at least one entry is read). */
  logReadBytesMaxDefault: 4 * MiB,
  /** Rows a list page reads from LevelDB at a time, so a page of large values is not read whole. */
  listReadChunkEntries: 100,
  /** Keys (or request ids) a snapshot view reads from LevelDB at a time, unless told. */
  snapshotChunkEntriesDefault: 1000,
  /** Compacted log entries (with their undo records) deleted per writer job. */
  compactChunkEntries: 2048,
  /** Request ids one `expireRequests` call forgets at most, unless told. */
  requestExpiryEntriesMaxDefault: 10_000,
  /** Bytes a metadata update is counted as in the writer's queue. */
  metaJobBytes: 64,
  /** Finished jobs at the head of the writer's queue before the array is compacted. */
  writerQueueHeadEntriesMax: 1024,
  /**
   * Uncommitted entries a committed read (committed.ts) walks back through at most; a replica
   * further ahead of its commit LSN refuses committed reads with a coded error.
   */
  committedUndoEntriesMax: 100_000,
  /** Undo records a committed read reads from LevelDB at a time. */
  committedUndoReadChunkEntries: 256,
} as const

/** Storage's limits, as numbers (for checking a changed set). */
export type StorageLimits = { readonly [K in keyof typeof storageLimits]: number }

/** The largest length a u32 field of an on-disk format (the digest header) can hold. */
const u32Max = 2 ** 32 - 1

/**
 * The relations between storage's limits and protocol's that must hold. Returns the broken
 * ones, empty when the limits fit each other.
 */
export function checkStorageLimits(limits: StorageLimits = storageLimits): string[] {
  const problems: string[] = []
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value < 1) {
      problems.push(`${name} must be a positive integer, got ${value}`)
    }
  }
  // The digest header stores key and value lengths as u32.
  if (limitsCeiling.keyBytesMax > u32Max || limitsCeiling.valueBytesMax > u32Max) {
    problems.push('the largest key or value does not fit the digest header (u32 lengths)')
  }
  // Log keys hold an LSN as a u64 made of two u32 halves.
  if (lsnMax > Number.MAX_SAFE_INTEGER) problems.push('lsnMax is not a safe integer')
  // One write of the largest request must be admissible by an empty write queue, or it would
  // be refused as overloaded forever.
  if (limitsDefault.writeQueueBytesMax < limitsDefault.requestBodyBytesMax) {
    problems.push(
      `writeQueueBytesMax (${limitsDefault.writeQueueBytesMax}) is below requestBodyBytesMax (${limitsDefault.requestBodyBytesMax})`,
    )
  }
  // A record of the largest size must fit the default read cache, or hot large keys never hit.
  const largestRecordBytes =
    limitsDefault.keyBytesMax + limitsDefault.valueBytesMax + limits.readCacheEntryOverheadBytes
  if (limits.readCacheBytesDefault < largestRecordBytes) {
    problems.push(
      `readCacheBytesDefault (${limits.readCacheBytesDefault}) cannot hold one record of the largest size (${largestRecordBytes})`,
    )
  }
  // A list page reads at most one chunk past its limit.
  if (limits.listReadChunkEntries > limitsCeiling.listLimitMax) {
    problems.push(
      `listReadChunkEntries is above the largest list page ${limitsCeiling.listLimitMax}`,
    )
  }
  return problems
}

// Checked when the module loads: a build whose limits contradict each other never starts.
{
  const problems = checkStorageLimits()
  invariant(problems.length === 0, () => `storage limits: ${problems.join('; ')}`)
}
