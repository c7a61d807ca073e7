/**
 * Range handoff: what moves the data when the ring changes (ring-state.ts in the core says
 * who owns what at each step; ring-agreement.ts makes the steps).
 *
 * The member a change names drives it: a joining member (or the new member of a replace)
 * pulls the ranges it gains, a leaving member pushes the ranges it loses. While the ring is at
 * the `streaming` step, writes already reach both the old and new owners, so the stream only
 * has to carry what was written before:
 *
 * - pull (join, replace): for each member the newcomer displaces somewhere (the one that drops
 *   out of a key's preference list when it comes in), it asks that member for its records of
 *   exactly the keys concerned (HandoffPull, in key order, in pages of bounded size, from a
 *   LevelDB scan). A key acknowledged before the change is on W of the old owners: either the
 *   displaced one holds it and hands it over, or the W copies are on owners that stay. When the
 *   displaced member is down (a replace of a dead member), the newcomer asks every other owner
 *   instead, each for its copies of the keys the dead one held; all of them must answer.
 * - push (leave): the leaving member scans its own keys and sends each to the member that
 *   takes its place in the key's preference list (HandoffPush).
 *
 * Before serving a pull (or starting a push) the source waits for the writes in flight to land,
 * so a write it took under the older ring, before it learned the change, is in what it sends.
 * Progress (a cursor per stream) is kept durably, so a driver that restarts resumes where it
 * was; it is reported to every member about once a second for their GET /v1/cluster. Streams
 * are paced to --handoff-max-rate and cut into messages of bounded size.
 *
 * Once every stream is done the driver moves the ring to `switched` (reads use the new owners;
 * writes still reach both), waits until every live member holds it, and ends the change (the
 * leaving or replaced member is removed). If the driver dies meanwhile, the change stays in
 * flight: writes to the pending ranges then need every old owner (W among them and W + 1 in
 * all, the newcomer being down), reads are unaffected; the driver resumes on restart, or an
 * admin aborts a join or replace by removing the new member.
 */
import {
  handoffStreams,
  handoffTargets,
  handsOver,
  invariant,
  ownersBefore,
  planAdvance,
  type RingChange,
  type RingPlacement,
  type RingState,
} from '@kvstore/core'
import {
  KvError,
  decodeVersionedRecord,
  type Handoff as HandoffView,
  type HandoffProgressRecord,
  type HandoffStateRecord,
  type KeyRecord,
  type PeerReply,
} from '@kvstore/protocol'
import { dataPrefix, toState, type LeaderlessContext, type State } from './context.js'
import type { LocalReplica } from './local-replica.js'
import type { PeerHealth } from './peer-health.js'
import type { RingSync } from './ring-agreement.js'
import type { RingStore, Topology } from './topology.js'
import {
  aeCallTimeoutMs,
  aeRecordsPerMessageMax,
  handoffBytesPerMessageMax,
  handoffMergeConcurrency,
  handoffProgressIntervalMs,
  handoffRetryMs,
  handoffScanEntriesMax,
  ringCallTimeoutMs,
  ringSwitchWaitMs,
} from '../limits.js'
import { recordBytes } from './message-size.js'

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref())

/** The change moved on (advanced, aborted) while a step of it was being proposed. */
class ChangeMovedOn extends Error {}

function sameChange(a: RingChange | null, b: RingChange): boolean {
  return a !== null && a.kind === b.kind && a.member === b.member && a.startedAtMs === b.startedAtMs
}

export class Handoff {
  private driving: Promise<void> | null = null
  /** The progress of the change this member drives (null when it drives none). */
  private progress: HandoffStateRecord | null = null
  /** The progress other members reported of the change they drive (current change only). */
  private readonly heard = new Map<string, HandoffProgressRecord>()
  private lastReportMs = 0
  private paceStartMs = 0
  private pacedBytes = 0
  private totals: { version: number; ranges: number } | null = null

  constructor(
    private readonly ctx: LeaderlessContext,
    private readonly topology: Topology,
    private readonly replica: LocalReplica,
    private readonly peers: PeerHealth,
    private readonly sync: RingSync,
    private readonly ringStore: RingStore,
  ) {}

  /** The ring changed (or was loaded): drive the change if it is this member's. */
  onRing(ring: RingState): void {
    const change = ring.change
    for (const [member, p] of this.heard) {
      if (change === null || change.member !== member || change.startedAtMs !== p.startedAtMs)
        this.heard.delete(member)
    }
    if (change !== null && change.member === this.ctx.self) this.ensureDriving()
  }

  private ensureDriving(): void {
    if (this.driving !== null || this.ctx.stopped) return
    const run = this.drive().finally(() => {
      this.driving = null
    })
    this.driving = run
    this.ctx.runInBackground(run)
  }

  /** Runs the change this member drives, step by step, until it ends or the node stops. */
  private async drive(): Promise<void> {
    while (!this.ctx.stopped) {
      const ring = this.topology.ring
      const change = ring?.change ?? null
      if (ring === null || change === null || change.member !== this.ctx.self) return
      try {
        if (change.phase === 'streaming') {
          await this.stream(ring, change)
          await this.advance(change, 'streaming')
        } else {
          await this.waitForSwitch(ring)
          await this.advance(change, 'switched')
          await this.ringStore.saveHandoff(null)
          this.ctx.log.info(
            {
              kind: change.kind,
              keys: this.progress?.keys ?? 0,
              bytes: this.progress?.bytes ?? 0,
              tookMs: this.ctx.now() - change.startedAtMs,
            },
            'ring change done',
          )
          this.progress = null
        }
      } catch (err) {
        if (this.ctx.stopped) return
        if (err instanceof ChangeMovedOn) continue
        this.ctx.log.warn({ err, change }, 'handoff step failed; retrying')
        await sleep(handoffRetryMs)
      }
    }
  }

  /** Proposes the next step of `change` if the ring is still at `phase` of it. */
  private async advance(change: RingChange, phase: RingChange['phase']): Promise<void> {
    try {
      await this.sync.propose((base) => {
        if (!sameChange(base.change, change) || base.change?.phase !== phase)
          throw new ChangeMovedOn('the change moved on')
        return planAdvance(base)
      })
    } catch (err) {
      if (err instanceof ChangeMovedOn) return
      throw err
    }
  }

  // ---- driving: streams --------------------------------------------------------------------

  private async loadProgress(change: RingChange): Promise<HandoffStateRecord> {
    if (this.progress?.member === change.member && this.progress.startedAtMs === change.startedAtMs)
      return this.progress
    const stored = await this.ringStore.loadHandoff()
    this.progress =
      stored !== null &&
      stored.member === change.member &&
      stored.startedAtMs === change.startedAtMs
        ? stored
        : {
            member: change.member,
            startedAtMs: change.startedAtMs,
            cursors: [],
            keys: 0,
            bytes: 0,
            rangesDone: 0,
          }
    return this.progress
  }

  private cursor(
    state: HandoffStateRecord,
    displaced: string,
    source: string,
  ): HandoffStateRecord['cursors'][number] {
    let c = state.cursors.find((x) => x.displaced === displaced && x.source === source)
    if (c === undefined) {
      c = { displaced, source, after: new Uint8Array(0), done: false }
      state.cursors.push(c)
    }
    return c
  }

  private async stream(ring: RingState, change: RingChange): Promise<void> {
    const placement = this.topology.placement
    invariant(placement.version === ring.version, 'streams run on the current ring')
    const state = await this.loadProgress(change)
    this.paceStartMs = this.ctx.now()
    this.pacedBytes = 0
    if (change.kind === 'leave') await this.push(placement, state)
    else await this.pull(ring, placement, state)
    this.report(true)
  }

  /** Join or replace: pulls the keys this member gains from each member it displaces. */
  private async pull(
    ring: RingState,
    placement: RingPlacement,
    state: HandoffStateRecord,
  ): Promise<void> {
    const self = this.ctx.self
    const streams = [...handoffStreams(placement, self)].sort((a, b) => (a[0] < b[0] ? -1 : 1))
    for (const [displaced, arcs] of streams) {
      const whole = this.cursor(state, displaced, displaced)
      if (whole.done) continue
      // The displaced member has them all; when it is down, every other owner gives its share.
      const sources = this.peers.isUp(displaced)
        ? [displaced]
        : ownersBefore(ring)
            .map((m) => m.id)
            .filter((id) => id !== displaced && id !== self)
      for (const source of sources) {
        const c = this.cursor(state, displaced, source)
        while (!c.done) {
          if (this.ctx.stopped) throw new Error('stopping')
          const reply = await this.peers.call(
            source,
            {
              kind: 'handoffPull',
              target: self,
              displaced,
              after: c.after,
              bytesMax: this.messageBytes,
            },
            aeCallTimeoutMs,
          )
          if (reply.kind !== 'handoffBatch')
            throw new KvError('KV_ERR_BAD_FRAME', `${source} answered a pull with ${reply.kind}`)
          const states = reply.records.map(
            (r) => [this.replica.keyOf(r.key), toState(r.record)] as [string, State],
          )
          await this.replica.mergeMany(states, source, handoffMergeConcurrency)
          let bytes = 0
          for (const [key, s] of states) bytes += recordBytes(key, s)
          this.count(state, states.length, bytes)
          c.after = reply.next
          c.done = reply.done
          await this.ringStore.saveHandoff(state)
          this.report(false)
          await this.pace(bytes)
        }
      }
      whole.done = true
      state.rangesDone += arcs
      await this.ringStore.saveHandoff(state)
      this.report(true)
    }
  }

  /** Leave: pushes every key this member loses to the member that takes its place. */
  private async push(placement: RingPlacement, state: HandoffStateRecord): Promise<void> {
    const self = this.ctx.self
    const c = this.cursor(state, self, self)
    // Writes this member took under the older ring land before the scan passes their keys.
    await this.replica.drain()
    const targets = handoffTargets(placement, self)
    const batches = new Map<string, { records: KeyRecord[]; bytes: number }>()
    const flush = async (target: string) => {
      const batch = batches.get(target)
      if (batch === undefined || batch.records.length === 0) return
      batches.delete(target)
      const reply = await this.peers.call(
        target,
        { kind: 'handoffPush', records: batch.records },
        aeCallTimeoutMs,
      )
      if (reply.kind !== 'handoffAck')
        throw new KvError('KV_ERR_BAD_FRAME', `${target} answered a push with ${reply.kind}`)
      this.count(state, batch.records.length, batch.bytes)
      await this.pace(batch.bytes)
    }
    while (!c.done) {
      if (this.ctx.stopped) throw new Error('stopping')
      const page = await this.ctx.store.list({
        prefix: Buffer.from([dataPrefix]),
        ...(c.after.length > 0
          ? { after: Buffer.concat([Buffer.from([dataPrefix]), c.after]) }
          : {}),
        limit: handoffScanEntriesMax,
      })
      for (const item of page.items) {
        const keyBytes = item.key.subarray(1)
        const key = keyBytes.toString('utf8')
        const lists = placement.listsOf(key)
        if (!lists.before.includes(self) || lists.after.includes(self)) continue
        const record = decodeVersionedRecord(item.record.value)
        const size = recordBytes(key, record)
        for (const target of lists.after.filter((m) => !lists.before.includes(m))) {
          let batch = batches.get(target)
          if (batch === undefined) batches.set(target, (batch = { records: [], bytes: 0 }))
          batch.records.push({ key: Buffer.from(keyBytes), record })
          batch.bytes += size
          if (batch.bytes >= this.messageBytes || batch.records.length >= aeRecordsPerMessageMax)
            await flush(target)
        }
      }
      for (const target of [...batches.keys()]) await flush(target)
      const last = page.items[page.items.length - 1]
      if (last !== undefined) c.after = Buffer.from(last.key.subarray(1))
      c.done = !page.more || page.items.length === 0
      await this.ringStore.saveHandoff(state)
      this.report(false)
    }
    let arcs = 0
    for (const n of targets.values()) arcs += n
    state.rangesDone = arcs
    await this.ringStore.saveHandoff(state)
  }

  /** Bytes per message: at most a second's worth at --handoff-max-rate, so pacing is smooth. */
  private get messageBytes(): number {
    return Math.min(handoffBytesPerMessageMax, this.ctx.config.handoffBytesPerSMax)
  }

  private count(state: HandoffStateRecord, keys: number, bytes: number): void {
    state.keys += keys
    state.bytes += bytes
    this.ctx.stats.handoffKeysStreamed += keys
    this.ctx.stats.handoffBytesStreamed += bytes
  }

  /** Keeps the streams within --handoff-max-rate. */
  private async pace(bytes: number): Promise<void> {
    this.pacedBytes += bytes
    const due = this.paceStartMs + (this.pacedBytes / this.ctx.config.handoffBytesPerSMax) * 1000
    const wait = due - this.ctx.now()
    if (wait > 0) await sleep(Math.min(wait, 10_000))
  }

  /** Tells every member how far this member's handoff got (at most once a second, unless `now`). */
  private report(now: boolean): void {
    const state = this.progress
    const ring = this.topology.ring
    if (state === null || ring === null) return
    if (!now && this.ctx.now() - this.lastReportMs < handoffProgressIntervalMs) return
    this.lastReportMs = this.ctx.now()
    const progress: HandoffProgressRecord = {
      member: state.member,
      startedAtMs: state.startedAtMs,
      rangesTotal: this.rangesTotal(),
      rangesDone: state.rangesDone,
      keys: state.keys,
      bytes: state.bytes,
    }
    for (const m of ring.members) {
      if (m.id === this.ctx.self) continue
      this.ctx.runInBackground(
        this.peers
          .call(m.id, { kind: 'handoffProgress', progress }, ringCallTimeoutMs)
          .catch(() => {}),
      )
    }
  }

  /** Every live member holds the switched ring (or the wait is over): the change may end. */
  private async waitForSwitch(ring: RingState): Promise<void> {
    const deadline = this.ctx.now() + ringSwitchWaitMs
    for (;;) {
      const holders = await this.sync.pushCommit(ring)
      const missing = ring.members
        .map((m) => m.id)
        .filter((id) => !holders.has(id) && this.peers.isUp(id))
      if (missing.length === 0) return
      if (this.ctx.now() > deadline || this.ctx.stopped) {
        this.ctx.log.warn(
          { missing, ringVersion: ring.version },
          'ending the ring change though some live members did not confirm the switched ring',
        )
        return
      }
      await sleep(250)
    }
  }

  // ---- serving -----------------------------------------------------------------------------

  /**
   * Serves a pull: this member's records of the keys `target` gains from `displaced`, in key
   * order after the cursor, up to the byte budget (from a LevelDB scan of bounded length).
   */
  async servePull(body: {
    target: string
    displaced: string
    after: Uint8Array
    bytesMax: number
  }): Promise<PeerReply> {
    const placement = this.topology.placement
    if (placement.ring.change === null)
      return { kind: 'handoffBatch', records: [], next: body.after, done: true }
    // Writes taken under the older ring land first (see the file comment).
    await this.replica.drain()
    const self = this.ctx.self
    const bytesMax = Math.max(1, Math.min(body.bytesMax, handoffBytesPerMessageMax))
    const page = await this.ctx.store.list({
      prefix: Buffer.from([dataPrefix]),
      ...(body.after.length > 0
        ? { after: Buffer.concat([Buffer.from([dataPrefix]), body.after]) }
        : {}),
      limit: handoffScanEntriesMax,
    })
    const records: KeyRecord[] = []
    let bytes = 0
    let next: Uint8Array = body.after
    let cut = false
    for (const item of page.items) {
      if (bytes >= bytesMax || records.length >= aeRecordsPerMessageMax) {
        cut = true
        break
      }
      const keyBytes = item.key.subarray(1)
      next = keyBytes
      const key = keyBytes.toString('utf8')
      if (!handsOver(placement.listsOf(key), self, body.target, body.displaced)) continue
      const record = decodeVersionedRecord(item.record.value)
      records.push({ key: Buffer.from(keyBytes), record })
      bytes += recordBytes(key, record)
    }
    return {
      kind: 'handoffBatch',
      records,
      next: Buffer.from(next),
      done: !cut && (!page.more || page.items.length === 0),
    }
  }

  /** Serves a push from the leaving member: merges the keys this member gains from it. */
  async servePush(from: string, records: KeyRecord[]): Promise<PeerReply> {
    const change = this.topology.placement.ring.change
    if (change === null || change.kind !== 'leave' || change.member !== from) {
      throw new KvError(
        'KV_ERR_BAD_FRAME',
        `${from} pushed handoff records, but it is not the member leaving the ring`,
      )
    }
    const merged = await this.replica.mergeMany(
      records.map((r) => [this.replica.keyOf(r.key), toState(r.record)] as [string, State]),
      from,
      handoffMergeConcurrency,
    )
    return { kind: 'handoffAck', merged }
  }

  /** A driver's progress report. */
  noteProgress(from: string, progress: HandoffProgressRecord): PeerReply {
    const change = this.topology.ring?.change ?? null
    if (
      change !== null &&
      change.member === from &&
      progress.member === from &&
      progress.startedAtMs === change.startedAtMs
    )
      this.heard.set(from, progress)
    return { kind: 'handoffAck', merged: 0 }
  }

  private rangesTotal(): number {
    const placement = this.topology.placementOrNull
    const change = placement?.ring.change ?? null
    if (placement === null || change === null) return 0
    if (this.totals?.version === placement.version) return this.totals.ranges
    const counts =
      change.kind === 'leave'
        ? handoffTargets(placement, change.member)
        : handoffStreams(placement, change.member)
    let ranges = 0
    for (const n of counts.values()) ranges += n
    this.totals = { version: placement.version, ranges }
    return ranges
  }

  /** The handoff in flight, as GET /v1/cluster and /admin/v1/members show it. */
  view(): HandoffView[] {
    const change = this.topology.ring?.change ?? null
    if (change === null) return []
    const own =
      this.progress?.member === change.member && this.progress.startedAtMs === change.startedAtMs
        ? this.progress
        : null
    const heard = this.heard.get(change.member)
    const rangesTotal = this.rangesTotal()
    return [
      {
        member: change.member,
        kind: change.kind,
        replacing: change.replacing,
        startedAtMs: change.startedAtMs,
        rangesTotal,
        // Once switched, every range was handed over.
        rangesDone:
          change.phase === 'switched' ? rangesTotal : (own?.rangesDone ?? heard?.rangesDone ?? 0),
        keysStreamed: own?.keys ?? heard?.keys ?? 0,
        bytesStreamed: own?.bytes ?? heard?.bytes ?? 0,
      },
    ]
  }
}
