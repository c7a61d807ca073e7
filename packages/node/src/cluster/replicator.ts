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
  type CoreEntry,
  type Message,
  type Ready,
} from '@kvstore/core'
import {
  KvError,
  decodeLogEntry,
  decodeStoredRecord,
  encodeSession,
  frameLimits,
  type Frame,
  type LogEntry,
  type MemberState,
} from '@kvstore/protocol'
import type { EncodedEntries, LogWriter, StateSnapshot, Store } from '@kvstore/storage'
import {
  replicationFrameBytesMax,
  type AckMode,
  type ClusterConfig,
  type MemberConfig,
  type NodeConfig,
} from '../config.js'
import { PeerTransport } from './transport.js'

export interface ReplicatorOptions {
  config: NodeConfig
  cluster: ClusterConfig
  store: Store
  logger: Logger
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
  epoch: number
  commitLsn: number
  self: string
  members: MemberView[]
}

interface AckWaiter {
  lsn: number
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
  /** The epoch this node leads at, until it learns of a higher one. */
  private ledAtEpoch: number | null = null
  private retaking = false
  /** Follower: snapshot chunks being installed, in order. */
  private snapshotChunks: Promise<void> = Promise.resolve()
  /** Counters for metrics. */
  readonly stats = {
    entriesShipped: new Map<string, number>(),
    /** Append frames that carried entries, per follower. */
    appendFramesShipped: new Map<string, number>(),
    snapshotsSent: 0,
    snapshotsInstalled: 0,
    ackTimeouts: 0,
    badFrames: 0,
  }
  private readonly onFatal: (err: Error) => void

  constructor(options: ReplicatorOptions & { onFatal: (err: Error) => void }) {
    const { config, cluster, store } = options
    this.config = config
    this.cluster = cluster
    this.store = store
    this.log = options.logger
    this.now = options.now ?? Date.now
    this.onFatal = options.onFatal
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
      leaderId: cluster.leaderId,
      host: config.host,
      frameBytesMax: Math.min(frameLimits.frameBytesMax, replicationFrameBytesMax(config)),
      streamBufferBytesMax: config.replicationInflightBytesMax,
      epoch: () => this.core.epoch,
      logger: this.log,
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

  /** Takes the configured role, opens the peer port, and starts ticking. */
  async start(): Promise<void> {
    const isLeader = this.cluster.leaderId === this.cluster.self.id
    if (isLeader) {
      // Every start of the configured leader is a new epoch, durable before it sends anything.
      // Followers then tell its new entries from any they kept of an earlier epoch that this
      // node no longer has (its disk lost them with fsync off), and drop those.
      const epoch = this.store.meta.epoch + 1
      await this.store.setHardState({ epoch })
      this.core.setEpoch(epoch)
      this.core.takeReady()
      this.core.becomeLeader()
      this.ledAtEpoch = epoch
    } else {
      this.core.becomeFollower(this.store.meta.epoch, this.cluster.leaderId)
    }
    await this.transport.listen()
    if (isLeader) {
      for (const member of this.cluster.members) {
        if (member.id !== this.cluster.self.id) this.transport.connect(member.id)
      }
    }
    this.ticker = setInterval(() => {
      this.core.tick()
      this.schedule()
    }, this.config.heartbeatIntervalMs)
    this.ticker.unref()
    this.housekeeping = setInterval(() => void this.houseKeep(), 5000)
    this.housekeeping.unref()
    this.schedule()
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
        try {
          return this.core.nextSlot()
        } catch (err) {
          if (err instanceof NotLeaderError) throw this.notLeader()
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
          this.core.persisted(last.lsn)
          this.schedule()
        })
      },
    }
  }

  /** Waits until the write at `lsn` is acknowledged as `mode` asks; KV_ERR_ACK_TIMEOUT if not in time. */
  waitForAck(lsn: number, mode: AckMode, timeoutMs: number): Promise<void> {
    if (mode === 'async' || this.ackSatisfied(lsn, mode)) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const waiter: AckWaiter = {
        lsn,
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

  private ackSatisfied(lsn: number, mode: AckMode): boolean {
    if (mode === 'async') return true
    if (mode === 'quorum') return this.core.commitLsn >= lsn
    return this.core.allMatchLsn() >= lsn
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
        if (this.ackSatisfied(w.lsn, w.mode)) {
          clearTimeout(w.timer)
          w.resolve()
        } else {
          waiting.push(w)
        }
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
    if (this.ledAtEpoch !== null && !this.core.isLeader) {
      if (this.cluster.leaderId === this.cluster.self.id) void this.retakeLeadership()
      else this.deposed()
    }
    this.settleWaiters()
  }

  /**
   * The configuration names this node as leader, and a member reported a higher epoch (one it
   * took while it was itself misconfigured as leader, say). Until elections decide, the named
   * leader leads: it moves past that epoch, durably first, and carries on with its log. The
   * member then drops whatever it wrote on its own, which no majority ever confirmed.
   */
  private async retakeLeadership(): Promise<void> {
    if (this.retaking || this.stopped) return
    this.retaking = true
    try {
      const epoch = this.core.epoch + 1
      await this.store.setHardState({ epoch })
      if (this.stopped) return
      this.core.setEpoch(epoch)
      this.core.becomeLeader()
      this.log.warn(
        { previousEpoch: this.ledAtEpoch, epoch },
        'a member was at a higher epoch; leading on at a new one, as configured',
      )
      this.ledAtEpoch = epoch
      this.schedule()
    } catch (err) {
      if (!this.stopped) this.onFatal(err as Error)
    } finally {
      this.retaking = false
    }
  }

  /**
   * This node led and a member reported a higher epoch: it no longer leads. Writes waiting for
   * confirmations get KV_ERR_STALE_EPOCH: each is durable here but the new leader may not have
   * it, so its outcome is unknown until read back (a retry with the same kv-request-id is safe).
   */
  private deposed(): void {
    const ledAt = this.ledAtEpoch as number
    this.ledAtEpoch = null
    this.log.error(
      { epoch: ledAt, newEpoch: this.core.epoch, leader: this.core.leaderId },
      'this node no longer leads: a member is at a higher epoch',
    )
    const waiters = this.ackWaiters
    this.ackWaiters = []
    for (const w of waiters) {
      clearTimeout(w.timer)
      w.reject(
        new KvError(
          'KV_ERR_STALE_EPOCH',
          `this node led at epoch ${ledAt}, and epoch ${this.core.epoch} has begun: the write at LSN ${w.lsn} is durable here but may not survive under the new leader; read it back, or retry it with the same kv-request-id`,
          { lsn: w.lsn, epoch: ledAt, currentEpoch: this.core.epoch },
        ),
      )
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
              { fromLsn: removed[0]?.lsn, toLsn: removed[removed.length - 1]?.lsn },
              'removed log entries that conflicted with the leader',
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
        if (last !== undefined) this.core.persisted(last.lsn)
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
      case 'voteAck':
      case 'timeoutNow':
        // The node does not enable elections yet (no electionTicks), so the core sends none.
        throw new Error(`cannot send ${message.type}: elections are not enabled in this node`)
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
    if (this.snapshotting.has(to)) return
    this.snapshotting.add(to)
    let snapshot: StateSnapshot | null = null
    try {
      snapshot = await this.store.openSnapshot()
      const { appliedLsn: snapshotLsn, lastEpoch: snapshotEpoch } = snapshot
      const hash = createHash('sha256')
      const header = Buffer.alloc(17)
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
          header.writeUInt32BE(key.length, 0)
          header.writeUInt32BE(Math.floor(decoded.version / 2 ** 32), 4)
          header.writeUInt32BE(decoded.version >>> 0, 8)
          header[12] = decoded.tombstone ? 1 : 0
          header.writeUInt32BE(decoded.value.length, 13)
          hash.update(header)
          hash.update(key)
          hash.update(decoded.value)
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
