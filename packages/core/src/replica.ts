/**
 * The replication core: a pure state machine in the style of etcd's raft.
 *
 * Events go in: `step(message)`, `tick()`, `propose(entry)`, `persisted(lsn)` and a few
 * notifications from the node (a peer connected, entries loaded from disk, a snapshot sent).
 * A `Ready` comes out with what to persist and what to send. There is no I/O, timer, clock
 * or randomness in here: the node drives it, and a simulator can drive many of them.
 *
 * Roles are a tagged union (follower, pre-candidate, candidate, leader); only the `become*`
 * methods switch between them. With `electionTicks` set, followers elect a leader themselves:
 * a pre-vote first (so a node that cannot win never raises the epoch), then a vote in which
 * each member grants at most one vote per epoch, durably, and only to a candidate whose log is
 * at least as up to date as its own. A leader that stops hearing from a majority steps down
 * (check-quorum), and a member that heard from a live leader recently ignores vote requests
 * (leader stickiness), so a node that flaps cannot force elections. Without `electionTicks`
 * the node names the leader (`becomeLeader`), as a static configuration does.
 */
import { epochMax, isEpoch } from '@kvstore/protocol/limits'
import { invariant } from './invariant.js'
import { LogWindow, type LogInit } from './log.js'
import { Progress } from './progress.js'
import { allLsn, isMajority, majorityLsn } from './quorum.js'
import {
  membersOf,
  membershipShapeProblem,
  singleChangeProblem,
  type CoreMembership,
} from './membership.js'
import type {
  AppendAckMessage,
  AppendMessage,
  CoreEntry,
  HardState,
  HeartbeatAckMessage,
  HeartbeatMessage,
  Message,
  NodeId,
  Ready,
  TimeoutNowMessage,
  VoteAckMessage,
  VoteMessage,
} from './types.js'

export interface CoreConfig {
  id: NodeId
  /**
   * The voters of the first configuration (--members), used until the log or a snapshot holds
   * one (`CoreInit.memberships`). A node joining a running cluster is not among them: it stays
   * a passive follower until the configuration names it.
   */
  members: readonly NodeId[]
  /** Ticks between heartbeats. */
  heartbeatTicks: number
  /** Ticks before an unanswered probe is sent again. */
  probeTimeoutTicks: number
  /** Most entries in one Append. */
  appendEntriesMax: number
  /** Most entry bytes in one Append (at least one entry is always sent). */
  appendBytesMax: number
  /** Most Appends in flight to one follower. */
  inflightAppendsMax: number
  /** Most entry bytes in flight to one follower. */
  inflightBytesMax: number
  /** Bytes of recent entries the leader keeps in memory to ship. */
  logCacheBytesMax: number
  /**
   * Ticks without a leader before a follower campaigns; each wait is drawn at random from
   * [electionTicks, 2 * electionTicks). Also the check-quorum period and the lease in which a
   * member that heard from a leader ignores vote requests. 0 (default): no elections; the node
   * names the leader.
   */
  electionTicks?: number
  /** Uniform random numbers in [0, 1): the only source of randomness (seeded in simulation). */
  random?: () => number
  /** An encoded no-op entry: a new leader appends one of its own epoch before serving. */
  makeNoop?: (lsn: number, epoch: number) => Uint8Array
  /**
   * Rules broken on purpose, for tests that must catch them. Never set outside tests.
   * `grantEveryVote`: vote for every candidate (several per epoch); `skipUpToDateCheck`: vote
   * for candidates whose log is behind; `skipCheckQuorum`: a leader never steps down for not
   * hearing from a majority; `countLeaderBeforeDurable`: a leader counts its own entries toward
   * the majority as soon as they are proposed, before its disk has them;
   * `membershipOnCommit`: a configuration takes effect once its entry is committed, not once
   * it is in the log; `concurrentMembershipChanges`: a leader proposes a change while the last
   * one is not committed yet.
   */
  unsafe?: {
    grantEveryVote?: boolean
    skipUpToDateCheck?: boolean
    skipCheckQuorum?: boolean
    countLeaderBeforeDurable?: boolean
    membershipOnCommit?: boolean
    concurrentMembershipChanges?: boolean
  }
}

/** A configuration and the LSN of the entry that made it (0: the seed from `members`). */
export interface MembershipAt {
  lsn: number
  membership: CoreMembership
}

export interface CoreInit extends LogInit {
  epoch: number
  vote: NodeId | ''
  commitLsn: number
  /**
   * The configurations in the log, oldest first: the last one at or below the commit LSN, then
   * any above it. Absent or empty: the seed (`CoreConfig.members`, all voters).
   */
  memberships?: MembershipAt[]
}

/**
 * How far one message may raise this node's epoch: to any epoch up to `epochFreeMax`, and
 * above that to at most `epochStepMax` past this node's own (or past `epochFreeMax`, for a node
 * still below it), unless a majority of the members vouch for it (see `mayRaiseEpochTo`).
 *
 * Why: epochs are bounded (`epochMax`; decoders refuse anything above it), and elections need
 * `epoch + 1`. If one message could carry a node anywhere up to the bound, one frame at
 * `epochMax` would move the cluster there and no candidate could ever ask for `epochMax + 1`
 * (every peer refuses it) - the same wedge as an epoch at 2^53 - 1, only lower. Below
 * `epochFreeMax` (2^47, which no cluster reaches by elections: at one a millisecond, over
 * 4000 years) a node follows any higher epoch at once, as Raft does, so nothing changes for a
 * healthy cluster. Above it, a single message can spend at most `epochStepMax` (2^16) of the
 * 2^47 epochs left, so a node stays able to elect after any one frame, valid or forged; and a
 * node that fell further behind (down during the elections that followed such a frame, or
 * restarted with an empty disk) catches up once a majority of the members have sent it an
 * epoch at least that high, which no single faulty member can fake.
 *
 * Limits: above `epochFreeMax`, a member that sends one node forged epochs aimed one step above
 * that node's, again and again while the node is cut off from the rest, can leave that node
 * further ahead than the others will follow; it stays out (epochs never go down) until the
 * others' elections catch up. The rest of the cluster elects on. No single frame does this
 * from a cluster below `epochFreeMax`, and a bug that sends the same bad epoch, or random ones,
 * does not: the simulator's epoch bombs check both.
 */
export const epochFreeMax = epochMax / 2
/** See `epochFreeMax`. */
export const epochStepMax = 2 ** 16

/** Probe timeouts without an acknowledgement before a leader resends what is in flight. */
const retransmitTimeoutFactor = 4
/** The hint LSN of a refusal that asks the leader for a snapshot (no real hint is below 1). */
const snapshotNeededHint = 0

type Role =
  | { kind: 'follower'; leaderId: NodeId | null }
  | { kind: 'preCandidate'; granted: Set<NodeId>; refused: Set<NodeId> }
  | { kind: 'candidate'; granted: Set<NodeId>; refused: Set<NodeId>; transfer: boolean }
  | {
      kind: 'leader'
      progress: Map<NodeId, Progress>
      heartbeatElapsed: number
      /** Members heard from since the last check-quorum. */
      recentlyHeard: Set<NodeId>
      /** A leadership transfer in progress: its target and the tick it started. */
      transfer: { to: NodeId; startTick: number } | null
    }

export type RoleName = Role['kind']

/** A configuration change refused because the last one is not committed yet. */
export class MembershipChangeInProgressError extends Error {
  readonly pendingLsn: number
  constructor(pendingLsn: number, reason?: string) {
    super(
      reason ??
        `the configuration change at LSN ${pendingLsn} is not committed yet; one change at a time`,
    )
    this.name = 'MembershipChangeInProgressError'
    this.pendingLsn = pendingLsn
  }
}

/** A proposal refused because leadership is being handed over. */
export class TransferInProgressError extends Error {
  readonly to: NodeId
  constructor(to: NodeId) {
    super(`leadership is being handed over to ${to}`)
    this.name = 'TransferInProgressError'
    this.to = to
  }
}

export class NotLeaderError extends Error {
  readonly leaderId: NodeId | null
  constructor(leaderId: NodeId | null) {
    super(leaderId === null ? 'no leader is known' : `the leader is ${leaderId}`)
    this.name = 'NotLeaderError'
    this.leaderId = leaderId
  }
}

/** How many of `ids` are in `set`. */
function countIn(ids: Iterable<NodeId>, set: ReadonlySet<NodeId>): number {
  let n = 0
  for (const id of ids) if (set.has(id)) n++
  return n
}

function copyMembership(m: CoreMembership): CoreMembership {
  return { voters: [...m.voters], learners: [...m.learners] }
}

function emptyReady(commitLsn: number): Ready {
  return {
    hardState: null,
    truncateAfter: null,
    entries: [],
    sendNow: [],
    sendAfterPersist: [],
    loads: [],
    snapshots: [],
    commitLsn,
  }
}

export class ReplicaCore {
  readonly id: NodeId
  readonly log: LogWindow
  /**
   * The configurations in this node's log, oldest first: the first is the last one at or below
   * the commit LSN; the others are above it (at most one, on a leader). The last is in effect.
   */
  private memberships: MembershipAt[]
  /** The configuration in effect, and its members as a set (voters and learners). */
  private effective!: CoreMembership
  private memberSet!: ReadonlySet<NodeId>
  private voterSet!: ReadonlySet<NodeId>
  private readonly config: CoreConfig
  private epochValue: number
  private vote: NodeId | ''
  private commit: number
  private role: Role
  private ticks = 0
  /** Follower: highest LSN known to match the current leader's log. */
  private verifiedLsn: number
  /** Follower: the match last reported to the leader. */
  private reportedMatch = -1
  /** Follower: the leader's last LSN, as last heard. */
  private leaderLast = 0
  /** Follower: the local state is being replaced by a snapshot; appends must wait for it. */
  private awaitingSnapshot = false
  private hardStateDirty = false
  /** Leader: proposals since the last Ready, to ship in one Append per follower. */
  private broadcastPending = false
  /** Peers with a stream up, whatever this node's role (a leader taking over finds them here). */
  private readonly connectedPeers = new Set<NodeId>()
  private pending: Ready
  /** Ticks since the last message from a leader (or, on a leader, since its last check). */
  private electionElapsed = 0
  /** This wait's election timeout, in ticks (randomized). */
  private electionTimeout = 0
  /** Elections this node started (pre-votes that turned into votes), for metrics. */
  electionsStarted = 0
  /**
   * Messages dropped for their epoch: out of range, or too far above this node's to take from
   * one message (see `epochFreeMax`). A healthy cluster never sends one; for metrics and logs.
   */
  epochMessagesDropped = 0
  /** The highest epoch each member sent that was too far above this node's to take at once. */
  private readonly farEpochs = new Map<NodeId, number>()
  /** Until this tick, unless a leader is heard first, this node neither votes nor campaigns. */
  private abstainUntilTick = 0
  /** The log end when this node last won an election, before its own first entry. */
  private wonWithLsnValue = 0
  /**
   * A snapshot was installed before this node knew who leads (snapshot chunks do not pass
   * through the core): the leader learns the new match with the next heartbeat's answer.
   */
  private matchUnreported = false
  /**
   * A snapshot was installed and no append has come since: the leader leaves its snapshot
   * state only on this node's acknowledgement, so it goes again with every heartbeat's answer
   * (one lost on a lossy link would leave this node without entries for good).
   */
  private snapshotUnacknowledged = false
  /**
   * This node raised its epoch as a candidate and nothing has shown that epoch durable yet. A
   * candidate's vote requests leave only once it is (persist before send), so a win by votes
   * proves it; a lone voter wins by its own vote and asks nobody. Until an entry of the epoch
   * is reported persisted (the node writes the hard state before entries) or a vote is granted,
   * everything this node sends waits for persistence: else a leader that crashed before the
   * write could restart at the old epoch and lead the new one again with another log, while a
   * learner holds the entries of the first.
   */
  private epochUnconfirmed = false

  constructor(config: CoreConfig, init: CoreInit) {
    invariant(new Set(config.members).size === config.members.length, 'duplicate member ids')
    invariant(init.commitLsn <= init.lastLsn, 'commit LSN past the log end')
    invariant(isEpoch(init.epoch), () => `initial epoch ${init.epoch} is out of range`)
    this.id = config.id
    this.config = config
    this.memberships =
      init.memberships !== undefined && init.memberships.length > 0
        ? init.memberships.map((m) => ({ lsn: m.lsn, membership: copyMembership(m.membership) }))
        : [{ lsn: 0, membership: { voters: [...config.members], learners: [] } }]
    for (let i = 0; i < this.memberships.length; i++) {
      const at = this.memberships[i] as MembershipAt
      const problem = membershipShapeProblem(at.membership)
      invariant(problem === null, () => `configuration at ${at.lsn}: ${problem}`)
      invariant(at.lsn <= init.lastLsn, () => `configuration at ${at.lsn} past the log end`)
      invariant(
        i === 0 || at.lsn > (this.memberships[i - 1] as MembershipAt).lsn,
        'configurations out of order',
      )
    }
    this.refreshMembership()
    this.log = new LogWindow(init, config.logCacheBytesMax)
    this.epochValue = init.epoch
    this.vote = init.vote
    this.commit = init.commitLsn
    this.verifiedLsn = init.commitLsn
    this.role = { kind: 'follower', leaderId: null }
    this.pending = emptyReady(this.commit)
    if (this.electionsOn) {
      invariant(config.random !== undefined, 'elections need a random source')
      invariant(config.makeNoop !== undefined, 'elections need makeNoop')
    }
    this.resetElectionTimeout()
  }

  private get electionsOn(): boolean {
    return (this.config.electionTicks ?? 0) > 0
  }

  private resetElectionTimeout(): void {
    this.electionElapsed = 0
    const base = this.config.electionTicks ?? 0
    if (base > 0) {
      const random = this.config.random as () => number
      this.electionTimeout = base + Math.floor(random() * base)
    }
  }

  // ------------------------------------------------------------------ queries

  /** Every member of the configuration in effect (voters, then learners). */
  get members(): readonly NodeId[] {
    return membersOf(this.effective)
  }

  /** The configuration in effect. */
  get membership(): CoreMembership {
    return this.effective
  }

  /** The LSN of the entry that made the configuration in effect (0: the seed). */
  get membershipLsn(): number {
    return this.effectiveAt().lsn
  }

  /** The LSN of the newest configuration at or below the commit LSN. */
  get committedMembershipLsn(): number {
    return (this.memberships[0] as MembershipAt).lsn
  }

  /** A configuration change whose entry is not committed yet: its LSN, else null. */
  get pendingMembershipLsn(): number | null {
    const last = this.memberships[this.memberships.length - 1] as MembershipAt
    return last.lsn > this.commit ? last.lsn : null
  }

  /** Whether `id` votes in the configuration in effect. */
  isVoter(id: NodeId): boolean {
    return this.voterSet.has(id)
  }

  /** Whether `id` is in the configuration in effect (voter or learner). */
  isMember(id: NodeId): boolean {
    return this.memberSet.has(id)
  }

  get epoch(): number {
    return this.epochValue
  }

  get commitLsn(): number {
    return this.commit
  }

  get lastLsn(): number {
    return this.log.lastLsn
  }

  /** Epoch of the entry at `lsn` in this node's log; null if compacted away or past the end. */
  epochAt(lsn: number): number | null {
    return this.log.epochAt(lsn)
  }

  /** The log end this node held when it last won an election (before its no-op entry). */
  get wonWithLsn(): number {
    return this.wonWithLsnValue
  }

  get isLeader(): boolean {
    return this.role.kind === 'leader'
  }

  get roleName(): RoleName {
    return this.role.kind
  }

  get leaderId(): NodeId | null {
    if (this.role.kind === 'leader') return this.id
    return this.role.kind === 'follower' ? this.role.leaderId : null
  }

  /** The member granted this node's vote in the current epoch ('' when none). */
  get votedFor(): NodeId | '' {
    return this.vote
  }

  /** Leader: the member leadership is being handed to, or null. */
  get transferTarget(): NodeId | null {
    return this.role.kind === 'leader' ? (this.role.transfer?.to ?? null) : null
  }

  /** Follower: the leader's last LSN as last heard (its own last LSN on the leader). */
  get leaderLastLsn(): number {
    return this.role.kind === 'leader'
      ? this.log.lastLsn
      : Math.max(this.leaderLast, this.log.lastLsn)
  }

  get tickCount(): number {
    return this.ticks
  }

  /** Leader: what it knows of a member (itself included, as a progress without stream). */
  progressOf(id: NodeId): Readonly<Progress> | undefined {
    return this.role.kind === 'leader' ? this.role.progress.get(id) : undefined
  }

  /** Leader: durable match of a member; the leader's own durable LSN for itself. */
  matchOf(id: NodeId): number {
    if (id === this.id) {
      return this.config.unsafe?.countLeaderBeforeDurable === true
        ? this.log.lastLsn
        : this.log.persistedLsn
    }
    return this.role.kind === 'leader' ? (this.role.progress.get(id)?.matchLsn ?? 0) : 0
  }

  /** Leader: the highest LSN durable on every voter. */
  allMatchLsn(): number {
    return allLsn(this.effective.voters.map((m) => this.matchOf(m)))
  }

  hasReady(): boolean {
    const r = this.pending
    return (
      this.broadcastPending ||
      r.hardState !== null ||
      this.hardStateDirty ||
      r.truncateAfter !== null ||
      r.entries.length > 0 ||
      r.sendNow.length > 0 ||
      r.sendAfterPersist.length > 0 ||
      r.loads.length > 0 ||
      r.snapshots.length > 0 ||
      r.commitLsn !== this.commit
    )
  }

  /** Everything accumulated since the last call. */
  takeReady(): Ready {
    if (this.broadcastPending) {
      // Every proposal made since the last Ready goes out together: one Append per follower
      // per turn of the node's loop, instead of one per write.
      this.broadcastPending = false
      if (this.role.kind === 'leader') {
        for (const [id, pr] of this.role.progress) this.sendAppend(id, pr)
      }
    }
    const ready = this.pending
    ready.commitLsn = this.commit
    if (this.hardStateDirty) {
      ready.hardState = { epoch: this.epochValue, vote: this.vote, commitLsn: this.commit }
      this.hardStateDirty = false
    }
    this.pending = emptyReady(this.commit)
    return ready
  }

  // ------------------------------------------------------------------ roles

  /**
   * Takes leadership at the current epoch: after winning an election, or when the node names
   * the leader (static configuration). With `makeNoop`, it first appends a no-op entry of its
   * own epoch: committing it commits everything before it, and a new leader serves nothing
   * until then.
   */
  becomeLeader(): void {
    this.wonWithLsnValue = this.log.lastLsn
    const progress = new Map<NodeId, Progress>()
    for (const member of this.members) {
      if (member === this.id) continue
      progress.set(member, new Progress(this.log.lastLsn + 1, this.connectedPeers.has(member)))
    }
    this.role = {
      kind: 'leader',
      progress,
      heartbeatElapsed: 0,
      recentlyHeard: new Set(),
      transfer: null,
    }
    this.electionElapsed = 0
    if (this.config.makeNoop) {
      const lsn = this.log.lastLsn + 1
      const noop = { lsn, epoch: this.epochValue, data: this.config.makeNoop(lsn, this.epochValue) }
      this.log.append([noop])
      // The node writes it like an entry received from a leader, and reports it persisted.
      this.pending.entries.push(noop)
    }
    this.maybeCommit()
    // Streams already up learn of the new epoch at once: each gets a probe.
    this.broadcastPending = true
  }

  /** True once the leader has committed an entry of its own epoch (its no-op): it may serve. */
  get leaderReady(): boolean {
    return (
      this.role.kind === 'leader' &&
      this.commit > 0 &&
      this.log.epochAt(this.commit) === this.epochValue
    )
  }

  /** Follows `leaderId` at `epoch`, which may not be lower than the current epoch. */
  becomeFollower(epoch: number, leaderId: NodeId | null): void {
    invariant(
      epoch >= this.epochValue,
      () => `epoch would go down from ${this.epochValue} to ${epoch}`,
    )
    invariant(isEpoch(epoch), () => `epoch ${epoch} is above ${epochMax} or not an integer`)
    if (epoch > this.epochValue) {
      this.epochValue = epoch
      this.vote = ''
      this.hardStateDirty = true
      this.epochUnconfirmed = false
      // What matched the old leader's log is not known to match the new one's.
      this.verifiedLsn = this.commit
      this.reportedMatch = -1
    }
    this.role = { kind: 'follower', leaderId }
    this.resetElectionTimeout()
  }

  /** Asks every member whether it would vote for this node at the next epoch. */
  private becomePreCandidate(): void {
    // Unreachable by elections (2^48 of them) or by messages (see epochFreeMax): a bug.
    invariant(this.epochValue < epochMax, () => `cannot campaign past epoch ${epochMax}`)
    this.role = { kind: 'preCandidate', granted: new Set([this.id]), refused: new Set() }
    this.resetElectionTimeout()
    if (this.tally()) return
    this.requestVotes(this.epochValue + 1, true, false)
  }

  /** Raises the epoch, votes for itself (durably, before any request leaves) and asks. */
  private becomeCandidate(transfer: boolean): void {
    invariant(this.epochValue < epochMax, () => `cannot campaign past epoch ${epochMax}`)
    this.epochValue++
    this.vote = this.id
    this.hardStateDirty = true
    this.epochUnconfirmed = true
    this.verifiedLsn = this.commit
    this.reportedMatch = -1
    this.electionsStarted++
    this.role = { kind: 'candidate', granted: new Set([this.id]), refused: new Set(), transfer }
    this.resetElectionTimeout()
    if (this.tally()) return
    this.requestVotes(this.epochValue, false, transfer)
  }

  private requestVotes(epoch: number, preVote: boolean, transfer: boolean): void {
    for (const member of this.effective.voters) {
      if (member === this.id) continue
      this.send(
        {
          type: 'vote',
          from: this.id,
          to: member,
          epoch,
          lastLsn: this.log.lastLsn,
          lastEpoch: this.log.lastEpoch,
          preVote,
          transfer,
        },
        // A real request depends on the epoch and the self-vote: both durable first.
        !preVote,
      )
    }
  }

  /** Counts votes; moves on when a majority granted (true) or refused. */
  private tally(): boolean {
    const role = this.role
    if (role.kind !== 'preCandidate' && role.kind !== 'candidate') return false
    const voters = this.effective.voters
    if (isMajority(countIn(role.granted, this.voterSet), voters.length)) {
      if (role.kind === 'preCandidate') this.becomeCandidate(false)
      else this.becomeLeader()
      return true
    }
    if (isMajority(countIn(role.refused, this.voterSet), voters.length)) {
      this.becomeFollower(this.epochValue, null)
      return true
    }
    return false
  }

  /**
   * Neither votes nor campaigns for `ticks`, or until a leader is heard. For a node that
   * starts with an empty disk: it may have voted before it lost it, and must not vote twice
   * in an epoch that may still be deciding.
   */
  abstain(ticks: number): void {
    this.abstainUntilTick = this.ticks + ticks
  }

  get abstaining(): boolean {
    return this.ticks < this.abstainUntilTick
  }

  /**
   * Whether this node campaigns: it is a voter in a configuration its log holds that no
   * committed one has superseded, not only in the newest. A voter whose removal (or demotion)
   * is in its log but not committed may still be needed until it is (Raft thesis §4.1): when
   * it holds the only copy of the newest entries, no other candidate can win, and one of the
   * voters it removed from needs a leader to commit that removal. Its own vote counts only if
   * the configuration in effect names it (`tally`); a leader it becomes steps down once the
   * removal commits.
   */
  private mayCampaign(): boolean {
    for (const at of this.memberships) if (at.membership.voters.includes(this.id)) return true
    return false
  }

  /** Starts an election now (leadership handed over, or a test). */
  campaign(transfer = false): void {
    // A node whose state is being replaced by a snapshot holds a partial state: never lead. A
    // learner, or a node the configuration does not name (joining, or removed), never does.
    if (this.role.kind === 'leader' || this.abstaining || this.awaitingSnapshot) return
    if (!this.mayCampaign()) return
    if (transfer) this.becomeCandidate(true)
    else this.becomePreCandidate()
  }

  /**
   * Leader: hands leadership to `to` once its log has caught up; proposals are refused with
   * TransferInProgressError meanwhile. Gives up after an election timeout.
   */
  transferLeadership(to: NodeId): void {
    const role = this.role
    if (role.kind !== 'leader') throw new NotLeaderError(this.leaderId)
    invariant(this.isVoter(to) && to !== this.id, `cannot hand leadership to ${to}`)
    role.transfer = { to, startTick: this.ticks }
    const pr = role.progress.get(to) as Progress
    if (pr.matchLsn === this.log.lastLsn) this.sendTimeoutNow(to)
    else this.sendAppend(to, pr)
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send({ type: 'timeoutNow', from: this.id, to, epoch: this.epochValue })
  }

  /** Raises the epoch (a leader configured to lead at a new epoch). */
  setEpoch(epoch: number): void {
    invariant(
      epoch >= this.epochValue,
      () => `epoch would go down from ${this.epochValue} to ${epoch}`,
    )
    invariant(isEpoch(epoch), () => `epoch ${epoch} is above ${epochMax} or not an integer`)
    if (epoch !== this.epochValue) {
      this.epochValue = epoch
      this.vote = ''
      this.hardStateDirty = true
    }
  }

  // ------------------------------------------------------------------ events

  tick(): void {
    this.ticks++
    const role = this.role
    if (role.kind !== 'leader') {
      // An abstaining node's election timer starts when the abstention ends, so that nodes
      // started together do not all campaign at that same tick.
      if (this.abstaining) this.electionElapsed = 0
      else this.electionElapsed++
      if (this.electionsOn && this.electionElapsed >= this.electionTimeout) this.campaign()
      return
    }
    if (this.electionsOn) {
      this.electionElapsed++
      const electionTicks = this.config.electionTicks as number
      if (role.transfer !== null && this.ticks - role.transfer.startTick >= electionTicks) {
        role.transfer = null // the target did not take over in time: lead on
      }
      if (this.electionElapsed >= electionTicks) {
        this.electionElapsed = 0
        // Check-quorum: a leader that has not heard from a majority steps down, so that a
        // partitioned leader stops taking writes within an election timeout.
        const heard = countIn(role.recentlyHeard, this.voterSet) + (this.isVoter(this.id) ? 1 : 0)
        role.recentlyHeard.clear()
        if (
          !isMajority(heard, this.effective.voters.length) &&
          this.config.unsafe?.skipCheckQuorum !== true
        ) {
          this.becomeFollower(this.epochValue, null)
          return
        }
      }
    }
    role.heartbeatElapsed++
    if (role.heartbeatElapsed >= this.config.heartbeatTicks) {
      role.heartbeatElapsed = 0
      for (const [id, pr] of role.progress) {
        if (!pr.connected) continue
        this.send({
          type: 'heartbeat',
          from: this.id,
          to: id,
          epoch: this.epochValue,
          commitLsn: Math.min(this.commit, pr.matchLsn),
          leaderLastLsn: this.log.lastLsn,
        })
      }
    }
    const probeTimeout = this.config.probeTimeoutTicks
    for (const [id, pr] of role.progress) {
      if (
        pr.probeTimedOut(this.ticks, probeTimeout) ||
        pr.retransmitDue(this.ticks, retransmitTimeoutFactor * probeTimeout)
      ) {
        this.sendAppend(id, pr)
      }
    }
  }

  /** Leader: the LSN and epoch the next proposal gets. Throws NotLeaderError elsewhere. */
  nextSlot(): { lsn: number; epoch: number } {
    if (this.role.kind !== 'leader') throw new NotLeaderError(this.leaderId)
    if (this.role.transfer !== null) throw new TransferInProgressError(this.role.transfer.to)
    return { lsn: this.log.lastLsn + 1, epoch: this.epochValue }
  }

  /**
   * Leader: adds an entry (built for `nextSlot()`) to the log and starts shipping it. The node
   * persists it and reports with `persisted`.
   */
  propose(entry: CoreEntry): void {
    if (this.role.kind !== 'leader') throw new NotLeaderError(this.leaderId)
    if (this.role.transfer !== null) throw new TransferInProgressError(this.role.transfer.to)
    if (entry.membership !== undefined) this.checkMembershipChange(entry.membership)
    invariant(
      entry.lsn === this.log.lastLsn + 1,
      () => `proposal ${entry.lsn} does not follow ${this.log.lastLsn}`,
    )
    invariant(
      entry.epoch === this.epochValue,
      () => `proposal epoch ${entry.epoch} is not ${this.epochValue}`,
    )
    this.log.append([entry])
    this.noteAppended([entry])
    this.broadcastPending = true
  }

  /**
   * Leader: throws unless a configuration change may be proposed now: an entry of this epoch
   * is committed (Raft's fix for single-server changes), no other change is in flight, and
   * `next` differs from the configuration in effect by one voter at most.
   */
  checkMembershipChange(next: CoreMembership): void {
    if (this.role.kind !== 'leader') throw new NotLeaderError(this.leaderId)
    const unsafe = this.config.unsafe?.concurrentMembershipChanges === true
    const pending = this.pendingMembershipLsn
    if (pending !== null && !unsafe) throw new MembershipChangeInProgressError(pending)
    if (!this.leaderReady && !unsafe) {
      throw new MembershipChangeInProgressError(
        this.log.lastLsn,
        `leader ${this.id} has not committed an entry of its epoch ${this.epochValue} yet; retry shortly`,
      )
    }
    const problem = singleChangeProblem(this.effective, next)
    invariant(problem === null, () => `configuration change refused: ${problem}`)
  }

  // ------------------------------------------------------------------ configurations

  /** The configuration in effect: the newest in the log (or, unsafely, the newest committed). */
  private effectiveAt(): MembershipAt {
    if (this.config.unsafe?.membershipOnCommit === true) {
      let at = this.memberships[0] as MembershipAt
      for (const m of this.memberships) if (m.lsn <= this.commit) at = m
      return at
    }
    return this.memberships[this.memberships.length - 1] as MembershipAt
  }

  /** Recomputes the configuration in effect; a leader starts or stops tracking members. */
  private refreshMembership(): void {
    const at = this.effectiveAt()
    this.effective = at.membership
    this.memberSet = new Set(membersOf(at.membership))
    this.voterSet = new Set(at.membership.voters)
    const role = this.role as Role | undefined
    if (role?.kind !== 'leader') return
    for (const id of this.memberSet) {
      if (id === this.id || role.progress.has(id)) continue
      role.progress.set(id, new Progress(this.log.lastLsn + 1, this.connectedPeers.has(id)))
      this.broadcastPending = true
    }
    for (const id of [...role.progress.keys()]) {
      // A removed member gets nothing more from this leader.
      if (!this.memberSet.has(id)) role.progress.delete(id)
    }
    if (role.transfer !== null && !this.voterSet.has(role.transfer.to)) role.transfer = null
  }

  /** Entries now in this node's log: the configurations among them take effect at once. */
  private noteAppended(entries: readonly CoreEntry[]): void {
    let changed = false
    for (const entry of entries) {
      if (entry.membership === undefined) continue
      const problem = membershipShapeProblem(entry.membership)
      invariant(problem === null, () => `configuration at ${entry.lsn}: ${problem}`)
      this.memberships.push({ lsn: entry.lsn, membership: copyMembership(entry.membership) })
      changed = true
    }
    if (changed) this.refreshMembership()
  }

  /** The log was cut after `lsn`: configurations past it are gone; the one before is back. */
  private noteTruncated(lsn: number): void {
    const before = this.memberships.length
    while (
      this.memberships.length > 1 &&
      (this.memberships[this.memberships.length - 1] as MembershipAt).lsn > lsn
    ) {
      this.memberships.pop()
    }
    invariant(
      (this.memberships[0] as MembershipAt).lsn <= lsn,
      'a committed configuration change was truncated',
    )
    if (this.memberships.length !== before) this.refreshMembership()
  }

  /**
   * The commit LSN moved: configurations a committed one supersedes are forgotten, and a
   * leader the committed configuration no longer counts as a voter steps down (Raft thesis
   * §4.2.2; the node hands leadership over first, so this is the fallback).
   */
  private noteCommitted(): void {
    while (
      this.memberships.length > 1 &&
      (this.memberships[1] as MembershipAt).lsn <= this.commit
    ) {
      this.memberships.shift()
    }
    if (this.config.unsafe?.membershipOnCommit === true) this.refreshMembership()
    const committed = (this.memberships[0] as MembershipAt).membership
    if (this.role.kind === 'leader' && !committed.voters.includes(this.id)) {
      this.becomeFollower(this.epochValue, null)
    }
  }

  /**
   * Local durability reached `lsn` (entries handed out by Ready or proposed), whose epoch is
   * `epoch`. A write that completes after its entries were replaced (a leader that stepped
   * down while its writes were in flight, then took a new leader's entries at the same LSNs)
   * says nothing about the new entries, and is ignored.
   */
  persisted(lsn: number, epoch?: number): void {
    if (epoch !== undefined && this.log.epochAt(Math.min(lsn, this.log.lastLsn)) !== epoch) return
    if ((epoch ?? this.log.epochAt(lsn)) === this.epochValue) this.epochUnconfirmed = false
    this.log.persisted(lsn)
    this.log.trim()
    if (this.role.kind === 'leader') {
      // The leader's own disk may complete a majority.
      this.maybeCommit()
    } else {
      this.reportMatch()
    }
  }

  /**
   * A message from a peer. One whose epoch is out of range, or too far above this node's to be
   * taken from one message (see `epochFreeMax`), is dropped and counted, like a message for
   * another node: it changes nothing. Dropping rather than refusing: the core has no way to
   * refuse but a message, and any answer would only carry this node's epoch to a sender that is
   * broken or lying; the decoder is where a bad frame is refused (KV_ERR_BAD_FRAME, the stream
   * closed), and this is the second line behind it, for the simulator and any other transport.
   * Throwing would make a peer's bad input look like a broken invariant of this node.
   */
  step(message: Message): void {
    if (message.to !== this.id || !this.mayHearFrom(message)) return
    if (
      !isEpoch(message.epoch) ||
      (message.epoch > this.epochValue && !this.mayRaiseEpochTo(message.epoch, message.from))
    ) {
      this.epochMessagesDropped++
      return
    }
    if (message.epoch > this.epochValue) {
      if (message.type === 'vote') {
        // Leader stickiness: a member that heard from a live leader within the election
        // timeout ignores requests to replace it (unless the leader itself handed over).
        const inLease =
          this.electionsOn &&
          this.leaderId !== null &&
          this.electionElapsed < (this.config.electionTicks as number)
        if (inLease && !message.transfer) return
        // A pre-vote changes nothing here; a real vote request moves this node to its epoch.
        if (!message.preVote) this.becomeFollower(message.epoch, null)
      } else if (message.type === 'voteAck' && message.preVote && message.granted) {
        // A pre-vote grant carries the epoch asked about; nobody has moved to it yet.
      } else {
        const fromLeader = message.type === 'append' || message.type === 'heartbeat'
        this.becomeFollower(message.epoch, fromLeader ? message.from : null)
      }
    } else if (message.epoch < this.epochValue) {
      if (message.type === 'vote' && message.preVote) {
        // Tell a pre-candidate with an old epoch where the cluster is, so it catches up.
        this.send(
          {
            type: 'voteAck',
            from: this.id,
            to: message.from,
            epoch: this.epochValue,
            granted: false,
            preVote: true,
          },
          true,
        )
        return
      }
      // A deposed leader's messages are refused; tell it the epoch so it steps down (once that
      // epoch is durable here).
      if (message.type === 'append' || message.type === 'heartbeat') {
        this.send(
          {
            type: 'appendAck',
            from: this.id,
            to: message.from,
            epoch: this.epochValue,
            matchLsn: 0,
            reject: true,
            // Usually never read: the higher epoch makes the receiver a follower first. But the
            // sender may have become leader at this very epoch since it sent the old message
            // (a delayed or duplicated one, or a bad epoch from a peer's bug), and then reads
            // the hint: a real one (not 0, which asks for a snapshot) only makes it probe.
            hintLsn: this.log.lastLsn + 1,
          },
          true,
        )
      }
      return
    }
    switch (message.type) {
      case 'append':
        this.onAppend(message)
        break
      case 'heartbeat':
        this.onHeartbeat(message)
        break
      case 'appendAck':
        this.onAppendAck(message)
        break
      case 'heartbeatAck':
        this.onHeartbeatAck(message)
        break
      case 'vote':
        this.onVote(message)
        break
      case 'voteAck':
        this.onVoteAck(message)
        break
      case 'timeoutNow':
        this.onTimeoutNow(message)
        break
    }
  }

  /**
   * Whether a message from `from` at `epoch` (above this node's) may raise this node's epoch
   * (see `epochFreeMax`): within one step, or once a majority of the members have each sent an
   * epoch at least as high (this node does not count itself). Safety never depends on which
   * epochs a node takes, only liveness does: this keeps one faulty member from spending the
   * epochs left, and lets a node that fell behind catch up with the rest.
   */
  private mayRaiseEpochTo(epoch: number, from: NodeId): boolean {
    if (epoch <= Math.max(this.epochValue, epochFreeMax) + epochStepMax) return true
    this.farEpochs.set(from, Math.max(this.farEpochs.get(from) ?? 0, epoch))
    let vouching = 0
    for (const [id, claimed] of this.farEpochs) {
      if (claimed >= epoch && this.isVoter(id)) vouching++
    }
    return isMajority(vouching, this.effective.voters.length)
  }

  /**
   * Whether a message is for the configuration: a vote answer only from a voter (a node
   * outside the configuration must not move a candidate's epoch), the answers a leader tracks
   * only from members. A vote request, an append, a heartbeat or a snapshot is taken from any
   * sender, as Raft takes them (servers answer without consulting their configuration): a
   * leader added while this node was behind may not be in its configuration yet, and a
   * candidate promoted by an entry this node has not received may need its vote - refusing it
   * could leave no one able to win (a voter two changes behind, say). The candidate's
   * configuration decides whose vote counts. A removed node cannot disrupt: it gets no vote
   * while it is behind the committed removal (the log check), none while members hear from a
   * leader (the lease), and its pre-vote moves no epoch (and the peer port refuses it).
   */
  private mayHearFrom(message: Message): boolean {
    switch (message.type) {
      case 'vote':
        return message.from !== this.id
      case 'voteAck':
        return this.isVoter(message.from)
      case 'appendAck':
      case 'heartbeatAck':
      case 'timeoutNow':
        return this.isMember(message.from)
      case 'append':
      case 'heartbeat':
        return message.from !== this.id
    }
  }

  // ------------------------------------------------------------------ elections

  private onVote(m: VoteMessage): void {
    const unsafe = this.config.unsafe
    // One vote per epoch: to whoever already has it, or to anyone while no vote was cast and
    // no leader is known. A pre-vote for a later epoch binds nothing.
    const canVote =
      this.vote === m.from ||
      (this.vote === '' && this.leaderId === null) ||
      (m.preVote && m.epoch > this.epochValue) ||
      unsafe?.grantEveryVote === true
    // The candidate's log must be at least as up to date as ours: a later last epoch, or the
    // same last epoch and at least our last LSN. So a winner holds every committed entry.
    const upToDate =
      m.lastEpoch > this.log.lastEpoch ||
      (m.lastEpoch === this.log.lastEpoch && m.lastLsn >= this.log.lastLsn) ||
      unsafe?.skipUpToDateCheck === true
    // Whether this node is a voter in its own configuration does not matter: the candidate
    // counts the vote only if its configuration names this node a voter, and this node may
    // not have received that configuration yet (promoted by an entry still on its way). A
    // member that refused then could leave no one able to win: a candidate whose uncommitted
    // promotion of this node is in effect needs this vote (etcd's TestLearnerCanVote).
    const granted = canVote && upToDate && this.role.kind !== 'leader' && !this.abstaining
    if (granted && !m.preVote) {
      this.vote = m.from
      this.hardStateDirty = true
      this.electionElapsed = 0
    }
    this.send(
      {
        type: 'voteAck',
        from: this.id,
        to: m.from,
        epoch: granted ? m.epoch : this.epochValue,
        granted,
        preVote: m.preVote,
      },
      // A granted vote is durable before the candidate hears of it; every answer carries an
      // epoch, which is durable first too.
      true,
    )
  }

  private onVoteAck(m: VoteAckMessage): void {
    const role = this.role
    if (role.kind === 'preCandidate' && m.preVote) {
      if (m.granted && m.epoch !== this.epochValue + 1) return
      ;(m.granted ? role.granted : role.refused).add(m.from)
      this.tally()
    } else if (role.kind === 'candidate' && !m.preVote && m.epoch === this.epochValue) {
      // A grant answers a request that left once the epoch was durable.
      if (m.granted) this.epochUnconfirmed = false
      ;(m.granted ? role.granted : role.refused).add(m.from)
      this.tally()
    }
  }

  private onTimeoutNow(m: TimeoutNowMessage): void {
    if (this.role.kind === 'leader' || m.epoch !== this.epochValue) return
    this.campaign(true)
  }

  /** Leader: a stream to `id` is up; probe where its log stands. */
  peerConnected(id: NodeId): void {
    if (id === this.id) return
    this.connectedPeers.add(id)
    if (!this.isMember(id)) return
    if (this.role.kind !== 'leader') return
    const pr = this.role.progress.get(id)
    if (!pr) return
    pr.connect(this.log.lastLsn)
    this.sendAppend(id, pr)
  }

  /** Leader: the stream to `id` broke; nothing in flight will be answered. */
  peerDisconnected(id: NodeId): void {
    this.connectedPeers.delete(id)
    if (this.role.kind !== 'leader') return
    const pr = this.role.progress.get(id)
    pr?.disconnect()
  }

  /** Leader: entries read from disk for `to`, starting at its next LSN. */
  entriesLoaded(to: NodeId, entries: CoreEntry[]): void {
    if (this.role.kind !== 'leader') return
    const pr = this.role.progress.get(to)
    if (!pr || !pr.loading) return
    pr.loaded()
    if (entries.length === 0 || entries[0]?.lsn !== pr.nextLsn) {
      this.sendAppend(to, pr)
      return
    }
    this.sendEntries(to, pr, entries)
    this.sendAppend(to, pr)
  }

  /** Leader: a snapshot at `lsn` was streamed to `to` whole; probe from just past it. */
  snapshotSent(to: NodeId, lsn: number): void {
    if (this.role.kind !== 'leader') return
    const pr = this.role.progress.get(to)
    if (!pr || !pr.snapshotSent(Math.min(lsn, this.log.lastLsn))) return
    this.sendAppend(to, pr)
  }

  /** Leader: a snapshot stream to `to` failed; try again from a probe. */
  snapshotFailed(to: NodeId): void {
    if (this.role.kind !== 'leader') return
    const pr = this.role.progress.get(to)
    if (!pr || !pr.snapshotFailed()) return
    this.sendAppend(to, pr)
  }

  /**
   * A member offers a snapshot, sent at `epoch` (snapshot chunks do not pass through `step`).
   * Taken only from a member this node would take an append from: at a lower epoch never; at a
   * higher one (within the limits of `step`) the sender is followed at that epoch; at this epoch
   * only from the leader this node follows, or from the sender when no leader is known yet (a
   * restarted follower may get the snapshot before the first heartbeat). Whether to install it.
   * `snapshot` is the LSN and epoch of the snapshot's last entry, when the node knows them.
   */
  snapshotOffered(from: NodeId, epoch: number, snapshot?: { lsn: number; epoch: number }): boolean {
    if (from === this.id || !isEpoch(epoch)) return false
    if (epoch < this.epochValue) return false
    if (epoch > this.epochValue) {
      if (!this.mayRaiseEpochTo(epoch, from)) {
        this.epochMessagesDropped++
        return false
      }
      this.becomeFollower(epoch, from)
    }
    if (this.role.kind === 'leader') return false
    if (this.role.kind === 'follower' && this.role.leaderId !== null && this.role.leaderId !== from)
      return false
    // A snapshot this node's log already reaches would only drop entries: one below its commit
    // LSN, or one ending at an entry it holds (same LSN and epoch), after which its entries
    // match the sender's and may have been acknowledged, counted toward a majority (a leader
    // that went back on a stale refusal sends its committed state). Raft's InstallSnapshot
    // keeps them; here the offer is refused, and the leader probes and replicates instead.
    this.role = { kind: 'follower', leaderId: from }
    this.electionElapsed = 0
    this.abstainUntilTick = 0
    if (snapshot !== undefined && snapshot.lsn < this.commit) return false
    if (
      snapshot !== undefined &&
      !this.awaitingSnapshot &&
      this.log.epochAt(snapshot.lsn) === snapshot.epoch
    ) {
      // Holding the snapshot's last entry, this log matches the leader's up to it: say so (the
      // leader, whose log starts after it, could not probe that far back and would offer the
      // snapshot again and again).
      this.verifiedLsn = Math.max(this.verifiedLsn, snapshot.lsn)
      this.reportMatch(true)
      return false
    }
    return true
  }

  /**
   * Follower: the node started replacing its state with a snapshot, or an install was cut off
   * and the state is partial. Until a snapshot is installed, appends are refused with a request
   * for a snapshot (hint LSN 0), so no entry lands in a half-replaced state.
   */
  awaitSnapshot(): void {
    this.awaitingSnapshot = true
  }

  /**
   * Follower: a snapshot at `lsn` was installed; the log starts after it. `membership` is the
   * configuration its state holds (with the LSN that made it), or null when it holds none (a
   * cluster still on its seed configuration).
   */
  snapshotInstalled(lsn: number, epoch: number, membership: MembershipAt | null = null): void {
    invariant(isEpoch(epoch), () => `snapshot epoch ${epoch} is out of range`)
    invariant(lsn >= this.commit, `snapshot ${lsn} is below the commit LSN ${this.commit}`)
    this.awaitingSnapshot = false
    this.log.resetToSnapshot(lsn, epoch)
    if (membership !== null) {
      invariant(membership.lsn <= lsn, 'snapshot configuration past the snapshot')
      const problem = membershipShapeProblem(membership.membership)
      invariant(problem === null, () => `snapshot configuration: ${problem}`)
      this.memberships = [
        { lsn: membership.lsn, membership: copyMembership(membership.membership) },
      ]
    } else {
      // The whole log was replaced: configurations above the snapshot are gone with it.
      this.memberships = [this.memberships[0] as MembershipAt]
    }
    this.refreshMembership()
    this.commit = lsn
    this.verifiedLsn = lsn
    this.hardStateDirty = true
    this.snapshotUnacknowledged = true
    this.reportMatch(true)
  }

  /** The log below `retainFromLsn` was compacted on disk. */
  compacted(retainFromLsn: number, epoch: number): void {
    invariant(isEpoch(epoch), () => `compacted epoch ${epoch} is out of range`)
    invariant(retainFromLsn <= this.commit + 1, 'compaction past the commit LSN')
    this.log.compacted(retainFromLsn, epoch)
  }

  // ------------------------------------------------------------------ follower

  private onAppend(m: AppendMessage): void {
    if (this.role.kind === 'leader') {
      // Two leaders in one epoch would break everything; the caller configured leadership.
      invariant(false, `leader ${this.id} got an append from ${m.from} in its own epoch ${m.epoch}`)
    }
    this.role = { kind: 'follower', leaderId: m.from }
    this.electionElapsed = 0
    this.abstainUntilTick = 0
    this.leaderLast = Math.max(this.leaderLast, m.leaderLastLsn)
    this.snapshotUnacknowledged = false
    if (this.awaitingSnapshot) {
      this.reject(m.from, snapshotNeededHint)
      return
    }
    const log = this.log
    if (m.prevLsn < this.commit) {
      // Everything up to the commit LSN matches any legitimate leader: skip what we have.
      const skip = this.commit - m.prevLsn
      const rest = m.entries.slice(skip)
      if (rest.length === 0) {
        this.verifiedLsn = Math.max(
          this.verifiedLsn,
          Math.min(this.commit, m.prevLsn + m.entries.length),
        )
        this.advanceCommit(m.commitLsn, this.verifiedLsn)
        this.reportMatch(true)
        return
      }
      this.onAppend({
        ...m,
        prevLsn: this.commit,
        prevEpoch: log.epochAt(this.commit) ?? 0,
        entries: rest,
      })
      return
    }
    if (m.prevLsn > log.lastLsn) {
      this.reject(m.from, log.lastLsn + 1)
      return
    }
    const localPrevEpoch = log.epochAt(m.prevLsn)
    if (localPrevEpoch !== m.prevEpoch) {
      // Our entry at prevLsn is from another epoch: the leader should go back past the
      // whole epoch we hold there.
      this.reject(m.from, Math.max(this.commit + 1, log.epochStart(m.prevLsn)))
      return
    }
    let append: CoreEntry[] = m.entries
    for (let i = 0; i < m.entries.length; i++) {
      const entry = m.entries[i] as CoreEntry
      invariant(entry.lsn === m.prevLsn + 1 + i, 'append entries are not contiguous')
      if (entry.lsn > log.lastLsn) {
        append = m.entries.slice(i)
        break
      }
      if (log.epochAt(entry.lsn) !== entry.epoch) {
        // A conflicting suffix: drop it (never committed entries), then take the leader's.
        invariant(
          entry.lsn > this.commit,
          () =>
            `${m.from} (epoch ${m.epoch}) sent entry ${entry.lsn} of epoch ${entry.epoch}, but this node committed an entry of epoch ${log.epochAt(entry.lsn)} there: that leader is missing committed writes; refusing it`,
        )
        log.truncateAfter(entry.lsn - 1)
        this.noteTruncated(entry.lsn - 1)
        const truncation = this.pending.truncateAfter
        this.pending.truncateAfter =
          truncation === null ? entry.lsn - 1 : Math.min(truncation, entry.lsn - 1)
        this.pending.entries = this.pending.entries.filter((e) => e.lsn < entry.lsn)
        append = m.entries.slice(i)
        break
      }
      if (i === m.entries.length - 1) append = []
    }
    if (append.length > 0) {
      log.append(append)
      this.noteAppended(append)
      this.pending.entries.push(...append)
    }
    const lastNew = m.prevLsn + m.entries.length
    this.verifiedLsn = Math.max(this.verifiedLsn, lastNew)
    if (m.entries.length === 0) this.verifiedLsn = Math.max(this.verifiedLsn, m.prevLsn)
    this.advanceCommit(m.commitLsn, lastNew)
    // New entries are acknowledged once durable (see persisted); an Append that added
    // nothing (a probe, or entries we already had) is answered at once.
    this.reportMatch(append.length === 0)
  }

  private onHeartbeat(m: HeartbeatMessage): void {
    if (this.role.kind === 'leader') {
      invariant(
        false,
        `leader ${this.id} got a heartbeat from ${m.from} in its own epoch ${m.epoch}`,
      )
    }
    this.role = { kind: 'follower', leaderId: m.from }
    this.electionElapsed = 0
    this.abstainUntilTick = 0
    this.leaderLast = Math.max(this.leaderLast, m.leaderLastLsn)
    this.advanceCommit(m.commitLsn, this.verifiedLsn)
    // The leader waits for an append acknowledgement to leave its snapshot state.
    if (this.matchUnreported || this.snapshotUnacknowledged) this.reportMatch(true)
    this.send(
      {
        type: 'heartbeatAck',
        from: this.id,
        to: m.from,
        epoch: this.epochValue,
        matchLsn: Math.min(this.log.persistedLsn, this.verifiedLsn),
      },
      true,
    )
  }

  private advanceCommit(leaderCommit: number, verified: number): void {
    const next = Math.min(leaderCommit, verified, this.log.lastLsn)
    if (next > this.commit) {
      this.commit = next
      this.hardStateDirty = true
      this.noteCommitted()
    }
  }

  private reject(to: NodeId, hintLsn: number): void {
    this.send(
      {
        type: 'appendAck',
        from: this.id,
        to,
        epoch: this.epochValue,
        matchLsn: Math.min(this.log.persistedLsn, this.verifiedLsn),
        reject: true,
        hintLsn,
      },
      true,
    )
  }

  /** Tells the leader how far our durable log matches its own, if that moved. */
  private reportMatch(force = false): void {
    if (this.role.kind !== 'follower' || this.role.leaderId === null) {
      if (force) this.matchUnreported = true
      return
    }
    const match = Math.min(this.log.persistedLsn, this.verifiedLsn)
    if (!force && match <= this.reportedMatch) return
    this.reportedMatch = match
    this.matchUnreported = false
    this.send(
      {
        type: 'appendAck',
        from: this.id,
        to: this.role.leaderId,
        epoch: this.epochValue,
        matchLsn: match,
        reject: false,
        hintLsn: 0,
      },
      true,
    )
  }

  // ------------------------------------------------------------------ leader

  private onAppendAck(m: AppendAckMessage): void {
    if (this.role.kind !== 'leader') return
    const pr = this.role.progress.get(m.from)
    if (!pr) return
    pr.heardFrom(this.ticks)
    this.role.recentlyHeard.add(m.from)
    if (m.reject && m.hintLsn === snapshotNeededHint) {
      // The follower's state is being replaced (or a replacement broke off): send it a
      // snapshot, unless one is already on its way.
      if (pr.state !== 'snapshot') {
        pr.becomeSnapshot()
        this.pending.snapshots.push(m.from)
      }
      return
    }
    if (m.reject) {
      pr.maybeDecrTo(m.matchLsn, m.hintLsn, this.log.lastLsn)
      if (pr.state !== 'snapshot') this.sendAppend(m.from, pr)
      return
    }
    pr.maybeUpdate(m.matchLsn, this.log.lastLsn, this.ticks)
    this.maybeCommit()
    this.sendAppend(m.from, pr)
    const transfer = this.role.transfer
    if (transfer?.to === m.from && pr.matchLsn === this.log.lastLsn) this.sendTimeoutNow(m.from)
  }

  private onHeartbeatAck(m: HeartbeatAckMessage): void {
    if (this.role.kind !== 'leader') return
    const pr = this.role.progress.get(m.from)
    if (!pr) return
    pr.heardFrom(this.ticks)
    this.role.recentlyHeard.add(m.from)
    if (pr.heartbeatMatch(m.matchLsn, this.log.lastLsn)) this.maybeCommit()
    if (pr.matchLsn < this.log.lastLsn) this.sendAppend(m.from, pr)
  }

  /** Commits the highest LSN a majority holds, if it is from the leader's own epoch. */
  private maybeCommit(): void {
    if (this.role.kind !== 'leader') return
    // The voters of the configuration in effect, the leader among them only if it votes in it
    // (a leader removing itself manages the change without counting toward it).
    const candidate = majorityLsn(this.effective.voters.map((m) => this.matchOf(m)))
    if (candidate > this.commit && this.log.epochAt(candidate) === this.epochValue) {
      this.commit = candidate
      this.hardStateDirty = true
      this.noteCommitted()
      // Followers learn the new commit LSN with the next Append or heartbeat.
    }
  }

  /** Sends what `id` should get next, within its in-flight window. */
  private sendAppend(id: NodeId, pr: Progress): void {
    if (this.role.kind !== 'leader') return
    for (;;) {
      if (pr.isPaused(this.config.inflightAppendsMax, this.config.inflightBytesMax)) return
      // Entries go out as soon as they are proposed, while the leader's own write is still in
      // flight (Raft thesis §10.2.1): the leader's disk counts toward the majority like any
      // follower's once it is durable (`matchOf`). A follower may then hold an entry the
      // leader loses in a crash; that entry was never committed unless a majority holds it
      // without the leader, and then every future leader has it (the up-to-date vote check).
      const last = this.log.lastLsn
      if (pr.state === 'replicate' && pr.nextLsn > last) return
      const prevLsn = pr.nextLsn - 1
      if (this.log.epochAt(prevLsn) === null) {
        pr.becomeSnapshot()
        this.pending.snapshots.push(id)
        return
      }
      const entries = this.log.cached(
        pr.nextLsn,
        Math.min(this.config.appendEntriesMax, Math.max(0, last - prevLsn)),
        this.config.appendBytesMax,
      )
      if (entries === null) {
        pr.startLoading()
        this.pending.loads.push({ to: id, fromLsn: pr.nextLsn })
        return
      }
      this.sendEntries(id, pr, entries)
      if (pr.state === 'probe' || entries.length === 0) return
    }
  }

  private sendEntries(id: NodeId, pr: Progress, entries: CoreEntry[]): void {
    const prevLsn = pr.nextLsn - 1
    const prevEpoch = this.log.epochAt(prevLsn)
    invariant(prevEpoch !== null, `no epoch for ${prevLsn}`)
    this.send({
      type: 'append',
      from: this.id,
      to: id,
      epoch: this.epochValue,
      prevLsn,
      prevEpoch,
      entries,
      commitLsn: this.commit,
      leaderLastLsn: this.log.lastLsn,
    })
    let bytes = 0
    for (const e of entries) bytes += e.data.length
    pr.sentEntries(entries[entries.length - 1]?.lsn ?? null, bytes, this.ticks)
  }

  private send(message: Message, afterPersist = false): void {
    if (afterPersist || this.epochUnconfirmed) this.pending.sendAfterPersist.push(message)
    else this.pending.sendNow.push(message)
  }

  /** The hard state, for the node to persist at start-up or inspect. */
  hardState(): HardState {
    return { epoch: this.epochValue, vote: this.vote, commitLsn: this.commit }
  }
}
