/**
 * Drives the replication core for one node: feeds it ticks, frames and local durability,
 * carries out its Ready (persist, then send), loads old entries and ships snapshots, and
 * answers the questions the HTTP layer asks: may I write, is this write acknowledged the way
 * the client asked, has this replica applied a session's LSN, how far behind is everyone.
 */
import { createHash } from 'node:crypto'
import type { Logger } from 'pino'
import {
  NotLeaderError,
  ReplicaCore,
  TransferInProgressError,
  type CoreEntry,
  type Message,
  type Ready,
  type RoleName,
} from '@kvstore/core'
import {
  EntryKind,
  KvError,
  decodeLogEntry,
  decodeStoredRecord,
  encodeLogEntry,
  encodeSession,
  frameLimits,
  type Frame,
  type LogEntry,
  type Op,
  type MemberState,
  type StoredRecord,
} from '@kvstore/protocol'
import {
  encodeEntries,
  hashDigestRecord,
  type EncodedEntries,
  type LogWriter,
  type StateSnapshot,
  type Store,
} from '@kvstore/storage'
import {
  replicationFrameBytesMax,
  type AckMode,
  type ClusterConfig,
  type MemberConfig,
  type NodeConfig,
} from '../config.js'
import type { PeerSecurity } from './peer-server.js'
import { PeerTransport } from './transport.js'

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
  now?: () => number
}

/** One member as GET /v1/cluster shows it. */
export interface MemberView {
  id: string
  role: 'leader' | 'follower'
  clientUrl: string
  peerUrl: string
  /** Epoch the member is in, as it last reported (null before it has). */
  epoch: number | null
  /** Highest LSN known durable and matching on the member. */
  ackedLsn: number
  /** Highest LSN the member has applied, as it last reported (null before it has). */
  appliedLsn: number | null
  lagEntries: number
  lagMs: number
  /** Milliseconds since the leader last heard from it (0 for the leader). */
  lastContactMs: number | null
  connected: boolean
}

export interface ClusterView {
  mode: string
  clusterId: string
  leaderId: string | null
  leaderUrl: string | null
  /** This node takes writes now: it leads, is ready, and hears from a majority. */
  writable: boolean
  epoch: number
  commitLsn: number
  self: string
  members: MemberView[]
}

interface AckWaiter {
  lsn: number
  /** Epoch of the entry at `lsn` when it was written. */
  epoch: number
  mode: AckMode
  resolve: () => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

interface ApplyWaiter {
  lsn: number
  resolve: (applied: boolean) => void
  timer: NodeJS.Timeout
}

/** When this node learned that the leader had an LSN, to measure lag with the local clock. */
interface Sighting {
  lsn: number
  atMs: number
}

const sightingsMax = 4096
/** Reads waiting on this replica to apply their session's LSN, at most. */
const applyWaitersMax = 10_000

/** Ticks (heartbeat intervals) in one election timeout. */
function electionTicksOf(config: NodeConfig): number {
  return Math.max(2, Math.round(config.electionTimeoutMs / config.heartbeatIntervalMs))
}

export class Replicator {
  readonly core: ReplicaCore
  readonly cluster: ClusterConfig
  private readonly config: NodeConfig
  private readonly store: Store
  private readonly log: Logger
  private readonly now: () => number
  private readonly transport: PeerTransport
  private readonly decoded = new WeakMap<CoreEntry, LogEntry>()
  private ackWaiters: AckWaiter[] = []
  /** The barrier entry that linearizable reads arriving in this turn of the event loop share. */
  private pendingBarrier: Promise<void> | null = null
  /**
   * KV_UNSAFE_NO_FENCING=1, for the chaos suite's teeth test only: a leader ignores newer
   * epochs, never steps down for silence, and serves writes and linearizable reads without
   * confirming it still leads. The checkers must catch the result.
   */
  private readonly unsafeNoFencing = process.env.KV_UNSAFE_NO_FENCING === '1'
  /** A leadership transfer an operator asked for, while it runs. */
  private transferring: Promise<string> | null = null
  private applyWaiters: ApplyWaiter[] = []
  private scheduled = false
  private stopped = false
  private ticker: NodeJS.Timeout | null = null
  private housekeeping: NodeJS.Timeout | null = null
  /** Follower: when it first learned of leader LSNs it had not applied yet. */
  private sightings: Sighting[] = []
  /** Leader: when it proposed LSNs, to tell how old a follower's oldest missing entry is. */
  private proposals: Sighting[] = []
  /** Leader: last contact per follower, local clock. */
  private readonly lastContact = new Map<string, number>()
  /** Leader: what each follower last reported in its acknowledgements. */
  private readonly reported = new Map<string, { appliedLsn: number; epoch: number }>()
  /** Follower: what the leader last said about every member. */
  private leaderView: MemberState[] = []
  private installing: { from: string; lsn: number; epoch: number; next: number } | null = null
  /** Store writes this replicator started and has not seen finish. */
  private readonly pendingWrites = new Set<Promise<unknown>>()
  private readonly snapshotting = new Set<string>()
  /** Followers the core asked a snapshot for again while one was still being sent to them. */
  private readonly snapshotAgain = new Set<string>()
  /** The role and epoch last seen, to notice elections and step-downs. */
  private lastRole: { role: RoleName; epoch: number } = { role: 'follower', epoch: 0 }
  /** The epoch this node leads at, until it steps down. */
  private ledAtEpoch: number | null = null
  /** This node is the preferred leader and has not campaigned yet. */
  private campaignFirst = false
  private campaignFirstTicks = 0
  /** Follower: snapshot chunks being installed, in order. */
  private snapshotChunks: Promise<void> = Promise.resolve()
  /** Counters for metrics. */
  readonly stats = {
    entriesShipped: new Map<string, number>(),
    /** Append frames that carried entries, per follower. */
    appendFramesShipped: new Map<string, number>(),
    snapshotsSent: 0,
    snapshotsInstalled: 0,
    /** Times this node won an election. */
    electionsWon: 0,
    /** Times this node stopped leading. */
    stepDowns: 0,
    ackTimeouts: 0,
    badFrames: 0,
  }
  private readonly onFatal: (err: Error) => void
  private readonly bootstrapOps: Op[] | null
  private readonly security: PeerSecurity

  constructor(options: ReplicatorOptions & { onFatal: (err: Error) => void }) {
    const { config, cluster, store } = options
    this.config = config
    this.cluster = cluster
    this.store = store
    this.log = options.logger
    this.now = options.now ?? Date.now
    this.onFatal = options.onFatal
    this.bootstrapOps = options.bootstrapOps ?? null
    this.security = options.security
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
          this.lastContact.set(peer, this.now())
          this.core.peerConnected(peer)
          this.schedule()
        },
        onDisconnected: (peer) => {
          this.core.peerDisconnected(peer)
          if (this.installing?.from === peer) this.abandonInstall('the stream broke')
          this.schedule()
        },
      },
    })
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
    while (this.ackWaiters.length > 0 && this.now() < deadline) {
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
    for (const w of this.ackWaiters) {
      clearTimeout(w.timer)
      w.reject(new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down'))
    }
    this.ackWaiters = []
    for (const w of this.applyWaiters) {
      clearTimeout(w.timer)
      w.resolve(false)
    }
    this.applyWaiters = []
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
    const silentMs = this.now() - this.quorumContactMs()
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

  /** Leader: the latest time by which a majority (itself included) had been heard from. */
  private quorumContactMs(): number {
    const now = this.now()
    const times = this.cluster.members
      .map((m) => (m.id === this.cluster.self.id ? now : (this.lastContact.get(m.id) ?? -Infinity)))
      .sort((a, b) => b - a)
    return times[Math.floor(times.length / 2)] as number
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
          throw err
        }
      },
      append: (encoded: EncodedEntries) => {
        const entries = encoded.entries
        for (let i = 0; i < entries.length; i++) {
          const entry = entries[i] as LogEntry
          const core: CoreEntry = {
            lsn: entry.lsn,
            epoch: entry.epoch,
            data: encoded.encoded[i] as Uint8Array,
          }
          this.decoded.set(core, entry)
          this.core.propose(core)
          this.sighted(this.proposals, entry.lsn)
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
    return new Promise((resolve, reject) => {
      const waiter: AckWaiter = {
        lsn,
        epoch,
        mode,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.ackWaiters = this.ackWaiters.filter((w) => w !== waiter)
          this.stats.ackTimeouts++
          const confirmed = this.cluster.members
            .filter((m) => this.core.matchOf(m.id) >= lsn)
            .map((m) => m.id)
          reject(
            new KvError(
              'KV_ERR_ACK_TIMEOUT',
              `the write at LSN ${lsn} is durable on the leader but ${mode === 'all' ? 'not every member' : 'no majority'} confirmed it within ${timeoutMs} ms (confirmed by ${confirmed.join(', ')}); it may still replicate`,
              {
                lsn,
                ack: mode,
                confirmedBy: confirmed.join(','),
                session: encodeSession({ epoch: this.core.epoch, lsn }),
              },
            ),
          )
        }, timeoutMs),
      }
      this.ackWaiters.push(waiter)
    })
  }

  /**
   * Where the entry written at `lsn` in `epoch` stands. An LSN alone says nothing once the
   * leader changed: the same LSN may hold another leader's entry, committed, so the epoch of
   * the entry at that LSN must match too.
   */
  private ackVerdict(
    lsn: number,
    epoch: number,
    mode: AckMode,
  ): 'confirmed' | 'waiting' | 'unknown' {
    const core = this.core
    const at = core.epochAt(lsn)
    // Compacted away: only committed entries are compacted, and this one was in the log.
    const ours = at === epoch || (at === null && lsn <= core.commitLsn)
    if (at !== null && at !== epoch) return 'unknown'
    if (mode === 'quorum' && ours && core.commitLsn >= lsn) return 'confirmed'
    // A leader waits for an entry in its log (its own, or an earlier leader's it holds); a
    // node that no longer leads cannot tell what becomes of it.
    if (!core.isLeader || !ours) return 'unknown'
    if (mode === 'all' && ours && core.allMatchLsn() >= lsn) return 'confirmed'
    return 'waiting'
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
    // Bounded: beyond this many waiting reads, a read that would wait is refused at once
    // (KV_ERR_REPLICA_BEHIND sends the client elsewhere).
    if (timeoutMs <= 0 || this.applyWaiters.length >= applyWaitersMax) {
      return Promise.resolve(false)
    }
    return new Promise((resolve) => {
      const waiter: ApplyWaiter = {
        lsn,
        resolve,
        timer: setTimeout(() => {
          this.applyWaiters = this.applyWaiters.filter((w) => w !== waiter)
          resolve(false)
        }, timeoutMs),
      }
      this.applyWaiters.push(waiter)
    })
  }

  private settleWaiters(): void {
    if (this.ackWaiters.length > 0) {
      const waiting: AckWaiter[] = []
      for (const w of this.ackWaiters) {
        const verdict = this.ackVerdict(w.lsn, w.epoch, w.mode)
        if (verdict === 'waiting') {
          waiting.push(w)
          continue
        }
        clearTimeout(w.timer)
        if (verdict === 'confirmed') w.resolve()
        else w.reject(this.staleEpochError(w.lsn, w.epoch))
      }
      this.ackWaiters = waiting
    }
    if (this.applyWaiters.length > 0 && !this.store.isInstallingSnapshot) {
      const applied = this.store.appliedLsn
      const waiting: ApplyWaiter[] = []
      for (const w of this.applyWaiters) {
        if (applied >= w.lsn) {
          clearTimeout(w.timer)
          w.resolve(true)
        } else {
          waiting.push(w)
        }
      }
      this.applyWaiters = waiting
    }
  }

  // ------------------------------------------------------------------ lag and views

  /** This node's lag behind the leader: entries and milliseconds (0 on the leader). */
  lag(): { entries: number; ms: number } {
    if (this.core.isLeader) return { entries: 0, ms: 0 }
    const applied = this.store.appliedLsn
    const leaderLast = this.core.leaderLastLsn
    while (this.sightings.length > 0 && (this.sightings[0] as Sighting).lsn <= applied)
      this.sightings.shift()
    const entries = Math.max(0, leaderLast - applied)
    const oldest = this.sightings[0]
    return {
      entries,
      ms: entries === 0 || oldest === undefined ? 0 : Math.max(0, this.now() - oldest.atMs),
    }
  }

  /** Leader: a follower's lag, from its acknowledged LSN. */
  private followerLag(id: string): { entries: number; ms: number } {
    const match = this.core.matchOf(id)
    const entries = Math.max(0, this.core.lastLsn - match)
    if (entries === 0) return { entries: 0, ms: 0 }
    const firstMissing = this.proposals.find((p) => p.lsn > match)
    const since = firstMissing?.atMs ?? this.proposals[0]?.atMs
    return { entries, ms: since === undefined ? 0 : Math.max(0, this.now() - since) }
  }

  private sighted(list: Sighting[], lsn: number): void {
    const last = list[list.length - 1]
    if (last !== undefined && last.lsn >= lsn) return
    const at = this.now()
    if (last !== undefined && last.atMs === at) {
      last.lsn = lsn
    } else {
      list.push({ lsn, atMs: at })
    }
    // Trim in halves, so that the cost of dropping old sightings is spread over many writes.
    if (list.length > sightingsMax * 2) list.splice(0, list.length - sightingsMax)
  }

  /** What GET /v1/cluster shows. */
  clusterView(): ClusterView {
    const leader = this.leaderMember
    const now = this.now()
    const members: MemberView[] = this.cluster.members.map((member) => {
      const base = { id: member.id, clientUrl: member.clientUrl, peerUrl: member.peerUrl }
      const role: 'leader' | 'follower' = member.id === this.core.leaderId ? 'leader' : 'follower'
      if (member.id === this.cluster.self.id) {
        const lag = this.lag()
        return {
          ...base,
          role,
          epoch: this.core.epoch,
          ackedLsn: this.core.isLeader ? this.store.appliedLsn : this.core.lastLsn,
          appliedLsn: this.store.appliedLsn,
          lagEntries: lag.entries,
          lagMs: lag.ms,
          lastContactMs: 0,
          connected: true,
        }
      }
      if (this.core.isLeader) {
        const lag = this.followerLag(member.id)
        const contact = this.lastContact.get(member.id)
        return {
          ...base,
          role,
          epoch: this.reported.get(member.id)?.epoch ?? null,
          ackedLsn: this.core.matchOf(member.id),
          appliedLsn: this.reported.get(member.id)?.appliedLsn ?? null,
          lagEntries: lag.entries,
          lagMs: lag.ms,
          lastContactMs: contact === undefined ? null : now - contact,
          connected: this.transport.isConnected(member.id),
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
      }
    })
    return {
      mode: this.cluster.mode,
      clusterId: this.store.meta.clusterId,
      leaderId: leader?.id ?? null,
      leaderUrl: leader?.clientUrl ?? null,
      writable: this.writable,
      epoch: this.core.epoch,
      commitLsn: this.core.commitLsn,
      self: this.cluster.self.id,
      members,
    }
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
      for (const to of ready.snapshots) void this.sendSnapshot(to)
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
    const ledAt = this.ledAtEpoch as number
    this.ledAtEpoch = null
    this.stats.stepDowns++
    this.log.error(
      { epoch: ledAt, newEpoch: this.core.epoch, leader: this.core.leaderId },
      this.core.epoch > ledAt
        ? 'this node no longer leads: a member is at a higher epoch'
        : 'this node no longer leads: it has not heard from a majority within an election timeout',
    )
    const waiters = this.ackWaiters
    this.ackWaiters = []
    for (const w of waiters) {
      clearTimeout(w.timer)
      w.reject(this.staleEpochError(w.lsn, w.epoch))
    }
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
      const raw = await this.store.readLog(
        fromLsn,
        { entriesMax: 4096, bytesMax: this.config.replicationAppendBytesMax },
        { raw: true },
      )
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
    const epoch = message.epoch
    const now = this.now()
    let frame: Frame
    switch (message.type) {
      case 'append':
        frame = {
          from: this.cluster.self.id,
          epoch,
          body: {
            kind: 'append',
            prevLsn: message.prevLsn,
            prevEpoch: message.prevEpoch,
            entries: message.entries.map((e) => e.data),
            commitLsn: message.commitLsn,
            leaderLastLsn: message.leaderLastLsn,
            leaderClockMs: now,
          },
        }
        if (message.entries.length > 0) {
          this.stats.entriesShipped.set(
            message.to,
            (this.stats.entriesShipped.get(message.to) ?? 0) + message.entries.length,
          )
          this.stats.appendFramesShipped.set(
            message.to,
            (this.stats.appendFramesShipped.get(message.to) ?? 0) + 1,
          )
        }
        break
      case 'heartbeat':
        frame = {
          from: this.cluster.self.id,
          epoch,
          body: {
            kind: 'heartbeat',
            commitLsn: message.commitLsn,
            leaderLastLsn: message.leaderLastLsn,
            leaderClockMs: now,
            members: this.memberStates(),
          },
        }
        break
      case 'appendAck':
        frame = {
          from: this.cluster.self.id,
          epoch,
          body: {
            kind: 'appendAck',
            matchLsn: message.matchLsn,
            reject: message.reject,
            hintLsn: message.hintLsn,
            appliedLsn: this.store.appliedLsn,
          },
        }
        break
      case 'heartbeatAck':
        frame = {
          from: this.cluster.self.id,
          epoch,
          body: {
            kind: 'heartbeatAck',
            matchLsn: message.matchLsn,
            appliedLsn: this.store.appliedLsn,
            lagMs: this.lag().ms,
          },
        }
        break
      case 'vote':
        frame = {
          from: this.cluster.self.id,
          epoch,
          body: {
            kind: 'vote',
            lastLsn: message.lastLsn,
            lastEpoch: message.lastEpoch,
            preVote: message.preVote,
            transfer: message.transfer,
          },
        }
        break
      case 'voteAck':
        frame = {
          from: this.cluster.self.id,
          epoch,
          body: { kind: 'voteAck', granted: message.granted, preVote: message.preVote },
        }
        break
      case 'timeoutNow':
        frame = { from: this.cluster.self.id, epoch, body: { kind: 'timeoutNow' } }
        break
    }
    this.transport.send(message.to, frame)
  }

  private memberStates(): MemberState[] {
    return this.clusterView().members.map((m) => ({
      id: m.id,
      role: m.role,
      matchLsn: m.ackedLsn,
      lagEntries: m.lagEntries,
      lagMs: m.lagMs,
      lastContactMs: m.lastContactMs ?? 0,
      connected: m.connected,
      appliedLsn: m.appliedLsn ?? 0,
      epoch: m.epoch ?? 0,
    }))
  }

  private onFrame(peer: string, frame: Frame): void {
    if (this.stopped) return
    // Fencing disabled (a test-only switch): a leader ignores every sign of a newer epoch.
    if (this.unsafeNoFencing && this.core.isLeader && frame.epoch > this.core.epoch) return
    const self = this.cluster.self.id
    const body = frame.body
    try {
      switch (body.kind) {
        case 'append': {
          let previousEpoch = body.prevEpoch
          const entries: CoreEntry[] = body.entries.map((data, i) => {
            const entry = decodeLogEntry(data)
            // Checked here, before the core sees any of it: LSNs follow prevLsn one by one,
            // and epochs never go down nor pass the sender's.
            if (
              entry.lsn !== body.prevLsn + 1 + i ||
              entry.epoch > frame.epoch ||
              entry.epoch < previousEpoch
            ) {
              throw new KvError(
                'KV_ERR_BAD_FRAME',
                `entry ${entry.lsn} (epoch ${entry.epoch}) does not fit the append`,
              )
            }
            previousEpoch = entry.epoch
            const core: CoreEntry = { lsn: entry.lsn, epoch: entry.epoch, data }
            this.decoded.set(core, entry)
            return core
          })
          if (body.leaderLastLsn > this.store.appliedLsn)
            this.sighted(this.sightings, body.leaderLastLsn)
          this.core.step({
            type: 'append',
            from: peer,
            to: self,
            epoch: frame.epoch,
            prevLsn: body.prevLsn,
            prevEpoch: body.prevEpoch,
            entries,
            commitLsn: body.commitLsn,
            leaderLastLsn: body.leaderLastLsn,
          })
          break
        }
        case 'heartbeat':
          this.leaderView = body.members
          if (body.leaderLastLsn > this.store.appliedLsn)
            this.sighted(this.sightings, body.leaderLastLsn)
          this.core.step({
            type: 'heartbeat',
            from: peer,
            to: self,
            epoch: frame.epoch,
            commitLsn: body.commitLsn,
            leaderLastLsn: body.leaderLastLsn,
          })
          break
        case 'appendAck': {
          this.lastContact.set(peer, this.now())
          this.reported.set(peer, { appliedLsn: body.appliedLsn, epoch: frame.epoch })
          const regressions = this.core.progressOf(peer)?.regressions ?? 0
          this.core.step({
            type: 'appendAck',
            from: peer,
            to: self,
            epoch: frame.epoch,
            matchLsn: body.matchLsn,
            reject: body.reject,
            hintLsn: body.hintLsn,
          })
          if ((this.core.progressOf(peer)?.regressions ?? 0) > regressions) {
            this.log.warn(
              { peer, logEndLsn: body.hintLsn - 1 },
              'a follower no longer has entries it acknowledged (lost with its disk, or rebuilt); resending them',
            )
          }
          break
        }
        case 'heartbeatAck':
          this.lastContact.set(peer, this.now())
          this.reported.set(peer, { appliedLsn: body.appliedLsn, epoch: frame.epoch })
          this.core.step({
            type: 'heartbeatAck',
            from: peer,
            to: self,
            epoch: frame.epoch,
            matchLsn: body.matchLsn,
          })
          break
        case 'snapshotChunk':
          this.queueSnapshotChunk(peer, frame)
          break
        case 'vote':
          this.core.step({
            type: 'vote',
            from: peer,
            to: self,
            epoch: frame.epoch,
            lastLsn: body.lastLsn,
            lastEpoch: body.lastEpoch,
            preVote: body.preVote,
            transfer: body.transfer,
          })
          break
        case 'voteAck':
          this.core.step({
            type: 'voteAck',
            from: peer,
            to: self,
            epoch: frame.epoch,
            granted: body.granted,
            preVote: body.preVote,
          })
          break
        case 'timeoutNow':
          this.core.step({ type: 'timeoutNow', from: peer, to: self, epoch: frame.epoch })
          break
        case 'hello':
        case 'refusal':
          break
      }
    } catch (err) {
      this.stats.badFrames++
      this.log.warn(
        { peer, kind: body.kind, err: (err as Error).message },
        'refusing a bad frame; closing the stream',
      )
      this.transport.reset(peer, 'bad frame')
      return
    }
    this.schedule()
  }

  // ------------------------------------------------------------------ snapshots

  /** Leader: streams a consistent copy of the state to a follower whose next entry was compacted. */
  private async sendSnapshot(to: string): Promise<void> {
    if (this.snapshotting.has(to)) {
      // The follower reconnected (or refused the last one) while the previous send winds
      // down: the core now waits for a snapshot that nothing would send. Start one afresh
      // once this one ends.
      this.snapshotAgain.add(to)
      return
    }
    this.snapshotting.add(to)
    let snapshot: StateSnapshot | null = null
    try {
      snapshot = await this.store.openSnapshot()
      const { appliedLsn: snapshotLsn, lastEpoch: snapshotEpoch } = snapshot
      const hash = createHash('sha256')
      let sequence = 0
      let records: { key: Uint8Array; record: Uint8Array }[] = []
      let requests: { id: string; record: Uint8Array }[] = []
      let bytes = 0
      const flush = async (last: boolean) => {
        const sent = this.transport.send(to, {
          from: this.cluster.self.id,
          epoch: this.core.epoch,
          body: {
            kind: 'snapshotChunk',
            snapshotLsn,
            snapshotEpoch,
            sequence: sequence++,
            records,
            requests,
            last,
            digest: last ? hash.digest('hex') : '',
          },
        })
        if (!sent) throw new Error(`the stream to ${to} is gone`)
        records = []
        requests = []
        bytes = 0
        await this.transport.drained(to)
      }
      this.log.info({ peer: to, snapshotLsn }, 'sending a snapshot')
      for await (const chunk of snapshot.rawChunks(1000)) {
        for (const { key, record } of chunk) {
          const decoded = decodeStoredRecord(record)
          hashDigestRecord(hash, key, decoded)
          records.push({ key, record })
          bytes += key.length + record.length
          if (bytes >= this.config.replicationAppendBytesMax) await flush(false)
        }
      }
      // The request ids go along, so that the follower deduplicates retries as the leader does.
      for await (const chunk of snapshot.requestChunks(1000)) {
        for (const request of chunk) {
          requests.push(request)
          bytes += request.id.length + request.record.length
          if (bytes >= this.config.replicationAppendBytesMax) await flush(false)
        }
      }
      await flush(true)
      this.stats.snapshotsSent++
    } catch (err) {
      this.log.warn({ peer: to, err: (err as Error).message }, 'snapshot to follower failed')
      this.core.snapshotFailed(to)
      this.schedule()
    } finally {
      await snapshot?.close()
      this.snapshotting.delete(to)
      if (this.snapshotAgain.delete(to)) {
        this.core.snapshotFailed(to)
        this.schedule()
      }
    }
  }

  /**
   * Follower: snapshot chunks are handled one at a time, in arrival order, even when several
   * arrive in one read.
   */
  private queueSnapshotChunk(peer: string, frame: Frame): void {
    this.snapshotChunks = this.snapshotChunks.then(() => this.onSnapshotChunk(peer, frame))
  }

  /** Follower: installs snapshot chunks in order, reading no more frames until each is written. */
  private async onSnapshotChunk(peer: string, frame: Frame): Promise<void> {
    const body = frame.body
    if (body.kind !== 'snapshotChunk' || this.stopped) return
    this.transport.setReading(peer, false)
    try {
      if (body.sequence === 0) {
        // A snapshot replaces the whole state: it is taken only from a member this node takes
        // as its leader, as an append would be (the core decides, and may learn of the leader
        // from it: a restarted follower can get the snapshot before any heartbeat), never
        // from a later epoch than it was sent at, and never below what this node has
        // committed. Anything else is a bad frame, even from an authenticated member.
        const leaderBefore = this.core.leaderId
        const epochBefore = this.core.epoch
        if (
          body.snapshotEpoch > frame.epoch ||
          body.snapshotLsn < this.store.commitLsn ||
          !this.core.snapshotOffered(peer, frame.epoch)
        ) {
          this.security.onRefused('bad_frame', {
            peer,
            reason: `a snapshot at LSN ${body.snapshotLsn} (epoch ${body.snapshotEpoch}) from ${peer} at epoch ${frame.epoch}, while this node follows ${String(leaderBefore)} at epoch ${epochBefore} and has committed ${this.store.commitLsn}`,
          })
          throw new KvError('KV_ERR_BAD_FRAME', `${peer} may not send a snapshot now`)
        }
        // The core may have moved to the sender's epoch: that is persisted like any other.
        this.schedule()
        if (this.installing !== null) this.abandonInstall('a new snapshot started')
        // From here until the install completes, appends are refused: none may land in a
        // half-replaced state.
        this.core.awaitSnapshot()
        this.installing = { from: peer, lsn: body.snapshotLsn, epoch: body.snapshotEpoch, next: 0 }
        this.log.info({ snapshotLsn: body.snapshotLsn, leader: peer }, 'installing a snapshot')
        await this.store.beginSnapshotInstall(body.snapshotLsn, body.snapshotEpoch)
      }
      const installing = this.installing
      if (
        installing === null ||
        installing.from !== peer ||
        body.sequence !== installing.next ||
        body.snapshotLsn !== installing.lsn
      ) {
        throw new KvError('KV_ERR_BAD_FRAME', `snapshot chunk ${body.sequence} is out of order`)
      }
      installing.next++
      await this.store.addSnapshotRecords(body.records)
      if (body.requests.length > 0) await this.store.addSnapshotRequests(body.requests)
      if (body.last) {
        const digest = await this.store.finishSnapshotInstall()
        this.installing = null
        if (digest.digest !== body.digest) {
          // The copy does not match what the leader sent: clear it and ask again rather than
          // serve it.
          this.log.error(
            { expected: body.digest, got: digest.digest },
            'snapshot digest mismatch; installing again',
          )
          await this.store.beginSnapshotInstall(body.snapshotLsn, body.snapshotEpoch)
          this.installing = {
            from: peer,
            lsn: body.snapshotLsn,
            epoch: body.snapshotEpoch,
            next: -1,
          }
          this.transport.reset(peer, 'snapshot digest mismatch')
          return
        }
        this.stats.snapshotsInstalled++
        this.core.snapshotInstalled(body.snapshotLsn, body.snapshotEpoch)
        this.log.info({ snapshotLsn: body.snapshotLsn, keys: digest.keys }, 'snapshot installed')
        this.schedule()
      }
    } catch (err) {
      this.stats.badFrames++
      this.log.warn(
        { peer, err: (err as Error).message },
        'snapshot install failed; closing the stream',
      )
      this.abandonInstall('install failed')
      this.transport.reset(peer, 'snapshot failed')
    } finally {
      this.transport.setReading(peer, true)
    }
  }

  private abandonInstall(reason: string): void {
    if (this.installing === null) return
    this.log.warn({ reason, snapshotLsn: this.installing.lsn }, 'abandoning a snapshot install')
    // The state is partial: the core keeps refusing appends and asks the leader for a new
    // snapshot, which begins afresh; the store keeps its marker, so a restart discards the
    // partial state too.
    this.installing = { ...this.installing, next: -1 }
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
