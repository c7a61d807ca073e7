/**
 * The shipping side of regions: while this node leads its region, one loop per other region
 * sends that region's leader this region's committed writes, in log order.
 *
 * - It starts from the receiver's cursor (asked at the start and after any refusal), so it
 *   resumes after a failover on either side, and the receiver's cursor check applies a batch
 *   once whatever is retried.
 * - Only committed entries go, and of them only this region's own writes to user keys (the
 *   ops stamped with this region): what came from other regions is never sent on, so nothing
 *   loops back.
 * - A range without such writes still moves the receiver's cursor (at most once a second), so
 *   lag figures stay true on an idle or receive-only region.
 */
import type { Logger } from 'pino'
import {
  encodeRegionBatch,
  type LogEntry,
  type Op,
  type RegionBatch,
  type RegionEntry,
} from '@kvstore/protocol'
import type { Store } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { GroupClient } from '../shards/group-client.js'

export type ShipState = 'idle' | 'connecting' | 'streaming' | 'failing' | 'copying'

export interface ShipStatus {
  to: string
  state: ShipState
  /** The receiver's cursor as last confirmed (null: not asked yet). */
  cursor: number | null
  /** This region's commit LSN. */
  commitLsn: number
  /** Committed entries past the confirmed cursor. */
  lagEntries: number
  /** Age of the oldest committed entry past the confirmed cursor (0 when caught up). */
  lagMs: number
  shippedEntries: number
  shippedBatches: number
  /** Records sent by the current or last re-seed (0: never re-seeded). */
  copiedRecords: number
  lastShippedAtMs: number | null
  error: string | null
}

const idlePollMs = 20
const cursorOnlyEveryMs = 1000
const readEntriesMax = 2048
/** Records per re-seed batch (it becomes one entry at the receiver, with its conflicts). */
const copyOpsMax = 500

export class RegionShipper {
  private state: ShipState = 'idle'
  private cursor: number | null = null
  /** The last cursor the receiver confirmed, kept while the cursor is asked again. */
  private lastConfirmed: number | null = null
  /** Entries through this LSN hold nothing of ours past the cursor (nothing to ship). */
  private clearThrough = 0
  /** Timestamp of the entry just past the cursor, when known. */
  private oldestPendingMs: number | null = null
  private shippedEntries = 0
  /** Records sent by the current (or last) re-seed. */
  private copiedRecords = 0
  private shippedBatches = 0
  private lastShippedAtMs: number | null = null
  private lastSentAt = 0
  private error: string | null = null
  private stopped = false
  private readonly stopping = new AbortController()
  private loop: Promise<void> | null = null
  private wake: (() => void) | null = null

  constructor(
    readonly to: string,
    private readonly region: string,
    private readonly store: Store,
    private readonly replicator: Replicator,
    private readonly client: GroupClient,
    private readonly batchBytesMax: number,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.loop = this.run()
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.stopping.abort()
    this.wake?.()
    await this.loop
  }

  /** The confirmed cursor, for compaction: the log must keep cursor + 1 on (null: unknown). */
  get confirmedCursor(): number | null {
    return this.cursor ?? this.lastConfirmed
  }

  status(): ShipStatus {
    const commitLsn = this.store.commitLsn
    // While failing, the cursor is asked again; the lag is counted from the last one confirmed.
    const known = this.cursor ?? this.lastConfirmed
    const behind =
      known === null ? null : Math.max(0, commitLsn - Math.max(known, this.clearThrough))
    return {
      to: this.to,
      state: this.state,
      cursor: known,
      commitLsn,
      lagEntries: behind ?? commitLsn,
      lagMs:
        behind === 0 || this.oldestPendingMs === null
          ? 0
          : Math.max(0, this.now() - this.oldestPendingMs),
      shippedEntries: this.shippedEntries,
      shippedBatches: this.shippedBatches,
      copiedRecords: this.copiedRecords,
      lastShippedAtMs: this.lastShippedAtMs,
      error: this.error,
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null
        resolve()
      }, ms)
      this.wake = () => {
        clearTimeout(timer)
        this.wake = null
        resolve()
      }
    })
  }

  private async run(): Promise<void> {
    let backoffMs = 100
    while (!this.stopped) {
      if (!this.replicator.isLeader) {
        // Only the leader ships; a new leader asks the receiver where to resume.
        this.state = 'idle'
        this.cursor = null
        this.lastConfirmed = null
        this.clearThrough = 0
        this.oldestPendingMs = null
        await this.sleep(200)
        continue
      }
      try {
        const progressed = await this.step()
        backoffMs = 100
        if (!progressed) await this.sleep(idlePollMs)
      } catch (err) {
        const message = (err as Error).message
        if (this.error !== message)
          this.log.warn({ to: this.to, err: message }, 'shipping to a region failed; retrying')
        this.error = message
        this.state = 'failing'
        // Ask the receiver again: a refusal may mean its cursor is elsewhere.
        if (this.cursor !== null) this.lastConfirmed = this.cursor
        this.cursor = null
        // Retry at least once a second: a healed link resumes within a second.
        await this.sleep(backoffMs)
        backoffMs = Math.min(1000, backoffMs * 2)
      }
    }
  }

  /** One round: returns true when it sent something (more may be waiting). */
  private async step(): Promise<boolean> {
    if (this.cursor === null) {
      this.state = 'connecting'
      const answer = await this.client.call<{ cursor: number }>(
        this.to,
        '/internal/v1/regions/cursor',
        { source: this.region },
        undefined,
        this.stopping.signal,
      )
      if (!Number.isSafeInteger(answer.cursor) || answer.cursor < 0)
        throw new Error(`region ${this.to} answered a cursor that is not an LSN`)
      this.cursor = answer.cursor
      this.oldestPendingMs = null
    }
    const cursor = this.cursor
    const commitLsn = this.store.commitLsn
    if (cursor >= commitLsn) {
      this.state = 'streaming'
      this.error = null
      this.oldestPendingMs = null
      return false
    }
    if (cursor + 1 < this.store.meta.logStartLsn) {
      // The log no longer reaches back to the receiver's cursor (it was cut off for longer than
      // logRetentionEntriesMax): re-seed it from a snapshot, then stream on from there.
      await this.copy(cursor)
      return true
    }
    const read = await this.store.readLog(cursor + 1, {
      entriesMax: readEntriesMax,
      bytesMax: this.batchBytesMax,
    })
    if (read.length === 0) return false
    const entries: RegionEntry[] = []
    let bytes = 0
    let through = cursor
    for (const entry of read) {
      if (entry.lsn > commitLsn) break
      const ops = this.ownOps(entry)
      const size = ops.reduce((n, op) => n + op.key.length + op.value.length + 64, 0)
      // At least one entry per batch, however large; then up to the byte budget.
      if (entries.length > 0 && bytes + size > this.batchBytesMax) break
      through = entry.lsn
      if (ops.length === 0) continue
      bytes += size
      entries.push({ lsn: entry.lsn, ops, timestampMs: entry.timestampMs })
    }
    if (through === cursor) return false
    const nowMs = this.now()
    // The lag is how long our oldest write not yet confirmed has waited (none: no lag).
    this.oldestPendingMs = entries[0]?.timestampMs ?? null
    if (entries.length === 0) this.clearThrough = Math.max(this.clearThrough, through)
    // Nothing of ours in the range: move the receiver's cursor now and then, not every tick
    // (a long range at once, so that the next read starts past it).
    if (
      entries.length === 0 &&
      nowMs - this.lastSentAt < cursorOnlyEveryMs &&
      through - cursor < readEntriesMax / 2
    )
      return false
    const batch: RegionBatch = {
      source: this.region,
      sourceEpoch: this.replicator.epoch,
      fromLsn: cursor + 1,
      throughLsn: through,
      entries,
      sourceCommitLsn: commitLsn,
      sentAtMs: nowMs,
    }
    this.state = 'streaming'
    const answer = await this.client.call<{ cursor: number }>(
      this.to,
      '/internal/v1/regions/ship',
      Buffer.from(encodeRegionBatch(batch)),
      undefined,
      this.stopping.signal,
    )
    if (!Number.isSafeInteger(answer.cursor) || answer.cursor < through)
      throw new Error(`region ${this.to} confirmed cursor ${answer.cursor}, not ${through}`)
    this.cursor = answer.cursor
    this.lastSentAt = nowMs
    this.lastShippedAtMs = nowMs
    this.shippedEntries += entries.length
    this.shippedBatches++
    this.error = null
    return true
  }

  /**
   * Sends the receiver every record of this region's own writes (tombstones included) from a
   * snapshot at LSN `at`, then moves its cursor to `at`. The snapshot's entries must be
   * committed, and none may be truncated while the copy runs, or it starts over.
   */
  private async copy(cursor: number): Promise<void> {
    this.state = 'copying'
    this.copiedRecords = 0
    const truncations = this.store.truncations
    const snapshot = await this.store.openSnapshot()
    try {
      const at = snapshot.appliedLsn
      const send = async (ops: Op[], last: boolean) => {
        // Nothing uncommitted leaves: wait (briefly) for the snapshot's entries to commit.
        for (let waited = 0; this.store.commitLsn < at; waited += 50) {
          if (waited > 10_000 || !this.replicator.isLeader || this.stopped)
            throw new Error(`the snapshot at LSN ${at} did not commit; the copy starts over`)
          await this.sleep(50)
        }
        if (this.store.truncations !== truncations)
          throw new Error('the log was truncated during the copy; it starts over')
        const nowMs = this.now()
        const batch: RegionBatch = {
          source: this.region,
          sourceEpoch: this.replicator.epoch,
          fromLsn: cursor + 1,
          throughLsn: at,
          entries: ops.length === 0 ? [] : [{ lsn: at, ops, timestampMs: nowMs }],
          sourceCommitLsn: Math.max(at, this.store.commitLsn),
          sentAtMs: nowMs,
          copy: true,
          copyLast: last,
        }
        await this.client.call(
          this.to,
          '/internal/v1/regions/ship',
          Buffer.from(encodeRegionBatch(batch)),
          undefined,
          this.stopping.signal,
        )
        this.copiedRecords += ops.length
      }
      let ops: Op[] = []
      let bytes = 0
      for await (const { key, record } of snapshot.records()) {
        if (this.stopped || !this.replicator.isLeader) throw new Error('no longer the leader')
        if (key[0] === 0x00 || record.stamp === undefined || record.stamp.region !== this.region)
          continue
        ops.push(
          record.tombstone
            ? { type: 2, key: Buffer.from(key), value: Buffer.alloc(0), stamp: record.stamp }
            : { type: 1, key: Buffer.from(key), value: record.value, stamp: record.stamp },
        )
        bytes += key.length + record.value.length + 64
        if (ops.length >= copyOpsMax || bytes >= this.batchBytesMax) {
          await send(ops, false)
          ops = []
          bytes = 0
        }
      }
      await send(ops, true)
      this.log.info(
        { to: this.to, atLsn: at, records: this.copiedRecords },
        're-seeded a region from a snapshot; streaming on from there',
      )
      this.cursor = at
      this.oldestPendingMs = null
      this.state = 'streaming'
      this.shippedBatches++
      this.lastShippedAtMs = this.now()
    } finally {
      await snapshot.close()
    }
  }

  /** This region's own writes to user keys in `entry`. */
  private ownOps(entry: LogEntry): Op[] {
    const ops: Op[] = []
    for (const op of entry.ops) {
      if (op.key[0] === 0x00 || op.stamp === undefined || op.stamp.region !== this.region) continue
      ops.push(op)
    }
    return ops
  }
}
