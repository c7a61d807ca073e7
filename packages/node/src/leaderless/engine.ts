/**
 * Leaderless mode (Dynamo-style): every member coordinates. A key lives on the N members of its
 * preference list on the hash ring. A write is minted by a coordinator inside that list, made
 * durable in its own log, and sent to the others; it answers after W acks. A read asks the N
 * members and answers after R replies, merging what they hold.
 *
 * Replicas converge by three paths, all of which merge states (dvv.ts and conflicts.ts in
 * the core, commutative and idempotent, so order does not matter):
 * - read repair: after a read, replicas that answered a stale state get the merged one;
 * - hinted handoff: a write meant for a down member goes to the next healthy member past the
 *   list, stored as a durable hint and replayed when the owner is back;
 * - anti-entropy: every `antiEntropyIntervalMs`, each member compares the Merkle tree of every
 *   replica set it shares with each peer, and streams only the keys of differing leaves.
 *
 * The engine wires the parts together and serves peers; each concern has its own module:
 *   local-replica.ts (this member's copy), coordinator.ts (reads and writes), hints.ts
 *   (hinted handoff), anti-entropy.ts, tombstone-gc.ts, peer-health.ts, and rpc.ts (the
 *   channel). The decisions are the core's (packages/core/src/leaderless).
 *
 * The ring is versioned and changes online (members join, leave, are replaced): topology.ts
 * holds it, ring-agreement.ts agrees on and spreads new versions, handoff.ts moves the data,
 * ring-changes.ts is the admin API over them. Every peer message carries the ring version; a
 * data request coordinated with an older ring than the receiver's is refused
 * (KV_ERR_STALE_RING) and the sender learns the newer ring and retries.
 *
 * Local layout inside the store's state (every change goes through the node's LevelDB log):
 *   'd' + key                      -> VersionedRecord (this member's copy of the key)
 *   'h' + target + 0x00 + key      -> Hint (a stand-in's copy for a down member)
 *   'm' + name                     -> metadata (the actor id, the dot counter reservation,
 *                                     the ring, the ring acceptor state, the handoff progress)
 */
import { seedRing, type HashRing, type RingState, invariant } from '@kvstore/core'
import { newestStamp } from '@kvstore/protocol'
import {
  KvError,
  type Handoff as HandoffView,
  type LeaderlessClusterView,
  type PeerReply,
  type PeerRequest,
  type PeerRequestBody,
  versionsOnlyRecord,
} from '@kvstore/protocol'
import type { Sequencer, Store } from '@kvstore/storage'
import type { Logger } from 'pino'
import type { ClusterConfig, MemberConfig, NodeConfig } from '../config.js'
import type { PeerSecurity } from '../cluster/peer-server.js'
import { AntiEntropy } from './anti-entropy.js'
import { LeaderlessStats, toState, type LeaderlessContext, type State } from './context.js'
import {
  Coordinator,
  type LeaderlessWrite,
  type ReadResult,
  type WriteOutcome,
} from './coordinator.js'
import { HintedHandoff } from './hints.js'
import { LocalReplica } from './local-replica.js'
import { PeerHealth } from './peer-health.js'
import { LeaderlessRpc } from './rpc.js'
import { TombstoneCollector } from './tombstone-gc.js'
import type { CompactionHold } from '../backup/hold.js'
import { Handoff } from './handoff.js'
import { RingSync } from './ring-agreement.js'
import { LeaderlessMembership } from './ring-changes.js'
import { RingStore, Topology } from './topology.js'
import { ringCallTimeoutMs } from '../limits.js'

/** Tombstone writes for expired values in flight at once (leaderless per-key TTL). */
const expiriesInFlightMax = 256

export { LeaderlessStats } from './context.js'
export { formatHlc } from './coordinator.js'
export type { LeaderlessWrite, ReadResult, WriteOutcome } from './coordinator.js'
export { peerRecordProblem } from './peer-records.js'
export type { PeerRecordBounds } from './peer-records.js'

export interface LeaderlessOptions {
  config: NodeConfig
  cluster: ClusterConfig
  store: Store
  sequencer: Sequencer
  logger: Logger
  clusterId: string
  /** Mutual TLS between members and the identity checks on every connection and request. */
  security: PeerSecurity
  now?: () => number
}

type AuthHandler = (body: { digest: string; records: Uint8Array[] }) => Promise<PeerReply>

/** Peer messages any authenticated peer may send, a member of the ring or not (yet). */
const openKinds = new Set<PeerRequestBody['kind']>(['ping', 'ringFetch', 'ringCommit'])
/** Peer messages that never depend on the ring version (the auth store is the same everywhere). */
const ringFree = new Set<PeerRequestBody['kind']>([
  'ping',
  'authSync',
  'ringFetch',
  'ringCommit',
  'ringPrepare',
  'ringAccept',
  'handoffProgress',
])

export class LeaderlessEngine {
  readonly config: NodeConfig
  readonly cluster: ClusterConfig
  readonly n: number
  readonly self: string
  readonly stats = new LeaderlessStats()
  readonly rpc: LeaderlessRpc
  private readonly store: Store
  /** Where the log archive lets compaction go (set when this member archives); null: anywhere. */
  compactionHold: CompactionHold | null = null
  private readonly log: Logger
  private readonly now: () => number
  private readonly replica: LocalReplica
  private readonly peers: PeerHealth
  private readonly coordinator: Coordinator
  private readonly hints: HintedHandoff
  private readonly antiEntropy: AntiEntropy
  private readonly tombstones: TombstoneCollector
  /** The ring this member holds now. */
  readonly topology: Topology
  private readonly ringStore: RingStore
  readonly ringSync: RingSync
  private readonly handoff: Handoff
  /** The admin API of ring changes (GET/POST /admin/v1/members ...). */
  readonly membership: LeaderlessMembership
  private readonly security: PeerSecurity
  private readonly ringListeners: ((ring: RingState) => void)[] = []
  private started = false
  private readonly timers: NodeJS.Timeout[] = []
  private readonly background = new Set<Promise<unknown>>()
  private stopped = false
  /** Serves the auth store's exchanges (leaderless/auth-sync.ts), once it is set up. */
  private authHandler: AuthHandler | null = null

  constructor(options: LeaderlessOptions) {
    this.config = options.config
    this.cluster = options.cluster
    this.store = options.store
    this.log = options.logger
    this.now = options.now ?? Date.now
    this.self = options.cluster.self.id
    this.n = options.config.replicas
    this.security = options.security
    this.topology = new Topology(this.self, this.n, options.config.vnodes)
    this.ringStore = new RingStore(options.store, options.sequencer)
    this.rpc = new LeaderlessRpc({
      self: options.cluster.self,
      members: options.cluster.members,
      // Members must agree on the ring and the conflict rule, or they would place and merge
      // keys differently: peers with other settings are refused as another cluster.
      clusterId: `${options.clusterId}/replicas=${options.config.replicas}/vnodes=${options.config.vnodes}/conflicts=${options.config.conflicts}`,
      host: options.config.host,
      logger: options.logger,
      security: options.security,
      handle: (request) => this.handle(request),
      ringVersion: () => this.topology.version,
      onPeerRingVersion: (peer, version) => this.ringSync.noteVersion(peer, version),
    })
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const engine = this
    const ctx: LeaderlessContext = {
      config: options.config,
      cluster: options.cluster,
      self: this.self,
      n: this.n,
      get ring() {
        return engine.topology.placement.read
      },
      get placement() {
        return engine.topology.placement
      },
      get placementOrNull() {
        return engine.topology.placementOrNull
      },
      store: options.store,
      sequencer: options.sequencer,
      log: options.logger,
      now: this.now,
      stats: this.stats,
      get stopped() {
        return engine.stopped
      },
      runInBackground: (task) => this.runInBackground(task),
    }
    this.replica = new LocalReplica(ctx)
    this.peers = new PeerHealth(ctx, this.rpc)
    this.coordinator = new Coordinator(ctx, this.replica, this.peers)
    this.hints = new HintedHandoff(ctx, this.replica, this.peers)
    this.antiEntropy = new AntiEntropy(ctx, this.replica, this.peers)
    this.tombstones = new TombstoneCollector(ctx, this.replica, this.peers)
    this.ringSync = new RingSync({
      self: this.self,
      topology: this.topology,
      ringStore: this.ringStore,
      call: (peer, body, timeoutMs) => this.peers.call(peer, body, timeoutMs),
      timeoutMs: Math.max(ringCallTimeoutMs, options.config.quorumTimeoutMs),
      log: options.logger,
      apply: (ring) => this.applyRing(ring),
      get stopped() {
        return engine.stopped
      },
    })
    this.peers.onStaleRing = (member) => this.learnFrom(member)
    this.handoff = new Handoff(
      ctx,
      this.topology,
      this.replica,
      this.peers,
      this.ringSync,
      this.ringStore,
    )
    this.membership = new LeaderlessMembership(this)
  }

  /** The hash ring reads use now. */
  get ring(): HashRing {
    return this.topology.placement.read
  }

  /**
   * The members of the ring now (the --members seeds before a joining member knows it), each
   * where this node reaches it: the URLs --members gives for an id win over the ring's, so a
   * cluster restored from backups onto other ports, or a member that moved, is reached where
   * its configuration says (the ring agrees on ownership; an address is each node's to know).
   */
  get members(): MemberConfig[] {
    const ring = this.topology.ring
    if (ring === null) return this.cluster.members
    return ring.members.map((m) => this.addressOf(m))
  }

  private addressOf(m: MemberConfig): MemberConfig {
    const configured = this.cluster.members.find((c) => c.id === m.id)
    return configured ?? { id: m.id, clientUrl: m.clientUrl, peerUrl: m.peerUrl }
  }

  get memberIds(): string[] {
    return this.members.map((m) => m.id)
  }

  /** Calls `listener` whenever this member adopts a newer ring. */
  onRingChange(listener: (ring: RingState) => void): void {
    this.ringListeners.push(listener)
  }

  /** A newer ring was made durable: everything that depends on the ring follows it. */
  private applyRing(ring: RingState): void {
    const readChanged = this.topology.set(ring)
    const ids = ring.members.map((m) => m.id)
    this.rpc.setMembers(
      ring.members.map((m) => this.addressOf(m)),
      ring.removed,
    )
    this.security.roster.update(ids, ring.removed)
    this.peers.setMembers(ids)
    if (readChanged) {
      // Replica sets are named by their owners: every key is filed under its new set.
      this.replica.index.reassign((key) => this.replica.setOf(key))
      this.antiEntropy.ringChanged()
    }
    for (const listener of this.ringListeners) listener(ring)
    if (this.started) this.handoff.onRing(ring)
  }

  /** Learns `peer`'s ring if newer, waiting at most a ring call's timeout. */
  private async learnFrom(peer: string): Promise<void> {
    await Promise.race([
      this.ringSync.learn(peer),
      new Promise((resolve) => setTimeout(resolve, ringCallTimeoutMs).unref()),
    ])
  }

  /** This data directory's actor id (known once loaded). */
  get actor(): string {
    return this.replica.actor
  }

  /** Loads the actor id, dot counter, keys and hints from the store (start does it first). */
  async load(): Promise<void> {
    await this.replica.loadMeta()
    let ring = await this.ringStore.loadRing()
    if (ring === null && !this.config.join) {
      // --members seeds the first ring only; from then on the stored ring is what counts.
      ring = seedRing(this.cluster.members)
      await this.ringStore.saveRing(ring)
    }
    // A joining member is filled by its handoff, not by anti-entropy: it owns nothing yet.
    if (this.config.join && ring === null) this.replica.refilling = false
    await this.ringSync.load()
    if (ring !== null) this.applyRing(ring)
    const keys = await this.replica.loadLocalState()
    await this.hints.countHints()
    this.log.info(
      {
        keys,
        hints: this.hints.hintsHeld,
        actor: this.replica.actor,
        ringVersion: this.topology.version,
      },
      ring === null
        ? 'leaderless state loaded; waiting to learn the ring from the seeds (--join)'
        : 'leaderless state loaded',
    )
  }

  async start(): Promise<void> {
    await this.load()
    await this.rpc.listen()
    const every = (ms: number, run: () => Promise<void>) => {
      const timer = setInterval(() => {
        if (!this.stopped) this.runInBackground(run())
      }, ms)
      timer.unref()
      this.timers.push(timer)
    }
    const pingMs = Math.max(this.config.heartbeatIntervalMs * 5, 100)
    const pingTimeoutMs = Math.max(pingMs * 2, this.config.quorumTimeoutMs)
    every(pingMs, () => this.peers.pingAll(pingTimeoutMs))
    every(Math.min(1000, this.config.antiEntropyIntervalMs), () => this.hints.replayHints())
    every(this.config.antiEntropyIntervalMs, () => this.antiEntropy.run())
    every(Math.min(this.config.antiEntropyIntervalMs, 60_000), () => this.tombstones.run())
    every(Math.min(10_000, Math.floor(this.config.tombstoneGcMs / 10)), () => this.housekeeping())
    // A member that knows no ring yet (--join) asks the seeds until one answers; every member
    // asks its peers once at start, so one back from a long absence catches up at once.
    every(1000, async () => {
      if (this.topology.ring === null) await this.learnFromAll()
    })
    this.started = true
    this.runInBackground(this.learnFromAll())
    this.runInBackground(this.peers.pingAll(pingTimeoutMs))
    if (this.replica.refilling) this.runInBackground(this.antiEntropy.refill())
    const ring = this.topology.ring
    if (ring !== null) this.handoff.onRing(ring)
  }

  private async learnFromAll(): Promise<void> {
    await Promise.allSettled(this.peers.peers.map((peer) => this.ringSync.learn(peer)))
  }

  async stop(): Promise<void> {
    this.stopped = true
    for (const t of this.timers) clearInterval(t)
    await Promise.allSettled([...this.background])
    await this.rpc.close()
  }

  /** Runs a task off the caller's path; a failure is logged, and stop() waits for it. */
  private runInBackground(p: Promise<unknown>): void {
    const tracked = p.catch((err: unknown) => {
      if (!this.stopped) this.log.warn({ err }, 'leaderless background task failed')
    })
    this.background.add(tracked)
    void tracked.finally(() => this.background.delete(tracked))
  }

  setAuthHandler(handler: AuthHandler): void {
    this.authHandler = handler
  }

  /** Sends one request to a peer over the leaderless channel. */
  callPeer(peer: string, body: PeerRequestBody, timeoutMs: number): Promise<PeerReply> {
    return this.rpc.call(peer, body, timeoutMs)
  }

  private async handle(request: PeerRequest): Promise<PeerReply> {
    this.peers.markUp(request.from)
    const body = request.body
    const theirs = request.ringVersion ?? 0
    // The sender knows a newer ring: learn it before serving, so this member is not wrong
    // about ownership (a member the new ring adds is a member then).
    if (theirs > this.topology.version) {
      await this.learnFrom(request.from)
      if (theirs > this.topology.version && !ringFree.has(body.kind)) {
        // Still behind (the sender did not answer the fetch): better unavailable than wrong.
        throw new KvError(
          'KV_ERR_NOT_READY',
          `${this.self} holds ring version ${this.topology.version} and could not learn version ${theirs} from ${request.from} yet`,
        )
      }
    }
    if (!openKinds.has(body.kind) && this.topology.member(request.from) === undefined) {
      throw new KvError(
        'KV_ERR_CLUSTER_MISMATCH',
        `${request.from} is not a member of the ring (version ${this.topology.version})`,
      )
    }
    if (!ringFree.has(body.kind) && theirs < this.topology.version) {
      this.stats.staleRingRefusals++
      throw new KvError(
        'KV_ERR_STALE_RING',
        `${request.from} sent ${body.kind} under ring version ${theirs}; ${this.self} holds version ${this.topology.version}: learn it and retry`,
      )
    }
    switch (body.kind) {
      case 'ping':
        return { kind: 'pong', clockMs: this.now() }
      case 'ringFetch':
      case 'ringCommit':
      case 'ringPrepare':
      case 'ringAccept':
        return this.ringSync.serve(request)
      case 'handoffPull':
        return this.handoff.servePull(body)
      case 'handoffPush':
        return this.handoff.servePush(request.from, body.records)
      case 'handoffProgress':
        return this.handoff.noteProgress(request.from, body.progress)
      case 'store': {
        const key = this.replica.keyOf(body.key)
        const state = toState(body.record)
        if (body.hintFor !== '') {
          if (body.hintFor === this.self)
            throw new KvError('KV_ERR_BAD_FRAME', `a hint for ${this.self} sent to itself`)
          if (!this.peers.health.has(body.hintFor))
            throw new KvError('KV_ERR_BAD_FRAME', `no member ${body.hintFor}`)
          await this.hints.storeHint(body.hintFor, key, state, request.from)
          return { kind: 'storeAck', changed: true }
        }
        const { changed } = await this.replica.mergeLocal(key, state, request.from)
        return { kind: 'storeAck', changed }
      }
      case 'fetch': {
        this.replica.refuseWhileRefilling()
        const key = this.replica.keyOf(body.key)
        const state = await this.replica.loadState(key)
        if (state === null || body.versionsOnly !== true)
          return { kind: 'fetchReply', record: state }
        return { kind: 'fetchReply', record: versionsOnlyRecord(state), versionsOnly: true }
      }
      case 'coordinate': {
        const key = this.replica.keyOf(body.key)
        try {
          const outcome = await this.coordinator.coordinateWrite(key, {
            value: body.value,
            context: body.context,
            w: body.w === 0 ? null : body.w,
            sloppy: body.sloppy,
            requestId: body.requestId === '' ? null : body.requestId,
            mayForward: false,
            ...(body.ttlMs !== undefined ? { ttlMs: body.ttlMs } : {}),
          })
          return { kind: 'coordinateReply', status: 200, bodyJson: JSON.stringify(outcome) }
        } catch (err) {
          if (err instanceof KvError)
            return {
              kind: 'coordinateReply',
              status: err.status,
              bodyJson: JSON.stringify(err.toBody()),
            }
          throw err
        }
      }
      case 'rangeRoots':
        return this.antiEntropy.serveRoots(body.sets)
      case 'rangeLeaves':
        return this.antiEntropy.serveLeaves(body.set)
      case 'rangeKeys':
        return this.antiEntropy.serveKeys(request.from, body.set, body.leaves, body.records)
      case 'rangeDigests':
        return this.antiEntropy.serveDigests(request.from, body.set, body.leaves, body.digests)
      case 'authSync':
        if (this.authHandler === null)
          throw new KvError(
            'KV_ERR_NOT_READY',
            'this member is starting; its auth store is not up yet',
          )
        return this.authHandler(body)
    }
  }

  private async housekeeping(): Promise<void> {
    const cutoff = this.now() - this.config.requestIdRetentionMs
    while (!this.stopped && (await this.store.expireRequests(cutoff, 10_000)) === 10_000) {
      // more to expire: go on
    }
    // The log only serves recovery here (replicas exchange states, not log entries): keep a
    // window of it.
    const keep = this.config.logRetentionEntries
    const wanted = this.store.appliedLsn - keep + 1
    // The log archive (--archive-dir) keeps what it has not taken yet, within its limit.
    const retainFrom = this.compactionHold?.(wanted) ?? wanted
    if (retainFrom > this.store.meta.logStartLsn + 1000) await this.store.compactLog(retainFrom)
  }

  /**
   * Coordinates a write (value null: a delete). Outside the key's preference list it forwards
   * the write to the first reachable member of the list, which mints the dot.
   */
  coordinateWrite(key: string, request: LeaderlessWrite): Promise<WriteOutcome> {
    return this.coordinator.coordinateWrite(key, request)
  }

  /** Keys whose expired values are being turned into tombstones (at most expiriesInFlightMax). */
  private readonly expiring = new Set<string>()

  /**
   * A read found only values whose TTL has passed (docs/leases.md): write a tombstone over
   * exactly what it read (its context), in the background, so that the expired values are
   * collected like any delete. A value written meanwhile is not covered by that context and
   * survives. At most expiriesInFlightMax at once; past it the next read tries again.
   */
  expireRead(key: string, state: State): void {
    if (this.expiring.has(key) || this.expiring.size >= expiriesInFlightMax) return
    this.expiring.add(key)
    this.coordinator
      .coordinateWrite(key, {
        value: null,
        context: { vector: { ...state.vector }, hlc: newestStamp(state) },
        w: null,
        sloppy: false,
        requestId: null,
      })
      .catch(() => {})
      .finally(() => this.expiring.delete(key))
  }

  /** Reads from the preference list and answers with the merge of the first `r` replies. */
  coordinateRead(key: string, r: number, blocking: boolean): Promise<ReadResult> {
    return this.coordinator.coordinateRead(key, r, blocking)
  }

  resolveW(text: string | undefined): number {
    return this.coordinator.resolveW(text)
  }

  resolveR(text: string | undefined): number {
    return this.coordinator.resolveR(text)
  }

  /** One anti-entropy exchange with `peer`; how many keys it repaired here. */
  exchangeWith(peer: string): Promise<number> {
    return this.antiEntropy.exchangeWith(peer)
  }

  /** The replica set (sorted preference list) a key belongs to. */
  setOf(key: string): string {
    return this.replica.setOf(key)
  }

  preferenceList(key: string): string[] {
    return this.replica.preferenceList(key)
  }

  isUp(member: string): boolean {
    return this.peers.isUp(member)
  }

  /** What this member knows of another's health (undefined for itself or a non-member). */
  memberHealth(member: string): { up: boolean; lastContactMs: number } | undefined {
    return this.peers.health.get(member)
  }

  /** This member's own copy of a key (for inspection). */
  localState(key: string): Promise<State | null> {
    return this.replica.loadState(key)
  }

  /** A fresh member still being refilled (GET /ready answers 503 meanwhile). */
  get isRefilling(): boolean {
    return this.replica.refilling
  }

  /** Why GET /ready answers 503 (null: ready). */
  get notReadyReason(): string | null {
    if (this.replica.refilling)
      return 'the member started with an empty data directory and anti-entropy is refilling it'
    const ring = this.topology.ring
    if (ring === null)
      return 'the member was started with --join and has not learned the ring from its seeds yet'
    if (!this.topology.isMember) {
      return ring.removed.includes(this.self)
        ? `the member was removed from the cluster (ring version ${ring.version})`
        : 'the member was started with --join and has not been added yet (POST /admin/v1/members)'
    }
    return null
  }

  /** The ring's version here (0: none known yet). */
  get ringVersion(): number {
    return this.topology.version
  }

  /** The ring handoff in flight, if any, with its progress. */
  handoffs(): HandoffView[] {
    return this.handoff.view()
  }

  hintBacklog(): Record<string, number> {
    return this.hints.hintBacklog()
  }

  get hintsHeld(): number {
    return this.hints.hintsHeld
  }

  rangeRoots(): { replicas: string; root: number; keys: number }[] {
    return this.antiEntropy.rangeRoots()
  }

  /** Every replica set of the ring. */
  allSets(): string[] {
    return this.antiEntropy.allSets()
  }

  /** The ring's arcs with the preference list of the keys in each. */
  arcs(): { start: number; end: number; replicas: string[] }[] {
    return this.antiEntropy.arcs()
  }

  clusterView(clusterId: string): LeaderlessClusterView {
    const member = this.topology.isMember
    const arcs = member ? this.arcs() : []
    const shares = member ? this.ring.shares() : new Map<string, number>()
    const arcCount = new Map<string, number>()
    for (const arc of arcs)
      for (const m of arc.replicas) arcCount.set(m, (arcCount.get(m) ?? 0) + 1)
    return {
      mode: 'leaderless',
      clusterId,
      self: this.self,
      actor: this.replica.actor,
      replicas: this.n,
      conflicts: this.config.conflicts,
      defaultW: quorumSetting(this.config.defaultW),
      defaultR: quorumSetting(this.config.defaultR),
      vnodes: this.config.vnodes,
      hintWindowMs: this.config.hintWindowMs,
      antiEntropyIntervalMs: this.config.antiEntropyIntervalMs,
      tombstoneGcMs: this.config.tombstoneGcMs,
      hintsHeld: this.hints.hintsHeld,
      refilling: this.replica.refilling,
      ringVersion: this.topology.version,
      handoffs: this.handoff.view(),
      members: this.members.map((m) => {
        const h = this.peers.health.get(m.id)
        const ex = this.antiEntropy.exchangeOf(m.id)
        return {
          id: m.id,
          clientUrl: m.clientUrl,
          peerUrl: m.peerUrl,
          up: this.isUp(m.id),
          self: m.id === this.self,
          lastContactMs:
            m.id === this.self ? 0 : h && h.lastContactMs > 0 ? this.now() - h.lastContactMs : null,
          share: Math.round((shares.get(m.id) ?? 0) * 10_000) / 10_000,
          arcs: arcCount.get(m.id) ?? 0,
          hintBacklog: this.hints.backlogOf(m.id),
          lastAntiEntropyMs: ex?.atMs ?? null,
          antiEntropyKeysRepaired: ex?.keysRepaired ?? 0,
          state:
            this.topology.member(m.id)?.state ??
            (m.id === this.self && this.topology.ring === null ? 'joining' : 'owner'),
        }
      }),
      ring: arcs,
    }
  }
}

/** A configured W or R as the API shows it: `quorum`, `all`, or a count (`--default-w 2`). */
function quorumSetting(text: string): number | 'quorum' | 'all' {
  if (text === 'quorum' || text === 'all') return text
  const count = Number(text)
  invariant(Number.isInteger(count) && count >= 1, `a validated W or R setting: ${text}`)
  return count
}
