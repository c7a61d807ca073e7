/**
 * Opening a data directory: a new one gets its first metadata; an existing one is checked
 * step by step until the metadata, the log and the state are known to agree, and a job that a
 * crash cut off (a log compaction, a snapshot install) is finished or undone.
 */
import { randomUUID } from 'node:crypto'
import { decodeLogEntry, epochMax, isEpoch, isLsn, lsnMax, type LogEntry } from '@kvstore/protocol'
import { type Db, clearPrefixes, firstKey, replacedBySnapshot } from './disk.js'
import { StorageError } from './invariant.js'
import {
  MetaName,
  Prefix,
  decodeU64,
  layoutFormat,
  lsnOfKey,
  metaKey,
  prefixRange,
  undoKey,
} from './layout.js'
import { deleteBelow } from './log.js'
import {
  allMetaOps,
  decodeEpochRuns,
  encodeEpochRuns,
  freshState,
  logStartsAfterOps,
  runsFrom,
  u64MetaNames,
} from './meta.js'
import type { EpochRun, StoreOptions, StoreState } from './types.js'

/** Reads and checks the metadata of an open database, creating it for a new directory. */
export async function recover(db: Db, options: StoreOptions): Promise<StoreState> {
  if ((await db.get(metaKey(MetaName.Format))) === undefined) return initialise(db, options)
  if (await discardPartialSnapshot(db)) {
    options.logger?.warn(
      { dir: options.dir },
      'discarded a snapshot install that a crash interrupted',
    )
  }
  const state = await readMeta(db)
  checkIdentity(state, options)
  checkMetaBounds(state)
  await finishCompaction(db, state)
  await checkLogEnds(db, state)
  await checkUndoRecords(db, state)
  state.epochRuns = await loadEpochRuns(db, state)
  checkEpochRuns(state)
  return state
}

/** A new directory (one without a format marker) gets its first metadata in one batch. */
async function initialise(db: Db, options: StoreOptions): Promise<StoreState> {
  const anything = await db.keys({ limit: 1 }).all()
  if (anything.length > 0) {
    throw new StorageError(
      `data directory ${options.dir} holds data but no format marker; refusing to use it`,
    )
  }
  const state = freshState(options.nodeId, options.clusterId ?? randomUUID())
  await db.batch(allMetaOps(state), { sync: true })
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
  await clearPrefixes(db, replacedBySnapshot)
  await db.batch(logStartsAfterOps(0, 0, 0), { sync: true })
  return true
}

/** Every metadata entry, decoded; a missing or undecodable one is refused. */
async function readMeta(db: Db): Promise<StoreState> {
  const names = [...u64MetaNames, MetaName.NodeId, MetaName.ClusterId, MetaName.Vote]
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
  return {
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
}

/** The directory belongs to this node, and to the cluster named (if one is). */
function checkIdentity(state: StoreState, options: StoreOptions): void {
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
}

/** Epochs and LSNs are in range and in order with each other. */
function checkMetaBounds(state: StoreState): void {
  // The same bounds as on the wire: a value out of range was not written by this store, and a
  // node must not start from it (an epoch at 2^53 - 1 could never be raised by an election).
  for (const name of [MetaName.Epoch, MetaName.LastEpoch, MetaName.CompactedEpoch] as const) {
    const value = state[name]
    if (!isEpoch(value)) {
      throw new StorageError(
        `corrupt metadata: ${name} ${value} is above the largest epoch ${epochMax}`,
      )
    }
  }
  for (const name of [MetaName.CommitLsn, MetaName.AppliedLsn] as const) {
    const value = state[name]
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
}

/**
 * A crash during compaction can leave entries below the recorded log start: finish the job.
 * Then the log starts exactly at the recorded log start.
 */
async function finishCompaction(db: Db, state: StoreState): Promise<void> {
  const firstLog = await firstKey(db, prefixRange(Prefix.Log))
  const firstUndo = await firstKey(db, prefixRange(Prefix.Undo))
  if (
    (firstLog !== undefined && lsnOfKey(firstLog) < state.logStartLsn) ||
    (firstUndo !== undefined && lsnOfKey(firstUndo) < state.logStartLsn)
  ) {
    await deleteBelow(db, state.logStartLsn)
  }
  const firstRemaining = await firstKey(db, prefixRange(Prefix.Log))
  if (firstRemaining !== undefined && lsnOfKey(firstRemaining) !== state.logStartLsn) {
    throw new StorageError(
      `log starts at ${lsnOfKey(firstRemaining)} but the recorded log start is ${state.logStartLsn}`,
    )
  }
}

/** The log's last entry is the applied LSN, at the last epoch: appends and their meta are one batch. */
async function checkLogEnds(db: Db, state: StoreState): Promise<void> {
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
}

/** Every entry above the commit LSN can still be truncated, so each has its undo record; no other does. */
async function checkUndoRecords(db: Db, state: StoreState): Promise<void> {
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
}

/**
 * Where each epoch begins in the log, trimmed to the entries still in it. Directories written
 * before this was recorded get it from one pass over the log.
 */
async function loadEpochRuns(db: Db, state: StoreState): Promise<EpochRun[]> {
  const runsBytes = await db.get(metaKey(MetaName.EpochRuns))
  let runs: EpochRun[]
  if (runsBytes !== undefined) {
    runs = decodeEpochRuns(runsBytes)
  } else {
    runs = []
    for await (const [key, value] of db.iterator(prefixRange(Prefix.Log))) {
      const entry = decodeLogEntry(value)
      if (runs[runs.length - 1]?.epoch !== entry.epoch)
        runs.push({ epoch: entry.epoch, startLsn: lsnOfKey(key) })
    }
    await db.put(metaKey(MetaName.EpochRuns), encodeEpochRuns(runs), { sync: true })
  }
  // Runs that begin before the log start only describe compacted entries: trim them.
  return runsFrom(runs, state.logStartLsn, state.appliedLsn)
}

/** The epoch runs cover the log exactly: from its start, ending in its last epoch. */
function checkEpochRuns(state: StoreState): void {
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
}
