/**
 * Whole-directory checks, for tests and for an operator's `verify`: slow, thorough, and never
 * on a hot path.
 */
import { recordOfOp } from './apply.js'
import { OpType, decodeStoredRecord, type StoredRecord } from '@kvstore/protocol'
import type { StoreContext } from './context.js'
import { StorageError } from './invariant.js'
import { Prefix, logKey, lsnOfKey, prefixRange, stateKey, undoKey, userKeyOf } from './layout.js'

/**
 * Checks the whole data directory: the log is contiguous from its start to the applied LSN,
 * every record decodes, undo records only exist for log entries, and, when the log still
 * starts at LSN 1, replaying it from scratch gives exactly the stored state.
 */
export async function verifyDirectory(
  ctx: StoreContext,
): Promise<{ entries: number; keys: number; replayChecked: boolean }> {
  const { logStartLsn, appliedLsn } = ctx.state
  let expected = logStartLsn
  const replay = logStartLsn === 1 ? new Map<string, StoredRecord>() : null
  // Entries below the recorded log start are compacted; their deletion may still be running.
  const logRange = { gte: logKey(logStartLsn), lt: prefixRange(Prefix.Log).lt }
  for await (const [key, value] of ctx.db.iterator(logRange)) {
    const lsn = lsnOfKey(key)
    if (lsn !== expected) throw new StorageError(`log gap: expected lsn ${expected}, found ${lsn}`)
    const entry = ctx.decodeEntryFromDisk(value, lsn)
    if (replay) {
      for (const op of entry.ops) {
        const k = op.key.toString('latin1')
        if (op.type === OpType.Put || op.stamp !== undefined) {
          replay.set(k, recordOfOp(op, lsn))
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
  for await (const key of ctx.db.keys(undoRange)) {
    const lsn = lsnOfKey(key)
    if (lsn > appliedLsn) throw new StorageError(`undo record ${lsn} has no log entry`)
  }
  let keys = 0
  for await (const [key, value] of ctx.db.iterator(prefixRange(Prefix.State))) {
    const userKey = userKeyOf(key)
    const record = ctx.decodeRecordFromDisk(value, userKey)
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
 * Checks that every cached record equals the record in LevelDB: the cache must never hold a
 * stale record, whatever the interleaving of reads and writes. Returns how many it checked.
 */
export async function verifyCache(ctx: StoreContext): Promise<number> {
  let checked = 0
  for (const [id, cached] of ctx.cache.entriesForCheck()) {
    const key = Buffer.from(id, 'latin1')
    const bytes = await ctx.db.get(stateKey(key))
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
