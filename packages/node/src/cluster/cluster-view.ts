/**
 * How far behind every member is, and the cluster as GET /v1/cluster shows it. The leader
 * measures its followers (their acknowledgements and its own clock); a follower measures
 * itself (when it learned of leader LSNs it has not applied) and shows the rest as the leader's
 * last heartbeat described them. Only the local clock is used: clocks of members never mix.
 */
import { invariant, type NodeId } from '@kvstore/core'
import type { ClusterMember, ClusterView, MemberSpec, MemberState } from '@kvstore/protocol'
import type { ClusterConfig } from '../config.js'

/** The view's shapes are the API contract's (GET /v1/cluster). */
export type MemberView = ClusterMember
export type { ClusterView }

/** What the view reads from the core. */
export interface ViewCore {
  readonly isLeader: boolean
  readonly leaderId: NodeId | null
  readonly epoch: number
  readonly commitLsn: number
  readonly lastLsn: number
  readonly leaderLastLsn: number
  matchOf(id: NodeId): number
  isVoter(id: NodeId): boolean
  readonly membershipLsn: number
  readonly pendingMembershipLsn: number | null
}

export interface ClusterViewOptions {
  cluster: ClusterConfig
  core: ViewCore
  /** The members of the configuration in effect (voters and learners). */
  members: () => readonly MemberSpec[]
  clusterId: string
  /** This replica's applied LSN. */
  appliedLsn: () => number
  /** Whether a stream to the peer is up. */
  isConnected: (peer: string) => boolean
  /** Whether this node would take a write now. */
  writable: () => boolean
  /** The last LSN in this member's log archive; null when it keeps none. */
  archivedLsn?: () => number | null
  now: () => number
}

/** When this node learned that the leader had an LSN, to measure lag with the local clock. */
interface Sighting {
  lsn: number
  atMs: number
}

const sightingsMax = 4096

/** The index of the first sighting above `lsn` in a list sorted by LSN (its length if none). */
function firstAbove(list: readonly Sighting[], lsn: number): number {
  let lo = 0
  let hi = list.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((list[mid] as Sighting).lsn > lsn) hi = mid
    else lo = mid + 1
  }
  return lo
}

export class ClusterTracker {
  /** Follower: when it first learned of leader LSNs it had not applied yet. */
  private readonly sightings: Sighting[] = []
  /** Leader: when it proposed LSNs, to tell how old a follower's oldest missing entry is. */
  private readonly proposals: Sighting[] = []
  /** Leader: last contact per follower, local clock. */
  private readonly lastContact = new Map<string, number>()
  /** Leader: what each follower last reported in its acknowledgements. */
  private readonly reported = new Map<string, { appliedLsn: number; epoch: number }>()
  /** Follower: what the leader last said about every member. */
  private leaderView: MemberState[] = []
  /** Leader: the archived LSN of each follower that keeps a log archive, as it last said. */
  private readonly archives = new Map<string, number>()

  constructor(private readonly options: ClusterViewOptions) {}

  // ------------------------------------------------------------------ what the node learns

  /** A stream to `peer` came up, or `peer` sent something: it was heard from now. */
  heardFrom(peer: string): void {
    this.lastContact.set(peer, this.options.now())
  }

  /** `peer` acknowledged at `epoch`, reporting `appliedLsn`. */
  acknowledged(peer: string, epoch: number, appliedLsn: number): void {
    this.heardFrom(peer)
    this.reported.set(peer, { appliedLsn, epoch })
  }

  /** `peer` reported its log archive's last LSN (null: it keeps none). */
  archiveReported(peer: string, archivedLsn: number | null): void {
    if (archivedLsn === null) this.archives.delete(peer)
    else this.archives.set(peer, archivedLsn)
  }

  /** Follower: the leader has entries up to `leaderLastLsn`. */
  leaderHas(leaderLastLsn: number): void {
    if (leaderLastLsn > this.options.appliedLsn()) this.sighted(this.sightings, leaderLastLsn)
  }

  /** Follower: the leader described every member, in a heartbeat. */
  leaderSaid(members: MemberState[]): void {
    this.leaderView = members
  }

  /** Leader: it proposed the entry at `lsn`. */
  proposed(lsn: number): void {
    this.sighted(this.proposals, lsn)
  }

  private sighted(list: Sighting[], lsn: number): void {
    const last = list[list.length - 1]
    if (last !== undefined && last.lsn >= lsn) return
    const at = this.options.now()
    if (last !== undefined && last.atMs === at) {
      last.lsn = lsn
    } else {
      list.push({ lsn, atMs: at })
    }
    // Trim in halves, so that the cost of dropping old sightings is spread over many writes.
    if (list.length > sightingsMax * 2) list.splice(0, list.length - sightingsMax)
  }

  // ------------------------------------------------------------------ questions

  /**
   * Leader: the latest time by which a majority of the voters had been heard from (itself as
   * now, when it votes).
   */
  quorumContactMs(): number {
    const { cluster, now, core } = this.options
    const at = now()
    const times = this.options
      .members()
      .filter((m) => core.isVoter(m.id))
      .map((m) => (m.id === cluster.self.id ? at : (this.lastContact.get(m.id) ?? -Infinity)))
      .sort((a, b) => b - a)
    const quorum = times[Math.floor(times.length / 2)]
    invariant(quorum !== undefined, 'a configuration without voters')
    return quorum
  }

  /** Milliseconds since `peer` was last heard from, or null if never. */
  contactAgeMs(peer: string): number | null {
    const at = this.lastContact.get(peer)
    return at === undefined ? null : this.options.now() - at
  }

  /** This node's lag behind the leader: entries and milliseconds (0 on the leader). */
  lag(): { entries: number; ms: number } {
    const { core } = this.options
    if (core.isLeader) return { entries: 0, ms: 0 }
    const applied = this.options.appliedLsn()
    while (this.sightings.length > 0 && (this.sightings[0] as Sighting).lsn <= applied)
      this.sightings.shift()
    const entries = Math.max(0, core.leaderLastLsn - applied)
    const oldest = this.sightings[0]
    return {
      entries,
      ms: entries === 0 || oldest === undefined ? 0 : Math.max(0, this.options.now() - oldest.atMs),
    }
  }

  /** Leader: a follower's lag, from its acknowledged LSN. */
  followerLag(id: string): { entries: number; ms: number } {
    const { core } = this.options
    const match = core.matchOf(id)
    const entries = Math.max(0, core.lastLsn - match)
    if (entries === 0) return { entries: 0, ms: 0 }
    const firstMissing = this.proposals[firstAbove(this.proposals, match)]
    const since = firstMissing?.atMs ?? this.proposals[0]?.atMs
    return { entries, ms: since === undefined ? 0 : Math.max(0, this.options.now() - since) }
  }

  /** What GET /v1/cluster shows. */
  view(): ClusterView {
    const { cluster, core } = this.options
    const now = this.options.now()
    const self = cluster.self.id
    const leader = cluster.members.find((m) => m.id === core.leaderId)
    // The configuration's members; this node too while it is not one (joining, or removed).
    const listed: readonly { id: string; clientUrl: string; peerUrl: string }[] = [
      ...this.options.members(),
      ...(this.options.members().some((m) => m.id === self) ? [] : [cluster.self]),
    ]
    const members: MemberView[] = listed.map((member) => {
      const base = {
        id: member.id,
        clientUrl: member.clientUrl,
        peerUrl: member.peerUrl,
        voter: core.isVoter(member.id),
      }
      const role: 'leader' | 'follower' = member.id === core.leaderId ? 'leader' : 'follower'
      if (member.id === self) {
        const lag = this.lag()
        const applied = this.options.appliedLsn()
        return {
          ...base,
          role,
          epoch: core.epoch,
          ackedLsn: core.isLeader ? applied : core.lastLsn,
          appliedLsn: applied,
          lagEntries: lag.entries,
          lagMs: lag.ms,
          lastContactMs: 0,
          connected: true,
          ...this.archiveFields(this.options.archivedLsn?.() ?? null),
        }
      }
      if (core.isLeader) {
        const lag = this.followerLag(member.id)
        const contact = this.lastContact.get(member.id)
        return {
          ...base,
          role,
          epoch: this.reported.get(member.id)?.epoch ?? null,
          ackedLsn: core.matchOf(member.id),
          appliedLsn: this.reported.get(member.id)?.appliedLsn ?? null,
          lagEntries: lag.entries,
          lagMs: lag.ms,
          lastContactMs: contact === undefined ? null : now - contact,
          connected: this.options.isConnected(member.id),
          ...this.archiveFields(this.archives.get(member.id) ?? null),
        }
      }
      const seen = this.leaderView.find((m) => m.id === member.id)
      return {
        ...base,
        role,
        epoch: seen?.epoch || null,
        ackedLsn: seen?.matchLsn ?? 0,
        appliedLsn: seen?.epoch ? seen.appliedLsn : null,
        lagEntries: seen?.lagEntries ?? 0,
        lagMs: seen?.lagMs ?? 0,
        lastContactMs: seen?.lastContactMs ?? null,
        connected: seen?.connected ?? false,
        ...this.archiveFields(seen?.archiving === true ? (seen.archivedLsn ?? 0) : null),
      }
    })
    invariant(cluster.mode === 'single-leader', 'the replicator runs only in single-leader mode')
    return {
      mode: cluster.mode,
      clusterId: this.options.clusterId,
      leaderId: leader?.id ?? null,
      leaderUrl: leader?.clientUrl ?? null,
      writable: this.options.writable(),
      epoch: core.epoch,
      commitLsn: core.commitLsn,
      self,
      members,
      configLsn: core.membershipLsn,
      membershipChangeInProgress: core.pendingMembershipLsn !== null,
    }
  }

  /** A member's archive fields: its archived LSN and how far behind the commit LSN it is. */
  private archiveFields(archivedLsn: number | null): {
    archivedLsn?: number
    archiveLagEntries?: number
  } {
    if (archivedLsn === null) return {}
    return {
      archivedLsn,
      archiveLagEntries: Math.max(0, this.options.core.commitLsn - archivedLsn),
    }
  }

  /** Every member as a heartbeat describes it to the followers. */
  memberStates(): MemberState[] {
    return this.view().members.map((m) => ({
      id: m.id,
      role: m.role,
      matchLsn: m.ackedLsn,
      lagEntries: m.lagEntries,
      lagMs: m.lagMs,
      lastContactMs: m.lastContactMs ?? 0,
      connected: m.connected,
      appliedLsn: m.appliedLsn ?? 0,
      epoch: m.epoch ?? 0,
      ...(m.archivedLsn !== undefined
        ? { archiving: true as const, archivedLsn: m.archivedLsn }
        : {}),
    }))
  }
}
