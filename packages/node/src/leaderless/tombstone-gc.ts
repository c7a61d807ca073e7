/**
 * Tombstone collection: a tombstone older than `tombstoneGcMs` is dropped once every other
 * replica of its key confirms it holds the same tombstone or nothing. Eligibility and the
 * confirmation rule are the core's (leaderless/tombstones.ts); this is the I/O around them.
 */
import {
  collectionConfirmed,
  stateDigest,
  tombstoneCollectable,
  type ConfirmationAnswer,
} from '@kvstore/core'
import type { LeaderlessContext, State } from './context.js'
import type { LocalReplica } from './local-replica.js'
import type { PeerHealth } from './peer-health.js'

export class TombstoneCollector {
  private gcRunning = false

  constructor(
    private readonly ctx: LeaderlessContext,
    private readonly replica: LocalReplica,
    private readonly peers: PeerHealth,
  ) {}

  /**
   * Collects tombstones older than tombstoneGcMs, each only once every other replica of its
   * key confirms that it holds the same tombstone (or nothing at all). A replica that is down
   * or cut off, and may still hold the deleted value, keeps the tombstone alive here until it
   * has had it (from a hint or anti-entropy), so the value cannot come back however long the
   * outage. The age bound keeps hints (which expire after hintWindowMs) from delivering an
   * older value afterwards.
   */
  async run(): Promise<void> {
    // Not while the ring changes: a key's replicas are two sets then, and a member taking a
    // key over may get it only from the stream. Collection resumes once the change is done.
    const placement = this.ctx.placementOrNull
    if (this.gcRunning || placement === null || placement.ring.change !== null) return
    this.gcRunning = true
    try {
      await this.collectTombstonesOnce()
    } finally {
      this.gcRunning = false
    }
  }

  private async collectTombstonesOnce(): Promise<void> {
    let collected = 0
    let waiting = 0
    for (const key of this.replica.index.tombstoned()) {
      if (this.ctx.stopped) break
      const state = await this.replica.loadState(key)
      if (
        state === null ||
        !tombstoneCollectable(state, this.ctx.now(), this.ctx.config.tombstoneGcMs)
      )
        continue
      const digest = stateDigest(state)
      const others = this.replica.preferenceList(key).filter((m) => m !== this.ctx.self)
      const keyBytes = Buffer.from(key, 'utf8')
      const answers = await Promise.all(
        others.map(async (member): Promise<ConfirmationAnswer<Uint8Array>> => {
          if (!this.peers.isUp(member)) return 'unreachable'
          try {
            const reply = await this.peers.call(member, { kind: 'fetch', key: keyBytes })
            return reply.kind === 'fetchReply' ? (reply.record as State | null) : 'unreachable'
          } catch {
            return 'unreachable'
          }
        }),
      )
      if (!collectionConfirmed(state, answers)) {
        waiting++
        continue
      }
      const done = await this.replica.locked(key, async () => {
        const now = await this.replica.loadState(key)
        if (now === null || stateDigest(now) !== digest) return false
        await this.replica.persist(key, null)
        return true
      })
      if (done) collected++
    }
    this.ctx.stats.tombstonesAwaitingReplicas = waiting
    if (collected > 0) {
      this.ctx.stats.tombstonesCollected += collected
      this.ctx.log.info({ collected, waiting }, 'collected tombstones every replica holds')
    }
  }
}
