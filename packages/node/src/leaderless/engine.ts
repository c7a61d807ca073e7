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
 * Local layout inside the store's state (every change goes through the node's LevelDB log):
 *   'd' + key                      -> VersionedRecord (this member's copy of the key)
 *   'h' + target + 0x00 + key      -> Hint (a stand-in's copy for a down member)
 *   'm' + name                     -> metadata (the actor id and the dot counter reservation)
 */
import { createHash, randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import {
  AntiEntropyIndex,
  HashRing,
  HybridClock,
  ReadQuorum,
  WriteQuorum,
  collectionConfirmed,
  differingLeaves,
  hintExpired,
  mayHintFor,
  mergeIncoming,
  mergeStates,
  pickStandIn,
  reachableTargets,
  replicaSetOf,
  ringReplicaSets,
  sharedSets,
  stateDigest,
  tombstoneCollectable,
  siblingsRefusal,
  mintWrite,
  type ConfirmationAnswer,
  type VersionedState,
} from '@kvstore/core'
import {
  KvError,
  isErrorCode,
  decodeHint,
  decodeVersionedRecord,
  encodeContext,
  encodeHint,
  encodeVersionedRecord,
  keyToBytes,
  newestStamp,
  counterMax,
  leaderlessLimits,
  requestFingerprintBytes,
  type CausalContext,
  type HlcStamp,
  type KeyRecord,
  type PeerReply,
  type PeerRequest,
  type PeerRequestBody,
  type VersionedRecord,
} from '@kvstore/protocol'
import {
  sameRequest,
  type ListItem,
  type Sequencer,
  type Store,
  type WriteOp,
} from '@kvstore/storage'
import { resolveQuorum, type ClusterConfig, type NodeConfig } from '../config.js'
import type { PeerSecurity } from '../cluster/peer-server.js'
import {
  aeBytesPerMessageMax,
  aeCallTimeoutMs,
  aeLeavesPerMessageMax,
  aeMergeConcurrency,
  aeRecordsPerMessageMax,
  clockSkewMaxMs,
  counterReservation,
  hintReplayBatch,
  hintReplayBudgetMs,
  hintReplayConcurrency,
  loadPageEntries,
  recordBytes,
  treeDepth,
} from './limits.js'
import { LeaderlessRpc, PeerUnreachable } from './rpc.js'

type State = VersionedState<Uint8Array>

const DATA = 0x64 // 'd'
const HINT = 0x68 // 'h'
const META = 0x6d // 'm'

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

/** What a read returns to the client. */
export interface ReadResult {
  state: State | null
  replicas: string[]
  answered: number
}

/** A client write as the coordinator gets it. */
export interface LeaderlessWrite {
  /** The value, or null for a delete. */
  value: Uint8Array | null
  /** The client's causal context (kv-context), or null for a blind write. */
  context: CausalContext | null
  /** W, or null for the default. */
  w: number | null
  sloppy: boolean
  /** kv-request-id: a retry that reaches the same coordinator is applied once. */
  requestId: string | null
  /** False when the write was forwarded already (a member outside the list refuses it). */
  mayForward?: boolean
}

/**
 * The request id a write is remembered under (in this coordinator's request table, through
 * its sequencer): the id alone, whatever the key. The record holds the fingerprint of the
 * client's request (`writeFingerprint`), so a retry (same fingerprint) is deduplicated as
 * before, and the id on any other request is refused with KV_ERR_REQUEST_ID_REUSED. Until
 * then the record was keyed by key hash + id: a reuse on another key was simply a new write,
 * and a reuse on the same key with another value was answered as a retry of the first.
 * Records stay on the coordinator that applied the write, as before, so a reuse that reaches
 * another coordinator (a key another member coordinates) is not seen there.
 */
function requestKeyOf(requestId: string): string {
  return `ll:${requestId}`
}

const fingerprintDomain = 'kv-leaderless-write-fingerprint-v1\u0000'

/**
 * What a leaderless request id is bound to: the key, the value or a delete, and the client's
 * context (vector and clock) if it sent one. Not w or sloppy, which only say how long to wait
 * (as ack does in single-leader mode). Every field is tagged and length-prefixed, so no two
 * writes share an encoding; the first 16 bytes of one SHA-256, as `requestFingerprint`.
 */
function writeFingerprint(
  key: string,
  value: Uint8Array | null,
  context: CausalContext | null,
): Buffer {
  const hash = createHash('sha256').update(fingerprintDomain)
  const head = Buffer.allocUnsafe(9)
  const number = (n: number) => {
    head.writeUInt8(0x6e, 0) // 'n'
    head.writeDoubleBE(n, 1)
    hash.update(head)
  }
  const bytes = (b: Uint8Array | string) => {
    const data = typeof b === 'string' ? Buffer.from(b, 'utf8') : b
    head.writeUInt8(0x62, 0) // 'b'
    head.writeUInt32BE(data.length, 1)
    hash.update(head.subarray(0, 5)).update(data)
  }
  bytes(key)
  if (value === null) number(0)
  else {
    number(1)
    bytes(value)
  }
  if (context === null) number(0)
  else {
    const actors = Object.keys(context.vector).sort()
    number(1)
    number(actors.length)
    for (const actor of actors) {
      bytes(actor)
      number(context.vector[actor] ?? 0)
    }
    const hlc = context.hlc
    if (hlc === null) number(0)
    else {
      number(1)
      number(hlc.wallMs)
      number(hlc.logical)
      bytes(hlc.node)
    }
  }
  return hash.digest().subarray(0, requestFingerprintBytes)
}

export interface WriteOutcome {
  key: string
  context: string
  timestamp: string
  acks: number
  w: number
  coordinator: string
  hinted: string[]
  deduplicated?: true
}

interface MemberHealth {
  up: boolean
  /** When it last answered (ms), 0 if never. */
  lastContactMs: number
  /** Since when it has been down (ms), 0 while up. */
  downSinceMs: number
}

interface ExchangeStatus {
  atMs: number
  keysRepaired: number
}

export class LeaderlessStats {
  readRepairs = 0
  hintsStored = 0
  hintsReplayed = 0
  hintsDropped = { window: 0, full: 0, expired: 0 }
  antiEntropyExchanges = 0
  antiEntropyKeysRepaired = 0
  siblingsPruned = 0
  siblingWarnings = 0
  lwwDiscarded = 0
  tombstonesCollected = 0
  /** Tombstones old enough to collect, kept because a replica has not confirmed them. */
  tombstonesAwaitingReplicas = 0
  forwardedWrites = 0
  quorumFailures = { read: 0, write: 0 }
  /** Records from peers refused before any merge (see `peerRecordProblem`). */
  peerRecordsRefused = 0
}

/** What a record from a peer is checked against (see `peerRecordProblem`). */
export interface PeerRecordBounds {
  /** This member's actor id (its data directory's). */
  actor: string
  /** Dots this actor has handed out so far (every dot it minted is at most this). */
  minted: number
  nowMs: number
  /** How far ahead of `nowMs` a timestamp may be. */
  clockSkewMaxMs: number
}

/**
 * Why a record a peer sent (to store, as a hint, in anti-entropy, or in a reply) must not be
 * merged, or null when it may be. The same rules as a client's context, checked before the
 * record touches anything:
 * - no counter above `counterMax` (the decoder refuses those too; this holds for any source);
 * - no counter of this member's own actor, in the vector or in a sibling's dot, above what it
 *   has minted: such a counter would dominate every later write this member coordinates, so
 *   an acknowledged write would vanish from reads on every replica it reached;
 * - no timestamp further ahead of this clock than `clockSkewMaxMs`.
 */
export function peerRecordProblem(
  record: VersionedRecord,
  bounds: PeerRecordBounds,
): string | null {
  for (const [actor, counter] of Object.entries(record.vector)) {
    if (!Number.isSafeInteger(counter) || counter < 1 || counter > counterMax)
      return `its vector gives ${actor} counter ${counter}, outside 1..${counterMax}`
  }
  const own = ownCounterProblem(record.vector, bounds)
  if (own !== null) return `it ${own}`
  for (const s of record.siblings) {
    const { node, counter } = s.dot
    if (!Number.isSafeInteger(counter) || counter < 1 || counter > counterMax)
      return `a sibling's dot ${node}:${counter} is outside 1..${counterMax}`
    if (node === bounds.actor && counter > bounds.minted)
      return `a sibling's dot ${node}:${counter} was never minted: ${bounds.actor} has made ${bounds.minted}`
    const ahead = s.value.hlc.wallMs - bounds.nowMs
    if (ahead > bounds.clockSkewMaxMs)
      return `a timestamp from ${s.value.hlc.node} is ${ahead} ms ahead of this clock (at most ${bounds.clockSkewMaxMs})`
  }
  return null
}

/**
 * How a vector claims more writes of this member's own actor than it minted ("claims ..."), or
 * null. The same rule for a peer's record and a client's context.
 */
function ownCounterProblem(
  vector: Readonly<Record<string, number>>,
  bounds: Pick<PeerRecordBounds, 'actor' | 'minted'>,
): string | null {
  const own = vector[bounds.actor]
  if (own !== undefined && own > bounds.minted)
    return `claims ${own} writes coordinated by ${bounds.actor}, which has made ${bounds.minted}`
  return null
}

export function formatHlc(hlc: HlcStamp): string {
  return `${hlc.wallMs}.${hlc.logical}.${hlc.node}`
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

export class LeaderlessEngine {
  readonly config: NodeConfig
  readonly cluster: ClusterConfig
  readonly ring: HashRing
  readonly n: number
  readonly self: string
  readonly stats = new LeaderlessStats()
  readonly rpc: LeaderlessRpc
  private readonly store: Store
  private readonly sequencer: Sequencer
  private readonly log: Logger
  private readonly now: () => number
  private readonly clock: HybridClock
  private actor = ''
  private counter = 0
  private counterReserved = 0
  private reserving: Promise<void> | null = null
  private readonly locks = new Map<string, Promise<void>>()
  private readonly health = new Map<string, MemberHealth>()
  private readonly exchanges = new Map<string, ExchangeStatus>()
  /**
   * Per replica set ("n1,n2,n4") this member belongs to: the Merkle tree and the keys of each
   * leaf; per key, its digest; and the keys holding only tombstones.
   */
  private readonly index = new AntiEntropyIndex(treeDepth)
  /** Hints held per target member. */
  private readonly hintCounts = new Map<string, number>()
  private hintTotal = 0
  private readonly timers: NodeJS.Timeout[] = []
  private readonly background = new Set<Promise<unknown>>()
  private stopped = false
  private aeRunning = false
  /**
   * True from the start of a member with a fresh data directory (new, or wiped) until it has
   * completed an anti-entropy exchange with every member it could reach. Meanwhile its empty
   * answers do not count toward R: a read must not take "nothing here" from a member that may
   * simply not have been refilled yet.
   */
  private refilling = false
  private replayRunning = false
  private gcRunning = false
  private lastSiblingWarnMs = 0
  private lastRefusalLogMs = 0
  private refusedSinceLog = 0

  constructor(options: LeaderlessOptions) {
    this.config = options.config
    this.cluster = options.cluster
    this.store = options.store
    this.sequencer = options.sequencer
    this.log = options.logger
    this.now = options.now ?? Date.now
    this.self = options.cluster.self.id
    this.n = options.config.replicas
    this.ring = new HashRing(
      options.cluster.members.map((m) => m.id),
      options.config.vnodes,
    )
    this.clock = new HybridClock(this.self, clockSkewMaxMs)
    for (const m of options.cluster.members) {
      if (m.id !== this.self) this.health.set(m.id, { up: true, lastContactMs: 0, downSinceMs: 0 })
    }
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
    })
  }

  // ---- start and stop -----------------------------------------------------------------------

  async start(): Promise<void> {
    await this.loadMeta()
    await this.loadLocalState()
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
    every(pingMs, () => this.pingAll(pingTimeoutMs))
    every(Math.min(1000, this.config.antiEntropyIntervalMs), () => this.replayHints())
    every(this.config.antiEntropyIntervalMs, () => this.antiEntropy())
    every(Math.min(this.config.antiEntropyIntervalMs, 60_000), () => this.collectTombstones())
    every(Math.min(10_000, Math.floor(this.config.tombstoneGcMs / 10)), () => this.housekeeping())
    this.runInBackground(this.pingAll(pingTimeoutMs))
    if (this.refilling) this.runInBackground(this.refill())
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

  // ---- metadata: actor id, dot counter, downtime ---------------------------------------------

  private metaKey(name: string): Buffer {
    return Buffer.concat([Buffer.from([META]), Buffer.from(name, 'utf8')])
  }

  private async readMeta(name: string): Promise<string | null> {
    const record = await this.store.get(this.metaKey(name))
    return record === null || record.tombstone ? null : record.value.toString('utf8')
  }

  private async writeMeta(name: string, value: string): Promise<void> {
    await this.sequencer.write({
      kind: 'put',
      ops: [{ type: 'put', key: this.metaKey(name), value: Buffer.from(value, 'utf8') }],
    })
  }

  private async loadMeta(): Promise<void> {
    let actor = await this.readMeta('actor')
    if (actor === null) {
      // A fresh data directory is a new actor: a wiped member never reuses its old dots.
      actor = `${this.self}.${randomBytes(4).toString('hex')}`
      await this.writeMeta('actor', actor)
      this.log.info({ actor }, 'new leaderless actor id for this data directory')
      this.refilling = true
    }
    this.actor = actor
    const text = (await this.readMeta('counter')) ?? '0'
    const reserved = Number(text)
    // Read back, checked: every check of a peer's counters rests on this one.
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(reserved) || reserved > counterMax) {
      throw new KvError(
        'KV_ERR_STORAGE',
        `the stored dot counter ${JSON.stringify(text)} is corrupt (an integer up to ${counterMax} expected)`,
      )
    }
    this.counter = reserved
    this.counterReserved = reserved
  }

  /** A dot counter never used before by this actor, on any key. */
  private async nextCounter(): Promise<number> {
    while (this.counter + 1 > this.counterReserved) {
      this.reserving ??= (async () => {
        const target = Math.min(this.counter + counterReservation, counterMax)
        if (target <= this.counter) {
          throw new KvError('KV_ERR_INTERNAL', `${this.actor} has minted every dot (${counterMax})`)
        }
        await this.writeMeta('counter', String(target))
        this.counterReserved = target
      })().finally(() => {
        this.reserving = null
      })
      await this.reserving
    }
    this.counter++
    return this.counter
  }

  // ---- local state ------------------------------------------------------------------------

  private dataKey(key: string): Buffer {
    return Buffer.concat([Buffer.from([DATA]), Buffer.from(key, 'utf8')])
  }

  private hintKey(target: string, key: string): Buffer {
    return Buffer.concat([
      Buffer.from([HINT]),
      Buffer.from(target, 'utf8'),
      Buffer.from([0]),
      Buffer.from(key, 'utf8'),
    ])
  }

  /** Runs `fn` with the key locked (one local read-merge-write at a time per key). */
  private async locked<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>((resolve) => (release = resolve))
    const chained = previous.then(() => mine)
    this.locks.set(id, chained)
    await previous
    try {
      return await fn()
    } finally {
      release()
      if (this.locks.get(id) === chained) this.locks.delete(id)
    }
  }

  private async loadState(key: string): Promise<State | null> {
    // Every key this member holds is in the digest index (loaded at start, kept by persist):
    // a key that is not there needs no LevelDB read, which spares one on every new key.
    if (!this.index.holds(key)) return null
    const record = await this.store.get(this.dataKey(key))
    if (record === null || record.tombstone) return null
    return this.decodeFromDisk(record.value, key)
  }

  private decodeFromDisk(bytes: Uint8Array, key: string): State {
    try {
      return toState(decodeVersionedRecord(bytes))
    } catch (err) {
      throw new KvError(
        'KV_ERR_STORAGE',
        `stored record of ${JSON.stringify(key)} is corrupt: ${(err as Error).message}`,
      )
    }
  }

  /** The replica set (sorted preference list) a key belongs to. */
  setOf(key: string): string {
    return replicaSetOf(this.ring, key, this.n)
  }

  preferenceList(key: string): string[] {
    return this.ring.preferenceList(key, this.n)
  }

  /** Keeps the anti-entropy index (trees, leaf keys, tombstones) in step with a key's state. */
  private indexKey(key: string, state: State | null): void {
    this.index.update(this.setOf(key), key, state)
  }

  private async loadLocalState(): Promise<void> {
    let after: Buffer | undefined
    let keys = 0
    for (;;) {
      const page = await this.store.list({
        prefix: Buffer.from([DATA]),
        ...(after ? { after } : {}),
        limit: loadPageEntries,
      })
      for (const item of page.items) {
        const key = item.key.subarray(1).toString('utf8')
        const state = this.decodeFromDisk(item.record.value, key)
        for (const s of state.siblings)
          this.clock.observe(s.value.hlc, Math.max(this.now(), s.value.hlc.wallMs))
        this.indexKey(key, state)
        keys++
      }
      if (!page.more || page.items.length === 0) break
      after = page.items[page.items.length - 1]?.key
    }
    await this.countHints()
    this.log.info({ keys, hints: this.hintTotal, actor: this.actor }, 'leaderless state loaded')
  }

  private async countHints(): Promise<void> {
    this.hintCounts.clear()
    this.hintTotal = 0
    let after: Buffer | undefined
    for (;;) {
      const page = await this.store.list({
        prefix: Buffer.from([HINT]),
        ...(after ? { after } : {}),
        limit: loadPageEntries,
      })
      for (const item of page.items) {
        const target = hintTarget(item.key)
        this.hintCounts.set(target, (this.hintCounts.get(target) ?? 0) + 1)
        this.hintTotal++
      }
      if (!page.more || page.items.length === 0) break
      after = page.items[page.items.length - 1]?.key
    }
  }

  /**
   * Checks a state a peer sent before anything of it is merged (`peerRecordProblem`: counters
   * this member never minted, or above counterMax; timestamps too far ahead), then advances the
   * clock past its timestamps. A refused state is counted, logged and thrown as
   * KV_ERR_BAD_FRAME: a 'store' answers with that refusal, anti-entropy skips the record, and a
   * read does not count the reply.
   */
  private admit(state: State, from: string, key: string): void {
    const problem = peerRecordProblem(state, {
      actor: this.actor,
      minted: this.counter,
      nowMs: this.now(),
      clockSkewMaxMs,
    })
    if (problem !== null) {
      this.stats.peerRecordsRefused++
      this.refusedSinceLog++
      const now = this.now()
      if (now - this.lastRefusalLogMs >= 1000) {
        this.lastRefusalLogMs = now
        this.log.warn(
          { from, key, problem, refused: this.refusedSinceLog },
          'refused a record from a peer; it was not merged',
        )
        this.refusedSinceLog = 0
      }
      throw new KvError(
        'KV_ERR_BAD_FRAME',
        `${this.self} refused the record of ${JSON.stringify(key)} from ${from}: ${problem}`,
      )
    }
    for (const s of state.siblings) this.clock.observe(s.value.hlc, this.now())
  }

  private checkStamp(hlc: HlcStamp): void {
    const now = this.now()
    if (hlc.wallMs > now + clockSkewMaxMs) {
      throw new KvError(
        'KV_ERR_BAD_FRAME',
        `a timestamp from ${hlc.node} is ${hlc.wallMs - now} ms ahead of this clock (at most ${clockSkewMaxMs})`,
      )
    }
  }

  private observeStamp(hlc: HlcStamp): void {
    this.checkStamp(hlc)
    this.clock.observe(hlc, this.now())
  }

  private noteSiblings(key: string, state: State, dropped: number): void {
    if (dropped > 0) {
      if (this.config.conflicts === 'lww') this.stats.lwwDiscarded += dropped
      else {
        this.stats.siblingsPruned += dropped
        this.log.warn(
          { key, dropped, siblingsMax: this.config.siblingsMax },
          'replicas merged past the sibling cap: the oldest siblings were dropped',
        )
      }
    }
    const live = state.siblings.length
    if (this.config.conflicts === 'siblings' && live >= this.config.siblingsWarn) {
      this.stats.siblingWarnings++
      const now = this.now()
      if (now - this.lastSiblingWarnMs > 1000) {
        this.lastSiblingWarnMs = now
        this.log.warn(
          {
            key,
            siblings: live,
            siblingsWarn: this.config.siblingsWarn,
            siblingsMax: this.config.siblingsMax,
          },
          'a key holds many siblings: read it and write with its context to resolve them',
        )
      }
    }
  }

  private async persist(
    key: string,
    state: State | null,
    request?: { id: string; fingerprint: Buffer },
  ): Promise<void> {
    // Never write a record that could not be read back.
    if (
      state !== null &&
      (Object.keys(state.vector).length > leaderlessLimits.vectorEntriesMax ||
        state.siblings.length > leaderlessLimits.siblingsMax)
    ) {
      throw new KvError(
        'KV_ERR_INVALID_CONTEXT',
        `the state of ${JSON.stringify(key)} would name ${Object.keys(state.vector).length} actors and hold ${state.siblings.length} siblings; a record holds at most ${leaderlessLimits.vectorEntriesMax} and ${leaderlessLimits.siblingsMax}`,
      )
    }
    const op: WriteOp =
      state === null
        ? { type: 'delete', key: this.dataKey(key) }
        : { type: 'put', key: this.dataKey(key), value: Buffer.from(encodeVersionedRecord(state)) }
    await this.sequencer.write({
      kind: state === null ? 'delete' : 'put',
      ops: [op],
      // The logged op is the merged state; the id is bound to the client's request.
      ...(request !== undefined ? { requestId: request.id, fingerprint: request.fingerprint } : {}),
    })
    this.indexKey(key, state)
  }

  /** Merges a state from `from` into this member's copy; true when the copy changed. */
  private mergeLocal(
    key: string,
    incoming: State,
    from: string,
  ): Promise<{ changed: boolean; state: State }> {
    this.admit(incoming, from, key)
    return this.locked(key, async () => {
      const current = await this.loadState(key)
      const { changed, state, dropped } = mergeIncoming(current, incoming, this.now(), {
        mode: this.config.conflicts,
        siblingsMax: this.config.siblingsMax,
        tombstoneGcMs: this.config.tombstoneGcMs,
      })
      if (!changed) return { changed, state }
      await this.persist(key, state)
      this.noteSiblings(key, state, dropped)
      return { changed, state }
    })
  }

  private async storeHint(
    target: string,
    key: string,
    incoming: State,
    from: string,
  ): Promise<void> {
    this.admit(incoming, from, key)
    const hk = this.hintKey(target, key)
    await this.locked(`h\u0000${target}\u0000${key}`, async () => {
      const existing = await this.store.get(hk)
      let state = incoming
      const isNew = existing === null || existing.tombstone
      if (!isNew) {
        state = mergeStates(
          decodeHint(existing.value).record as State,
          incoming,
          this.config.conflicts,
          this.config.siblingsMax,
        ).state
      } else if (this.hintTotal >= this.config.hintsMax) {
        this.stats.hintsDropped.full++
        throw new KvError(
          'KV_ERR_OVERLOADED',
          `this member already holds ${this.hintTotal} hints (hintsMax)`,
        )
      }
      await this.sequencer.write({
        kind: 'put',
        ops: [
          {
            type: 'put',
            key: hk,
            value: Buffer.from(encodeHint({ storedAtMs: this.now(), record: state })),
          },
        ],
      })
      if (isNew) {
        this.hintCounts.set(target, (this.hintCounts.get(target) ?? 0) + 1)
        this.hintTotal++
      }
      this.stats.hintsStored++
    })
  }

  // ---- health ------------------------------------------------------------------------------

  isUp(member: string): boolean {
    if (member === this.self) return true
    return this.health.get(member)?.up ?? false
  }

  private markUp(member: string): void {
    const h = this.health.get(member)
    if (!h) return
    if (!h.up) this.log.info({ member }, 'member is reachable again')
    h.up = true
    h.downSinceMs = 0
    h.lastContactMs = this.now()
  }

  private markDown(member: string, reason: string): void {
    const h = this.health.get(member)
    if (!h || !h.up) return
    h.up = false
    h.downSinceMs = this.now()
    this.log.warn({ member, reason }, 'member is unreachable')
  }

  private async call(
    member: string,
    body: Parameters<LeaderlessRpc['call']>[1],
    timeoutMs = this.config.quorumTimeoutMs,
  ): Promise<PeerReply> {
    try {
      const reply = await this.rpc.call(member, body, timeoutMs)
      this.markUp(member)
      if (reply.kind === 'refusal')
        throw new KvError(isKnownCode(reply.code), `${member} refused: ${reply.message}`)
      return reply
    } catch (err) {
      if (err instanceof PeerUnreachable) this.markDown(member, err.message)
      throw err
    }
  }

  private async pingAll(timeoutMs: number): Promise<void> {
    await Promise.allSettled(
      [...this.health.keys()].map((m) => this.call(m, { kind: 'ping' }, timeoutMs)),
    )
  }

  // ---- serving peers ------------------------------------------------------------------------

  private keyOf(bytes: Uint8Array): string {
    let key: string
    try {
      key = utf8.decode(bytes)
    } catch {
      throw new KvError('KV_ERR_BAD_FRAME', 'a key is not valid UTF-8')
    }
    keyToBytes(key, this.config.keyBytesMax)
    return key
  }

  /** Serves the auth store's exchanges (leaderless/auth-sync.ts), once it is set up. */
  private authHandler:
    ((body: { digest: string; records: Uint8Array[] }) => Promise<PeerReply>) | null = null

  setAuthHandler(
    handler: (body: { digest: string; records: Uint8Array[] }) => Promise<PeerReply>,
  ): void {
    this.authHandler = handler
  }

  /** Sends one request to a peer over the leaderless channel. */
  callPeer(peer: string, body: PeerRequestBody, timeoutMs: number): Promise<PeerReply> {
    return this.rpc.call(peer, body, timeoutMs)
  }

  private async handle(request: PeerRequest): Promise<PeerReply> {
    this.markUp(request.from)
    const body = request.body
    switch (body.kind) {
      case 'ping':
        return { kind: 'pong', clockMs: this.now() }
      case 'store': {
        const key = this.keyOf(body.key)
        const state = toState(body.record)
        if (body.hintFor !== '') {
          if (body.hintFor === this.self)
            throw new KvError('KV_ERR_BAD_FRAME', `a hint for ${this.self} sent to itself`)
          if (!this.health.has(body.hintFor))
            throw new KvError('KV_ERR_BAD_FRAME', `no member ${body.hintFor}`)
          await this.storeHint(body.hintFor, key, state, request.from)
          return { kind: 'storeAck', changed: true }
        }
        const { changed } = await this.mergeLocal(key, state, request.from)
        return { kind: 'storeAck', changed }
      }
      case 'fetch': {
        this.refuseWhileRefilling()
        const key = this.keyOf(body.key)
        const state = await this.loadState(key)
        return { kind: 'fetchReply', record: state }
      }
      case 'coordinate': {
        const key = this.keyOf(body.key)
        try {
          const outcome = await this.coordinateWrite(key, {
            value: body.value,
            context: body.context,
            w: body.w === 0 ? null : body.w,
            sloppy: body.sloppy,
            requestId: body.requestId === '' ? null : body.requestId,
            mayForward: false,
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
        return { kind: 'rootsReply', roots: body.sets.map((set) => this.rootOf(set)) }
      case 'rangeLeaves':
        return { kind: 'leavesReply', leaves: this.index.leafDigests(body.set) }
      case 'authSync':
        if (this.authHandler === null)
          throw new KvError(
            'KV_ERR_NOT_READY',
            'this member is starting; its auth store is not up yet',
          )
        return this.authHandler(body)
      case 'rangeKeys': {
        const theirs = new Map<string, State>()
        for (const r of body.records) theirs.set(this.keyOf(r.key), toState(r.record))
        const repaired = await this.mergeMany([...theirs], request.from)
        // The answer is bounded too; what does not fit goes in a later exchange (the leaves
        // still differ then).
        const records: KeyRecord[] = []
        let bytes = 0
        outer: for (const leaf of body.leaves) {
          for (const key of this.index.keysIn(body.set, leaf)) {
            const mine = await this.loadState(key)
            if (mine === null) continue
            const sent = theirs.get(key)
            if (sent !== undefined && stateDigest(sent) === stateDigest(mine)) continue
            records.push({ key: Buffer.from(key, 'utf8'), record: mine })
            bytes += recordBytes(key, mine)
            if (records.length >= aeRecordsPerMessageMax || bytes >= aeBytesPerMessageMax)
              break outer
          }
        }
        this.noteExchange(request.from, repaired)
        return { kind: 'keysReply', records }
      }
    }
  }

  /**
   * Merges many states (an anti-entropy batch) several at a time, so their writes share
   * LevelDB batches; a record that is refused (see `admit`: a counter never minted, a clock too
   * far ahead) is skipped, never merged, and not allowed to fail the batch: the rest of the
   * batch still converges. Returns how many keys changed here.
   */
  private async mergeMany(states: [string, State][], from: string): Promise<number> {
    let changed = 0
    let next = 0
    await Promise.all(
      Array.from({ length: Math.min(aeMergeConcurrency, states.length) }, async () => {
        for (let i = next++; i < states.length; i = next++) {
          const [key, state] = states[i] as [string, State]
          try {
            if ((await this.mergeLocal(key, state, from)).changed) changed++
          } catch (err) {
            if (!(err instanceof KvError) || err.code === 'KV_ERR_STORAGE') throw err
            // admit() counted and logged a refused record already.
            if (err.code !== 'KV_ERR_BAD_FRAME')
              this.log.warn({ err, key, from }, 'skipped a record from anti-entropy')
          }
        }
      }),
    )
    return changed
  }

  /** A fresh member still being refilled (GET /ready answers 503 meanwhile). */
  get isRefilling(): boolean {
    return this.refilling
  }

  private refuseWhileRefilling(): void {
    if (this.refilling) {
      throw new KvError(
        'KV_ERR_NOT_READY',
        `${this.self} started with an empty data directory and is still being refilled by anti-entropy; its reads do not count yet`,
      )
    }
  }

  /**
   * After a fresh start: one anti-entropy exchange with every member, retried until each has
   * succeeded or the member is down (its copies cannot be had now; the others hold at least
   * the rest of every acknowledged write).
   */
  private async refill(): Promise<void> {
    const started = this.now()
    const pending = new Set(this.health.keys())
    let repaired = 0
    while (pending.size > 0 && !this.stopped) {
      for (const peer of [...pending]) {
        if (!this.isUp(peer)) {
          pending.delete(peer)
          continue
        }
        try {
          repaired += await this.exchangeWith(peer)
          pending.delete(peer)
        } catch {
          // unreachable now (it will be marked down) or busy: the next round tries again
        }
      }
      if (pending.size > 0) await new Promise((resolve) => setTimeout(resolve, 200).unref())
    }
    this.refilling = false
    this.log.info(
      { repaired, tookMs: this.now() - started },
      'refilled after a fresh start; reads here count again',
    )
  }

  private noteExchange(peer: string, repaired: number): void {
    const previous = this.exchanges.get(peer)
    this.exchanges.set(peer, {
      atMs: this.now(),
      keysRepaired: (previous?.keysRepaired ?? 0) + repaired,
    })
    this.stats.antiEntropyKeysRepaired += repaired
  }

  // ---- writes -------------------------------------------------------------------------------

  resolveW(text: string | undefined): number {
    return this.resolveCount(text ?? this.config.defaultW, 'w')
  }

  resolveR(text: string | undefined): number {
    return this.resolveCount(text ?? this.config.defaultR, 'r')
  }

  private resolveCount(text: string, name: string): number {
    try {
      return resolveQuorum(text, this.n, name)
    } catch (err) {
      throw new KvError('KV_ERR_INVALID_ARGUMENT', (err as Error).message)
    }
  }

  /**
   * Coordinates a write (value null: a delete). Outside the key's preference list it forwards
   * the write to the first reachable member of the list, which mints the dot.
   */
  async coordinateWrite(key: string, request: LeaderlessWrite): Promise<WriteOutcome> {
    const { value, context, sloppy, requestId } = request
    const wanted = request.w ?? this.resolveW(undefined)
    // Every member in ring order from the key: the preference list, then the stand-ins.
    const walked = [...this.ring.walk(key)]
    const prefs = walked.slice(0, this.n)
    const spares = walked.slice(this.n)
    if (!prefs.includes(this.self)) {
      if (request.mayForward === false)
        throw new KvError('KV_ERR_BAD_FRAME', `${this.self} is not a replica of this key`)
      return this.forwardWrite(key, { ...request, w: wanted }, prefs)
    }
    if (context !== null) this.checkContext(context)
    const rid =
      requestId === null
        ? undefined
        : { id: requestKeyOf(requestId), fingerprint: writeFingerprint(key, value, context) }
    // Refuse before writing anything when too few targets are reachable to ever reach W (a
    // retry of a write applied here before is answered below instead).
    const reachable = this.reachableTargets(prefs, spares, sloppy)
    if (reachable < wanted && !this.appliedBefore(requestId, rid)) {
      this.stats.quorumFailures.write++
      throw new KvError(
        'KV_ERR_QUORUM_UNAVAILABLE',
        `only ${reachable} of the ${wanted} replicas needed for ${JSON.stringify(key)} are reachable (${prefs.join(', ')}${sloppy ? ', with stand-ins' : ''}); nothing was written`,
        { required: wanted, acks: 0, replicas: prefs.join(','), written: false },
      )
    }
    // A delete without a context deletes what a read quorum holds now.
    let given = context
    if (given === null && value === null) {
      const read = await this.coordinateRead(key, this.resolveR(undefined), false)
      given =
        read.state === null
          ? null
          : { vector: { ...read.state.vector }, hlc: newestStamp(read.state) }
    }
    const ctx = given?.vector ?? {}
    // The write is stamped after everything its client saw.
    if (given?.hlc) this.observeStamp(given.hlc)
    const { state, hlc, deduplicated } = await this.locked(key, async () => {
      const current = (await this.loadState(key)) ?? { vector: {}, siblings: [] }
      if (this.appliedBefore(requestId, rid)) {
        // Applied here before (the answer was lost, or W was not reached): send what the key
        // holds now, which includes that write unless a later one replaced it.
        return {
          state: current,
          hlc: newestStamp(current) ?? this.clock.now(this.now()),
          deduplicated: true,
        }
      }
      const survivors = siblingsRefusal(current, ctx, value === null, this.mergePolicy)
      if (survivors !== null) {
        throw new KvError(
          'KV_ERR_TOO_MANY_SIBLINGS',
          `key ${JSON.stringify(key)} already holds ${survivors} siblings the context does not resolve; the cap is ${this.config.siblingsMax}. Read it and write with its kv-context.`,
          {
            siblings: survivors,
            siblingsMax: this.config.siblingsMax,
            context: encodeContext(current),
          },
        )
      }
      const counter = await this.nextCounter()
      const hlc = this.clock.now(this.now())
      const { state: next, dropped } = mintWrite(
        current,
        this.actor,
        counter,
        ctx,
        { value, hlc },
        this.mergePolicy,
      )
      await this.persist(key, next, rid)
      this.noteSiblings(key, next, dropped)
      return { state: next, hlc, deduplicated: false }
    })
    const fanout = this.fanOut(key, state, prefs, spares, wanted, sloppy)
    const acks = await fanout
    return {
      key,
      context: encodeContext(state),
      timestamp: formatHlc(hlc),
      acks: acks.acks,
      w: wanted,
      coordinator: this.self,
      hinted: acks.hinted,
      ...(deduplicated ? { deduplicated: true } : {}),
    }
  }

  /**
   * Whether this member applied the request before (a retry), found by its request id whatever
   * the key. Throws KV_ERR_REQUEST_ID_REUSED when the id was applied for another request.
   */
  private appliedBefore(
    requestId: string | null,
    rid: { id: string; fingerprint: Buffer } | undefined,
  ): boolean {
    if (requestId === null || rid === undefined) return false
    const applied = this.store.getRequest(rid.id)
    if (applied === null) return false
    if (!sameRequest(applied.fingerprint, rid.fingerprint)) {
      // Not naming the other request's key: the id is all the two have in common.
      throw new KvError(
        'KV_ERR_REQUEST_ID_REUSED',
        `kv-request-id ${JSON.stringify(requestId)} was already used for another request; nothing was written. Use a fresh id per request.`,
        { requestId },
      )
    }
    return true
  }

  /**
   * Refuses a context this cluster cannot have produced: more of this member's actor than it
   * ever minted (which would hide its later writes on every replica), or more actors than a
   * record may hold.
   */
  private checkContext(context: CausalContext): void {
    const own = ownCounterProblem(context.vector, { actor: this.actor, minted: this.counter })
    if (own !== null) {
      throw new KvError(
        'KV_ERR_INVALID_CONTEXT',
        `the context ${own}; it was not returned by this cluster`,
      )
    }
    if (Object.keys(context.vector).length >= leaderlessLimits.vectorEntriesMax) {
      throw new KvError(
        'KV_ERR_INVALID_CONTEXT',
        `the context names ${Object.keys(context.vector).length} actors; a key holds at most ${leaderlessLimits.vectorEntriesMax - 1} besides its coordinator`,
      )
    }
  }

  /** Replicas of the key reachable now, plus (sloppy) the stand-ins that could take hints. */
  private reachableTargets(prefs: string[], spares: string[], sloppy: boolean): number {
    return reachableTargets(prefs, spares, sloppy, (m) => this.isUp(m))
  }

  private async forwardWrite(
    key: string,
    request: LeaderlessWrite & { w: number },
    prefs: string[],
  ): Promise<WriteOutcome> {
    const { value, context, w, sloppy } = request
    const order = [...prefs.filter((m) => this.isUp(m)), ...prefs.filter((m) => !this.isUp(m))]
    let lastError: unknown = null
    for (const member of order) {
      try {
        const reply = await this.call(
          member,
          {
            kind: 'coordinate',
            key: Buffer.from(key, 'utf8'),
            value,
            context,
            w,
            sloppy,
            requestId: request.requestId ?? '',
          },
          this.config.quorumTimeoutMs * 3,
        )
        if (reply.kind !== 'coordinateReply')
          throw new KvError('KV_ERR_INTERNAL', `unexpected reply ${reply.kind}`)
        this.stats.forwardedWrites++
        const body = JSON.parse(reply.bodyJson) as
          | WriteOutcome
          | {
              error: { code: string; message: string } & Record<
                string,
                string | number | boolean | null
              >
            }
        if ('error' in body) {
          const { code, message, ...details } = body.error
          throw new KvError(isKnownCode(code), message, details)
        }
        return body
      } catch (err) {
        if (err instanceof PeerUnreachable) {
          // Sent and unanswered: it may be applied there; another coordinator would add a
          // second version. Only a peer that never got it is passed over.
          if (err.unknownOutcome) {
            throw new KvError(
              'KV_ERR_QUORUM_UNAVAILABLE',
              `${member} took the write of ${JSON.stringify(key)} to coordinate and did not answer: ${err.message}. It may have been applied; retry with the same kv-request-id.`,
              { required: w, acks: 0, replicas: prefs.join(',') },
            )
          }
          lastError = err
          continue
        }
        throw err
      }
    }
    this.stats.quorumFailures.write++
    throw new KvError(
      'KV_ERR_QUORUM_UNAVAILABLE',
      `no replica of ${JSON.stringify(key)} (${prefs.join(', ')}) could coordinate the write: ${(lastError as Error | null)?.message ?? 'none reachable'}`,
      { required: w, acks: 0, replicas: prefs.join(',') },
    )
  }

  /**
   * Sends the coordinator's new state to the rest of the preference list (or to stand-ins
   * with hints for the down ones), and resolves once `w` replicas hold it. The sends go on
   * after that, in the background.
   */
  private fanOut(
    key: string,
    state: State,
    prefs: string[],
    candidates: string[],
    w: number,
    sloppy: boolean,
  ): Promise<{ acks: number; hinted: string[] }> {
    const keyBytes = Buffer.from(key, 'utf8')
    const spares = candidates.filter((m) => m !== this.self)
    const usedSpares = new Set<string>()
    const quorum = new WriteQuorum({ w, sloppy })
    let settled = false
    return new Promise((resolve, reject) => {
      const refuse = (within: string) => {
        this.stats.quorumFailures.write++
        reject(
          new KvError(
            'KV_ERR_QUORUM_UNAVAILABLE',
            `only ${quorum.acks} of the ${w} replicas needed acknowledged the write of ${JSON.stringify(key)}${within}; it is durable on ${quorum.acks} and will spread from there`,
            {
              required: w,
              acks: quorum.acks,
              replicas: prefs.join(','),
              hinted: quorum.hinted.join(','),
            },
          ),
        )
      }
      const check = () => {
        if (settled || quorum.status === 'waiting') return
        settled = true
        clearTimeout(timer)
        if (quorum.status === 'met') resolve({ acks: quorum.acks, hinted: [...quorum.hinted] })
        else refuse('')
      }
      const timer = setTimeout(() => {
        if (settled) return
        settled = true
        refuse(` within ${this.config.quorumTimeoutMs} ms`)
      }, this.config.quorumTimeoutMs)
      timer.unref()
      const viaHint = (target: string): void => {
        const h = this.health.get(target)
        if (h && !h.up && !mayHintFor(h.downSinceMs, this.now(), this.config.hintWindowMs)) {
          this.stats.hintsDropped.window++
          return
        }
        const standIn = pickStandIn(spares, usedSpares, (m) => this.isUp(m))
        if (standIn === undefined) return
        usedSpares.add(standIn)
        quorum.sent()
        this.call(standIn, { kind: 'store', key: keyBytes, record: state, hintFor: target }).then(
          () => {
            quorum.hintAcked(target, standIn)
            check()
          },
          () => {
            quorum.failed()
            // Try the next stand-in.
            viaHint(target)
            check()
          },
        )
      }
      for (const member of prefs) {
        if (member === this.self) continue
        if (!this.isUp(member)) {
          viaHint(member)
          continue
        }
        quorum.sent()
        this.call(member, { kind: 'store', key: keyBytes, record: state, hintFor: '' }).then(
          () => {
            quorum.replicaAcked()
            check()
          },
          () => {
            quorum.failed()
            viaHint(member)
            check()
          },
        )
      }
      check()
    })
  }

  // ---- reads --------------------------------------------------------------------------------

  /**
   * Reads from the preference list and answers with the merge of the first `r` replies.
   * Replicas that answered something older are repaired: in the background (after every
   * reply is in or the timeout), or before answering when `blocking`.
   */
  async coordinateRead(key: string, r: number, blocking: boolean): Promise<ReadResult> {
    const prefs = this.preferenceList(key)
    const read = new ReadQuorum<Uint8Array>(prefs, r, this.mergePolicy)
    const keyBytes = Buffer.from(key, 'utf8')
    const fetchOne = async (member: string): Promise<State | null> => {
      if (member === this.self) {
        this.refuseWhileRefilling()
        return this.loadState(key)
      }
      const reply = await this.call(member, { kind: 'fetch', key: keyBytes })
      if (reply.kind !== 'fetchReply')
        throw new KvError('KV_ERR_BAD_FRAME', `${member} answered a fetch with ${reply.kind}`)
      const state = reply.record === null ? null : toState(reply.record)
      if (state) this.admit(state, member, key)
      return state
    }
    let notify: () => void = () => {}
    const all = Promise.allSettled(
      prefs.map((m) =>
        fetchOne(m).then(
          (state) => {
            read.addReply(m, state)
            notify()
          },
          () => {
            read.addFailure(m)
            notify()
          },
        ),
      ),
    )
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, this.config.quorumTimeoutMs)
      timer.unref()
      notify = () => {
        if (read.enough(blocking)) {
          clearTimeout(timer)
          resolve()
        }
      }
      notify()
    })
    const response = read.response()
    if (response === null) {
      this.stats.quorumFailures.read++
      throw new KvError(
        'KV_ERR_QUORUM_UNAVAILABLE',
        `only ${read.replies.size} of the ${r} replicas needed answered the read of ${JSON.stringify(key)}`,
        { required: r, acks: read.replies.size, replicas: prefs.join(',') },
      )
    }
    if (blocking) {
      await this.repair(key, read)
    } else {
      // The rest of the replies, then repair, off the client's path.
      this.runInBackground(
        new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, this.config.quorumTimeoutMs)
          timer.unref()
          void all.then(() => {
            clearTimeout(timer)
            resolve()
          })
        }).then(() => this.repair(key, read)),
      )
    }
    return { state: response.state, replicas: prefs, answered: read.replies.size }
  }

  private get mergePolicy(): { mode: NodeConfig['conflicts']; siblingsMax: number } {
    return { mode: this.config.conflicts, siblingsMax: this.config.siblingsMax }
  }

  /** Read repair: sends the merge of every reply so far to every replier whose state differs. */
  private async repair(key: string, read: ReadQuorum<Uint8Array>): Promise<void> {
    const { merged, stale } = read.repairs()
    if (merged === null || stale.length === 0) return
    const keyBytes = Buffer.from(key, 'utf8')
    await Promise.allSettled(
      stale.map(async (member) => {
        if (member === this.self) await this.mergeLocal(key, merged, this.self)
        else await this.call(member, { kind: 'store', key: keyBytes, record: merged, hintFor: '' })
        this.stats.readRepairs++
      }),
    )
  }

  /** This member's own copy of a key (for inspection). */
  localState(key: string): Promise<State | null> {
    return this.loadState(key)
  }

  // ---- hinted handoff -----------------------------------------------------------------------

  private async replayHints(): Promise<void> {
    if (this.replayRunning || this.hintTotal === 0) return
    this.replayRunning = true
    try {
      for (const [target, count] of this.hintCounts) {
        if (count === 0 || this.stopped) continue
        // For a member that is down, only drop what expired (it frees room for other hints).
        await this.replayTo(target, !this.isUp(target))
      }
    } finally {
      this.replayRunning = false
    }
  }

  /**
   * Replays the hints held for `target`, `hintReplayConcurrency` at a time, page after page,
   * for at most `hintReplayBudgetMs` per pass (the next pass goes on). Stops at the first
   * failure: the target went away again.
   */
  private async replayTo(target: string, expireOnly = false): Promise<void> {
    const prefix = Buffer.concat([
      Buffer.from([HINT]),
      Buffer.from(target, 'utf8'),
      Buffer.from([0]),
    ])
    const started = this.now()
    let replayed = 0
    let after: Buffer | undefined
    while (!this.stopped && this.now() - started < hintReplayBudgetMs) {
      const page = await this.store.list({
        prefix,
        ...(after ? { after } : {}),
        limit: hintReplayBatch,
      })
      if (page.items.length === 0) break
      after = page.items[page.items.length - 1]?.key
      let failed = false
      let next = 0
      await Promise.all(
        Array.from({ length: hintReplayConcurrency }, async () => {
          for (let i = next++; i < page.items.length && !failed && !this.stopped; i = next++) {
            if (await this.replayOne(target, prefix, page.items[i] as ListItem, expireOnly))
              replayed++
            else failed = true
          }
        }),
      )
      if (failed || !page.more) break
    }
    if (replayed > 0) {
      this.log.info(
        { target, hints: replayed, backlog: this.hintCounts.get(target) },
        'replayed hints',
      )
    }
  }

  /** Delivers one hint and deletes it; false when the target did not take it. */
  private async replayOne(
    target: string,
    prefix: Buffer,
    item: ListItem,
    expireOnly: boolean,
  ): Promise<boolean> {
    const key = item.key.subarray(prefix.length).toString('utf8')
    const hint = decodeHint(item.record.value)
    const expired = hintExpired(hint.storedAtMs, this.now(), this.config.hintWindowMs)
    if (expireOnly && !expired) return true
    if (!expired) {
      try {
        await this.call(target, {
          kind: 'store',
          key: Buffer.from(key, 'utf8'),
          record: hint.record,
          hintFor: '',
        })
      } catch {
        return false
      }
    }
    // Delete the hint unless a newer write merged into it meanwhile (the next pass sends that).
    const removed = await this.locked(`h\u0000${target}\u0000${key}`, async () => {
      const now = await this.store.get(item.key)
      if (now === null || now.tombstone || now.version !== item.record.version) return false
      await this.sequencer.write({ kind: 'delete', ops: [{ type: 'delete', key: item.key }] })
      return true
    })
    if (removed) {
      this.hintCounts.set(target, (this.hintCounts.get(target) ?? 1) - 1)
      this.hintTotal--
      if (expired) this.stats.hintsDropped.expired++
      else this.stats.hintsReplayed++
    }
    return true
  }

  // ---- anti-entropy -------------------------------------------------------------------------

  /** The replica sets this member shares with `peer`. */
  private sharedSets(peer: string): string[] {
    return sharedSets(this.allSets(), this.self, peer)
  }

  /** The root of a replica set's tree here (0 when this member never held a key of it). */
  private rootOf(set: string): number {
    return this.index.root(set)
  }

  private setsCache: string[] | null = null

  /** Every replica set of the ring. */
  allSets(): string[] {
    this.setsCache ??= ringReplicaSets(this.ring, this.n)
    return this.setsCache
  }

  private arcsCache: { start: number; end: number; replicas: string[] }[] | null = null

  /** The ring's arcs with the preference list of the keys in each. */
  arcs(): { start: number; end: number; replicas: string[] }[] {
    if (this.arcsCache) return this.arcsCache
    this.arcsCache = this.ring.ranges().map((r) => ({
      start: r.start,
      end: r.end,
      replicas: this.ring.preferenceListAt(r.end, this.n),
    }))
    return this.arcsCache
  }

  private async antiEntropy(): Promise<void> {
    if (this.aeRunning) return
    this.aeRunning = true
    try {
      for (const peer of this.health.keys()) {
        if (this.stopped) return
        if (!this.isUp(peer)) continue
        try {
          await this.exchangeWith(peer)
        } catch (err) {
          if (!(err instanceof PeerUnreachable))
            this.log.warn({ err, peer }, 'anti-entropy exchange failed')
        }
      }
    } finally {
      this.aeRunning = false
    }
  }

  /** One anti-entropy exchange with `peer` over every replica set both belong to. */
  async exchangeWith(peer: string): Promise<number> {
    const sets = this.sharedSets(peer)
    const roots = await this.call(peer, { kind: 'rangeRoots', sets }, aeCallTimeoutMs)
    if (roots.kind !== 'rootsReply' || roots.roots.length !== sets.length) {
      throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered the roots request with ${roots.kind}`)
    }
    let repaired = 0
    for (let i = 0; i < sets.length; i++) {
      const set = sets[i] as string
      if (this.rootOf(set) === roots.roots[i]) continue
      const leavesReply = await this.call(peer, { kind: 'rangeLeaves', set }, aeCallTimeoutMs)
      if (leavesReply.kind !== 'leavesReply' || leavesReply.leaves.length !== 2 ** treeDepth) {
        throw new KvError(
          'KV_ERR_BAD_FRAME',
          `${peer} answered the leaves request with ${leavesReply.kind}`,
        )
      }
      const differing = differingLeaves(this.index.leafDigests(set), leavesReply.leaves)
      // Stream the differing leaves in messages of bounded size.
      let batch: number[] = []
      let records: KeyRecord[] = []
      let bytes = 0
      const flush = async () => {
        if (batch.length === 0) return
        const reply = await this.call(
          peer,
          { kind: 'rangeKeys', set, leaves: batch, records },
          aeCallTimeoutMs,
        )
        if (reply.kind !== 'keysReply')
          throw new KvError('KV_ERR_BAD_FRAME', `${peer} answered keys with ${reply.kind}`)
        repaired += await this.mergeMany(
          reply.records.map((r) => [this.keyOf(r.key), toState(r.record)] as [string, State]),
          peer,
        )
        batch = []
        records = []
        bytes = 0
      }
      for (const leaf of differing) {
        for (const key of this.index.keysIn(set, leaf)) {
          const state = await this.loadState(key)
          if (!state) continue
          records.push({ key: Buffer.from(key, 'utf8'), record: state })
          bytes += recordBytes(key, state)
        }
        batch.push(leaf)
        if (
          records.length >= aeRecordsPerMessageMax ||
          bytes >= aeBytesPerMessageMax ||
          batch.length >= aeLeavesPerMessageMax
        ) {
          await flush()
        }
      }
      await flush()
    }
    this.stats.antiEntropyExchanges++
    this.noteExchange(peer, repaired)
    if (repaired > 0) this.log.info({ peer, repaired }, 'anti-entropy repaired keys')
    return repaired
  }

  // ---- tombstones and housekeeping ----------------------------------------------------------

  /**
   * Collects tombstones older than tombstoneGcMs, each only once every other replica of its
   * key confirms that it holds the same tombstone (or nothing at all). A replica that is down
   * or cut off, and may still hold the deleted value, keeps the tombstone alive here until it
   * has had it (from a hint or anti-entropy), so the value cannot come back however long the
   * outage. The age bound keeps hints (which expire after hintWindowMs) from delivering an
   * older value afterwards.
   */
  private async collectTombstones(): Promise<void> {
    if (this.gcRunning) return
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
    for (const key of this.index.tombstoned()) {
      if (this.stopped) break
      const state = await this.loadState(key)
      if (state === null || !tombstoneCollectable(state, this.now(), this.config.tombstoneGcMs))
        continue
      const digest = stateDigest(state)
      const others = this.preferenceList(key).filter((m) => m !== this.self)
      const keyBytes = Buffer.from(key, 'utf8')
      const answers = await Promise.all(
        others.map(async (member): Promise<ConfirmationAnswer<Uint8Array>> => {
          if (!this.isUp(member)) return 'unreachable'
          try {
            const reply = await this.call(member, { kind: 'fetch', key: keyBytes })
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
      const done = await this.locked(key, async () => {
        const now = await this.loadState(key)
        if (now === null || stateDigest(now) !== digest) return false
        await this.persist(key, null)
        return true
      })
      if (done) collected++
    }
    this.stats.tombstonesAwaitingReplicas = waiting
    if (collected > 0) {
      this.stats.tombstonesCollected += collected
      this.log.info({ collected, waiting }, 'collected tombstones every replica holds')
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
    const retainFrom = this.store.appliedLsn - keep + 1
    if (retainFrom > this.store.meta.logStartLsn + 1000) await this.store.compactLog(retainFrom)
  }

  // ---- views --------------------------------------------------------------------------------

  hintBacklog(): Record<string, number> {
    return Object.fromEntries([...this.hintCounts].filter(([, n]) => n > 0))
  }

  get hintsHeld(): number {
    return this.hintTotal
  }

  rangeRoots(): { replicas: string; root: number; keys: number }[] {
    return this.allSets()
      .filter((set) => set.split(',').includes(this.self))
      .map((set) => ({ replicas: set, root: this.rootOf(set), keys: this.index.keyCount(set) }))
  }

  clusterView(clusterId: string): Record<string, unknown> {
    const arcs = this.arcs()
    const shares = this.ring.shares()
    const arcCount = new Map<string, number>()
    for (const arc of arcs)
      for (const m of arc.replicas) arcCount.set(m, (arcCount.get(m) ?? 0) + 1)
    return {
      mode: 'leaderless',
      clusterId,
      self: this.self,
      actor: this.actor,
      replicas: this.n,
      conflicts: this.config.conflicts,
      defaultW: this.config.defaultW,
      defaultR: this.config.defaultR,
      vnodes: this.config.vnodes,
      hintWindowMs: this.config.hintWindowMs,
      antiEntropyIntervalMs: this.config.antiEntropyIntervalMs,
      tombstoneGcMs: this.config.tombstoneGcMs,
      hintsHeld: this.hintTotal,
      refilling: this.refilling,
      members: this.cluster.members.map((m) => {
        const h = this.health.get(m.id)
        const ex = this.exchanges.get(m.id)
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
          hintBacklog: this.hintCounts.get(m.id) ?? 0,
          lastAntiEntropyMs: ex?.atMs ?? null,
          antiEntropyKeysRepaired: ex?.keysRepaired ?? 0,
        }
      }),
      ring: arcs,
    }
  }
}

function toState(record: VersionedRecord): State {
  return record as State
}

function hintTarget(key: Buffer): string {
  const zero = key.indexOf(0, 1)
  return key.subarray(1, zero).toString('utf8')
}

function isKnownCode(code: string): ConstructorParameters<typeof KvError>[0] {
  return isErrorCode(code) ? code : 'KV_ERR_INTERNAL'
}
