/**
 * Snapshots: a consistent view of the state at one LSN (to ship to a follower, or to digest),
 * and installing one that arrives from the leader.
 *
 * An install is crash-safe: a marker is made durable first, and a node that restarts with it
 * discards the partial state and starts over as an empty follower (see recovery.ts).
 */
import {
  decodeRequestRecord,
  decodeStoredRecord,
  isEpoch,
  isLsn,
  type StoredRecord,
} from '@kvstore/protocol'
import type { StoreContext } from './context.js'
import { type BatchOp, clearPrefixes, emptyBuffer, replacedBySnapshot, toBuffer } from './disk.js'
import { StorageError, invariant } from './invariant.js'
import {
  MetaName,
  Prefix,
  decodeU64,
  metaKey,
  prefixRange,
  requestIdOfKey,
  requestKey,
  requestTimeKey,
  stateKey,
  userKeyOf,
} from './layout.js'
import { storageLimits } from './limits.js'
import { logStartsAfterOps } from './meta.js'
import type { ListItem, StateSnapshot } from './types.js'

const chunkDefault = storageLimits.snapshotChunkEntriesDefault

/**
 * Opens a consistent view of the state. Its LSN and records come from one LevelDB snapshot,
 * so writes that land afterwards are invisible to it.
 */
export async function openSnapshot(ctx: StoreContext): Promise<StateSnapshot> {
  ctx.assertReadable()
  const db = ctx.db
  const snapshot = db.snapshot()
  try {
    const appliedBytes = await db.get(metaKey(MetaName.AppliedLsn), { snapshot })
    const lastEpochBytes = await db.get(metaKey(MetaName.LastEpoch), { snapshot })
    if (appliedBytes === undefined || lastEpochBytes === undefined) {
      throw new StorageError('metadata missing in snapshot')
    }
    const appliedLsn = decodeU64(appliedBytes, MetaName.AppliedLsn)
    const lastEpoch = decodeU64(lastEpochBytes, MetaName.LastEpoch)
    const decode = (bytes: Buffer, key: Buffer): StoredRecord =>
      ctx.decodeRecordFromDisk(bytes, key)
    /** Every row under `prefix`, `chunk` rows per LevelDB read. */
    async function* rows(prefix: number, chunk: number): AsyncGenerator<[Buffer, Buffer][]> {
      const iterator = db.iterator({ ...prefixRange(prefix), snapshot })
      // The next page is read (in libuv's thread pool) while the caller works on this one.
      let next: Promise<[Buffer, Buffer][]> | null = iterator.nextv(chunk)
      try {
        for (;;) {
          const page: [Buffer, Buffer][] = await next
          next = null
          if (page.length === 0) return
          next = iterator.nextv(chunk)
          yield page
        }
      } finally {
        if (next !== null) await next.catch(() => [])
        await iterator.close()
      }
    }
    let closed = false
    return {
      appliedLsn,
      lastEpoch,
      async *records(chunk = chunkDefault): AsyncGenerator<ListItem> {
        for await (const page of rows(Prefix.State, chunk)) {
          for (const [key, value] of page) {
            const userKey = userKeyOf(key)
            const record = decode(value, userKey)
            invariant(
              record.version <= appliedLsn,
              () => `record version ${record.version} is past the snapshot's lsn ${appliedLsn}`,
            )
            yield { key: userKey, record }
          }
        }
      },
      async *rawChunks(chunk = chunkDefault): AsyncGenerator<{ key: Buffer; record: Buffer }[]> {
        for await (const page of rows(Prefix.State, chunk)) {
          yield page.map(([key, value]) => ({ key: Buffer.from(userKeyOf(key)), record: value }))
        }
      },
      async *requestChunks(chunk = chunkDefault): AsyncGenerator<{ id: string; record: Buffer }[]> {
        for await (const page of rows(Prefix.Request, chunk)) {
          yield page.map(([key, value]) => ({ id: requestIdOfKey(key), record: value }))
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

/**
 * Starts replacing the whole state with a snapshot taken at `lsn`: the marker first, durably,
 * then everything the snapshot replaces is cleared. An install that was cut off (its stream
 * broke, or its copy did not match) is simply started over.
 */
export async function beginInstall(ctx: StoreContext, lsn: number, epoch: number): Promise<void> {
  invariant(
    lsn >= ctx.state.commitLsn,
    () => `snapshot at ${lsn} is below the commit LSN ${ctx.state.commitLsn}`,
  )
  invariant(
    isLsn(lsn) && isEpoch(epoch),
    () => `snapshot at lsn ${lsn}, epoch ${epoch} is out of range`,
  )
  await ctx.db.put(
    metaKey(MetaName.SnapshotInstall),
    Buffer.from(JSON.stringify({ lsn, epoch }), 'utf8'),
    { sync: true },
  )
  ctx.installing = { lsn, epoch, records: 0 }
  ctx.cache.clear()
  await clearPrefixes(ctx.db, replacedBySnapshot)
}

/** Writes one chunk of snapshot records, each validated before it is written. */
export async function addInstallRecords(
  ctx: StoreContext,
  records: { key: Uint8Array; record: Uint8Array }[],
): Promise<void> {
  const installing = ctx.installing
  invariant(installing !== null, 'no snapshot install is running')
  const ops: BatchOp[] = []
  for (const { key, record } of records) {
    invariant(key.length > 0, 'a snapshot record has an empty key')
    const decoded = decodeStoredRecord(record)
    invariant(
      decoded.version <= installing.lsn,
      () => `snapshot record version ${decoded.version} is past the snapshot ${installing.lsn}`,
    )
    ops.push({ type: 'put', key: stateKey(key), value: toBuffer(record) })
  }
  await ctx.db.batch(ops)
  installing.records += records.length
}

/** Writes the request ids of a snapshot, each record validated before it is written. */
export async function addInstallRequests(
  ctx: StoreContext,
  requests: { id: string; record: Uint8Array }[],
): Promise<void> {
  const installing = ctx.installing
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
  await ctx.db.batch(ops)
}

/**
 * Ends a snapshot install: the log now starts after the snapshot, and everything up to it
 * counts as applied and committed.
 */
export async function finishInstall(ctx: StoreContext): Promise<void> {
  const installing = ctx.installing
  invariant(installing !== null, 'no snapshot install is running')
  const { lsn, epoch } = installing
  const commitLsn = Math.max(ctx.state.commitLsn, lsn)
  await ctx.db.batch(logStartsAfterOps(lsn, epoch, commitLsn), { sync: true })
  ctx.state = {
    ...ctx.state,
    appliedLsn: lsn,
    lastEpoch: epoch,
    commitLsn,
    logStartLsn: lsn + 1,
    compactedEpoch: epoch,
    epochRuns: [],
  }
  ctx.installing = null
  ctx.truncationCount++
  ctx.cache.clear()
  ctx.reservedChanged('all')
  ctx.logChanged({ kind: 'reset', logStartLsn: lsn + 1, commitLsn })
  ctx.logger.info({ snapshotLsn: lsn, records: installing.records }, 'snapshot installed')
}
