/**
 * Drives the replication core for one node: feeds it ticks, frames and local durability,
 * carries out its Ready (persist, then send), loads old entries, and answers the questions the
 * HTTP layer asks: may I write, is this write acknowledged the way the client asked, has this
 * replica applied a session's LSN, how far behind is everyone.
 *
 * Split as etcd splits rafthttp: frames.ts translates messages and frames, snapshot-sender.ts
 * and snapshot-receiver.ts move snapshots, wait.ts holds the waiting requests, and
 * cluster-view.ts measures lag and builds the cluster view. This file is the loop that joins
 * them; nothing outside the cluster directory reaches the core.
 */
import type { Logger } from 'pino'
import {
  CoreInvariantError,
  NotLeaderError,
  ReplicaCore,
  TransferInProgressError,
  invariant,
  type CoreEntry,
  type Message,
  type Ready,
  type RoleName,
} from '@kvstore/core'
import {
  EntryKind,
  KvError,
  decodeLogEntry,
  encodeLogEntry,
  encodeSession,
  frameLimits,
  type Frame,
  type LogEntry,
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
import { ClusterTracker, type ClusterView } from './cluster-view.js'
import { frameOfMessage, messageOfFrame, type FrameContext } from './frames.js'
import type { PeerSecurity } from './peer-server.js'
import { SnapshotReceiver } from './snapshot-receiver.js'
import { SnapshotSender } from './snapshot-sender.js'
import { PeerTransport } from './transport.js'
import { AckWaiters, ApplyWaiters, ackVerdict } from './wait.js'

export type { ClusterView, MemberView } from './cluster-view.js'

export interface ReplicatorOptions {
  config: NodeConfig
  cluster: ClusterConfig
  store: Store
  logger: Logger
  /** Mutual TLS between members and the identity checks on every connection and frame. */
  security: PeerSecurity
  /**
   * The auth store's first records, written in the cluster's first entry (LSN 1) by whichever
   * member leads first; null when the cluster starts with auth off or this data directory
   * already has a log.
   */
  bootstrapOps?: Op[] | null
  /**
   * Fencing off, for the chaos suite's teeth test only (config `unsafeNoFencing`, env
   * KV_UNSAFE_NO_FENCING=1): a leader ignores newer epochs, never steps down for silence, and
   * serves writes and linearizable reads without confirming it still leads. The checkers must
   * catch the result. Default false.
   */
  unsafeNoFencing?: boolean
  now?: () => number
}

/** Counters for metrics. */
export interface ReplicatorStats {
  /** Entries sent, per follower. */
  readonly entriesShipped: Map<string, number>
  /** Append frames that carried entries, per follower. */
  readonly appendFramesShipped: Map<string, number>
  readonly snapshotsSent: number
  readonly snapshotsInstalled: number
  /** Times this node won an election. */
  electionsWon: number
  /** Times this node stopped leading. */
  stepDowns: number
  ackTimeouts: number
  badFrames: number
  /** Elections this node started (pre-votes that turned into votes). */
  readonly electionsStarted: number
  /** Peer messages the core dropped for their epoch. */
  readonly epochMessagesDropped: number
}

/** Reads waiting on this replica to apply their session's LSN, at most. */
const applyWaitersMax = 10_000

/** Ticks (heartbeat intervals) in one election timeout. */
function electionTicksOf(config: NodeConfig): number {
  return Math.max(2, Math.round(config.electionTimeoutMs / config.heartbeatIntervalMs))
}

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
  /** Lag, contact and the cluster view. */
  private readonly tracker: ClusterTracker
  private readonly snapshotSender: SnapshotSender
  private readonly snapshotReceiver: SnapshotReceiver
  /** What outbound frames carry beyond the core's messages. */
  private readonly frameContext: FrameContext
  /** The barrier entry that linearizable reads arriving in this turn of the event loop share. */
  private pendingBarrier: Promise<void> | null = null
  /** See `ReplicatorOptions.unsafeNoFencing`. */
  private readonly unsafeNoFencing: boolean
  /** A leadership transfer an operator asked for, while it runs. */
  private transferring: Promise<string> | null = null
  private scheduled = false
  private stopped = false
  private ticker: NodeJS.Timeout | null = null
  private housekeeping: NodeJS.Timeout | null = null
  /** Store writes this replicator started and has not seen finish. */
  private readonly pendingWrites = new Set<Promise<unknown>>()
  /** The role and epoch last seen, to notice elections and step-downs. */
  private lastRole: { role: RoleName; epoch: number } = { role: 'follower', epoch: 0 }
  /** The epoch this node leads at, until it steps down. */
  private ledAtEpoch: number | null = null
  /** This node is the preferred leader and has not campaigned yet. */
  private campaignFirst = false
  private campaignFirstTicks = 0
  /** Counters for metrics. */
  readonly stats: ReplicatorStats
  private readonly onFatal: (err: Error) => void
  private readonly bootstrapOps: Op[] | null

  constructor(options: ReplicatorOptions & { onFatal: (err: Error) => void }) {
    const { config, cluster, store } = options
    this.config = config
    this.cluster = cluster
    this.store = store
    this.log = options.logger
    this.now = options.now ?? Date.now
    this.onFatal = options.onFatal
    this.bootstrapOps = options.bootstrapOps ?? null
    this.unsafeNoFencing = options.unsafeNoFencing ?? false
    const meta = store.meta
    this.core = new ReplicaCore(
      {
        id: cluster.self.id,
        members: cluster.members.map((m) => m.id),
        heartbeatTicks: 1,
        probeTimeoutTicks: 10,
        appendEntriesMax: 4096,
        appendBytesMax: config.replicationAppendBytesMax,
        inflightAppendsMax: 256,
        inflightBytesMax: config.replicationInflightBytesMax,
        // Entries kept in memory for followers near the head; one further behind reads from
        // disk. A larger cache mostly adds old-generation objects that slow full GCs.
        logCacheBytesMax: 2 * config.replicationInflightBytesMax,
        // One tick per heartbeat interval; elections after 1 to 2 election timeouts of silence.
        electionTicks: electionTicksOf(config),
        ...(this.unsafeNoFencing ? { unsafe: { skipCheckQuorum: true } } : {}),
        random: Math.random,
        makeNoop: (lsn, epoch) => encodeLogEntry(this.noopEntry(lsn, epoch)),
      },
      {
        epoch: meta.epoch,
        vote: meta.vote,
        commitLsn: meta.commitLsn,
        lastLsn: meta.appliedLsn,
        lastEpoch: meta.lastEpoch,
        logStartLsn: meta.logStartLsn,
        compactedEpoch: meta.compactedEpoch,
        epochRuns: meta.epochRuns,
      },
    )
    this.transport = new PeerTransport({
      self: cluster.self,
      members: cluster.members,
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
      },
    })
    const core = this.core
    const transport = this.transport
    this.tracker = new ClusterTracker({
      cluster,
      core,
      clusterId: meta.clusterId,
      appliedLsn: () => store.appliedLsn,
      isConnected: (peer) => transport.isConnected(peer),
      writable: () => this.writable,
      now: this.now,
    })
    this.frameContext = {
      self: cluster.self.id,
      nowMs: this.now,
      appliedLsn: () => store.appliedLsn,
      lagMs: () => this.tracker.lag().ms,
      memberStates: () => this.tracker.memberStates(),
    }
    this.snapshotSender = new SnapshotSender({
      openSnapshot: () => store.openSnapshot(),
      self: cluster.self.id,
      epoch: () => core.epoch,
      chunkBytesMax: config.replicationAppendBytesMax,
      send: (to, frame) => transport.send(to, frame),
      drained: (to) => transport.drained(to),
      onFailed: (to) => {
        core.snapshotFailed(to)
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
    })
    const sender = this.snapshotSender
    const receiver = this.snapshotReceiver
    this.stats = {
      entriesShipped: new Map<string, number>(),
      appendFramesShipped: new Map<string, number>(),
      get snapshotsSent() {
        return sender.sent
      },
      get snapshotsInstalled() {
        return receiver.installed
      },
      electionsWon: 0,
      stepDowns: 0,
      ackTimeouts: 0,
      badFrames: 0,
      get electionsStarted() {
        return core.electionsStarted
      },
      get epochMessagesDropped() {
        return core.epochMessagesDropped
      },
    }
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
    this.lastRole = { role: 'follower', epoch: meta.epoch }
    if (meta.epoch === 0 && meta.appliedLsn === 0 && meta.logStartLsn === 1) {
      // An empty disk: this node may have voted before it lost one. It stays out of elections
      // until it hears a leader, or two maximal election timeouts have passed (any election
      // it could have voted in has ended by then).
      this.core.abstain(4 * electionTicksOf(this.config))
    }
    this.campaignFirst = this.cluster.leaderId === this.cluster.self.id
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
    await Promise.allSettled([...this.pendingWrites])
    this.ackWaiters.rejectAll(
      () => new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down'),
    )
    this.applyWaiters.cancelAll()
  }

  /** Tracks a store write started here, so `stop` can wait for it. */
  private track<T>(write: Promise<T>): Promise<T> {
    this.pendingWrites.add(write)
    const done = () => this.pendingWrites.delete(write)
    write.then(done, done)
    return write
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
      throw new KvError(
        'KV_ERR_NOT_READY',
        `this node was elected leader of epoch ${this.core.epoch} moments ago and is committing its first entry; retry shortly`,
        { leaderId: this.cluster.self.id },
      )
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
    const leader = this.leaderMember
    return new KvError(
      'KV_ERR_NOT_LEADER',
      leader
        ? `this node is a follower; send writes to the leader ${leader.id} at ${leader.clientUrl}`
        : 'this node is a follower and no leader is known',
      { leaderId: leader?.id ?? null, leaderUrl: leader?.clientUrl ?? null },
    )
  }

  /** The log writer of a leader: positions from the core, durability from the store. */
  writer(): LogWriter {
    return {
      slot: () => {
        if (this.core.isLeader && !this.core.leaderReady) {
          throw new KvError(
            'KV_ERR_NOT_READY',
            `this node was elected leader of epoch ${this.core.epoch} moments ago and is committing its first entry; retry shortly`,
            { leaderId: this.cluster.self.id },
          )
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
        invariant(
          entries.length > 0 && entries.length === encoded.encoded.length,
          () => `a write of ${entries.length} entries (${encoded.encoded.length} encoded)`,
        )
        for (let i = 0; i < entries.length; i++) {
          const entry = entries[i] as LogEntry
          const core: CoreEntry = {
            lsn: entry.lsn,
            epoch: entry.epoch,
            data: encoded.encoded[i] as Uint8Array,
          }
          this.decoded.set(core, entry)
          try {
            this.core.propose(core)
          } catch (err) {
            throw this.broken(err)
          }
          this.tracker.proposed(entry.lsn)
        }
        const last = entries[entries.length - 1] as LogEntry
        const durable = this.track(this.store.appendEncoded(encoded))
        this.schedule()
        return durable.then(() => {
          this.core.persisted(last.lsn, last.epoch)
          this.schedule()
        })
      },
    }
  }

  /**
   * An entry that changes nothing: a new leader's first, or a linearizable read's barrier. The
   * very first entry of a cluster (LSN 1) carries the auth store's first records instead, so
   * that the cluster is secured by the same entry that starts it, and no LSN is spent on it.
   */
  private noopEntry(lsn: number, epoch: number): LogEntry {
    if (lsn === 1 && this.bootstrapOps !== null && this.bootstrapOps.length > 0) {
      return {
        epoch,
        lsn,
        kind: EntryKind.Batch,
        ops: this.bootstrapOps,
        timestampMs: this.now(),
        requestId: '',
      }
    }
    return { epoch, lsn, kind: EntryKind.Noop, ops: [], timestampMs: this.now(), requestId: '' }
  }

  /**
   * Leader: resolves once every write acknowledged before the call is visible here and this
   * node was still the leader after the call began. It appends a no-op entry (shared by every
   * read that arrives in the same turn of the event loop) and waits for a majority to confirm
   * it: a majority accepting an entry of this epoch proves no newer leader had been elected.
   */
  readBarrier(): Promise<void> {
    this.checkWritable()
    if (this.unsafeNoFencing) return Promise.resolve()
    this.pendingBarrier ??= new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        this.pendingBarrier = null
        try {
          this.checkWritable()
          const writer = this.writer()
          const { lsn, epoch } = writer.slot()
          writer.append(encodeEntries([this.noopEntry(lsn, epoch)])).catch(() => {})
          this.waitForAck(lsn, epoch, 'quorum', this.config.ackTimeoutMs).then(
            resolve,
            (err: unknown) => reject(this.unconfirmedRead(err)),
          )
        } catch (err) {
          reject(err)
        }
      })
    })
    return this.pendingBarrier
  }

  /**
   * Leader: a record read after `readBarrier()`, made safe to return. The leader applies
   * entries before they commit, so a record may be newer than the commit LSN: wait for it to
   * commit (a moment, normally) rather than show a write that could still be rolled back.
   */
  async linearizable(record: StoredRecord | null): Promise<StoredRecord | null> {
    if (this.unsafeNoFencing) return record
    if (record === null || record.version <= this.core.commitLsn) return record
    const epoch = this.core.epochAt(record.version) ?? this.core.epoch
    await this.waitForAck(record.version, epoch, 'quorum', this.config.ackTimeoutMs).catch(
      (err: unknown) => {
        throw this.unconfirmedRead(err)
      },
    )
    return record
  }

  private unconfirmedRead(err: unknown): Error {
    if (
      err instanceof KvError &&
      (err.code === 'KV_ERR_ACK_TIMEOUT' || err.code === 'KV_ERR_STALE_EPOCH')
    ) {
      return new KvError(
        'KV_ERR_NOT_LEADER',
        `this node could not confirm with a majority that it still leads (${err.code}); the linearizable read was not served`,
        { leaderId: null, leaderUrl: null },
      )
    }
    return err as Error
  }

  /**
   * Leader: hands leadership to `to` (or to the most up-to-date connected follower). Writes
   * pause while the target catches up; then it campaigns at once and wins. Resolves with the
   * new leader's id; KV_ERR_NOT_READY if it did not take over within an election timeout (this
   * node then leads on).
   */
  transferLeadership(to: string | null): Promise<string> {
    if (this.transferring) return this.transferring
    this.checkWritable()
    let target = to
    if (target === null) {
      const best = this.cluster.members
        .filter((m) => m.id !== this.cluster.self.id && this.transport.isConnected(m.id))
        .sort((a, b) => this.core.matchOf(b.id) - this.core.matchOf(a.id))[0]
      if (best === undefined) {
        throw new KvError('KV_ERR_NOT_READY', 'no follower is connected to hand leadership to')
      }
      target = best.id
    }
    const member = this.cluster.members.find((m) => m.id === target)
    if (member === undefined) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `${JSON.stringify(target)} is not a member; members are ${this.cluster.members.map((m) => m.id).join(', ')}`,
      )
    }
    if (member.id === this.cluster.self.id) {
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `${member.id} already leads`)
    }
    const epoch = this.core.epoch
    this.log.warn({ to: member.id, epoch }, 'handing leadership over')
    this.core.transferLeadership(member.id)
    this.schedule()
    const deadline = this.now() + 2 * this.config.electionTimeoutMs
    this.transferring = (async () => {
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, this.config.heartbeatIntervalMs / 4))
        if (this.stopped) throw new KvError('KV_ERR_SHUTTING_DOWN', 'the node is stopping')
        const leader = this.core.leaderId
        if (this.core.epoch > epoch && leader !== null && leader !== this.cluster.self.id)
          return leader
        if (this.core.isLeader && this.core.transferTarget === null && this.core.epoch === epoch) {
          throw new KvError(
            'KV_ERR_NOT_READY',
            `${member.id} did not take over within an election timeout; ${this.cluster.self.id} leads on`,
            { leaderId: this.cluster.self.id },
          )
        }
        if (this.now() > deadline) {
          throw new KvError(
            'KV_ERR_NOT_READY',
            `the handover to ${member.id} did not finish in ${2 * this.config.electionTimeoutMs} ms; GET /v1/cluster shows who leads`,
          )
        }
      }
    })().finally(() => {
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
      return new KvError(
        'KV_ERR_ACK_TIMEOUT',
        `the write at LSN ${lsn} is durable on the leader but ${mode === 'all' ? 'not every member' : 'no majority'} confirmed it within ${timeoutMs} ms (confirmed by ${confirmed.join(', ')}); it may still replicate`,
        {
          lsn,
          ack: mode,
          confirmedBy: confirmed.join(','),
          session: encodeSession({ epoch: this.core.epoch, lsn }),
        },
      )
    })
  }

  private ackVerdict(
    lsn: number,
    epoch: number,
    mode: AckMode,
  ): 'confirmed' | 'waiting' | 'unknown' {
    return ackVerdict(this.core, lsn, epoch, mode)
  }

  /** The answer to a write whose leader was deposed before it was confirmed. */
  private staleEpochError(lsn: number, epoch: number): KvError {
    return new KvError(
      'KV_ERR_STALE_EPOCH',
      `this node led at epoch ${epoch} and no longer does: the write at LSN ${lsn} is durable here but may not survive under the next leader; read it back, or retry it with the same kv-request-id`,
      { lsn, epoch, currentEpoch: this.core.epoch },
    )
  }

  /** Resolves true once this replica has applied `lsn`, false after `timeoutMs`. */
  waitApplied(lsn: number, timeoutMs: number): Promise<boolean> {
    if (this.store.appliedLsn >= lsn && !this.store.isInstallingSnapshot)
      return Promise.resolve(true)
    // Bounded: beyond `applyWaitersMax` waiting reads, a read that would wait is refused at
    // once (KV_ERR_REPLICA_BEHIND sends the client elsewhere).
    return this.applyWaiters.wait(lsn, timeoutMs)
  }

  private settleWaiters(): void {
    this.ackWaiters.trigger(
      (w) => this.ackVerdict(w.lsn, w.epoch, w.mode),
      (w) => this.staleEpochError(w.lsn, w.epoch),
    )
    if (!this.store.isInstallingSnapshot) this.applyWaiters.trigger(this.store.appliedLsn)
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
      this.persist(ready)
      for (const load of ready.loads) void this.load(load.to, load.fromLsn)
      for (const to of ready.snapshots) void this.snapshotSender.send(to)
    }
    this.noticeRole()
    this.settleWaiters()
  }

  /** Logs and counts elections won and lost leadership; fails writes a deposed leader held. */
  private noticeRole(): void {
    const role = this.core.roleName
    const epoch = this.core.epoch
    const last = this.lastRole
    if (role === last.role && epoch === last.epoch) return
    this.lastRole = { role, epoch }
    if (role === 'leader' && this.ledAtEpoch !== epoch) {
      this.ledAtEpoch = epoch
      this.stats.electionsWon++
      this.log.warn({ epoch, lastLsn: this.core.wonWithLsn }, 'elected leader')
    } else if (role !== 'leader' && this.ledAtEpoch !== null) {
      this.deposed()
    } else if (role === 'candidate' && last.role !== 'candidate') {
      this.log.info({ epoch }, 'no leader heard; campaigning')
    } else if (role === 'follower' && this.core.leaderId !== null && epoch > last.epoch) {
      this.log.info({ epoch, leader: this.core.leaderId }, 'following a new leader')
    }
  }

  /**
   * This node led and no longer does: a member is at a higher epoch, or it lost contact with a
   * majority (check-quorum). Writes waiting for confirmations get KV_ERR_STALE_EPOCH: each is
   * durable here but the next leader may not have it, so its outcome is unknown until read
   * back (a retry with the same kv-request-id is safe: it is applied at most once).
   */
  private deposed(): void {
    const ledAt = this.ledAtEpoch
    invariant(ledAt !== null, 'deposed from a leadership never won')
    this.ledAtEpoch = null
    this.stats.stepDowns++
    this.log.error(
      { epoch: ledAt, newEpoch: this.core.epoch, leader: this.core.leaderId },
      this.core.epoch > ledAt
        ? 'this node no longer leads: a member is at a higher epoch'
        : 'this node no longer leads: it has not heard from a majority within an election timeout',
    )
    this.ackWaiters.rejectAll((w) => this.staleEpochError(w.lsn, w.epoch))
  }

  /** Persists a Ready's hard state, truncation and entries in order, then sends what waited on them. */
  private persist(ready: Ready): void {
    const meta = this.store.meta
    const hard = ready.hardState
    const writes: Promise<unknown>[] = []
    if (hard && (hard.epoch !== meta.epoch || hard.vote !== meta.vote)) {
      writes.push(this.track(this.store.setHardState({ epoch: hard.epoch, vote: hard.vote })))
    }
    if (ready.truncateAfter !== null) {
      writes.push(
        this.track(this.store.truncateAfter(ready.truncateAfter)).then((removed) => {
          if (removed.length > 0) {
            this.log.warn(
              {
                fromLsn: removed[0]?.lsn,
                toLsn: removed[removed.length - 1]?.lsn,
                rollbackRecords: this.store.rollbackCount,
              },
              'removed log entries the new leader does not have (unconfirmed writes); they are in GET /admin/v1/rollbacks',
            )
          }
        }),
      )
    }
    const last = ready.entries[ready.entries.length - 1]
    if (last !== undefined) {
      const encoded: EncodedEntries = { entries: [], encoded: [], bytes: 0 }
      for (const entry of ready.entries) {
        const decoded = this.decoded.get(entry) ?? decodeLogEntry(entry.data)
        encoded.entries.push(decoded)
        encoded.encoded.push(entry.data)
        encoded.bytes += entry.data.length
      }
      writes.push(this.track(this.store.appendEncoded(encoded)))
    }
    // The commit LSN follows the entries it covers; losing it in a crash is harmless (it is
    // learned again), so it is not waited for.
    if (hard && hard.commitLsn > this.store.commitLsn) {
      this.track(this.store.setHardState({ commitLsn: hard.commitLsn })).catch((err: unknown) => {
        if (!this.stopped) this.onFatal(err as Error)
      })
    }
    if (writes.length === 0) {
      for (const message of ready.sendAfterPersist) this.sendMessage(message)
      return
    }
    Promise.all(writes).then(
      () => {
        if (last !== undefined) this.core.persisted(last.lsn, last.epoch)
        for (const message of ready.sendAfterPersist) this.sendMessage(message)
        this.schedule()
      },
      (err: unknown) => {
        if (!this.stopped) this.onFatal(err as Error)
      },
    )
  }

  private async load(to: string, fromLsn: number): Promise<void> {
    try {
      // The one call of readLogRaw (the storage merges it into readLog).
      const raw = await this.store.readLogRaw(fromLsn, {
        entriesMax: 4096,
        bytesMax: this.config.replicationAppendBytesMax,
      })
      this.core.entriesLoaded(
        to,
        raw.map((r) => ({ lsn: r.lsn, epoch: r.epoch, data: r.data })),
      )
    } catch (err) {
      if (this.stopped) return
      const logStart = this.store.meta.logStartLsn
      if (fromLsn < logStart) {
        // Compacted meanwhile: the core learns it, and sends a snapshot instead.
        this.core.compacted(logStart, this.store.meta.compactedEpoch)
        this.core.entriesLoaded(to, [])
      } else {
        // Try again a little later, not in a tight loop.
        this.log.warn(
          { peer: to, fromLsn, err: (err as Error).message },
          'cannot load entries for a follower; retrying',
        )
        setTimeout(() => {
          this.core.entriesLoaded(to, [])
          this.schedule()
        }, this.config.heartbeatIntervalMs).unref()
        return
      }
    }
    this.schedule()
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
        })
      }
      if (inbound.members !== null) this.tracker.leaderSaid(inbound.members)
      if (inbound.leaderLastLsn !== null) this.tracker.leaderHas(inbound.leaderLastLsn)
      if (inbound.appliedLsn !== null)
        this.tracker.acknowledged(peer, frame.epoch, inbound.appliedLsn)
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
      const commit = Math.min(this.core.commitLsn, this.store.commitLsn)
      let retainFrom = commit + 1 - this.config.logRetentionEntries
      if (this.core.isLeader) {
        // Keep what a connected follower still needs, up to the maximum retention.
        for (const member of this.cluster.members) {
          if (member.id === this.cluster.self.id || !this.transport.isConnected(member.id)) continue
          retainFrom = Math.min(retainFrom, this.core.matchOf(member.id) + 1)
        }
        retainFrom = Math.max(retainFrom, commit + 1 - this.config.logRetentionEntriesMax)
      }
      retainFrom = Math.min(retainFrom, commit + 1)
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

  /** Runs housekeeping now (tests and operators). */
  compactNow(): Promise<void> {
    return this.houseKeep()
  }
}
