/**
 * Truncation: removing uncommitted entries from the end of the log and restoring the state
 * they changed from their undo records, in one atomic batch. The entries a client wrote go to
 * the rollback record, kept for an operator (or the chaos checker) to reconcile.
 */
import {
  EntryKind,
  decodeLogEntry,
  decodeUndoRecord,
  encodeLogEntry,
  encodeStoredRecord,
  type LogEntry,
  type StoredRecord,
} from '@kvstore/protocol'
import type { StoreContext } from './context.js'
import type { BatchOp } from './disk.js'
import { invariant } from './invariant.js'
import {
  MetaName,
  Prefix,
  decodeRollback,
  encodeRollback,
  encodeU64,
  logKey,
  lsnOfKey,
  metaKey,
  prefixRange,
  requestKey,
  requestTimeKey,
  rollbackKey,
  stateKey,
  undoKey,
} from './layout.js'
import { asEntry, readEntry, readLog } from './log.js'
import { encodeEpochRuns, runsUpTo } from './meta.js'
import type { RollbackRecord } from './types.js'

/**
 * Removes every entry after `lsn` and restores the state they changed. Refuses (InvariantError)
 * to cut at or below the commit LSN. Returns the removed entries, oldest first.
 */
export async function truncate(ctx: StoreContext, lsn: number): Promise<LogEntry[]> {
  const { commitLsn, appliedLsn, logStartLsn } = ctx.state
  invariant(Number.isSafeInteger(lsn) && lsn >= 0, `truncation point ${lsn} is not an lsn`)
  invariant(
    lsn >= commitLsn,
    () =>
      `refusing to truncate after ${lsn}: entries up to the commit LSN ${commitLsn} are committed`,
  )
  if (lsn >= appliedLsn) return []
  invariant(lsn >= logStartLsn - 1, `truncation point ${lsn} is below the log start`)
  const removed = await readLog(
    ctx,
    lsn + 1,
    { entriesMax: appliedLsn - lsn, bytesMax: Infinity },
    asEntry,
  )
  invariant(removed.length === appliedLsn - lsn, 'log is shorter than its applied LSN')
  const ops: BatchOp[] = await restoreOps(ctx, removed)
  const lastEpoch =
    lsn >= logStartLsn ? (await readEntry(ctx, lsn)).epoch : ctx.state.compactedEpoch
  const rollback = rollbackOps(ctx, removed)
  ops.push(...rollback.ops)
  for (const entry of removed) {
    if (entry.requestId === '') continue
    ops.push(
      { type: 'del', key: requestKey(entry.requestId) },
      { type: 'del', key: requestTimeKey(entry.timestampMs, entry.requestId) },
    )
  }
  const epochRuns = runsUpTo(ctx.state.epochRuns, lsn)
  ops.push(
    { type: 'put', key: metaKey(MetaName.AppliedLsn), value: encodeU64(lsn) },
    { type: 'put', key: metaKey(MetaName.LastEpoch), value: encodeU64(lastEpoch) },
    { type: 'put', key: metaKey(MetaName.EpochRuns), value: encodeEpochRuns(epochRuns) },
  )
  await ctx.db.batch(ops, { sync: true })
  ctx.cache.clear()
  ctx.truncationCount++
  ctx.reservedChanged('all')
  ctx.rollbackNext += rollback.added
  ctx.rollbackFirst = Math.max(ctx.rollbackFirst, rollback.dropTo)
  ctx.rolledBackCount += rollback.added
  ctx.state = { ...ctx.state, appliedLsn: lsn, lastEpoch, epochRuns }
  ctx.logChanged({ kind: 'truncate', afterLsn: lsn })
  ctx.logger.warn(
    { fromLsn: lsn + 1, toLsn: appliedLsn, entries: removed.length },
    'log truncated; uncommitted entries removed and their state restored',
  )
  return removed
}

/** Deletes the removed entries with their undo records, and puts back the prior state. */
async function restoreOps(ctx: StoreContext, removed: LogEntry[]): Promise<BatchOp[]> {
  const ops: BatchOp[] = []
  // Walk back from the newest entry: the image that wins for a key is the one from before
  // the oldest removed entry that touched it.
  const restore = new Map<string, { key: Buffer; prior: StoredRecord | null }>()
  for (let i = removed.length - 1; i >= 0; i--) {
    const entry = removed[i]
    invariant(entry !== undefined, 'a removed entry is missing')
    const undoBytes = await ctx.db.get(undoKey(entry.lsn))
    invariant(undoBytes !== undefined, () => `entry ${entry.lsn} above the commit LSN has no undo`)
    const undo = decodeUndoRecord(undoBytes)
    invariant(undo.lsn === entry.lsn, `undo record ${undo.lsn} is stored under ${entry.lsn}`)
    for (const image of undo.images) {
      invariant(
        image.prior === null || image.prior.version < entry.lsn,
        () => `undo of ${entry.lsn} restores version ${image.prior?.version}, not an older one`,
      )
      restore.set(image.key.toString('latin1'), { key: image.key, prior: image.prior })
    }
    ops.push({ type: 'del', key: logKey(entry.lsn) }, { type: 'del', key: undoKey(entry.lsn) })
  }
  for (const { key, prior } of restore.values()) {
    if (prior === null) ops.push({ type: 'del', key: stateKey(key) })
    else
      ops.push({ type: 'put', key: stateKey(key), value: Buffer.from(encodeStoredRecord(prior)) })
  }
  return ops
}

/**
 * The rollback records of the removed entries a client wrote (no-ops and configuration
 * changes are not kept), and the
 * deletion of the oldest records past `rollbackEntriesMax`.
 */
function rollbackOps(
  ctx: StoreContext,
  removed: LogEntry[],
): { ops: BatchOp[]; added: number; dropTo: number } {
  const ops: BatchOp[] = []
  const atMs = Date.now()
  let added = 0
  for (const entry of removed) {
    // No-ops and configuration changes are no client's writes.
    if (entry.kind === EntryKind.Noop || entry.kind === EntryKind.Membership) continue
    ops.push({
      type: 'put',
      key: rollbackKey(ctx.rollbackNext + added),
      value: encodeRollback(atMs, ctx.state.epoch, encodeLogEntry(entry)),
    })
    added++
  }
  const held = ctx.rollbackNext + added - ctx.rollbackFirst
  const dropTo = ctx.rollbackFirst + Math.max(0, held - ctx.rollbackEntriesMax)
  for (let seq = ctx.rollbackFirst; seq < dropTo; seq++)
    ops.push({ type: 'del', key: rollbackKey(seq) })
  return { ops, added, dropTo }
}

/** Rollback records after sequence number `afterSeq`, oldest first, at most `limit`. */
export async function readRollbacks(
  ctx: StoreContext,
  afterSeq: number,
  limit: number,
): Promise<RollbackRecord[]> {
  const out: RollbackRecord[] = []
  const from = Math.max(afterSeq + 1, 1)
  for await (const [key, value] of ctx.db.iterator({
    gte: rollbackKey(from),
    lt: prefixRange(Prefix.Rollback).lt,
    limit,
  })) {
    const { atMs, epoch, entry } = decodeRollback(value)
    out.push({ seq: lsnOfKey(key), atMs, epoch, entry: decodeLogEntry(entry) })
  }
  return out
}

/** Deletes rollback records up to and including `throughSeq`; returns how many. */
export async function discardRollbacks(ctx: StoreContext, throughSeq: number): Promise<number> {
  const first = ctx.rollbackFirst
  const last = Math.min(throughSeq, ctx.rollbackNext - 1)
  if (last < first) return 0
  ctx.rollbackFirst = last + 1
  await ctx.db.clear({ gte: rollbackKey(first), lt: rollbackKey(last + 1) })
  return last - first + 1
}
