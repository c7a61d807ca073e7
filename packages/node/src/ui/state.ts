/**
 * What the dashboard (/ui) shows, sampled on a timer: this node's view of the cluster, a
 * bounded history of each member's lag (single-leader) or hint backlog (leaderless), a bounded
 * timeline of leadership changes, and a summary of this node's rollback record.
 *
 * Any member can serve it. Only the leader measures its followers' lag; a follower's view
 * (GET /v1/cluster) shows every member as the leader last described them in its heartbeats
 * (cluster-view.ts), so the page shows the cluster's lag whichever member serves it, a
 * heartbeat late. A follower that lost its leader shows the last description it had until a
 * new leader's heartbeat arrives; leadership changes are what this node saw, on its clock.
 */
import type { ClusterView, LeaderlessClusterView } from '@kvstore/protocol'

/** A sample: when, and each member's lag (ms) or hint backlog, by member id. */
export interface DashboardSample {
  atMs: number
  epoch: number
  commitLsn: number
  /** Single-leader: lag in ms; leaderless: hints held for the member. Null: unknown. */
  values: Record<string, number | null>
  /** Single-leader: lag in entries. */
  entries: Record<string, number | null>
}

/** A change of leader or epoch as this node saw it. */
export interface LeadershipChange {
  atMs: number
  epoch: number
  /** The leader now; null while nobody leads (as far as this node knows). */
  leaderId: string | null
  previousLeaderId: string | null
  previousEpoch: number | null
}

/** One record of the rollback record, without its keys or values (those are admin-only). */
export interface RollbackSummary {
  seq: number
  removedAt: string
  epoch: number
  lsn: number
  entryEpoch: number
  ops: number
}

/** This node: what its GET /v1/status shows, in short. */
export interface DashboardSelf {
  nodeId: string
  role: string
  epoch: number
  appliedLsn: number
  commitLsn: number
  logStartLsn: number
  ready: boolean
}

export interface DashboardCurrent {
  atMs: number
  mode: 'standalone' | 'single-leader' | 'leaderless'
  self: DashboardSelf
  view: ClusterView | LeaderlessClusterView
  rollbacks: { held: number; rolledBackSinceStart: number; latest: RollbackSummary[] }
  leadership: LeadershipChange[]
}

/** Sent when a page connects: the current state and every history kept. */
export interface DashboardSnapshot extends DashboardCurrent {
  sampleIntervalMs: number
  historySamplesMax: number
  history: DashboardSample[]
}

/** Sent after every sample: the current state and the new sample. */
export interface DashboardUpdate extends DashboardCurrent {
  sample: DashboardSample
}

export interface DashboardSource {
  mode: 'standalone' | 'single-leader' | 'leaderless'
  self: () => DashboardSelf
  view: () => ClusterView | LeaderlessClusterView
  rollbackHeld: () => number
  rolledBackSinceStart: () => number
  /** Rollback records after `afterSeq`, oldest first, at most `limit`. */
  readRollbacks: (afterSeq: number, limit: number) => Promise<RollbackSummary[]>
  now: () => number
}

export interface DashboardLimits {
  sampleIntervalMs: number
  historySamplesMax: number
  leadershipChangesMax: number
}

/** Latest rollback records shown; the admin route (GET /admin/v1/rollbacks) has them all. */
export const rollbacksShownMax = 20
/** Records read per page, and pages read per sample, when the rollback record grew. */
const rollbackPageRecords = 100
const rollbackPagesPerSampleMax = 10

export class DashboardState {
  private readonly history: DashboardSample[] = []
  private readonly leadership: LeadershipChange[] = []
  private latestRollbacks: RollbackSummary[] = []
  private lastRollbackSeq = 0
  private rollbackCountsSeen = ''
  private readingRollbacks = false
  private last: { epoch: number; leaderId: string | null } | null = null
  private current: DashboardCurrent | null = null

  constructor(
    private readonly source: DashboardSource,
    readonly limits: DashboardLimits,
  ) {}

  /** Takes a sample: records it and returns the update to send to the open pages. */
  sample(): DashboardUpdate {
    const { source } = this
    const atMs = source.now()
    const view = source.view()
    const self = source.self()
    const values: Record<string, number | null> = {}
    const entries: Record<string, number | null> = {}
    let epoch = self.epoch
    let commitLsn = self.commitLsn
    if (view.mode === 'leaderless') {
      for (const m of view.members) {
        values[m.id] = m.hintBacklog
        entries[m.id] = null
      }
    } else {
      epoch = view.epoch
      commitLsn = view.commitLsn
      // A member this node has heard nothing about (no epoch yet) has no lag to show, unless
      // this node leads: the leader measures every member's lag itself, a dead one's included
      // (the old leader after a failover, which the new leader never heard from).
      const leading = view.leaderId === view.self
      for (const m of view.members) {
        const known = leading || m.epoch !== null || m.id === view.self
        values[m.id] = known ? m.lagMs : null
        entries[m.id] = known ? m.lagEntries : null
      }
      this.noteLeadership(atMs, view.epoch, view.leaderId)
    }
    const sample: DashboardSample = { atMs, epoch, commitLsn, values, entries }
    this.history.push(sample)
    // Trim in halves, so that dropping old samples costs little per sample.
    if (this.history.length > this.limits.historySamplesMax * 2)
      this.history.splice(0, this.history.length - this.limits.historySamplesMax)
    this.pollRollbacks()
    this.current = {
      atMs,
      mode: source.mode,
      self,
      view,
      rollbacks: {
        held: source.rollbackHeld(),
        rolledBackSinceStart: source.rolledBackSinceStart(),
        latest: this.latestRollbacks,
      },
      leadership: this.leadership.slice(),
    }
    return { ...this.current, sample }
  }

  /** Everything kept, with the state now: what a page gets when it connects. */
  snapshot(): DashboardSnapshot {
    if (this.current === null) this.sample()
    const current: DashboardCurrent = {
      ...(this.current as DashboardCurrent),
      atMs: this.source.now(),
      self: this.source.self(),
      view: this.source.view(),
    }
    return {
      ...current,
      sampleIntervalMs: this.limits.sampleIntervalMs,
      historySamplesMax: this.limits.historySamplesMax,
      history: this.history.slice(-this.limits.historySamplesMax),
    }
  }

  /** Samples kept now (at most historySamplesMax shown, at most twice that held). */
  get historyLength(): number {
    return Math.min(this.history.length, this.limits.historySamplesMax)
  }

  private noteLeadership(atMs: number, epoch: number, leaderId: string | null): void {
    const last = this.last
    if (last !== null && last.epoch === epoch && last.leaderId === leaderId) return
    this.leadership.push({
      atMs,
      epoch,
      leaderId,
      previousLeaderId: last?.leaderId ?? null,
      previousEpoch: last?.epoch ?? null,
    })
    if (this.leadership.length > this.limits.leadershipChangesMax)
      this.leadership.splice(0, this.leadership.length - this.limits.leadershipChangesMax)
    this.last = { epoch, leaderId }
  }

  /** Reads the records added to the rollback record since the last look, in the background. */
  private pollRollbacks(): void {
    const counts = `${this.source.rollbackHeld()}/${this.source.rolledBackSinceStart()}`
    if (counts === this.rollbackCountsSeen || this.readingRollbacks) return
    this.readingRollbacks = true
    void this.readNewRollbacks()
      .then(() => {
        this.rollbackCountsSeen = counts
      })
      .catch(() => {
        // Storage failures show in /health and the node's log; the next sample tries again.
      })
      .finally(() => {
        this.readingRollbacks = false
      })
  }

  private async readNewRollbacks(): Promise<void> {
    // Records discarded by an operator: start again from the first one held.
    if (this.source.rollbackHeld() === 0) {
      this.latestRollbacks = []
      return
    }
    let latest = this.latestRollbacks
    for (let page = 0; page < rollbackPagesPerSampleMax; page++) {
      const records = await this.source.readRollbacks(this.lastRollbackSeq, rollbackPageRecords)
      if (records.length === 0) break
      latest = [...latest, ...records].slice(-rollbacksShownMax)
      this.lastRollbackSeq = (records[records.length - 1] as RollbackSummary).seq
      if (records.length < rollbackPageRecords) break
    }
    this.latestRollbacks = latest
  }
}
