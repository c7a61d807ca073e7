/**
 * Reading the log, and compacting it. Entries are read from one LevelDB iterator, so a read
 * sees one consistent log; each entry is decoded (and thereby validated) on the way out.
 */
import type { LogEntry } from '@kvstore/protocol'
import type { StoreContext } from './context.js'
import type { Db } from './disk.js'
import { StorageError, invariant } from './invariant.js'
import {
  MetaName,
  Prefix,
  encodeU64,
  logKey,
  lsnOfKey,
  metaKey,
  prefixRange,
  undoKey,
} from './layout.js'
import { storageLimits } from './limits.js'
import { encodeEpochRuns, runsFrom } from './meta.js'
import type { LogReadLimits, RawLogEntry } from './types.js'
import type { Writer } from './writer.js'

/** The limits of a log read that is given none. */
export const logReadLimitsDefault: LogReadLimits = {
  entriesMax: storageLimits.logReadEntriesMaxDefault,
  bytesMax: storageLimits.logReadBytesMaxDefault,
}

/** Keeps the decoded entry. */
export const asEntry = (entry: LogEntry): LogEntry => entry

/** Keeps the stored bytes (to ship as they are), with the entry's LSN and epoch. */
export const asRawEntry = (entry: LogEntry, data: Buffer): RawLogEntry => ({
  lsn: entry.lsn,
  epoch: entry.epoch,
  data,
})

/**
 * Log entries from `fromLsn` on, each decoded once and passed to `collect` with its stored
 * bytes; stops at `limits.entriesMax` entries or once `limits.bytesMax` bytes are collected (at
 * least one entry is returned if any exists).
 */
export async function readLog<T>(
  ctx: StoreContext,
  fromLsn: number,
  limits: LogReadLimits,
  collect: (entry: LogEntry, data: Buffer) => T,
): Promise<T[]> {
  ctx.assertOpen()
  invariant(
    fromLsn >= ctx.state.logStartLsn,
    () => `log read from ${fromLsn} is below the log start ${ctx.state.logStartLsn}`,
  )
  const out: T[] = []
  let bytes = 0
  const iterator = ctx.db.iterator({
    gte: logKey(fromLsn),
    lt: prefixRange(Prefix.Log).lt,
    limit: limits.entriesMax,
  })
  try {
    let expected = fromLsn
    let previousEpoch = 0
    for await (const [key, value] of iterator) {
      const lsn = lsnOfKey(key)
      if (lsn !== expected)
        throw new StorageError(`log gap: expected lsn ${expected}, found ${lsn}`)
      const entry = ctx.decodeEntryFromDisk(value, lsn)
      // Epochs never go down along the log (checked when each entry was written).
      if (entry.epoch < previousEpoch) {
        throw ctx.corrupt(`log entry ${lsn} has epoch ${entry.epoch}, below ${previousEpoch}`)
      }
      previousEpoch = entry.epoch
      out.push(collect(entry, value))
      bytes += value.length
      expected++
      if (bytes >= limits.bytesMax) break
    }
  } finally {
    await iterator.close()
  }
  return out
}

/** The one entry at `lsn`, which must exist. */
export async function readEntry(ctx: StoreContext, lsn: number): Promise<LogEntry> {
  const [entry] = await readLog(ctx, lsn, { entriesMax: 1, bytesMax: Infinity }, asEntry)
  invariant(entry !== undefined && entry.lsn === lsn, `entry ${lsn} is missing`)
  return entry
}

/**
 * Makes `retainFromLsn` the log start (only committed entries may go), durably. Readers see
 * the new start at once; the entries below it are deleted afterwards by `deleteCompacted`.
 */
export async function compact(ctx: StoreContext, retainFromLsn: number): Promise<void> {
  const { commitLsn, appliedLsn, logStartLsn } = ctx.state
  invariant(Number.isSafeInteger(retainFromLsn), `compaction point ${retainFromLsn} is not an lsn`)
  invariant(
    retainFromLsn <= commitLsn + 1,
    () =>
      `refusing to compact below ${retainFromLsn}: entries after ${commitLsn} are not committed`,
  )
  invariant(retainFromLsn <= appliedLsn + 1, 'compaction point is past the log end')
  if (retainFromLsn <= logStartLsn) return
  const last = await readEntry(ctx, retainFromLsn - 1)
  const epochRuns = runsFrom(ctx.state.epochRuns, retainFromLsn, appliedLsn)
  await ctx.db.batch(
    [
      { type: 'put', key: metaKey(MetaName.LogStartLsn), value: encodeU64(retainFromLsn) },
      { type: 'put', key: metaKey(MetaName.CompactedEpoch), value: encodeU64(last.epoch) },
      { type: 'put', key: metaKey(MetaName.EpochRuns), value: encodeEpochRuns(epochRuns) },
    ],
    { sync: true },
  )
  ctx.state = { ...ctx.state, logStartLsn: retainFromLsn, compactedEpoch: last.epoch, epochRuns }
  ctx.logChanged({ kind: 'compact', logStartLsn: retainFromLsn })
  ctx.logger.info(
    { logStartLsn: retainFromLsn, removed: retainFromLsn - logStartLsn },
    'log compacted',
  )
}

/**
 * Deletes compacted entries (and their undo records) in [from, end) by key, in bounded
 * chunks that are each their own writer job, so writes keep flowing between them. Readers
 * already see the log start at `end`; a crash midway leaves entries below it, which recovery
 * deletes.
 */
export async function deleteCompacted(
  ctx: StoreContext,
  writer: Writer,
  from: number,
  end: number,
): Promise<void> {
  const chunk = storageLimits.compactChunkEntries
  try {
    for (let start = from; start < end && !ctx.closing; start += chunk) {
      const to = Math.min(end, start + chunk)
      await writer.exclusive(async () => {
        const batch = ctx.db.batch()
        for (let lsn = start; lsn < to; lsn++) batch.del(logKey(lsn)).del(undoKey(lsn))
        await batch.write()
      })
    }
  } catch (err) {
    if (!ctx.closing) {
      ctx.logger.warn(
        { err: (err as Error).message },
        'deleting compacted log entries failed; the next start finishes it',
      )
    }
  }
}

/** Deletes every log entry and undo record below `retainFromLsn` (recovery only: it scans). */
export async function deleteBelow(db: Db, retainFromLsn: number): Promise<void> {
  await db.clear({ gte: prefixRange(Prefix.Log).gte, lt: logKey(retainFromLsn) })
  await db.clear({ gte: prefixRange(Prefix.Undo).gte, lt: undoKey(retainFromLsn) })
}
