/**
 * Membership changes in single-leader mode (GET/POST/DELETE /admin/v1/members): each one is a
 * configuration entry in the log, proposed by the leader and answered once committed (see the
 * core's membership.ts for the rules and why they are safe). This file holds the operator's
 * rules on top: who may be added, when a learner may be promoted, which removals would leave
 * the cluster unable to commit, how a leader removes itself, and the replacement recipe.
 *
 * Every call runs on the leader; another node answers KV_ERR_NOT_LEADER naming it, and the SDK
 * and the CLI follow it. Calls are idempotent where a retry after a lost answer is likely:
 * adding a member that is already a learner with the same URLs, promoting a voter, removing a
 * removed member, and every step of a replacement.
 */
import {
  KvError,
  membershipLimits,
  type AddMemberRequest,
  type MemberSpec,
} from '@kvstore/protocol'
import type { Membership, MembershipChangeResponse, MembershipConfig } from '@kvstore/protocol'
import { liveMajority } from '@kvstore/core'
import type { NodeConfig } from '../config.js'
import type { MembershipService } from '../membership/service.js'
import type { Replicator } from './replicator.js'

/** How often a replacement looks at its learner's progress while it catches up. */
const catchUpPollMs = 100

export class SingleLeaderMembership implements MembershipService {
  constructor(
    private readonly replicator: Replicator,
    private readonly config: NodeConfig,
  ) {}

  private get self(): string {
    return this.replicator.cluster.self.id
  }

  view(): Membership {
    const r = this.replicator
    const config = r.currentConfig()
    const leading = r.isLeader
    return {
      mode: 'single-leader',
      self: this.self,
      version: r.membershipLsn,
      members: config.members.map((m) => {
        const base = {
          id: m.id,
          clientUrl: m.clientUrl,
          peerUrl: m.peerUrl,
          role: m.voter ? ('voter' as const) : ('learner' as const),
        }
        if (!leading || m.id === this.self) return base
        const progress = r.progressOf(m.id)
        return {
          ...base,
          connected: progress.connected,
          matchLsn: progress.matchLsn,
          lagEntries: Math.max(0, r.lastLsn - progress.matchLsn),
          lastContactMs: progress.lastContactMs,
        }
      }),
      removed: [...config.removed],
      changeInProgress: r.membershipChangeInProgress,
      leaderId: r.leaderMember?.id ?? null,
    }
  }

  async add(spec: AddMemberRequest): Promise<MembershipChangeResponse> {
    const current = this.leaderConfig()
    const existing = current.members.find((m) => m.id === spec.id)
    if (existing !== undefined) {
      if (!existing.voter && sameUrls(existing, spec)) return this.answer('add', spec.id)
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `${spec.id} is already a ${existing.voter ? 'voter' : 'learner'}${sameUrls(existing, spec) ? '' : ` with other URLs (${existing.clientUrl}, ${existing.peerUrl})`}`,
      )
    }
    this.checkNewMember(current, spec)
    await this.replicator.changeMembership({
      members: [...current.members, { ...spec, voter: false }],
      removed: current.removed,
    })
    return this.answer('add', spec.id)
  }

  async promote(id: string): Promise<MembershipChangeResponse> {
    const current = this.leaderConfig()
    const member = this.memberOf(current, id)
    if (member.voter) return this.answer('promote', id)
    this.checkCaughtUp(id)
    const next: MembershipConfig = {
      members: current.members.map((m) => (m.id === id ? { ...m, voter: true } : m)),
      removed: current.removed,
    }
    this.checkLiveMajority(next, `promoting ${id}`)
    await this.replicator.changeMembership(next)
    return this.answer('promote', id)
  }

  async remove(id: string): Promise<MembershipChangeResponse> {
    const current = this.leaderConfig()
    if (current.removed.includes(id)) return this.answer('remove', id)
    this.memberOf(current, id)
    const next: MembershipConfig = {
      members: current.members.filter((m) => m.id !== id),
      removed: [...current.removed, id].slice(-membershipLimits.removedMax),
    }
    // Checked before a leader hands over to be removed: a refused removal must not cost an
    // election.
    this.checkLiveMajority(next, `removing ${id}`)
    if (id === this.self) await this.handOverFirst()
    await this.replicator.changeMembership(next)
    return this.answer('remove', id)
  }

  /**
   * Replaces `oldId` by a new member, one committed step at a time: the new member joins as a
   * learner, catches up, is promoted, and only then is the old one removed. So the voters never
   * drop below the live majority they had (a dead member being replaced is already not live),
   * and a call cut off at any step resumes where it stopped when called again.
   */
  async replace(oldId: string, spec: AddMemberRequest): Promise<MembershipChangeResponse> {
    if (spec.id === oldId) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `a replacement needs a new id (and a new data directory); ${oldId} cannot replace itself`,
      )
    }
    let current = this.leaderConfig()
    const oldGone = current.removed.includes(oldId)
    if (!oldGone) this.memberOf(current, oldId)
    const existing = current.members.find((m) => m.id === spec.id)
    if (existing === undefined) {
      if (oldGone) throw this.notAMember(current, oldId)
      await this.add(spec)
      current = this.leaderConfig()
    } else if (!sameUrls(existing, spec)) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `${spec.id} is already a member with other URLs (${existing.clientUrl}, ${existing.peerUrl})`,
      )
    }
    if (!(current.members.find((m) => m.id === spec.id) as MemberSpec).voter) {
      await this.waitCaughtUp(spec.id)
      await this.promote(spec.id)
    }
    if (!this.leaderConfig().removed.includes(oldId)) await this.remove(oldId)
    return this.answer('replace', spec.id)
  }

  // ------------------------------------------------------------------ rules

  /** The configuration, on the leader; KV_ERR_NOT_LEADER (naming it) anywhere else. */
  private leaderConfig(): MembershipConfig {
    this.replicator.checkWritable()
    return this.replicator.currentConfig()
  }

  private memberOf(config: MembershipConfig, id: string): MemberSpec {
    const member = config.members.find((m) => m.id === id)
    if (member === undefined) throw this.notAMember(config, id)
    return member
  }

  private notAMember(config: MembershipConfig, id: string): KvError {
    return new KvError(
      'KV_ERR_NOT_A_MEMBER',
      config.removed.includes(id)
        ? `${id} was removed from the cluster`
        : `${id} is not a member; members are ${config.members.map((m) => m.id).join(', ')}`,
      { member: id },
    )
  }

  private checkNewMember(config: MembershipConfig, spec: AddMemberRequest): void {
    if (config.removed.includes(spec.id)) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `${spec.id} was removed from the cluster, and a removed id is never let back in (its certificate is refused); give the new member a new id`,
      )
    }
    if (config.members.length >= membershipLimits.membersMax) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `the cluster has ${config.members.length} members, the most a configuration holds`,
      )
    }
    for (const m of config.members) {
      for (const url of [spec.clientUrl, spec.peerUrl]) {
        if (url === m.clientUrl || url === m.peerUrl) {
          throw new KvError('KV_ERR_INVALID_ARGUMENT', `${url} is already ${m.id}'s URL`)
        }
      }
    }
  }

  /**
   * KV_ERR_LEARNER_BEHIND unless `id` is connected, the leader streams it entries (it is not
   * still installing a snapshot, nor being probed), and it is within the promotion bound.
   */
  private checkCaughtUp(id: string): void {
    const lag = this.learnerLag(id)
    if (this.caughtUp(lag)) return
    throw new KvError(
      'KV_ERR_LEARNER_BEHIND',
      !lag.connected
        ? `${id} is not connected to the leader; start it (with --join) and let it catch up first`
        : !lag.replicating
          ? `${id} is still catching up (a snapshot, or the leader looking for where its log matches); ${lag.entries} entries behind`
          : `${id} lags the leader by ${lag.entries} entries; it is promoted at ${this.config.learnerPromoteLagEntriesMax} or fewer (learnerPromoteLagEntriesMax)`,
      { member: id, lagEntries: lag.entries, connected: lag.connected },
    )
  }

  private caughtUp(lag: { entries: number; connected: boolean; replicating: boolean }): boolean {
    return (
      lag.connected && lag.replicating && lag.entries <= this.config.learnerPromoteLagEntriesMax
    )
  }

  private learnerLag(id: string): { entries: number; connected: boolean; replicating: boolean } {
    const progress = this.replicator.progressOf(id)
    return {
      entries: Math.max(0, this.replicator.lastLsn - progress.matchLsn),
      connected: progress.connected,
      replicating: progress.replicating,
    }
  }

  /** Waits (within membershipCatchUpTimeoutMs) until `id` may be promoted. */
  private async waitCaughtUp(id: string): Promise<void> {
    const deadline = Date.now() + this.config.membershipCatchUpTimeoutMs
    for (;;) {
      this.replicator.checkWritable()
      if (this.caughtUp(this.learnerLag(id))) return
      if (Date.now() >= deadline) this.checkCaughtUp(id)
      await new Promise((resolve) => setTimeout(resolve, catchUpPollMs))
    }
  }

  /** KV_ERR_WOULD_LOSE_QUORUM unless the live voters of `next` are a majority of them. */
  private checkLiveMajority(next: MembershipConfig, what: string): void {
    const voters = next.members.filter((m) => m.voter).map((m) => m.id)
    const verdict = liveMajority({ voters, learners: [] }, (id) => this.replicator.isLive(id))
    if (verdict.ok) return
    throw new KvError(
      'KV_ERR_WOULD_LOSE_QUORUM',
      `${what} would leave ${verdict.live} live voters of ${voters.length}, fewer than the ${verdict.majority} a majority needs; bring members back (or remove a dead one) first`,
      { liveVoters: verdict.live, majority: verdict.majority },
    )
  }

  /**
   * The leader is asked to remove itself: it hands leadership to the most up-to-date voter
   * first, and answers KV_ERR_NOT_LEADER naming it, so that the call is retried there and the
   * new leader removes this node (the SDK and the CLI follow the hint).
   */
  private async handOverFirst(): Promise<never> {
    const to = await this.replicator.transferLeadership(null)
    const leader = this.replicator.cluster.members.find((m) => m.id === to)
    throw new KvError(
      'KV_ERR_NOT_LEADER',
      `${this.self} handed leadership to ${to} before its removal; send the removal to ${to}`,
      { leaderId: to, leaderUrl: leader?.clientUrl ?? null },
    )
  }

  private answer(
    change: MembershipChangeResponse['change'],
    member: string,
  ): MembershipChangeResponse {
    return { change, member, membership: this.view() }
  }
}

function sameUrls(a: { clientUrl: string; peerUrl: string }, b: AddMemberRequest): boolean {
  return a.clientUrl === b.clientUrl && a.peerUrl === b.peerUrl
}
