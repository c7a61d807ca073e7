/**
 * The receiving side of regions: a leader applies a batch shipped by another region's leader.
 *
 * One batch becomes one entry of this region's log, decided in the sequencer's synchronous step
 * (`compute`), so no local write slips in between a decision and its record:
 * - each shipped write is compared with the key's record (core `resolveRemoteWrite`): applied
 *   when the writer saw the record, or when it wins a conflict by its stamp; skipped when it
 *   loses one;
 * - each conflict's loser goes into the conflict record, a reserved key in the same entry;
 * - the cursor for the source moves to the batch's end in the same entry too, so a batch is
 *   applied exactly once whatever fails and whichever leader answers next.
 */
import { resolveRemoteWrite, type RegionClock } from '@kvstore/core'
import {
  KvError,
  conflictKey,
  decodeRegionCursor,
  encodeConflictRecord,
  encodeRegionCursor,
  regionCursorKey,
  type ConflictSide,
  type RegionBatch,
  type RegionCursor,
  type Stamp,
  type StoredRecord,
} from '@kvstore/protocol'
import type { Sequencer, Store, WriteOp } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { NodeConfig } from '../config.js'

export interface ApplyResult {
  cursor: number
  applied: number
  conflicts: number
}

export interface ReceiverFigures {
  appliedEntries: Map<string, number>
  conflicts: { local_lost: number; remote_lost: number }
}

const applyMarkerKey = Buffer.from('\u0000region/apply', 'utf8')

/** The stamp a record written before the region mode is shown with in a conflict record. */
function stampOfUnstamped(region: string): Stamp {
  return { wallMs: 1, logical: 0, region }
}

export class RegionReceiver {
  /**
   * Cursors moved by batches that carried no writes (a source's range without its own writes),
   * kept in memory on this leader only, for its epoch: such a batch writes no entry, or two
   * idle regions would write one for each other forever. Lost with the leadership, which only
   * means the source sends that empty range again.
   */
  private readonly unwritten = new Map<
    string,
    { lsn: number; caughtUpSentAtMs: number; epoch: number }
  >()
  /** One batch per source at a time: the cursor check needs the previous one settled. */
  private readonly chains = new Map<string, Promise<unknown>>()
  readonly figures: ReceiverFigures = {
    appliedEntries: new Map(),
    conflicts: { local_lost: 0, remote_lost: 0 },
  }

  constructor(
    private readonly region: string,
    private readonly known: () => ReadonlySet<string>,
    private readonly clock: RegionClock,
    private readonly store: Store,
    private readonly sequencer: Sequencer,
    private readonly replicator: Replicator,
    private readonly config: NodeConfig,
    /** Called with the number of conflict records each applied batch wrote. */
    private readonly onRecorded: (n: number) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  /** Where this region stands in `source`'s log (0: nothing applied yet). */
  cursorOf(source: string): RegionCursor | null {
    const record = this.store.getSync(regionCursorKey(source))
    if (record === null || record.tombstone) return null
    return decodeRegionCursor(record.value)
  }

  private unwrittenOf(source: string): { lsn: number; caughtUpSentAtMs: number } | null {
    const u = this.unwritten.get(source)
    if (u === undefined) return null
    if (!this.replicator.isLeader || u.epoch !== this.replicator.epoch) {
      this.unwritten.delete(source)
      return null
    }
    return u
  }

  /** Where this region stands in `source`'s log, counting empty ranges this leader took. */
  progressOf(source: string): { lsn: number; caughtUpSentAtMs: number } {
    const durable = this.cursorOf(source)
    const u = this.unwrittenOf(source)
    return {
      lsn: Math.max(durable?.lsn ?? 0, u?.lsn ?? 0),
      caughtUpSentAtMs: Math.max(durable?.caughtUpSentAtMs ?? 0, u?.caughtUpSentAtMs ?? 0),
    }
  }

  /** The cursor, checked: only on the leader, for a known region. */
  cursorFor(source: string): number {
    this.checkSource(source)
    this.replicator.checkWritable()
    return this.progressOf(source).lsn
  }

  private checkSource(source: string): void {
    if (source === this.region || !this.known().has(source))
      throw new KvError(
        'KV_ERR_REGION_UNKNOWN',
        source === this.region
          ? `region ${source} is this region: a region never ships to itself`
          : `region ${source} is not in this node's regions file`,
        { source },
      )
  }

  apply(batch: RegionBatch): Promise<ApplyResult> {
    this.checkSource(batch.source)
    const previous = this.chains.get(batch.source) ?? Promise.resolve()
    const next = previous.catch(() => {}).then(() => this.applyNow(batch))
    this.chains.set(batch.source, next)
    void next
      .finally(() => {
        if (this.chains.get(batch.source) === next) this.chains.delete(batch.source)
      })
      .catch(() => {})
    return next
  }

  private async applyNow(batch: RegionBatch): Promise<ApplyResult> {
    this.replicator.checkWritable()
    const nowMs = this.now()
    let aheadMs = 0
    for (const entry of batch.entries)
      for (const op of entry.ops)
        aheadMs = Math.max(aheadMs, this.clock.aheadBeyondSkew(op.stamp as Stamp, nowMs))
    if (aheadMs > 0)
      throw new KvError(
        'KV_ERR_CLOCK_SKEW',
        `a write from region ${batch.source} is stamped ${aheadMs} ms ahead of this leader's clock (at most ${this.config.regionClockSkewMaxMs}); the batch was not applied`,
        { source: batch.source, aheadMs },
      )
    const durable = this.cursorOf(batch.source)?.lsn ?? 0
    const progress = this.progressOf(batch.source)
    const before = progress.lsn
    if (batch.fromLsn > before + 1)
      throw new KvError(
        'KV_ERR_REGION_GAP',
        `region ${batch.source}'s batch starts at LSN ${batch.fromLsn}, but this region has applied its log through ${before} only; nothing was applied`,
        { source: batch.source, cursor: before, fromLsn: batch.fromLsn },
      )
    if (batch.throughLsn <= before) return { cursor: before, applied: 0, conflicts: 0 }
    const caughtUpSentAtMs =
      batch.throughLsn >= batch.sourceCommitLsn ? batch.sentAtMs : progress.caughtUpSentAtMs
    if (batch.copy === true && batch.copyLast !== true && batch.entries.length === 0)
      return { cursor: before, applied: 0, conflicts: 0 }
    if (batch.entries.every((e) => e.lsn <= before)) {
      // Nothing to apply: the cursor moves in memory only (see `unwritten`).
      this.unwritten.set(batch.source, {
        lsn: batch.throughLsn,
        caughtUpSentAtMs,
        epoch: this.replicator.epoch,
      })
      return { cursor: batch.throughLsn, applied: 0, conflicts: 0 }
    }

    let applied = 0
    const lost = { local_lost: 0, remote_lost: 0 }
    let entries = 0
    const result = await this.sequencer.write({
      kind: 'batch',
      origin: 'region',
      ops: [],
      compute: (view) => {
        // Decided now, in the step that takes the LSN: the state cannot change underneath.
        const cursor = view.read(regionCursorKey(batch.source))
        const previous =
          cursor === null || cursor.tombstone ? null : decodeRegionCursor(cursor.value)
        const at = previous?.lsn ?? 0
        if (at !== durable)
          throw new KvError(
            'KV_ERR_REGION_GAP',
            `region ${batch.source}'s cursor moved while its batch waited (${durable} to ${at}); nothing was applied`,
            { source: batch.source, cursor: at, fromLsn: batch.fromLsn },
          )
        const ops: WriteOp[] = []
        const local = new Map<string, StoredRecord | null>()
        const read = (key: Buffer): StoredRecord | null => {
          const id = key.toString('latin1')
          return local.has(id) ? (local.get(id) ?? null) : view.read(key)
        }
        let conflictN = 0
        const record = (winner: ConflictSide, loser: ConflictSide, key: Buffer) => {
          if (this.config.unsafeRegionSkipConflictRecord) return
          ops.push({
            type: 'put',
            key: conflictKey(view.lsn, conflictN),
            value: Buffer.from(
              encodeConflictRecord({
                key,
                winner,
                loser,
                detectedIn: this.region,
                detectedAtMs: nowMs,
                lsn: view.lsn,
              }),
            ),
          })
          conflictN++
        }
        for (const entry of batch.entries) {
          if (entry.lsn <= before) continue
          entries++
          for (const op of entry.ops) {
            const stamp = op.stamp as Stamp
            this.clock.observe(stamp, nowMs)
            const current = read(op.key)
            const outcome = resolveRemoteWrite(
              current === null ? undefined : (current.stamp ?? null),
              stamp,
              op.prev,
            )
            const incoming: ConflictSide = {
              stamp,
              deleted: op.type !== 1,
              value: op.type === 1 ? op.value : Buffer.alloc(0),
            }
            if (outcome === 'present') continue
            if (outcome === 'remote_lost') {
              const c = current as StoredRecord
              lost.remote_lost++
              record(
                {
                  stamp: c.stamp ?? stampOfUnstamped(this.region),
                  deleted: c.tombstone,
                  value: c.value,
                },
                incoming,
                op.key,
              )
              continue
            }
            if (outcome === 'local_lost') {
              const c = current as StoredRecord
              lost.local_lost++
              record(
                incoming,
                {
                  stamp: c.stamp ?? stampOfUnstamped(this.region),
                  deleted: c.tombstone,
                  value: c.value,
                },
                op.key,
              )
            }
            applied++
            const write: WriteOp =
              op.type === 1
                ? { type: 'put', key: op.key, value: op.value, stamp }
                : { type: 'delete', key: op.key, stamp }
            if (op.prev !== undefined) write.prevStamp = op.prev
            ops.push(write)
            local.set(op.key.toString('latin1'), {
              value: op.type === 1 ? op.value : Buffer.alloc(0),
              version: view.lsn,
              tombstone: op.type !== 1,
              stamp,
            })
          }
        }
        // A re-seed moves the cursor only with its last batch: until then, a new leader on
        // either side starts the copy over.
        const movesCursor = batch.copy !== true || batch.copyLast === true
        if (movesCursor)
          ops.push({
            type: 'put',
            key: regionCursorKey(batch.source),
            value: Buffer.from(
              encodeRegionCursor({
                source: batch.source,
                lsn: batch.throughLsn,
                appliedAtMs: nowMs,
                sourceCommitLsn: batch.sourceCommitLsn,
                sourceSentAtMs: batch.sentAtMs,
                // This batch reached the source's commit LSN: everything the source had
                // committed when it cut the batch is here now.
                caughtUpSentAtMs: Math.max(caughtUpSentAtMs, previous?.caughtUpSentAtMs ?? 0),
              }),
            ),
          })
        // An entry needs one op: a harmless reserved marker when nothing of the batch applies.
        if (ops.length === 0) ops.push({ type: 'delete', key: applyMarkerKey, purge: true })
        return ops
      },
    })
    await this.replicator.waitForAck(result.lsn, result.epoch, 'quorum', this.config.ackTimeoutMs)
    if (batch.copy !== true || batch.copyLast === true) {
      if ((this.unwritten.get(batch.source)?.lsn ?? 0) <= batch.throughLsn)
        this.unwritten.delete(batch.source)
    }
    const f = this.figures
    f.appliedEntries.set(batch.source, (f.appliedEntries.get(batch.source) ?? 0) + entries)
    f.conflicts.local_lost += lost.local_lost
    f.conflicts.remote_lost += lost.remote_lost
    if (!this.config.unsafeRegionSkipConflictRecord)
      this.onRecorded(lost.local_lost + lost.remote_lost)
    return {
      cursor: batch.copy === true && batch.copyLast !== true ? before : batch.throughLsn,
      applied,
      conflicts: lost.local_lost + lost.remote_lost,
    }
  }
}
