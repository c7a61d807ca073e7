/**
 * The leaderless simulator: five members, N = 3, on a simulated network (drops, delays that
 * reorder, partitions), with crashes and restarts (a member's data, hints and dot counter are
 * durable; its view of who is up, its calls in flight and its clock are not). Each member runs
 * the node's leaderless loop in miniature (coordinating reads and writes, hinted handoff,
 * anti-entropy, tombstone collection), and every decision in it is made by the same pure
 * functions of @kvstore/core that the node's engine calls: ReadQuorum, WriteQuorum,
 * mergeIncoming, mintWrite, siblingsRefusal, reachableTargets, mayHintFor, pickStandIn,
 * hintExpired, tombstoneCollectable, collectionConfirmed, AntiEntropyIndex and
 * differingLeaves. Only the I/O is the simulator's.
 *
 * One seed picks the fault rates and every random choice, so a seed replays exactly. Checks
 * (checker.ts) run at every persist and every read; once the faults heal, every replica set
 * must converge within `convergeTicks`, and every acknowledged write must be in it.
 *
 * Not modelled: forwarding a write from a member outside the key's list (the client picks a
 * replica), request ids, a wiped data directory (refill), clock skew, the peer record checks.
 */
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
  sameState,
  sharedSets,
  stateDigest,
  siblingsRefusal,
  tombstoneCollectable,
  mintWrite,
  mergeReplies,
  versionsOf,
  type VersionsOnly,
  type ConfirmationAnswer,
  type VersionVector,
  type VersionedState,
} from '@kvstore/core'
import { Prng } from '../prng.js'
import { InvariantViolation, LeaderlessChecker } from './checker.js'
import { SimNetwork } from './network.js'

type State = VersionedState<string>

/**
 * `countHintsTowardStrictW`: a stand-in's hint counts toward a strict W (a read at R can then
 * miss an acknowledged write). `collectWithoutConfirmations`: a tombstone is collected as soon
 * as it is old enough, without asking the other replicas (a replica that missed the delete
 * brings the value back). `answerFromDataOnly`: a digest read counts the versions-only answers
 * toward R but answers with the data alone, never fetching a newer value they show.
 */
export type LeaderlessUnsafeRule =
  'countHintsTowardStrictW' | 'collectWithoutConfirmations' | 'answerFromDataOnly'

export const leaderlessUnsafeRules: readonly LeaderlessUnsafeRule[] = [
  'countHintsTowardStrictW',
  'collectWithoutConfirmations',
  'answerFromDataOnly',
]

export interface LeaderlessSimOptions {
  seed: number
  /** Ticks with faults and client operations before everything heals. */
  faultTicks?: number
  /** Ticks after healing within which every replica set must converge. */
  convergeTicks?: number
  unsafe?: LeaderlessUnsafeRule
}

export interface LeaderlessFaultRates {
  dropRate: number
  delayTicksMax: number
  partitionRate: number
  crashRate: number
  opRate: number
}

export interface LeaderlessSimResult {
  seed: number
  ok: boolean
  violation: string | null
  rates: LeaderlessFaultRates
  ticks: number
  messages: number
  crashes: number
  partitions: number
  writesAcked: number
  writesFailed: number
  readsChecked: number
  hintsStored: number
  hintsReplayed: number
  tombstonesCollected: number
  antiEntropyRepairs: number
  /** Ticks from healing to every replica set agreeing (null if it never did). */
  convergeTicks: number | null
}

/** One tick is this many simulated milliseconds. */
export const tickMs = 10
/** The members and the replication factor. */
const members = ['n1', 'n2', 'n3', 'n4', 'n5']
const replicas = 3
const keys = ['a', 'b', 'c', 'd', 'e', 'f']
const siblingsMax = 4
const policy = { mode: 'siblings' as const, siblingsMax, tombstoneGcMs: 1500 }
/** A call unanswered this long fails and marks its member down. */
const callTimeoutTicks = 30
const quorumTimeoutTicks = 30
const pingEveryTicks = 20
const hintReplayEveryTicks = 25
const antiEntropyEveryTicks = 40
const tombstoneGcEveryTicks = 50
const hintWindowMs = 1000
const treeDepth = 3

type Body =
  | { kind: 'ping' }
  | { kind: 'store'; key: string; state: State; hintFor: string | null }
  | { kind: 'fetch'; key: string; versionsOnly: boolean }
  | { kind: 'aeLeaves'; sets: { set: string; root: number; leaves: number[] }[] }
  | { kind: 'aePush'; records: [string, State][] }

type ReplyBody =
  | { kind: 'ack' }
  | { kind: 'state'; state: State | null }
  | { kind: 'versions'; versions: VersionsOnly | null }
  | { kind: 'aeKeys'; records: [string, State][]; wanted: { set: string; leaves: number[] }[] }

interface Packet {
  from: string
  to: string
  /** Request id (a reply carries its request's). */
  id: number
  body: Body | null
  reply: ReplyBody | null
}

interface Hint {
  target: string
  key: string
  storedAtMs: number
  state: State
  version: number
}

interface PendingCall {
  to: string
  deadlineTick: number
  onReply: (reply: ReplyBody) => void
  onFail: () => void
}

interface SimMember {
  id: string
  up: boolean
  restartTick: number
  // Durable.
  data: Map<string, State>
  hints: Map<string, Hint>
  minted: number
  // Volatile: lost in a crash.
  incarnation: number
  clock: HybridClock
  index: AntiEntropyIndex
  downSinceMs: Map<string, number>
  calls: Map<number, PendingCall>
  replaying: Set<string>
  timers: (() => void)[]
}

export class LeaderlessSimulation {
  readonly rates: LeaderlessFaultRates
  private readonly seed: number
  private readonly faultTicks: number
  private readonly convergeTicks: number
  private readonly unsafe: LeaderlessUnsafeRule | null
  private readonly rng: Prng
  private readonly ring = new HashRing(members, 8)
  private readonly sets = ringReplicaSets(this.ring, replicas)
  private readonly members = new Map<string, SimMember>()
  private readonly checker = new LeaderlessChecker(replicas, siblingsMax)
  private readonly network: SimNetwork<Packet>
  private readonly shared = new Map<string, string[]>()
  private tick = 0
  private nextId = 1
  /** The client's last read context of each key (for writes that resolve and deletes). */
  private readonly contexts = new Map<string, VersionVector>()
  private readonly stats = {
    crashes: 0,
    writesAcked: 0,
    writesFailed: 0,
    hintsStored: 0,
    hintsReplayed: 0,
    tombstonesCollected: 0,
    antiEntropyRepairs: 0,
  }

  constructor(options: LeaderlessSimOptions) {
    this.seed = options.seed
    this.faultTicks = options.faultTicks ?? 1200
    this.convergeTicks = options.convergeTicks ?? 1000
    this.unsafe = options.unsafe ?? null
    this.rng = new Prng(options.seed)
    const r = this.rng
    this.rates = {
      dropRate: r.pick([0, 0.02, 0.1]),
      delayTicksMax: r.pick([1, 3, 8]),
      partitionRate: r.pick([0, 0.003, 0.01]),
      crashRate: r.pick([0, 0.001, 0.003]),
      opRate: r.pick([0.1, 0.3]),
    }
    this.network = new SimNetwork<Packet>(r, this.rates)
    for (const id of members) {
      const member: SimMember = {
        id,
        up: true,
        restartTick: -1,
        data: new Map(),
        hints: new Map(),
        minted: 0,
        incarnation: 0,
        clock: new HybridClock(id),
        index: new AntiEntropyIndex(treeDepth),
        downSinceMs: new Map(),
        calls: new Map(),
        replaying: new Set(),
        timers: [],
      }
      this.members.set(id, member)
      this.start(member)
    }
  }

  private get nowMs(): number {
    return this.tick * tickMs
  }

  run(): LeaderlessSimResult {
    let violation: string | null = null
    let converged: number | null = null
    try {
      for (; this.tick < this.faultTicks; this.tick++) this.step()
      this.heal()
      const healedAt = this.tick
      for (; this.tick < healedAt + this.convergeTicks; this.tick++) {
        this.step()
        if (this.tick % 10 === 0 && this.converged()) {
          converged = this.tick - healedAt
          break
        }
      }
      if (converged === null) {
        throw new InvariantViolation(
          `convergence: ${this.convergeTicks} ticks (${this.convergeTicks * tickMs} ms) after healing, replicas still differ: ${this.differences()}`,
        )
      }
      for (const key of keys) this.checker.finalState(key, this.agreedState(key))
    } catch (err) {
      if (!(err instanceof Error)) throw err
      violation = `tick ${this.tick}: ${err instanceof InvariantViolation ? '' : `${err.name}: `}${err.message}`
    }
    return {
      seed: this.seed,
      ok: violation === null,
      violation,
      rates: this.rates,
      ticks: this.tick,
      ...this.stats,
      messages: this.network.messages,
      partitions: this.network.partitions,
      readsChecked: this.checker.checkedReads,
      convergeTicks: converged,
    }
  }

  private step(): void {
    for (const p of this.network.arriving(this.tick)) this.deliver(p)
    for (const m of this.members.values()) {
      if (!m.up) {
        if (this.tick >= m.restartTick) this.start(m)
        continue
      }
      for (const [id, call] of m.calls) {
        if (this.tick < call.deadlineTick) continue
        m.calls.delete(id)
        this.markDown(m, call.to)
        call.onFail()
      }
      // Staggered periodic work, as the node's timers.
      const phase = this.tick + members.indexOf(m.id) * 7
      if (phase % pingEveryTicks === 0) this.pingAll(m)
      if (phase % hintReplayEveryTicks === 0) this.replayHints(m)
      if (phase % antiEntropyEveryTicks === 0) this.antiEntropy(m)
      if (phase % tombstoneGcEveryTicks === 0) this.collectTombstones(m)
    }
    if (this.network.faulty) {
      this.injectFaults()
      if (this.rng.chance(this.rates.opRate)) this.clientOp()
    }
  }

  private injectFaults(): void {
    const r = this.rng
    this.network.partitionMaybe(this.tick, members)
    const down = [...this.members.values()].filter((m) => !m.up).length
    if (down < 2 && r.chance(this.rates.crashRate)) {
      const victim = this.members.get(r.pick(members)) as SimMember
      if (victim.up) this.crash(victim, this.tick + r.int(20, 500))
    }
  }

  private heal(): void {
    this.network.heal()
    for (const m of this.members.values()) if (!m.up) this.start(m)
  }

  private crash(m: SimMember, restartTick: number): void {
    m.up = false
    m.restartTick = restartTick
    m.calls.clear()
    m.replaying.clear()
    this.stats.crashes++
  }

  /** Start or restart: what is durable is kept, the rest is rebuilt as the engine's start. */
  private start(m: SimMember): void {
    m.up = true
    m.incarnation++
    m.clock = new HybridClock(m.id)
    m.index = new AntiEntropyIndex(treeDepth)
    m.downSinceMs = new Map()
    m.calls = new Map()
    m.replaying = new Set()
    for (const [key, state] of m.data) {
      for (const s of state.siblings) m.clock.observe(s.value.hlc, this.nowMs)
      m.index.update(replicaSetOf(this.ring, key, replicas), key, state)
    }
  }

  private send(p: Packet): void {
    this.network.send(this.tick, p)
  }

  /** The replica sets two members share (cached: the ring never changes). */
  private sharedWith(a: string, b: string): string[] {
    const pair = `${a}|${b}`
    let sets = this.shared.get(pair)
    if (sets === undefined) this.shared.set(pair, (sets = sharedSets(this.sets, a, b)))
    return sets
  }

  private call(
    m: SimMember,
    to: string,
    body: Body,
    onReply: (reply: ReplyBody) => void,
    onFail: () => void,
  ): void {
    const id = this.nextId++
    m.calls.set(id, { to, deadlineTick: this.tick + callTimeoutTicks, onReply, onFail })
    this.send({ from: m.id, to, id, body, reply: null })
  }

  private deliver(p: Packet): void {
    const to = this.members.get(p.to) as SimMember
    if (!to.up || !this.network.linked(p.from, p.to)) return
    this.markUp(to, p.from)
    if (p.reply !== null) {
      const call = to.calls.get(p.id)
      if (call === undefined) return // from before a crash, or timed out
      to.calls.delete(p.id)
      call.onReply(p.reply)
      return
    }
    const reply = this.serve(to, p.from, p.body as Body)
    if (reply !== null) this.send({ from: to.id, to: p.from, id: p.id, body: null, reply })
  }

  private markUp(m: SimMember, peer: string): void {
    m.downSinceMs.delete(peer)
  }

  private markDown(m: SimMember, peer: string): void {
    if (!m.downSinceMs.has(peer)) m.downSinceMs.set(peer, this.nowMs)
  }

  private isUp(m: SimMember, peer: string): boolean {
    return peer === m.id || !m.downSinceMs.has(peer)
  }

  private pingAll(m: SimMember): void {
    for (const peer of members)
      if (peer !== m.id)
        this.call(
          m,
          peer,
          { kind: 'ping' },
          () => {},
          () => {},
        )
  }

  private serve(m: SimMember, from: string, body: Body): ReplyBody | null {
    switch (body.kind) {
      case 'ping':
        return { kind: 'ack' }
      case 'store':
        if (body.hintFor !== null) this.storeHint(m, body.hintFor, body.key, body.state)
        else this.mergeLocal(m, body.key, body.state)
        return { kind: 'ack' }
      case 'fetch': {
        const state = m.data.get(body.key) ?? null
        if (!body.versionsOnly) return { kind: 'state', state }
        return { kind: 'versions', versions: state === null ? null : versionsOf(state) }
      }
      case 'aeLeaves': {
        const records: [string, State][] = []
        const wanted: { set: string; leaves: number[] }[] = []
        for (const { set, root, leaves } of body.sets) {
          if (m.index.root(set) === root) continue
          const differing = differingLeaves(m.index.leafDigests(set), leaves)
          if (differing.length === 0) continue
          wanted.push({ set, leaves: differing })
          for (const leaf of differing)
            for (const key of m.index.keysIn(set, leaf)) {
              const state = m.data.get(key)
              if (state) records.push([key, state])
            }
        }
        return { kind: 'aeKeys', records, wanted }
      }
      case 'aePush':
        for (const [key, state] of body.records) {
          if (this.mergeLocal(m, key, state)) this.stats.antiEntropyRepairs++
        }
        return null
    }
  }

  private persist(m: SimMember, key: string, state: State | null): void {
    if (state === null) m.data.delete(key)
    else {
      this.checker.persisted(m.id, key, state)
      m.data.set(key, state)
    }
    m.index.update(replicaSetOf(this.ring, key, replicas), key, state)
  }

  /** Merges a state from a peer; true when this member's copy changed. */
  private mergeLocal(m: SimMember, key: string, incoming: State): boolean {
    for (const s of incoming.siblings) m.clock.observe(s.value.hlc, this.nowMs)
    const { changed, state } = mergeIncoming(m.data.get(key) ?? null, incoming, this.nowMs, policy)
    if (changed) this.persist(m, key, state)
    return changed
  }

  private storeHint(m: SimMember, target: string, key: string, incoming: State): void {
    const hk = `${target}\u0000${key}`
    const existing = m.hints.get(hk)
    const state = existing
      ? mergeStates(existing.state, incoming, policy.mode, siblingsMax).state
      : incoming
    m.hints.set(hk, {
      target,
      key,
      storedAtMs: this.nowMs,
      state,
      version: (existing?.version ?? 0) + 1,
    })
    this.stats.hintsStored++
  }

  private clientOp(): void {
    const r = this.rng
    const key = r.pick(keys)
    const coordinator = this.members.get(r.pick(members)) as SimMember
    if (!coordinator.up) return
    const roll = r.float()
    if (roll < 0.45) {
      this.coordinateRead(coordinator, key, r.pick([1, 2, 2, 3]))
      return
    }
    const prefs = this.ring.preferenceList(key, replicas)
    // The client sends a write to a replica of the key (the node forwards it there).
    const writer = this.members.get(r.pick(prefs)) as SimMember
    if (!writer.up) return
    const context = this.contexts.get(key)
    const isDelete = roll > 0.85 && context !== undefined
    const withContext = isDelete || (context !== undefined && r.chance(0.6))
    this.coordinateWrite(writer, key, {
      value: isDelete ? null : `${key}@${this.tick}`,
      context: withContext ? (context as VersionVector) : {},
      w: r.pick([1, 2, 2, 3]),
      sloppy: r.chance(0.3),
    })
  }

  private coordinateWrite(
    m: SimMember,
    key: string,
    request: { value: string | null; context: VersionVector; w: number; sloppy: boolean },
  ): void {
    const walked = [...this.ring.walk(key)]
    const prefs = walked.slice(0, replicas)
    const spares = walked.slice(replicas).filter((x) => x !== m.id)
    if (reachableTargets(prefs, spares, request.sloppy, (x) => this.isUp(m, x)) < request.w) {
      this.stats.writesFailed++
      return
    }
    const current = m.data.get(key) ?? { vector: {}, siblings: [] }
    if (siblingsRefusal(current, request.context, request.value === null, policy) !== null) {
      this.stats.writesFailed++ // KV_ERR_TOO_MANY_SIBLINGS
      return
    }
    const counter = ++m.minted
    const hlc = m.clock.now(this.nowMs)
    const { state } = mintWrite(
      current,
      m.id,
      counter,
      request.context,
      { value: request.value, hlc },
      policy,
    )
    this.checker.minted({ node: m.id, counter }, request.value)
    this.persist(m, key, state)
    const quorum = new WriteQuorum({
      w: request.w,
      sloppy: request.sloppy,
      unsafeCountHintsWhenStrict: this.unsafe === 'countHintsTowardStrictW',
    })
    const incarnation = m.incarnation
    const deadline = this.tick + quorumTimeoutTicks
    let settled = false
    const check = () => {
      if (settled || m.incarnation !== incarnation || !m.up) return
      if (quorum.status === 'waiting' && this.tick < deadline) return
      settled = true
      if (quorum.status === 'met') {
        this.stats.writesAcked++
        this.checker.writeAcked({
          key,
          dot: { node: m.id, counter },
          w: request.w,
          strict: !request.sloppy,
          ackTick: this.tick,
          tombstone: request.value === null,
        })
      } else this.stats.writesFailed++
    }
    const used = new Set<string>()
    const viaHint = (target: string): void => {
      if (!mayHintFor(m.downSinceMs.get(target) ?? 0, this.nowMs, hintWindowMs)) return
      const standIn = pickStandIn(spares, used, (x) => this.isUp(m, x))
      if (standIn === undefined) return
      used.add(standIn)
      quorum.sent()
      this.call(
        m,
        standIn,
        { kind: 'store', key, state, hintFor: target },
        () => {
          quorum.hintAcked(target, standIn)
          check()
        },
        () => {
          quorum.failed()
          viaHint(target)
          check()
        },
      )
    }
    for (const member of prefs) {
      if (member === m.id) continue
      if (!this.isUp(m, member)) {
        viaHint(member)
        continue
      }
      quorum.sent()
      this.call(
        m,
        member,
        { kind: 'store', key, state, hintFor: null },
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
  }

  /**
   * A digest read, as the node's coordinator does it: the data from this member when it is a
   * replica (else the first replica it believes up), versions only from the rest, and the
   * values a versions-only answer shows fetched before answering (and before repairing).
   */
  private coordinateRead(m: SimMember, key: string, r: number): void {
    const prefs = this.ring.preferenceList(key, replicas)
    const read = new ReadQuorum<string>(prefs, r, policy)
    const dataFrom = prefs.includes(m.id)
      ? m.id
      : (prefs.find((p) => this.isUp(m, p)) ?? (prefs[0] as string))
    /** The full answers alone (what the unsafe rule answers with). */
    const full: (State | null)[] = []
    const startTick = this.tick
    const incarnation = m.incarnation
    let answered = false
    let repaired = false
    let dataSettled = false
    const fetching = new Set<string>()
    /** Fetches the values `missingValues` names; true while any is on its way. */
    const fetchMissing = (): boolean => {
      for (const member of read.missingValues()) {
        if (fetching.has(member)) continue
        fetching.add(member)
        this.call(
          m,
          member,
          { kind: 'fetch', key, versionsOnly: false },
          (reply) => {
            fetching.delete(member)
            if (reply.kind === 'state') read.upgrade(member, reply.state)
            else read.upgradeFailed(member)
            progress()
          },
          () => {
            fetching.delete(member)
            read.upgradeFailed(member)
            progress()
          },
        )
      }
      return fetching.size > 0
    }
    const progress = () => {
      if (m.incarnation !== incarnation || !m.up) return
      if (!answered && read.enough() && (dataSettled || read.missingValues().length === 0)) {
        if (this.unsafe === 'answerFromDataOnly') {
          answered = true
          if (read.status === 'met')
            this.readAnswered(m, key, r, startTick, mergeReplies(full, policy))
        } else if (!fetchMissing()) {
          answered = true
          const response = read.response()
          if (response !== null) this.readAnswered(m, key, r, startTick, response.state)
        }
      }
      if (answered && !repaired && read.settled && !fetchMissing()) {
        repaired = true
        const { merged, stale } = read.repairs()
        if (merged === null) return
        for (const member of stale) {
          if (member === m.id) this.mergeLocal(m, key, merged)
          else
            this.call(
              m,
              member,
              { kind: 'store', key, state: merged, hintFor: null },
              () => {},
              () => {},
            )
        }
      }
    }
    for (const member of prefs) {
      if (member === m.id) {
        const state = m.data.get(key) ?? null
        read.addReply(member, state)
        full.push(state)
        if (member === dataFrom) dataSettled = true
        continue
      }
      this.call(
        m,
        member,
        { kind: 'fetch', key, versionsOnly: member !== dataFrom },
        (reply) => {
          if (reply.kind === 'versions') read.addVersions(member, reply.versions)
          else if (reply.kind === 'state') {
            read.addReply(member, reply.state)
            full.push(reply.state)
          } else read.addFailure(member)
          if (member === dataFrom) dataSettled = true
          progress()
        },
        () => {
          read.addFailure(member)
          if (member === dataFrom) dataSettled = true
          progress()
        },
      )
    }
    progress()
  }

  private readAnswered(
    m: SimMember,
    key: string,
    r: number,
    startTick: number,
    state: State | null,
  ): void {
    this.checker.readReturned(m.id, key, r, startTick, state)
    if (state !== null) this.contexts.set(key, state.vector)
  }

  private replayHints(m: SimMember): void {
    for (const [hk, hint] of m.hints) {
      if (m.replaying.has(hk)) continue
      if (hintExpired(hint.storedAtMs, this.nowMs, hintWindowMs)) {
        m.hints.delete(hk)
        continue
      }
      if (!this.isUp(m, hint.target)) continue
      m.replaying.add(hk)
      const version = hint.version
      this.call(
        m,
        hint.target,
        { kind: 'store', key: hint.key, state: hint.state, hintFor: null },
        () => {
          m.replaying.delete(hk)
          // Unless a newer write merged into it meanwhile (the next pass sends that).
          if (m.hints.get(hk)?.version === version) {
            m.hints.delete(hk)
            this.stats.hintsReplayed++
          }
        },
        () => m.replaying.delete(hk),
      )
    }
  }

  private antiEntropy(m: SimMember): void {
    for (const peer of members) {
      if (peer === m.id || !this.isUp(m, peer)) continue
      const sets = this.sharedWith(m.id, peer).map((set) => ({
        set,
        root: m.index.root(set),
        leaves: m.index.leafDigests(set),
      }))
      const incarnation = m.incarnation
      this.call(
        m,
        peer,
        { kind: 'aeLeaves', sets },
        (reply) => {
          if (reply.kind !== 'aeKeys' || m.incarnation !== incarnation) return
          for (const [key, state] of reply.records)
            if (this.mergeLocal(m, key, state)) this.stats.antiEntropyRepairs++
          const records: [string, State][] = []
          for (const { set, leaves } of reply.wanted)
            for (const leaf of leaves)
              for (const key of m.index.keysIn(set, leaf)) {
                const state = m.data.get(key)
                if (state) records.push([key, state])
              }
          if (records.length > 0)
            this.send({
              from: m.id,
              to: peer,
              id: 0,
              body: { kind: 'aePush', records },
              reply: null,
            })
        },
        () => {},
      )
    }
  }

  private collectTombstones(m: SimMember): void {
    for (const key of m.index.tombstoned()) {
      const state = m.data.get(key)
      if (!state || !tombstoneCollectable(state, this.nowMs, policy.tombstoneGcMs)) continue
      const collect = (answers: ConfirmationAnswer<string>[]) => {
        if (!m.up) return
        const now = m.data.get(key)
        if (!now || stateDigest(now) !== stateDigest(state)) return
        if (!collectionConfirmed(state, answers, this.unsafe === 'collectWithoutConfirmations'))
          return
        this.persist(m, key, null)
        this.checker.tombstoneCollected(key, state.vector)
        this.stats.tombstonesCollected++
      }
      if (this.unsafe === 'collectWithoutConfirmations') {
        collect([])
        continue
      }
      const others = this.ring.preferenceList(key, replicas).filter((x) => x !== m.id)
      const answers: ConfirmationAnswer<string>[] = []
      const incarnation = m.incarnation
      const answer = (a: ConfirmationAnswer<string>) => {
        answers.push(a)
        if (answers.length === others.length && m.incarnation === incarnation) collect(answers)
      }
      for (const member of others) {
        if (!this.isUp(m, member)) {
          answer('unreachable')
          continue
        }
        this.call(
          m,
          member,
          { kind: 'fetch', key, versionsOnly: false },
          (reply) => answer(reply.kind === 'state' ? reply.state : 'unreachable'),
          () => answer('unreachable'),
        )
      }
    }
  }

  /**
   * Every replica of a key holds the same state (or none). Tombstones count: a replica set has
   * converged once the last tombstone is collected everywhere, or held everywhere.
   */
  private keyConverged(key: string): boolean {
    const states = this.ring
      .preferenceList(key, replicas)
      .map((id) => (this.members.get(id) as SimMember).data.get(key) ?? null)
    const first = states[0] ?? null
    return states.every((s) =>
      s === null ? first === null : first !== null && sameState(s, first),
    )
  }

  private converged(): boolean {
    for (const m of this.members.values()) if (m.hints.size > 0) return false
    return keys.every((key) => this.keyConverged(key))
  }

  private agreedState(key: string): State | null {
    const first = this.members.get(this.ring.preferenceList(key, replicas)[0] as string)!
    return first.data.get(key) ?? null
  }

  private differences(): string {
    const out: string[] = []
    for (const m of this.members.values())
      if (m.hints.size > 0) out.push(`${m.id} holds ${m.hints.size} hints`)
    for (const key of keys) {
      if (this.keyConverged(key)) continue
      const states = this.ring.preferenceList(key, replicas).map((id) => {
        const s = this.members.get(id)!.data.get(key)
        return `${id}=${s ? stateDigest(s).toString(16) : 'none'}`
      })
      out.push(`${key}: ${states.join(' ')}`)
    }
    return out.join('; ')
  }
}

export function simulateLeaderless(options: LeaderlessSimOptions): LeaderlessSimResult {
  return new LeaderlessSimulation(options).run()
}
