/**
 * Regions (multi-leader) on a node: stamps for this region's writes, shipping them to the
 * other regions (shipper.ts), applying theirs (receiver.ts), the conflict record, and the
 * figures `/v1/regions`, `/v1/cluster` and the metrics show.
 */
import { createHash } from 'node:crypto'
import type { Logger } from 'pino'
import type { RegionClock } from '@kvstore/core'
import {
  KvError,
  conflictIdOfKey,
  conflictPrefixBytes,
  decodeConflictRecord,
  decodeRegionCursor,
  encodeRegionCursor,
  regionShippedKey,
  formatStamp,
  type ConflictSide,
  type Region,
  type Stamp,
} from '@kvstore/protocol'
import type { Sequencer, Store, WriteOp } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { NodeConfig } from '../config.js'
import type { TlsSource } from '../security/tls.js'
import { GroupClient } from '../shards/group-client.js'
import { RegionReceiver } from './receiver.js'
import { RegionShipper, type ShipStatus } from './shipper.js'
import { loadRegionsSetup, type RegionsSetup } from './setup.js'

export { loadRegionsSetup, type RegionsSetup } from './setup.js'

export interface ReceiveStatus {
  from: string
  cursor: number
  lastAppliedAtMs: number | null
  /** The source's commit LSN when it cut the last batch applied here. */
  sourceCommitLsn: number | null
}

export interface RegionsView {
  region: string
  leader: boolean
  regions: Region[]
  shipping: ShipStatus[]
  receiving: ReceiveStatus[]
  conflicts: { recorded: number; localLost: number; remoteLost: number; collected: number }
}

export interface ConflictView {
  id: string
  key: string
  keyBase64: string
  detectedIn: string
  lsn: number
  atMs: number
  winner: SideView
  loser: SideView
}

interface SideView {
  stamp: string
  region: string
  deleted: boolean
  value: string | null
  valueBase64: string | null
}

function sideView(side: ConflictSide): SideView {
  return {
    stamp: formatStamp(side.stamp),
    region: side.stamp.region,
    deleted: side.deleted,
    value: side.deleted ? null : side.value.toString('utf8'),
    valueBase64: side.deleted ? null : side.value.toString('base64'),
  }
}

const conflictTrimEveryMs = 5000
/** The leader records another region's confirmed cursor once it has moved this far. */
const shippedRecordEveryEntries = 1000
/** Tombstones collected per entry (one entry, one quorum write). */
const tombstonesPerEntry = 500

export class Regions {
  readonly receiver: RegionReceiver
  readonly client: GroupClient
  private shippers: RegionShipper[] = []
  private trimTimer: NodeJS.Timeout | null = null
  private trimming = false
  private gcTimer: NodeJS.Timeout | null = null
  private collecting = false
  /** Tombstones collected by this node as leader, and seen at the last scan. */
  readonly tombstones = { collected: 0, kept: 0 }
  /** Conflict records on this node (counted at the start, then kept up to date). */
  private recorded = 0
  private collected = 0
  private known: Set<string>

  constructor(
    private setup: RegionsSetup,
    private readonly store: Store,
    private readonly replicator: Replicator,
    private readonly config: NodeConfig,
    tls: TlsSource | null,
    private readonly log: Logger,
    /** The clock the sequencer stamps this region's writes with (`regionStamper`). */
    readonly clock: RegionClock,
    private readonly sequencer: Sequencer,
  ) {
    this.known = new Set(setup.remotes.map((r) => r.id))
    // Per attempt: a quorum write on the receiving region, and some room.
    this.client = new GroupClient(
      () => this.setup.remotes,
      tls,
      config.ackTimeoutMs + 5000,
      'region',
      true,
    )
    this.receiver = new RegionReceiver(
      setup.region,
      () => this.known,
      this.clock,
      store,
      sequencer,
      replicator,
      config,
      (n) => {
        this.recorded += n
      },
    )
  }

  get region(): string {
    return this.setup.region
  }

  /** The region a member of the regions file belongs to (undefined: none). */
  regionOfMember(id: string): string | undefined {
    return this.setup.regions.find((r) => r.members.some((m) => m.id === id))?.id
  }

  /**
   * Refuses a call for `source` from a member of another region: a region may ship only its
   * own writes, and ask only for its own cursor (`member` null: plaintext, auth off).
   */
  checkCaller(member: string | null, source: string): void {
    if (member === null) return
    const region = this.regionOfMember(member)
    if (region !== source)
      throw new KvError(
        'KV_ERR_PERMISSION_DENIED',
        `member ${member} is in region ${region ?? '(none)'}; it may not act for region ${source}`,
        { member, source },
      )
  }

  /** Member ids of the other regions (who may call the region-peer routes). */
  get peers(): ReadonlySet<string> {
    return this.setup.peers
  }

  async start(): Promise<void> {
    this.recorded = await this.countConflicts()
    this.startShippers()
    this.trimTimer = setInterval(() => void this.trimConflicts(), conflictTrimEveryMs)
    this.trimTimer.unref()
    const gcEveryMs = Math.max(500, Math.min(60_000, this.config.regionTombstoneGcMs / 4))
    this.gcTimer = setInterval(() => void this.collectTombstones(), gcEveryMs)
    this.gcTimer.unref()
    // Compaction keeps what a region has not confirmed, within logRetentionEntriesMax (a
    // region cut off for longer is re-seeded rather than let the log grow without bound).
    const previous = this.replicator.compactionHold
    this.replicator.compactionHold = (retainFrom) =>
      this.retainFrom(previous?.(retainFrom) ?? retainFrom)
  }

  /**
   * Where compaction may start the log on this member: no further than the first entry some
   * other region has not confirmed (as the leader knows it, or as recorded in the log for every
   * member), unless that region is more than logRetentionEntriesMax behind: then the log goes
   * on (it never grows without bound) and that region must be re-seeded.
   */
  private retainFrom(wanted: number): number {
    const floor = this.store.commitLsn - this.config.logRetentionEntriesMax
    let keep = wanted
    for (const r of this.setup.remotes) {
      const live = this.replicator.isLeader
        ? (this.shippers.find((s) => s.to === r.id)?.confirmedCursor ?? null)
        : null
      const recorded = this.shippedCursor(r.id)
      const confirmed = Math.max(live ?? -1, recorded ?? -1)
      const from = confirmed < 0 ? this.store.meta.logStartLsn : confirmed + 1
      if (from > floor) keep = Math.min(keep, from)
    }
    return keep
  }

  /** How far region `to` had confirmed this region's log when the leader last recorded it. */
  private shippedCursor(to: string): number | null {
    const record = this.store.getSync(regionShippedKey(to))
    if (record === null || record.tombstone) return null
    return decodeRegionCursor(record.value).lsn
  }

  /** The leader records the other regions' confirmed cursors in the log (every few seconds). */
  private async recordShipped(): Promise<void> {
    if (!this.replicator.isLeader) return
    const ops: WriteOp[] = []
    for (const s of this.shippers) {
      const cursor = s.confirmedCursor
      const recorded = this.shippedCursor(s.to)
      // Every few thousand entries is plenty for compaction, and an idle region writes none
      // (recording one moves the cursor again: it must not feed itself).
      if (cursor === null || (recorded !== null && cursor - recorded < shippedRecordEveryEntries))
        continue
      ops.push({
        type: 'put',
        key: regionShippedKey(s.to),
        value: Buffer.from(
          encodeRegionCursor({
            source: s.to,
            lsn: cursor,
            appliedAtMs: Date.now(),
            sourceCommitLsn: 0,
            sourceSentAtMs: 0,
            caughtUpSentAtMs: 0,
          }),
        ),
      })
    }
    if (ops.length === 0) return
    const result = await this.sequencer.write({ kind: 'batch', ops, origin: 'region' })
    await this.replicator.waitForAck(result.lsn, result.epoch, 'quorum', this.config.ackTimeoutMs)
  }

  private startShippers(): void {
    this.shippers = this.setup.remotes.map(
      (r) =>
        new RegionShipper(
          r.id,
          this.setup.region,
          this.store,
          this.replicator,
          this.client,
          this.config.regionShipBatchBytesMax,
          this.log,
        ),
    )
    for (const s of this.shippers) s.start()
  }

  /** SIGHUP: the regions file again (new URLs, a new region). */
  async reload(): Promise<void> {
    const next = loadRegionsSetup(
      this.config.regions as string,
      this.setup.region,
      this.config.nodeId,
      null,
    )
    const before = this.setup.remotes.map((r) => r.id).join(',')
    this.setup = next
    this.known = new Set(next.remotes.map((r) => r.id))
    // Calls go to the file's URLs from now on, not to leaders found through the old ones.
    this.client.forgetLeaders()
    if (next.remotes.map((r) => r.id).join(',') !== before) {
      await Promise.all(this.shippers.map((s) => s.stop()))
      this.startShippers()
    }
    this.log.info({ regions: next.regions.map((r) => r.id) }, 'regions file reloaded')
  }

  async stop(): Promise<void> {
    if (this.trimTimer) clearInterval(this.trimTimer)
    if (this.gcTimer) clearInterval(this.gcTimer)
    await Promise.all(this.shippers.map((s) => s.stop()))
    await this.client.close()
  }

  /** Conflict records this region keeps (counted at the start and by each trim pass). */
  get conflictRecords(): number {
    return this.recorded
  }

  view(): RegionsView {
    const c = this.receiver.figures.conflicts
    return {
      region: this.setup.region,
      leader: this.replicator.isLeader,
      regions: this.setup.regions,
      shipping: this.replicator.isLeader ? this.shippers.map((s) => s.status()) : [],
      receiving: this.setup.remotes.map((r) => {
        const cursor = this.receiver.cursorOf(r.id)
        return {
          from: r.id,
          cursor: this.receiver.progressOf(r.id).lsn,
          lastAppliedAtMs: cursor?.appliedAtMs ?? null,
          sourceCommitLsn: cursor?.sourceCommitLsn ?? null,
        }
      }),
      conflicts: {
        recorded: this.recorded,
        localLost: c.local_lost,
        remoteLost: c.remote_lost,
        collected: this.collected,
      },
    }
  }

  /** Shipping figures for the metrics (leader only; empty on a follower). */
  shipping(): ShipStatus[] {
    return this.replicator.isLeader ? this.shippers.map((s) => s.status()) : []
  }

  /**
   * A digest of the live user keys (key, value, stamp), in key order: equal on every region
   * once they have converged, whatever their LSNs. Tombstones and reserved keys are left out.
   */
  async digest(): Promise<{ region: string; appliedLsn: number; digest: string; keys: number }> {
    const snapshot = await this.store.openSnapshot()
    try {
      const hash = createHash('sha256')
      let keys = 0
      const len = Buffer.alloc(4)
      for await (const { key, record } of snapshot.records()) {
        if (key[0] === 0x00 || record.tombstone) continue
        keys++
        len.writeUInt32BE(key.length)
        hash.update(len)
        hash.update(key)
        len.writeUInt32BE(record.value.length)
        hash.update(len)
        hash.update(record.value)
        hash.update(record.stamp === undefined ? '-' : formatStamp(record.stamp))
        hash.update('\n')
      }
      return {
        region: this.setup.region,
        appliedLsn: snapshot.appliedLsn,
        digest: hash.digest('hex'),
        keys,
      }
    } finally {
      await snapshot.close()
    }
  }

  /** One page of the conflict record, oldest first. */
  async conflicts(
    after: string | null,
    limit: number,
  ): Promise<{ conflicts: ConflictView[]; next: string | null }> {
    const page = await this.store.list({
      prefix: conflictPrefixBytes,
      ...(after !== null
        ? { after: Buffer.concat([conflictPrefixBytes, Buffer.from(after, 'utf8')]) }
        : {}),
      limit,
    })
    const conflicts: ConflictView[] = []
    for (const item of page.items) {
      const id = conflictIdOfKey(Buffer.from(item.key))
      if (id === null || item.record === undefined) continue
      const c = decodeConflictRecord(item.record.value)
      conflicts.push({
        id,
        key: c.key.toString('utf8'),
        keyBase64: c.key.toString('base64'),
        detectedIn: c.detectedIn,
        lsn: c.lsn,
        atMs: c.detectedAtMs,
        winner: sideView(c.winner),
        loser: sideView(c.loser),
      })
    }
    const last = conflicts[conflicts.length - 1]
    return { conflicts, next: page.more && last !== undefined ? last.id : null }
  }

  private async countConflicts(): Promise<number> {
    let n = 0
    let after: Buffer | undefined
    for (;;) {
      const page = await this.store.list({
        prefix: conflictPrefixBytes,
        ...(after !== undefined ? { after } : {}),
        limit: 1000,
      })
      n += page.items.length
      const last = page.items[page.items.length - 1]
      if (!page.more || last === undefined) return n
      after = Buffer.from(last.key)
    }
  }

  /**
   * The time before which tombstones may be collected now: older than regionTombstoneGcMs, and
   * every other region caught up with its log (as of a batch it cut) later than the delete by
   * more than the clock skew allowed and the ack timeout, so no write older than the delete
   * can still arrive from anywhere. Null: some region has never caught up (keep them all).
   */
  tombstoneHorizonMs(nowMs: number): number | null {
    let horizon = nowMs - this.config.regionTombstoneGcMs
    const margin = this.config.regionClockSkewMaxMs + this.config.ackTimeoutMs
    for (const r of this.setup.remotes) {
      const caughtUp = this.receiver.progressOf(r.id).caughtUpSentAtMs
      if (caughtUp === 0) return null
      horizon = Math.min(horizon, caughtUp - margin)
    }
    return horizon
  }

  /** The leader deletes tombstones outright once no region can still send an older write. */
  async collectTombstones(nowMs = Date.now()): Promise<number> {
    if (this.collecting || !this.replicator.isLeader) return 0
    this.collecting = true
    let collected = 0
    try {
      const horizon = this.tombstoneHorizonMs(nowMs)
      const due: Buffer[] = []
      let kept = 0
      const snapshot = await this.store.openSnapshot()
      try {
        for await (const { key, record } of snapshot.records()) {
          if (key[0] === 0x00 || !record.tombstone || record.stamp === undefined) continue
          if (horizon !== null && record.stamp.wallMs < horizon) due.push(Buffer.from(key))
          else kept++
        }
      } finally {
        await snapshot.close()
      }
      this.tombstones.kept = kept
      for (let i = 0; i < due.length && this.replicator.isLeader; i += tombstonesPerEntry) {
        const keys = due.slice(i, i + tombstonesPerEntry)
        let purged = 0
        const result = await this.sequencer.write({
          kind: 'batch',
          origin: 'region',
          ops: [],
          compute: (view) => {
            // Only what is still a due tombstone: a write since the scan wins.
            const ops: WriteOp[] = []
            for (const key of keys) {
              const record = view.read(key)
              if (record?.tombstone === true && record.stamp !== undefined && horizon !== null)
                if (record.stamp.wallMs < horizon) ops.push({ type: 'delete', key, purge: true })
            }
            purged = ops.length
            // An entry needs one op: a harmless reserved marker when nothing is left to purge.
            if (ops.length === 0) ops.push({ type: 'delete', key: tombstoneMarkerKey, purge: true })
            return ops
          },
        })
        await this.replicator.waitForAck(
          result.lsn,
          result.epoch,
          'quorum',
          this.config.ackTimeoutMs,
        )
        collected += purged
        this.tombstones.collected += purged
      }
      return collected
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'collecting tombstones failed')
      return collected
    } finally {
      this.collecting = false
    }
  }

  /** The leader deletes the oldest conflict records past regionConflictsMax. */
  private async trimConflicts(): Promise<void> {
    if (this.trimming) return
    this.trimming = true
    try {
      await this.recordShipped()
      this.recorded = await this.countConflicts()
      const excess = this.recorded - this.config.regionConflictsMax
      if (excess <= 0 || !this.replicator.isLeader) return
      const page = await this.store.list({
        prefix: conflictPrefixBytes,
        limit: Math.min(excess, 1000),
      })
      const ops: WriteOp[] = page.items.map((item) => ({
        type: 'delete',
        key: Buffer.from(item.key),
      }))
      if (ops.length === 0) return
      const result = await this.sequencer.write({ kind: 'batch', ops, origin: 'region' })
      await this.replicator.waitForAck(result.lsn, result.epoch, 'quorum', this.config.ackTimeoutMs)
      this.collected += ops.length
      this.recorded -= ops.length
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'collecting old conflict records failed')
    } finally {
      this.trimming = false
    }
  }
}

/** The sequencer's stamper: this region's writes get a stamp above what they overwrite. */
const tombstoneMarkerKey = Buffer.from('\u0000region/tombstone-gc', 'utf8')

export function regionStamper(clock: RegionClock): (current: Stamp | undefined) => Stamp {
  return (current) => clock.next(Date.now(), current)
}
