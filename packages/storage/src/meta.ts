/**
 * The node's metadata: its encoding on disk (layout.ts gives the keys) and the epoch runs,
 * where each epoch begins in the log.
 */
import { isEpoch, isLsn } from '@kvstore/protocol'
import { type BatchOp, putMeta } from './disk.js'
import { StorageError } from './invariant.js'
import { MetaName, encodeU64, layoutFormat, metaKey } from './layout.js'
import type { EpochRun, StoreState } from './types.js'

/** The metadata entries stored as u64. */
export const u64MetaNames = [
  MetaName.Format,
  MetaName.Epoch,
  MetaName.CommitLsn,
  MetaName.AppliedLsn,
  MetaName.LastEpoch,
  MetaName.LogStartLsn,
  MetaName.CompactedEpoch,
] as const

export function encodeEpochRuns(runs: EpochRun[]): Buffer {
  return Buffer.from(JSON.stringify(runs), 'utf8')
}

/** Decodes and checks epoch runs read from disk: epochs and start LSNs strictly increase. */
export function decodeEpochRuns(bytes: Uint8Array): EpochRun[] {
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
export function runsUpTo(runs: EpochRun[], lsn: number): EpochRun[] {
  return runs.filter((run) => run.startLsn <= lsn)
}

/** The runs that describe entries from `retainFromLsn` on. */
export function runsFrom(runs: EpochRun[], retainFromLsn: number, lastLsn: number): EpochRun[] {
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

/** The state of a new data directory. */
export function freshState(nodeId: string, clusterId: string): StoreState {
  return {
    nodeId,
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
}

/** Every metadata entry of `state`, with the format marker last ("fully initialised"). */
export function allMetaOps(state: StoreState): BatchOp[] {
  return [
    putMeta(MetaName.NodeId, Buffer.from(state.nodeId, 'utf8')),
    putMeta(MetaName.ClusterId, Buffer.from(state.clusterId, 'utf8')),
    putMeta(MetaName.Epoch, encodeU64(state.epoch)),
    putMeta(MetaName.Vote, Buffer.from(state.vote, 'utf8')),
    putMeta(MetaName.CommitLsn, encodeU64(state.commitLsn)),
    putMeta(MetaName.AppliedLsn, encodeU64(state.appliedLsn)),
    putMeta(MetaName.LastEpoch, encodeU64(state.lastEpoch)),
    putMeta(MetaName.LogStartLsn, encodeU64(state.logStartLsn)),
    putMeta(MetaName.CompactedEpoch, encodeU64(state.compactedEpoch)),
    putMeta(MetaName.EpochRuns, encodeEpochRuns(state.epochRuns)),
    // The format marker goes last in the same atomic batch: it means "fully initialised".
    putMeta(MetaName.Format, encodeU64(layoutFormat)),
  ]
}

/**
 * The metadata of a log that starts after `lsn` (entries up to it are applied, committed and
 * compacted, at `epoch`): an empty log after a snapshot install, or (lsn 0) a fresh one.
 */
export function logStartsAfterOps(lsn: number, epoch: number, commitLsn: number): BatchOp[] {
  return [
    putMeta(MetaName.CommitLsn, encodeU64(commitLsn)),
    putMeta(MetaName.AppliedLsn, encodeU64(lsn)),
    putMeta(MetaName.LastEpoch, encodeU64(epoch)),
    putMeta(MetaName.LogStartLsn, encodeU64(lsn + 1)),
    putMeta(MetaName.CompactedEpoch, encodeU64(epoch)),
    putMeta(MetaName.EpochRuns, encodeEpochRuns([])),
    { type: 'del', key: metaKey(MetaName.SnapshotInstall) },
  ]
}
