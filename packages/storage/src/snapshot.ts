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
  decodeUndoRecord,
  encodeStoredRecord,
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
  logKey,
  lsnOfKey,
  metaKey,
  prefixRange,
  requestIdOfKey,
  requestKey,
  requestTimeKey,
  stateKey,
  undoKey,
  userKeyOf,
} from './layout.js'
import { storageLimits } from './limits.js'
import { logStartsAfterOps } from './meta.js'
import type { ListItem, StateSnapshot } from './types.js'

const chunkDefault: number = storageLimits.snapshotChunkEntriesDefault

export interface SnapshotOptions {
  /**
   * Cut the view at the commit LSN: the state with the undo images of every entry above it
   * applied, so it never holds a write that a truncation could still remove (what a leader
   * ships to a follower, which takes the whole snapshot as committed). Default false: the
   * applied state, at the log end.
   */
  committed?: boolean
}

interface CommittedCut {
  /** Each key an entry above the cut changed, with its record before them (null: none). */
  images: Map<string, StoredRecord | null>
  /** Those keys in key order. */
  keys: Buffer[]
}

/** The images before the entries (commitLsn, logEnd], from their undo records. */
async function cutAt(
  ctx: StoreContext,
  snapshot: ReturnType<StoreContext['db']['snapshot']>,
  commitLsn: number,
  logEnd: number,
): Promise<CommittedCut> {
  const images = new Map<string, StoredRecord | null>()
  const keys: Buffer[] = []
  const iterator = ctx.db.iterator({
    gte: undoKey(commitLsn + 1),
    lte: undoKey(logEnd),
    snapshot,
  })
  let expected = commitLsn + 1
  try {
    for await (const [key, value] of iterator) {
      const undo = decodeUndoRecord(value)
      invariant(
        undo.lsn === expected && lsnOfKey(key) === expected,
        () => `undo record ${undo.lsn} found where ${expected} was expected`,
      )
      expected++
      // The lowest entry that changed a key holds its image before the cut.
      for (const image of undo.images) {
        const id = image.key.toString('latin1')
        if (images.has(id)) continue
        images.set(id, image.prior ?? null)
        keys.push(Buffer.from(image.key))
      }
    }
  } finally {
    await iterator.close()
  }
  invariant(
    expected === logEnd + 1,
    () => `entries ${expected} through ${logEnd} above the commit LSN have no undo record`,
  )
  keys.sort(Buffer.compare)
  return { images, keys }
}

/** The epoch of the entry at `lsn` (0 for none), as the snapshot holds it. */
async function epochAt(
  snapshot: ReturnType<StoreContext['db']['snapshot']>,
  ctx: StoreContext,
  lsn: number,
  meta: (name: MetaName) => Promise<number>,
): Promise<number> {
  if (lsn === 0) return 0
  const bytes = await ctx.db.get(logKey(lsn), { snapshot })
  if (bytes !== undefined) return ctx.decodeEntryFromDisk(bytes, lsn).epoch
  invariant(
    (await meta(MetaName.LogStartLsn)) === lsn + 1,
    () => `log entry ${lsn} is missing from the snapshot`,
  )
  return meta(MetaName.CompactedEpoch)
}

/**
 * Opens a consistent view of the state. Its LSN and records come from one LevelDB snapshot,
 * so writes that land afterwards are invisible to it.
 */
export async function openSnapshot(
  ctx: StoreContext,
  options: SnapshotOptions = {},
): Promise<StateSnapshot> {
  ctx.assertReadable()
  const db = ctx.db
  // Read before the LevelDB snapshot: every entry up to it is committed, and each entry above
  // it has its undo record (recovery.ts checks that), which the snapshot then holds too.
  const commitLsnKnown = ctx.state.commitLsn
  const snapshot = db.snapshot()
  try {
    const meta = async (name: MetaName): Promise<number> => {
      const bytes = await db.get(metaKey(name), { snapshot })
      if (bytes === undefined) throw new StorageError(`metadata ${name} missing in snapshot`)
      return decodeU64(bytes, name)
    }
    const logEnd = await meta(MetaName.AppliedLsn)
    let appliedLsn = logEnd
    let lastEpoch = await meta(MetaName.LastEpoch)
    /** The committed cut: each key an entry above the cut changed, as it was before them. */
    let cut: CommittedCut | null = null
    if (options.committed === true) {
      const durableCommitLsn = await meta(MetaName.CommitLsn)
      const commitLsn = Math.min(logEnd, Math.max(commitLsnKnown, durableCommitLsn))
      if (commitLsn < logEnd) {
        cut = await cutAt(ctx, snapshot, commitLsn, logEnd)
        appliedLsn = commitLsn
        lastEpoch = await epochAt(snapshot, ctx, commitLsn, meta)
      }
    }
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
    /**
     * The state's keys with their encoded records, in key order, as pages of about `chunk`:
     * with a committed cut, each key it holds is replaced by its image before the cut (left
     * out when it did not exist then), and keys deleted above the cut come back.
     */
    async function* statePages(
      chunk = chunkDefault,
    ): AsyncGenerator<{ key: Buffer; record: Buffer }[]> {
      const images = cut === null ? [] : cut.keys
      let next = 0
      let out: { key: Buffer; record: Buffer }[] = []
      const pushImage = (key: Buffer) => {
        const prior = cut?.images.get(key.toString('latin1'))
        if (prior) out.push({ key, record: Buffer.from(encodeStoredRecord(prior)) })
      }
      for await (const page of rows(Prefix.State, chunk)) {
        for (const [stored, value] of page) {
          const key = Buffer.from(userKeyOf(stored))
          for (; next < images.length && Buffer.compare(images[next]!, key) < 0; next++) {
            pushImage(images[next]!)
          }
          if (next < images.length && images[next]!.equals(key)) pushImage(images[next++]!)
          else out.push({ key, record: value })
        }
        if (out.length >= chunk) {
          yield out
          out = []
        }
      }
      for (; next < images.length; next++) pushImage(images[next]!)
      if (out.length > 0) yield out
    }
    let closed = false
    return {
      appliedLsn,
      lastEpoch,
      async *records(chunk = chunkDefault): AsyncGenerator<ListItem> {
        for await (const page of statePages(chunk)) {
          for (const { key, record: bytes } of page) {
            const record = decode(bytes, key)
            invariant(
              record.version <= appliedLsn,
              () => `record version ${record.version} is past the snapshot's lsn ${appliedLsn}`,
            )
            yield { key, record }
          }
        }
      },
      rawChunks: statePages,
      async *requestChunks(chunk = chunkDefault): AsyncGenerator<{ id: string; record: Buffer }[]> {
        for await (const page of rows(Prefix.Request, chunk)) {
          const requests = page.map(([key, value]) => ({ id: requestIdOfKey(key), record: value }))
          // A committed cut leaves out the request ids of the entries above it.
          yield cut === null
            ? requests
            : requests.filter((r) => decodeRequestRecord(r.record).lsn <= appliedLsn)
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
