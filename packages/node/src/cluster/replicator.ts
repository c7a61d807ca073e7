/**
 * Drives the replication core for one node: feeds it ticks, frames and local durability,
 * carries out its Ready (persist, then send), loads old entries, and answers the questions the
 * HTTP layer asks: may I write, is this write acknowledged the way the client asked, has this
 * replica applied a session's LSN, how far behind is everyone.
 *
 * Split as etcd splits rafthttp and etcdserver's raftNode, one concern a file:
 * - frames.ts: message <-> frame translation, pure;
 * - snapshot-sender.ts, snapshot-receiver.ts: snapshot transfer, both sides;
 * - wait.ts: writes waiting for acknowledgements, reads waiting for an applied LSN;
 * - cluster-view.ts: lag, contact and GET /v1/cluster;
 * - log-io.ts: persisting a Ready before sending what depends on it, loading old entries;
 * - read-barrier.ts: linearizable reads; leadership.ts: handovers and the role watch;
 * - core-setup.ts: the core's settings, stats and log retention; replication-errors.ts.
 * This file is the loop that joins them. Nothing outside this directory reaches the core.
 */
import type { Logger } from 'pino'
import {
  CoreInvariantError,
  MembershipChangeInProgressError,
  NotLeaderError,
  ReplicaCore,
  TransferInProgressError,
  invariant,
  type CoreEntry,
  type Message,
  type RoleName,
} from '@kvstore/core'
import {
  EntryKind,
  KvError,
  encodeLogEntry,
  frameLimits,
  membershipEntry,
  membershipOfEntry,
  type Frame,
  type LogEntry,
  type MembershipConfig,
  type Op,
  type StoredRecord,
} from '@kvstore/protocol'
import { encodeEntries, type EncodedEntries, type LogWriter, type Store } from '@kvstore/storage'
import {
  replicationFrameBytesMax,
  type AckMode,
  type ClusterConfig,
  type MemberConfig,
  type NodeConfig,
} from '../config.js'
import type { CompactionHold } from '../backup/hold.js'
import { ClusterTracker, type ClusterView } from './cluster-view.js'
import {
  coreConfigOf,
  coreInitOf,
  electionTicksOf,
  noopEntryOf,
  replicatorStats,
  retainFromLsn,
  type ReplicatorOptions,
  type ReplicatorStats,
} from './core-setup.js'
import { frameOfMessage, messageOfFrame, type FrameContext } from './frames.js'
import { RoleWatch, awaitHandover, transferTarget } from './leadership.js'
import { LogIo } from './log-io.js'
import {
  ackTimeoutError,
  leaderNotReadyError,
  notLeaderError,
  staleEpochError,
} from './replication-errors.js'
import { SnapshotReceiver } from './snapshot-receiver.js'
import {
  coreMembershipOf,
  coreMembershipsOf,
  storedMembership,
  type ConfigAt,
} from './membership-config.js'
import type { PeerRoster } from '../membership/roster.js'
import { SnapshotSender } from './snapshot-sender.js'
import { ReadBarrier } from './read-barrier.js'
import { PeerTransport } from './transport.js'
import { AckWaiters, ApplyWaiters, ackVerdict, type AckVerdict } from './wait.js'

export type { ClusterView, MemberView } from './cluster-view.js'
export type { ReplicatorOptions, ReplicatorStats } from './core-setup.js'

/** Reads waiting on this replica to apply their session's LSN, at most. */
const applyWaitersMax = 10_000

export class Replicator {
  private readonly core: ReplicaCore
  readonly cluster: ClusterConfig
  private readonly config: NodeConfig
  private readonly store: Store
  private readonly log: Logger
  private readonly now: () => number
  private readonly transport: PeerTransport
  private readonly decoded = new WeakMap<CoreEntry, LogEntry>()
  /** Writes waiting for their acknowledgement, as the client asked. */
  private readonly ackWaiters = new AckWaiters()
  /** Reads waiting on this replica to apply their session's LSN. */
  private readonly applyWaiters = new ApplyWaiters(applyWaitersMax)
  /** Committed reads waiting on this replica's stored commit LSN to reach their session's. */
  private readonly commitWaiters = new ApplyWaiters(applyWaitersMax)
  /** Lag, contact and the cluster view. */
  private readonly tracker: ClusterTracker
  private readonly snapshotSender: SnapshotSender
  private readonly snapshotReceiver: SnapshotReceiver
  /** What outbound frames carry beyond the core's messages. */
  private readonly frameContext: FrameContext
  /** Linearizable reads. */
  private readonly reads: ReadBarrier
  /** See `ReplicatorOptions.unsafeNoFencing`. */
  private readonly unsafeNoFencing: boolean
  /** A leadership transfer an operator asked for, while it runs. */
  private transferring: Promise<string> | null = null
  private scheduled = false
  private stopped = false
  private ticker: NodeJS.Timeout | null = null
  private housekeeping: NodeJS.Timeout | null = null
  /** Persists Readies and loads old entries. */
  private readonly logIo: LogIo
  /** Elections and step-downs, noticed. */
  private readonly roles: RoleWatch
  /** This node is the preferred leader and has not campaigned yet. */
  private campaignFirst = false
  private campaignFirstTicks = 0
  /** Counters for metrics. */
  readonly stats: ReplicatorStats
  private readonly onFatal: (err: Error) => void
  private readonly bootstrapOps: Op[] | null
  /**
   * The configurations the core holds, with their URLs, by the LSN of the entry that made
   * them (0: the seed); pruned below the committed one.
   */
  private readonly configs = new Map<number, MembershipConfig>()
  /** The configuration this node last acted on (transport, roster, view), by its LSN. */
  private actedConfigLsn = -1
  /** The peer port's allow-list, kept current with the configuration. */
  private readonly roster: PeerRoster
  /** The first leader writes the seed configuration to the log, once. */
  private sealing = false

  constructor(
    options: ReplicatorOptions & { onFatal: (err: Error) => void; memberships: ConfigAt[] },
  ) {
    const { config, cluster, store } = options
    this.config = config
    this.cluster = cluster
    this.roster = options.security.roster
    for (const at of options.memberships) this.configs.set(at.lsn, at.config)
    this.store = store
    this.log = options.logger
    this.now = options.now ?? Date.now
    this.onFatal = options.onFatal
    this.bootstrapOps = options.bootstrapOps ?? null
    this.unsafeNoFencing = options.unsafeNoFencing ?? false
    const meta = store.meta
    this.core = new ReplicaCore(
      coreConfigOf(config, cluster, {
        unsafeNoFencing: this.unsafeNoFencing,
        makeNoop: (lsn, epoch) => encodeLogEntry(this.noopEntry(lsn, epoch)),
      }),
      { ...coreInitOf(meta), memberships: coreMembershipsOf(options.memberships) },
    )
    this.transport = new PeerTransport({
      self: cluster.self,
      memberOf: (id) => this.cluster.members.find((m) => m.id === id),
      clusterId: meta.clusterId,
      host: config.host,
      frameBytesMax: Math.min(frameLimits.frameBytesMax, replicationFrameBytesMax(config)),
      streamBufferBytesMax: config.replicationInflightBytesMax,
      epoch: () => this.core.epoch,
      logger: this.log,
      security: options.security,
      handlers: {
        onFrame: (peer, frame) => this.onFrame(peer, frame),
        onConnected: (peer) => {
          this.tracker.heardFrom(peer)
          this.core.peerConnected(peer)
          this.schedule()
        },
        onDisconnected: (peer) => {
          this.core.peerDisconnected(peer)
          this.snapshotReceiver.peerGone(peer)
          this.schedule()
        },
        onRefusedBy: (peer, code) => this.refusedBy(peer, code),
      },
    })
    const core = this.core
    const transport = this.transport
    this.tracker = new ClusterTracker({
      cluster,
      core,
      members: () => this.currentConfig().members,
      clusterId: meta.clusterId,
      appliedLsn: () => store.appliedLsn,
      isConnected: (peer) => transport.isConnected(peer),
      writable: () => this.writable,
      now: this.now,
      archivedLsn: () => this.archivedLsn(),
    })
    this.frameContext = {
      self: cluster.self.id,
      nowMs: this.now,
      appliedLsn: () => store.appliedLsn,
      lagMs: () => this.tracker.lag().ms,
      memberStates: () => this.tracker.memberStates(),
      archivedLsn: () => this.archivedLsn(),
    }
    this.snapshotSender = new SnapshotSender({
      // Cut at the commit LSN: the follower takes the whole snapshot as committed, so it must
      // not hold entries that a new leader could still truncate.
      openSnapshot: () => store.openSnapshot({ committed: true }),
      self: cluster.self.id,
      epoch: () => core.epoch,
      chunkBytesMax: config.replicationAppendBytesMax,
      send: (to, frame) => transport.send(to, frame),
      drained: (to) => transport.drained(to),
      onFailed: (to) => {
        core.snapshotFailed(to)
        this.schedule()
      },
      onSent: (to, lsn) => {
        core.snapshotSent(to, lsn)
        this.schedule()
      },
      logger: this.log,
    })
    this.snapshotReceiver = new SnapshotReceiver({
      store,
      core,
      link: transport,
      security: options.security,
      logger: this.log,
      onChange: () => this.schedule(),
      onBadFrame: () => this.stats.badFrames++,
      stopped: () => this.stopped,
      installedMembership: () => {
        const at = storedMembership(store)
        if (at === null) return null
        this.configs.set(at.lsn, at.config)
        return { lsn: at.lsn, membership: coreMembershipOf(at.config) }
      },
    })
    const sender = this.snapshotSender
    const receiver = this.snapshotReceiver
    this.logIo = new LogIo({
      store,
      core,
      decoded: this.decoded,
      send: (message) => this.sendMessage(message),
      schedule: () => this.schedule(),
      onFatal: this.onFatal,
      stopped: () => this.stopped,
      loadBytesMax: config.replicationAppendBytesMax,
      loadRetryMs: config.heartbeatIntervalMs,
      logger: this.log,
    })
    this.roles = new RoleWatch(meta.epoch, this.log)
    this.reads = new ReadBarrier({
      checkWritable: () => this.checkWritable(),
      appendNoop: () => {
        const writer = this.writer()
        const slot = writer.slot()
        writer.append(encodeEntries([this.noopEntry(slot.lsn, slot.epoch)])).catch(() => {})
        return slot
      },
      waitCommitted: (lsn, epoch) => this.waitForAck(lsn, epoch, 'quorum', config.ackTimeoutMs),
      core,
      unsafeNoFencing: this.unsafeNoFencing,
    })
    this.stats = replicatorStats(core, {
      sent: () => sender.sent,
      installed: () => receiver.installed,
    })
    this.noticeMembership()
  }

  /**
   * Starts as a follower with no leader known, opens the peer port and a stream to every
   * member, and starts ticking: a leader is elected among the members. The preferred leader
   * (--leader, default the first member) asks for pre-votes at once instead of waiting out an
   * election timeout; while another member leads, its pre-vote fails and changes nothing.
   */
  async start(): Promise<void> {
    if (this.unsafeNoFencing) {
      this.log.error(
        'KV_UNSAFE_NO_FENCING=1: fencing is DISABLED on this node (a test-only switch); it may lose acknowledged writes and serve stale reads',
      )
    }
    const meta = this.store.meta
    if (meta.epoch === 0 && meta.appliedLsn === 0 && meta.logStartLsn === 1) {
      // An empty disk: this node may have voted before it lost one. It stays out of elections
      // until it hears a leader, or two maximal election timeouts have passed (any election
      // it could have voted in has ended by then).
      this.core.abstain(4 * electionTicksOf(this.config))
    }
    this.campaignFirst =
      this.cluster.leaderId === this.cluster.self.id && this.core.isVoter(this.cluster.self.id)
    await this.transport.listen()
    for (const member of this.cluster.members) {
      if (member.id !== this.cluster.self.id) this.transport.connect(member.id)
    }
    this.ticker = setInterval(() => {
      if (this.campaignFirst && !this.core.abstaining) {
        // Every tick while no leader is known, for up to two election timeouts (members started
        // a little later may still abstain): a pre-vote that fails (another member leads, is
        // more up to date, or still abstains) changes nothing, and then the election timeout
        // takes over.
        this.campaignFirstTicks++
        if (
          this.campaignFirstTicks > 2 * electionTicksOf(this.config) ||
          this.core.leaderId !== null
        )
          this.campaignFirst = false
        else if (this.core.roleName === 'follower') this.core.campaign()
      }
      this.core.tick()
      this.schedule()
    }, this.config.heartbeatIntervalMs)
    this.ticker.unref()
    this.housekeeping = setInterval(() => void this.houseKeep(), 5000)
    this.housekeeping.unref()
    this.schedule()
  }

  /** Entries moved to the rollback record since this node started. */
  get rolledBack(): number {
    return this.store.rolledBack
  }

  get rollbackRecords(): number {
    return this.store.rollbackCount
  }

  /** Waits (at most `timeoutMs`) for writes that wait on replicas to be acknowledged. */
  async settle(timeoutMs: number): Promise<void> {
    const deadline = this.now() + timeoutMs
    while (this.ackWaiters.size > 0 && this.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }

  /**
   * Stops replicating: no more frames in or out, then waits for the store writes already
   * started, so that storage can close cleanly after it. Writes still waiting for replicas
   * are answered KV_ERR_SHUTTING_DOWN.
   */
  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    if (this.ticker) clearInterval(this.ticker)
    if (this.housekeeping) clearInterval(this.housekeeping)
    await this.transport.close()
    await this.logIo.settled()
    this.ackWaiters.rejectAll(
      () => new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down'),
    )
    this.applyWaiters.cancelAll()
    this.commitWaiters.cancelAll()
  }

  // ------------------------------------------------------------------ roles and writes

  get isLeader(): boolean {
    return this.core.isLeader
  }

  /** This node's role: leader, follower, preCandidate or candidate. */
  get role(): RoleName {
    return this.core.roleName
  }

  get epoch(): number {
    return this.core.epoch
  }

  /**
   * The commit LSN the replication core knows, which runs ahead of the stored one (the store's
   * `commitLsn`) by a metadata write; a committed read shows the state at it (clamped to what
   * this replica has applied), so a write acknowledged at ack=quorum is in the next one.
   */
  get knownCommitLsn(): number {
    return this.core.commitLsn
  }

  get leaderMember(): MemberConfig | undefined {
    const id = this.core.leaderId
    return id === null ? undefined : this.cluster.members.find((m) => m.id === id)
  }

  /**
   * Throws unless this node may take a write now: it leads, has committed the first entry of
   * its epoch, and heard from a majority within an election timeout by the local clock. The
   * last check is what stops a leader that was paused (SIGSTOP, a long GC) or cut off from
   * taking a write before its own ticks notice: it may have been replaced meanwhile.
   */
  checkWritable(): void {
    if (!this.core.isLeader) throw this.notLeader()
    if (!this.core.leaderReady) {
      throw leaderNotReadyError(this.cluster.self.id, this.core.epoch)
    }
    if (this.unsafeNoFencing) return
    const silentMs = this.now() - this.tracker.quorumContactMs()
    if (silentMs >= this.config.electionTimeoutMs) {
      throw new KvError(
        'KV_ERR_NOT_LEADER',
        `this node led epoch ${this.core.epoch} but has not heard from a majority for ${silentMs} ms; another member may lead now`,
        { leaderId: null, leaderUrl: null },
      )
    }
  }

  /** True when this node would take a write now (see checkWritable). */
  get writable(): boolean {
    try {
      this.checkWritable()
      return this.core.transferTarget === null
    } catch {
      return false
    }
  }

  /** KV_ERR_NOT_LEADER naming the leader, for a write that reached a follower. */
  notLeader(): KvError {
    return notLeaderError(this.leaderMember)
  }

  /** The log writer of a leader: positions from the core, durability from the store. */
  writer(): LogWriter {
    return {
      slot: () => {
        if (this.core.isLeader && !this.core.leaderReady) {
          throw leaderNotReadyError(this.cluster.self.id, this.core.epoch)
        }
        try {
          return this.core.nextSlot()
        } catch (err) {
          if (err instanceof NotLeaderError) throw this.notLeader()
          if (err instanceof TransferInProgressError) {
            throw new KvError(
              'KV_ERR_NOT_READY',
              `leadership is being handed over to ${err.to}; retry shortly`,
              { leaderId: err.to },
            )
          }
          // The core throws nothing else here: anything else is a broken invariant.
          throw this.broken(err)
        }
      },
      append: (encoded: EncodedEntries) => {
        const entries = encoded.entries
        const last = entries[entries.length - 1]
        try {
          // The sequencer takes a slot and appends in one synchronous step: the core accepts
          // the entries unless something is broken.
          invariant(
            last !== undefined && entries.length === encoded.encoded.length,
            () => `a write of ${entries.length} entries (${encoded.encoded.length} encoded)`,
          )
          for (let i = 0; i < entries.length; i++) {
            const entry = entries[i] as LogEntry
            const core: CoreEntry = {
              lsn: entry.lsn,
              epoch: entry.epoch,
              data: encoded.encoded[i] as Uint8Array,
            }
            if (entry.kind === EntryKind.Membership) {
              const next = membershipOfEntry(entry) as MembershipConfig
              this.configs.set(entry.lsn, next)
              core.membership = coreMembershipOf(next)
            }
            // Not kept in `decoded`: the leader writes its entries itself (below), so nothing
            // would read it, and it would pin every decoded entry the core's cache holds.
            this.core.propose(core)
            this.tracker.proposed(entry.lsn)
          }
        } catch (err) {
          throw this.broken(err)
        }
        const durable = this.logIo.track(this.store.appendEncoded(encoded))
        this.schedule()
        return durable.then(() => {
          this.core.persisted(last.lsn, last.epoch)
          this.schedule()
        })
      },
    }
  }

  private noopEntry(lsn: number, epoch: number): LogEntry {
    return noopEntryOf(lsn, epoch, this.bootstrapOps, this.now())
  }

  /**
   * Leader: resolves once every write acknowledged before the call is visible here and this
   * node was still the leader after the call began (see read-barrier.ts).
   */
  readBarrier(): Promise<void> {
    return this.reads.wait()
  }

  /** Leader: a record read after `readBarrier()`, made safe to return (see read-barrier.ts). */
  linearizable(record: StoredRecord | null): Promise<StoredRecord | null> {
    return this.reads.settled(record)
  }

  /**
   * Leader: hands leadership to `to` (or to the most up-to-date connected follower). Writes
   * pause while the target catches up; then it campaigns at once and wins. Resolves with the
   * new leader's id once it takes writes (its first entry committed); KV_ERR_NOT_READY if it
   * did not take over within an election timeout (this node then leads on).
   */
  transferLeadership(to: string | null): Promise<string> {
    if (this.transferring) return this.transferring
    this.checkWritable()
    const self = this.cluster.self.id
    const member = transferTarget(
      this.cluster.members.filter((m) => this.core.isVoter(m.id)),
      self,
      to,
      (id) => this.transport.isConnected(id),
      (id) => this.core.matchOf(id),
    )
    const epoch = this.core.epoch
    this.log.warn({ to: member.id, epoch }, 'handing leadership over')
    this.core.transferLeadership(member.id)
    this.schedule()
    this.transferring = awaitHandover({
      view: this.core,
      self,
      to: member.id,
      epoch,
      pollMs: this.config.heartbeatIntervalMs / 4,
      timeoutMs: 2 * this.config.electionTimeoutMs,
      readyMs: this.config.electionTimeoutMs,
      now: this.now,
      stopped: () => this.stopped,
    }).finally(() => {
      this.transferring = null
    })
    return this.transferring
  }

  /**
   * Waits until the entry written at `lsn` in `epoch` is acknowledged as `mode` asks;
   * KV_ERR_ACK_TIMEOUT if not in time, KV_ERR_STALE_EPOCH if this node stopped leading first
   * (the outcome is then unknown) or the entry was replaced.
   */
  waitForAck(lsn: number, epoch: number, mode: AckMode, timeoutMs: number): Promise<void> {
    if (mode === 'async') return Promise.resolve()
    const verdict = this.ackVerdict(lsn, epoch, mode)
    if (verdict === 'confirmed') return Promise.resolve()
    if (verdict === 'unknown') return Promise.reject(this.staleEpochError(lsn, epoch))
    return this.ackWaiters.wait({ lsn, epoch, mode }, timeoutMs, () => {
      this.stats.ackTimeouts++
      const confirmed = this.cluster.members
        .filter((m) => this.core.matchOf(m.id) >= lsn)
        .map((m) => m.id)
      return ackTimeoutError(lsn, mode, timeoutMs, confirmed, this.core.epoch)
    })
  }

  private ackVerdict(lsn: number, epoch: number, mode: AckMode): AckVerdict {
    return ackVerdict(this.core, lsn, epoch, mode)
  }

  private staleEpochError(lsn: number, epoch: number): KvError {
    return staleEpochError(lsn, epoch, this.core.epoch)
  }

  /** Resolves true once this replica has applied `lsn`, false after `timeoutMs`. */
  waitApplied(lsn: number, timeoutMs: number): Promise<boolean> {
    if (this.store.appliedLsn >= lsn && !this.store.isInstallingSnapshot)
      return Promise.resolve(true)
    // Bounded: beyond `applyWaitersMax` waiting reads, a read that would wait is refused at
    // once (KV_ERR_REPLICA_BEHIND sends the client elsewhere).
    return this.applyWaiters.wait(lsn, timeoutMs)
  }

  /**
   * Resolves true once this replica's stored commit LSN (what committed reads use) reaches
   * `lsn`, false after `timeoutMs` (or at once beyond `applyWaitersMax` waiting reads).
   */
  waitCommitted(lsn: number, timeoutMs: number): Promise<boolean> {
    if (this.store.commitLsn >= lsn && !this.store.isInstallingSnapshot)
      return Promise.resolve(true)
    return this.commitWaiters.wait(lsn, timeoutMs)
  }

  private settleWaiters(): void {
    this.ackWaiters.trigger(
      (w) => this.ackVerdict(w.lsn, w.epoch, w.mode),
      (w) => this.staleEpochError(w.lsn, w.epoch),
      this.core.epoch,
    )
    if (!this.store.isInstallingSnapshot) this.applyWaiters.trigger(this.store.appliedLsn)
    if (!this.store.isInstallingSnapshot) this.commitWaiters.trigger(this.store.commitLsn)
  }

  // ------------------------------------------------------------------ membership

  /** The configuration in effect on this node, with every member's URLs. */
  currentConfig(): MembershipConfig {
    const config = this.configs.get(this.core.membershipLsn)
    invariant(config !== undefined, () => `no configuration at ${this.core.membershipLsn}`)
    return config
  }

  /** The LSN of the entry that made the configuration in effect (0: the seed). */
  get membershipLsn(): number {
    return this.core.membershipLsn
  }

  /** A configuration change whose entry is not committed yet. */
  get membershipChangeInProgress(): boolean {
    return this.core.pendingMembershipLsn !== null
  }

  /**
   * Leader: the highest LSN `id` acknowledged, whether its stream is up, and whether the
   * leader streams it entries (`replicating`: not probing for where its log matches, nor
   * sending it a snapshot).
   */
  progressOf(id: string): {
    matchLsn: number
    connected: boolean
    replicating: boolean
    lastContactMs: number | null
  } {
    return {
      matchLsn: this.core.matchOf(id),
      connected: this.transport.isConnected(id),
      replicating: this.core.progressOf(id)?.state === 'replicate',
      lastContactMs: this.tracker.contactAgeMs(id),
    }
  }

  /** The log's last LSN here (the leader's log end, on the leader). */
  get lastLsn(): number {
    return this.core.lastLsn
  }

  /**
   * Whether `id` is live: this node, or a member whose stream is up and that was heard from
   * within two election timeouts (what a removal or promotion must leave a majority of). Two,
   * not one: a member that answers every heartbeat can still miss one timeout on a loaded
   * machine, and a refusal it causes would be wrong; a dead member's stream closes at once,
   * and a hung one stays silent far longer.
   */
  isLive(id: string): boolean {
    if (id === this.cluster.self.id) return true
    const age = this.tracker.contactAgeMs(id)
    return this.transport.isConnected(id) && age !== null && age < 2 * this.config.electionTimeoutMs
  }

  /**
   * Leader: makes `next` the configuration through the log, and resolves with the entry's LSN
   * once it is committed (by a majority of the voters of `next`, which is in effect from the
   * moment the entry is in the log). KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS while another change
   * is not committed, or before this leader has committed an entry of its own epoch.
   */
  async changeMembership(next: MembershipConfig): Promise<number> {
    this.checkWritable()
    try {
      this.core.checkMembershipChange(coreMembershipOf(next))
    } catch (err) {
      if (err instanceof MembershipChangeInProgressError) {
        throw new KvError('KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS', err.message, {
          pendingLsn: err.pendingLsn,
        })
      }
      if (err instanceof NotLeaderError) throw this.notLeader()
      throw this.broken(err)
    }
    const writer = this.writer()
    const slot = writer.slot()
    const entry = membershipEntry(slot.lsn, slot.epoch, next, this.now())
    writer.append(encodeEntries([entry])).catch(() => {})
    this.log.info(
      {
        lsn: slot.lsn,
        voters: next.members.filter((m) => m.voter).map((m) => m.id),
        learners: next.members.filter((m) => !m.voter).map((m) => m.id),
      },
      'configuration change proposed',
    )
    await this.waitForAck(slot.lsn, slot.epoch, 'quorum', this.config.ackTimeoutMs)
    return slot.lsn
  }

  /**
   * The configuration in effect changed (an entry appended or truncated, a snapshot): the
   * streams to members, the peer port's allow-list and the views follow it.
   */
  private noticeMembership(): void {
    const lsn = this.core.membershipLsn
    if (lsn === this.actedConfigLsn) return
    const first = this.actedConfigLsn === -1
    this.actedConfigLsn = lsn
    const config = this.currentConfig()
    const self = this.cluster.self.id
    const before = new Set(this.cluster.members.map((m) => m.id))
    this.cluster.members = config.members.map((m) => ({
      id: m.id,
      clientUrl: m.clientUrl,
      peerUrl: m.peerUrl,
    }))
    const ids = config.members.map((m) => m.id)
    this.roster.update(ids, config.removed)
    this.removedFromCluster = this.removedNotice || config.removed.includes(self)
    if (!first) {
      for (const id of ids) if (id !== self && !before.has(id)) this.transport.connect(id)
      for (const id of before) {
        if (ids.includes(id) || id === self) continue
        if (config.removed.includes(id)) this.transport.forget(id)
        else this.transport.disconnect(id)
      }
    }
    const committed = this.core.committedMembershipLsn
    for (const at of this.configs.keys()) if (at < committed) this.configs.delete(at)
    this.log.info(
      {
        configLsn: lsn,
        voters: config.members.filter((m) => m.voter).map((m) => m.id),
        learners: config.members.filter((m) => !m.voter).map((m) => m.id),
        removed: config.removed.length,
        self: config.removed.includes(self)
          ? 'removed'
          : ids.includes(self)
            ? this.core.isVoter(self)
              ? 'voter'
              : 'learner'
            : 'not yet a member',
      },
      'configuration in effect',
    )
  }

  /**
   * A member refused this node as removed from the cluster (KV_ERR_NOT_A_MEMBER). This node's
   * log may not hold its removal (the leader stops sending to a member once its removal is in
   * the log): it stops voting and campaigning, so that it cannot disrupt anything, until a
   * leader is heard again (a member that told it so wrongly, from an entry later undone, costs
   * nothing: the leader brings it back).
   */
  private refusedBy(peer: string, code: string): void {
    if (code !== 'KV_ERR_NOT_A_MEMBER' || this.core.isLeader) return
    if (!this.removedNotice) {
      this.removedNotice = true
      this.removedFromCluster = true
      this.log.error(
        { peer },
        'this node was removed from the cluster: it no longer votes, campaigns or replicates. Stop it; to bring the host back, give it a new id and an empty data directory and add it (kv member add)',
      )
    }
    this.core.abstain(2 ** 40)
    this.schedule()
  }

  /** A peer told this node it was removed (see refusedBy). */
  private removedNotice = false

  /** Whether a peer told this node it was removed, or its configuration says so. */
  removedFromCluster = false

  /**
   * The first leader of a cluster whose log holds no configuration writes the one --members
   * seeded, so that from then on the log (and snapshots and backups) carry it and --members
   * only ever seeds a new cluster.
   */
  private maybeSealMembership(): void {
    if (this.sealing || this.core.membershipLsn !== 0 || !this.core.leaderReady) return
    if (this.core.pendingMembershipLsn !== null || this.unsafeNoFencing) return
    this.sealing = true
    this.changeMembership(this.currentConfig())
      .then(
        (lsn) =>
          this.log.info(
            { lsn },
            'the configuration --members seeded is in the log; --members no longer changes it',
          ),
        (err: Error) =>
          this.log.debug({ err: err.message }, 'writing the seed configuration to the log failed'),
      )
      .finally(() => {
        this.sealing = false
      })
  }

  // ------------------------------------------------------------------ lag and views

  /** This node's lag behind the leader: entries and milliseconds (0 on the leader). */
  lag(): { entries: number; ms: number } {
    return this.tracker.lag()
  }

  /** What GET /v1/cluster shows. */
  clusterView(): ClusterView {
    return this.tracker.view()
  }

  /**
   * A broken invariant found on a path a request took: the node stops (a bug must not go on
   * to corrupt data) and the request fails. Anything else is returned to be thrown as it was.
   */
  private broken(err: unknown): Error {
    if (err instanceof CoreInvariantError && !this.stopped) this.onFatal(err)
    return err as Error
  }

  // ------------------------------------------------------------------ the Ready loop

  private schedule(): void {
    if (this.scheduled || this.stopped) return
    this.scheduled = true
    setImmediate(() => {
      this.scheduled = false
      try {
        this.process()
      } catch (err) {
        this.onFatal(err as Error)
      }
    })
  }

  private process(): void {
    if (this.stopped) return
    while (this.core.hasReady()) {
      const ready = this.core.takeReady()
      for (const message of ready.sendNow) this.sendMessage(message)
      this.logIo.persist(ready)
      for (const load of ready.loads) void this.logIo.load(load.to, load.fromLsn)
      for (const to of ready.snapshots) void this.snapshotSender.send(to)
    }
    this.noticeRole()
    this.noticeMembership()
    this.maybeSealMembership()
    this.settleWaiters()
  }

  /** Counts elections won and lost leadership; fails writes a deposed leader held. */
  private noticeRole(): void {
    const change = this.roles.notice(this.core)
    if (change === 'won') this.stats.electionsWon++
    if (change !== 'deposed') return
    this.stats.stepDowns++
    // Writes waiting for confirmations get KV_ERR_STALE_EPOCH: each is durable here but the
    // next leader may not have it, so its outcome is unknown until read back (a retry with the
    // same kv-request-id is safe: it is applied at most once).
    this.ackWaiters.rejectAll((w) => this.staleEpochError(w.lsn, w.epoch))
  }

  // ------------------------------------------------------------------ frames

  private sendMessage(message: Message): void {
    const frame = frameOfMessage(message, this.frameContext)
    if (message.type === 'append' && message.entries.length > 0) {
      const { entriesShipped, appendFramesShipped } = this.stats
      entriesShipped.set(message.to, (entriesShipped.get(message.to) ?? 0) + message.entries.length)
      appendFramesShipped.set(message.to, (appendFramesShipped.get(message.to) ?? 0) + 1)
    }
    this.transport.send(message.to, frame)
  }

  private onFrame(peer: string, frame: Frame): void {
    if (this.stopped) return
    // Fencing disabled (a test-only switch): a leader ignores every sign of a newer epoch.
    if (this.unsafeNoFencing && this.core.isLeader && frame.epoch > this.core.epoch) return
    try {
      const inbound = messageOfFrame(this.cluster.self.id, peer, frame)
      if (inbound.kind === 'none') return
      if (inbound.kind === 'snapshotChunk') {
        this.snapshotReceiver.receive(peer, frame)
        return
      }
      const { message } = inbound
      if (message.type === 'append') {
        message.entries.forEach((entry, i) => {
          const decoded = inbound.decoded[i]
          invariant(decoded !== undefined, 'an append entry was not decoded')
          this.decoded.set(entry, decoded)
          if (decoded.kind === EntryKind.Membership) {
            const next = membershipOfEntry(decoded) as MembershipConfig
            this.configs.set(entry.lsn, next)
            entry.membership = coreMembershipOf(next)
          }
        })
      }
      if (inbound.members !== null) this.tracker.leaderSaid(inbound.members)
      if (inbound.leaderLastLsn !== null) this.tracker.leaderHas(inbound.leaderLastLsn)
      if (inbound.appliedLsn !== null)
        this.tracker.acknowledged(peer, frame.epoch, inbound.appliedLsn)
      if (inbound.archive !== null) this.tracker.archiveReported(peer, inbound.archive.lsn)
      const regressions = this.core.progressOf(peer)?.regressions ?? 0
      this.core.step(message)
      if (
        message.type === 'appendAck' &&
        (this.core.progressOf(peer)?.regressions ?? 0) > regressions
      ) {
        this.log.warn(
          { peer, logEndLsn: message.hintLsn - 1 },
          'a follower no longer has entries it acknowledged (lost with its disk, or rebuilt); resending them',
        )
      }
    } catch (err) {
      this.stats.badFrames++
      this.log.warn(
        { peer, kind: frame.body.kind, err: (err as Error).message },
        'refusing a bad frame; closing the stream',
      )
      this.transport.reset(peer, 'bad frame')
      return
    }
    this.schedule()
  }

  // ------------------------------------------------------------------ housekeeping

  /** Compacts the log within the retention policy and forgets expired request ids. */
  private async houseKeep(): Promise<void> {
    if (this.stopped || this.store.isInstallingSnapshot) return
    try {
      const wanted = retainFromLsn({
        commitLsn: Math.min(this.core.commitLsn, this.store.commitLsn),
        isLeader: this.core.isLeader,
        followerMatches: this.cluster.members
          .filter((m) => m.id !== this.cluster.self.id && this.transport.isConnected(m.id))
          .map((m) => this.core.matchOf(m.id)),
        retentionEntries: this.config.logRetentionEntries,
        retentionEntriesMax: this.config.logRetentionEntriesMax,
      })
      // The log archive (--archive-dir) keeps what it has not taken yet, within its limit.
      const retainFrom = this.compactionHold?.(wanted) ?? wanted
      if (retainFrom > this.store.meta.logStartLsn) {
        await this.store.compactLog(retainFrom)
        this.core.compacted(this.store.meta.logStartLsn, this.store.meta.compactedEpoch)
      }
      await this.store.expireRequests(this.now() - this.config.requestIdRetentionMs)
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'housekeeping failed')
    }
  }

  /** Bytes of frames written to each peer. */
  bytesSent(): Map<string, number> {
    return this.transport.bytesSent
  }

  /** Where the log archive lets compaction go (set when this member archives); null: anywhere. */
  compactionHold: CompactionHold | null = null
  private archivedLsnOf: (() => number | null) | null = null

  /** This member keeps a log archive: its last LSN goes to the leader with heartbeat answers. */
  reportArchive(archivedLsn: () => number | null): void {
    this.archivedLsnOf = archivedLsn
  }

  private archivedLsn(): number | null {
    return this.archivedLsnOf?.() ?? null
  }

  /** Runs housekeeping now (tests and operators). */
  compactNow(): Promise<void> {
    return this.houseKeep()
  }
}
