/**
 * Committed reads: the state as of the commit LSN, without waiting for anything.
 *
 * The leader applies an entry when it appends it, and a follower when the entry is durable on
 * itself, so the applied state can hold writes a failover would still roll back. Every entry
 * above the commit LSN keeps an undo record (the image each key it touched had before it), so
 * the committed state is the applied state with those entries undone:
 *
 *   - a key whose applied record is at or below the commit LSN has it as its committed record;
 *   - a newer record is walked back through the undo record of the entry that wrote it, until
 *     a version at or below the commit LSN (or "did not exist") is reached;
 *   - a key without a record may have been deleted by an uncommitted entry: the first undo
 *     record above the commit LSN that touched it holds its committed image.
 *
 * Every step reads one LevelDB snapshot, together with the commit and applied LSNs stored in
 * that snapshot's metadata (they change in the same atomic batch as the state and the undo
 * records), so an append, a commit, a truncation or a compaction that lands meanwhile cannot
 * mix two points in time. In such a snapshot every entry above its commit LSN has its undo
 * record: an entry is written with one unless it is committed when written, undo records are
 * only deleted by compaction (below the commit LSN) and by truncation (which removes the entry
 * and restores the state in the same batch).
 *
 * A walk reads at most `committedUndoEntriesMax` undo records; past that (an `ack=async`
 * leader far ahead of its followers) the read is refused with KV_ERR_UNCOMMITTED_WINDOW_TOO_LARGE
 * rather than made arbitrarily slow.
 */
import { KvError } from '@kvstore/protocol/errors'
import { decodeUndoRecord, type StoredRecord } from '@kvstore/protocol'
import type { StoreContext } from './context.js'
import { StorageError, invariant } from './invariant.js'
import { MetaName, decodeU64, lsnOfKey, metaKey, stateKey, undoKey, userKeyOf } from './layout.js'
import { storageLimits } from './limits.js'
import { listBounds, readRecord } from './reads.js'
import type { ListItem, ListOptions } from './types.js'

/** A committed read's result and the point it was taken at. */
export interface CommittedRead {
  /** The key's record at `commitLsn`, or null when it did not exist then. */
  record: StoredRecord | null
  /** The commit LSN the read was made at. */
  commitLsn: number
  /** The applied LSN of the same view (entries in between were undone). */
  appliedLsn: number
}

export interface CommittedPage {
  items: ListItem[]
  more: boolean
  commitLsn: number
  appliedLsn: number
}

type Snapshot = ReturnType<StoreContext['db']['snapshot']>

function windowTooLarge(commitLsn: number, appliedLsn: number): KvError {
  const max = storageLimits.committedUndoEntriesMax
  return new KvError(
    'KV_ERR_UNCOMMITTED_WINDOW_TOO_LARGE',
    `this replica holds ${appliedLsn - commitLsn} uncommitted entries (applied ${appliedLsn}, committed ${commitLsn}), more than the ${max} a committed read walks back through; retry once the followers catch up, or read at the default level`,
    { commitLsn, appliedLsn, uncommittedEntriesMax: max },
  )
}

function decodeMeta(bytes: Buffer | undefined, name: MetaName): number {
  if (bytes === undefined) throw new StorageError(`metadata ${name} missing in snapshot`)
  return decodeU64(bytes, name)
}

/** The commit and applied LSNs stored in `snapshot`. */
async function positions(
  ctx: StoreContext,
  snapshot: Snapshot,
  knownCommitLsn: number,
): Promise<{ commitLsn: number; appliedLsn: number }> {
  const [commitBytes, appliedBytes] = await ctx.db.getMany(
    [metaKey(MetaName.CommitLsn), metaKey(MetaName.AppliedLsn)],
    { snapshot },
  )
  const appliedLsn = decodeMeta(appliedBytes, MetaName.AppliedLsn)
  const commitLsn = commitPoint(
    decodeMeta(commitBytes, MetaName.CommitLsn),
    appliedLsn,
    knownCommitLsn,
  )
  return { commitLsn, appliedLsn }
}

/**
 * The LSN a committed read shows: the commit LSN stored in the view, or the one the caller
 * knows (the replication core's, read before the view was taken), which runs ahead of the
 * stored one by a write of the metadata, up to what the view has applied. Every entry above
 * either still has its undo record: a replica appends entries without a commit LSN, so each
 * gets one, and compaction stays below the stored commit LSN.
 */
function commitPoint(storedCommitLsn: number, appliedLsn: number, knownCommitLsn: number): number {
  invariant(
    storedCommitLsn <= appliedLsn,
    () => `commit LSN ${storedCommitLsn} past applied ${appliedLsn}`,
  )
  return Math.max(storedCommitLsn, Math.min(knownCommitLsn, appliedLsn))
}

/**
 * Undo records from `fromLsn` through `toLsn` in `snapshot`, in LSN order, each checked to be
 * the next one (a gap breaks the invariant the committed view rests on). `visit` returns true
 * to stop.
 */
async function walkUndo(
  ctx: StoreContext,
  snapshot: Snapshot,
  fromLsn: number,
  toLsn: number,
  visit: (lsn: number, images: { key: Buffer; prior: StoredRecord | null }[]) => boolean,
): Promise<void> {
  if (toLsn < fromLsn) return
  const iterator = ctx.db.iterator({ gte: undoKey(fromLsn), lte: undoKey(toLsn), snapshot })
  try {
    let expected = fromLsn
    for (;;) {
      const rows = await iterator.nextv(storageLimits.committedUndoReadChunkEntries)
      if (rows.length === 0) break
      for (const [key, value] of rows) {
        const lsn = lsnOfKey(key)
        invariant(lsn === expected, () => `undo record ${expected} missing (found ${lsn})`)
        const undo = decodeUndoRecord(value)
        invariant(undo.lsn === lsn, () => `undo record ${undo.lsn} is stored under ${lsn}`)
        expected++
        if (visit(lsn, undo.images)) return
      }
    }
    invariant(
      expected === toLsn + 1,
      () => `undo records ${expected}..${toLsn} missing above the commit LSN`,
    )
  } finally {
    await iterator.close()
  }
}

/** The key's record as of the commit LSN, read from one consistent view. */
export async function readCommitted(
  ctx: StoreContext,
  key: Uint8Array,
  knownCommitLsn = 0,
): Promise<CommittedRead> {
  ctx.assertReadable()
  // Fast path, in this turn of the event loop: the cache and the state move together, and a
  // record no newer than the commit LSN was written by a committed entry and not changed since.
  const appliedNow = ctx.state.appliedLsn
  const commitNow = commitPoint(ctx.state.commitLsn, appliedNow, knownCommitLsn)
  const cached = ctx.cache.get(
    Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1'),
    false,
  )
  if (cached !== undefined && cached.version <= commitNow) {
    return { record: cached, commitLsn: commitNow, appliedLsn: appliedNow }
  }
  if (cached === undefined) {
    // A cache miss: the plain read (one LevelDB read, which fills the cache). A record no newer
    // than the commit LSN read before it is the key's record at that LSN: no entry changed the
    // key after it, up to the moment of the read. Anything else (absent, or newer) needs the
    // consistent view below.
    const record = await readRecord(ctx, key)
    if (record !== null && record.version <= commitNow) {
      return { record, commitLsn: commitNow, appliedLsn: Math.max(appliedNow, record.version) }
    }
  }
  // The applied record read below fills the cache as a plain read would (so that the next
  // committed read of the key takes the fast path): registered before the snapshot is taken,
  // so a write of the key that lands meanwhile makes the fill stale.
  const id = Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1')
  ctx.cache.beginFill(id)
  let applied: StoredRecord | null = null
  const snapshot = ctx.db.snapshot()
  try {
    // One read for the positions and the record: each read is a trip to libuv's thread pool.
    const [commitBytes, appliedBytes, bytes] = await ctx.db.getMany(
      [metaKey(MetaName.CommitLsn), metaKey(MetaName.AppliedLsn), stateKey(key)],
      { snapshot },
    )
    const appliedLsn = decodeMeta(appliedBytes, MetaName.AppliedLsn)
    const commitLsn = commitPoint(
      decodeMeta(commitBytes, MetaName.CommitLsn),
      appliedLsn,
      knownCommitLsn,
    )
    applied = bytes === undefined ? null : ctx.decodeRecordFromDisk(bytes, key)
    let record = applied
    const done = (r: StoredRecord | null): CommittedRead => ({ record: r, commitLsn, appliedLsn })
    if (commitLsn === appliedLsn) return done(record)
    if (appliedLsn - commitLsn > storageLimits.committedUndoEntriesMax) {
      throw windowTooLarge(commitLsn, appliedLsn)
    }
    const wanted = Buffer.from(key.buffer, key.byteOffset, key.length)
    // Undo records at or below `upper` may still hold an older image of the key.
    let upper = appliedLsn
    while (record !== null && record.version > commitLsn) {
      const version: number = record.version
      const undoBytes = await ctx.db.get(undoKey(version), { snapshot })
      invariant(undoBytes !== undefined, () => `entry ${version} above the commit LSN has no undo`)
      const image = decodeUndoRecord(undoBytes).images.find((i) => i.key.equals(wanted))
      invariant(image !== undefined, () => `undo record ${version} lacks the key it wrote`)
      invariant(
        image.prior === null || image.prior.version < version,
        () => `undo of ${version} restores version ${image.prior?.version}, not an older one`,
      )
      upper = version - 1
      record = image.prior
    }
    if (record !== null) return done(record)
    // Absent just before `upper + 1`: an uncommitted entry at or below `upper` may have
    // deleted it. The first one that touched the key holds its committed image.
    let found: StoredRecord | null = null
    await walkUndo(ctx, snapshot, commitLsn + 1, upper, (_lsn, images) => {
      const image = images.find((i) => i.key.equals(wanted))
      if (image === undefined) return false
      found = image.prior
      return true
    })
    return done(found)
  } finally {
    ctx.cache.endFill(id, applied)
    await snapshot.close()
  }
}

/**
 * One page of keys as of the commit LSN, in key order: keys deleted by uncommitted entries are
 * back, keys they created are gone and changed ones show their committed records.
 */
export async function listCommitted(
  ctx: StoreContext,
  options: ListOptions,
  knownCommitLsn = 0,
): Promise<CommittedPage> {
  ctx.assertReadable()
  const bounds = listBounds(options)
  const inRange = (k: Buffer): boolean =>
    (bounds.gte === undefined || Buffer.compare(k, bounds.gte) >= 0) &&
    (bounds.gt === undefined || Buffer.compare(k, bounds.gt) > 0) &&
    Buffer.compare(k, bounds.lt) < 0
  const snapshot = ctx.db.snapshot()
  try {
    const { commitLsn, appliedLsn } = await positions(ctx, snapshot, knownCommitLsn)
    if (appliedLsn - commitLsn > storageLimits.committedUndoEntriesMax) {
      throw windowTooLarge(commitLsn, appliedLsn)
    }
    // The committed image of every key in range that an uncommitted entry touched: the first
    // such entry's prior image. Keyed by state key (latin1), bounded by the window above.
    const overlay = new Map<string, { stateKey: Buffer; prior: StoredRecord | null }>()
    await walkUndo(ctx, snapshot, commitLsn + 1, appliedLsn, (_lsn, images) => {
      for (const image of images) {
        const k = stateKey(image.key)
        const id = k.toString('latin1')
        if (!overlay.has(id) && inRange(k)) overlay.set(id, { stateKey: k, prior: image.prior })
      }
      return false
    })
    const changed = [...overlay.values()].sort((a, b) => Buffer.compare(a.stateKey, b.stateKey))
    const bytesMax = options.bytesMax ?? Infinity
    const items: ListItem[] = []
    let bytes = 0
    let more = false
    /** Adds one committed record; false once the page is full (and there is more). */
    const add = (k: Buffer, record: StoredRecord | null): boolean => {
      if (record === null || record.tombstone) return true
      if (items.length === options.limit || (items.length > 0 && bytes >= bytesMax)) {
        more = true
        return false
      }
      const userKey = Buffer.from(userKeyOf(k))
      items.push({ key: userKey, record })
      bytes += k.length + record.value.length
      return true
    }
    let next = 0
    const iterator = ctx.db.iterator({
      ...(bounds.gte ? { gte: bounds.gte } : {}),
      ...(bounds.gt ? { gt: bounds.gt } : {}),
      lt: bounds.lt,
      snapshot,
    })
    try {
      scan: for (;;) {
        const rows = await iterator.nextv(storageLimits.listReadChunkEntries)
        if (rows.length === 0) break
        for (const [k, value] of rows) {
          // Keys only the committed view has (deleted by an uncommitted entry) come first.
          while (next < changed.length && Buffer.compare(changed[next]!.stateKey, k) < 0) {
            const c = changed[next++]!
            if (!add(c.stateKey, c.prior)) break scan
          }
          const c = changed[next]
          if (c !== undefined && c.stateKey.equals(k)) {
            next++
            if (!add(c.stateKey, c.prior)) break scan
            continue
          }
          if (!add(Buffer.from(k), ctx.decodeRecordFromDisk(value, userKeyOf(k)))) break scan
        }
      }
    } finally {
      await iterator.close()
    }
    if (!more) {
      while (next < changed.length) {
        const c = changed[next++]!
        if (!add(c.stateKey, c.prior)) break
      }
    }
    return { items, more, commitLsn, appliedLsn }
  } finally {
    await snapshot.close()
  }
}
