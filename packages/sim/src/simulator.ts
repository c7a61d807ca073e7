/**
 * The deterministic simulator: the real replication core (elections and replication) on a
 * simulated network, disk and clock. One seed picks the fault rates and every random choice,
 * so a seed replays exactly.
 *
 * - Network: messages are dropped, duplicated, delayed by a random number of ticks (which
 *   reorders them), and cut by partitions; a partition also breaks the streams on the cut
 *   links, as TCP would.
 * - Disk: each Ready is written by a job that completes a few ticks later, in order; messages
 *   that must follow persistence leave only then. A crash loses every job not yet complete,
 *   and the node restarts from what its disk holds.
 * - Clock: ticks. Nodes tick together; the core randomizes its own election timeouts from the
 *   seeded source.
 * - Epoch bombs: one member (picked by the seed) also sends heartbeats at bad epochs, as a
 *   peer with a bug would: 2^53 - 1, above epochMax, epochMax, the highest epoch one message
 *   can carry a node to from below epochFreeMax, and garbage anywhere up to epochMax. No bomb
 *   may leave the cluster unable to elect: liveness after healing checks it. Bombs draw from a
 *   PRNG of their own, so seeds without them replay as they did before bombs existed.
 *
 * Safety invariants are checked after every event (see `check*`); liveness once the faults
 * heal: a leader must be elected and commit a new entry within a bound.
 */
import {
  ReplicaCore,
  epochFreeMax,
  epochMax,
  epochStepMax,
  type CoreConfig,
  type CoreEntry,
  type HardState,
  type Message,
  type NodeId,
  type Ready,
} from '@kvstore/core'
import { Prng } from './prng.js'

export type UnsafeRule = 'grantEveryVote' | 'skipUpToDateCheck' | 'countLeaderBeforeDurable'

export interface SimOptions {
  seed: number
  /** Members: 3 or 5. */
  nodes: number
  /** Ticks with faults before everything heals. */
  faultTicks?: number
  /** Ticks after healing within which a leader must commit a new entry everywhere. */
  livenessTicks?: number
  /** Break one rule of the core on purpose (tests that the simulator catches it). */
  unsafe?: UnsafeRule
}

/** The fault rates one seed picked. */
export interface FaultRates {
  dropRate: number
  duplicateRate: number
  delayTicksMax: number
  partitionRate: number
  crashRate: number
  /** Per tick: the current leader crashes (the faults that make elections interesting). */
  leaderCrashRate: number
  diskTicksMax: number
  proposeRate: number
  /** Per tick: the faulty member sends one forged heartbeat at an absurd epoch. */
  epochBombRate: number
}

export interface SimResult {
  seed: number
  nodes: number
  ok: boolean
  /** The broken invariant, with the tick it broke at. */
  violation: string | null
  rates: FaultRates
  ticks: number
  elections: number
  leaders: number
  crashes: number
  partitions: number
  messages: number
  /** Forged heartbeats at absurd epochs (see `epochBombRate`). */
  epochBombs: number
  /** The highest epoch any node reached. */
  epochTop: number
  committedLsn: number
  /** Ticks from healing to a new entry committed on every node (null if it never was). */
  recoveryTicks: number | null
}

export class InvariantViolation extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'InvariantViolation'
  }
}

interface DiskJob {
  dueTick: number
  hardState: HardState | null
  /** Only the epoch and the vote of `hardState` (the node writes the commit LSN after entries). */
  epochAndVoteOnly?: boolean
  truncateAfter: number | null
  entries: CoreEntry[]
  after: Message[]
}

interface SimNode {
  id: NodeId
  core: ReplicaCore | null
  /** What survives a crash. */
  disk: { hard: HardState; log: CoreEntry[] }
  /** The log as the running core believes it: the disk plus writes not yet complete. */
  view: CoreEntry[]
  jobs: DiskJob[]
  restartTick: number
  /** Highest epoch this node ever held in memory during its current life. */
  epochSeen: number
  /** Its log matches the committed log up to here (checked). */
  verifiedLsn: number
}

interface InFlight {
  deliverTick: number
  seq: number
  message: Message
}

const heartbeatTicks = 2
const electionTicks = 10

const noopData = new TextEncoder().encode('noop')

function entryKey(e: CoreEntry): string {
  return `${e.epoch}:${Buffer.from(e.data).toString('latin1')}`
}

export class Simulation {
  readonly options: Required<Omit<SimOptions, 'unsafe'>> & { unsafe: UnsafeRule | null }
  readonly rates: FaultRates
  private readonly rng: Prng
  /** Epoch bombs draw from their own PRNG (see the file comment). */
  private readonly bombRng: Prng
  /** The member whose forged frames the bombs are (a peer speaks only as itself). */
  private readonly faulty: NodeId
  private readonly ids: NodeId[]
  private readonly nodes = new Map<NodeId, SimNode>()
  private network: InFlight[] = []
  private seq = 0
  private tick = 0
  /** Unordered pairs "a|b" that are cut. */
  private readonly cut = new Set<string>()
  private partitionHealTick = -1
  private healed = false
  /** The committed log, as first observed on any node. */
  private readonly committed: string[] = []
  /** Epoch -> the node that led it. */
  private readonly leaderOf = new Map<number, NodeId>()
  private proposals = 0
  private stats = {
    elections: 0,
    crashes: 0,
    partitions: 0,
    messages: 0,
    epochBombs: 0,
    epochTop: 0,
  }

  constructor(options: SimOptions) {
    this.options = {
      faultTicks: 1500,
      livenessTicks: 1500,
      ...options,
      unsafe: options.unsafe ?? null,
    }
    this.rng = new Prng(options.seed)
    const r = this.rng
    this.rates = {
      dropRate: r.pick([0, 0.01, 0.05, 0.2]),
      duplicateRate: r.pick([0, 0.01, 0.05]),
      delayTicksMax: r.pick([1, 3, 8, 20]),
      partitionRate: r.pick([0, 0.002, 0.01]),
      crashRate: r.pick([0, 0.0005, 0.002, 0.005]),
      leaderCrashRate: r.pick([0, 0.005, 0.02]),
      diskTicksMax: r.pick([0, 1, 3]),
      proposeRate: r.pick([0.05, 0.2, 0.5]),
      epochBombRate: 0,
    }
    this.ids = Array.from({ length: options.nodes }, (_, i) => `n${i + 1}`)
    this.bombRng = new Prng((options.seed ^ 0x5bd1e995) >>> 0)
    this.rates.epochBombRate = this.bombRng.pick([0, 0, 0.002, 0.01])
    this.faulty = this.bombRng.pick(this.ids)
    for (const id of this.ids) {
      const node: SimNode = {
        id,
        core: null,
        disk: { hard: { epoch: 0, vote: '', commitLsn: 0 }, log: [] },
        view: [],
        jobs: [],
        restartTick: -1,
        epochSeen: 0,
        verifiedLsn: 0,
      }
      this.nodes.set(id, node)
      this.start(node)
    }
    for (const id of this.ids) this.connectAll(id)
  }

  run(): SimResult {
    const { faultTicks, livenessTicks } = this.options
    let violation: string | null = null
    let recoveryTicks: number | null = null
    try {
      for (; this.tick < faultTicks; this.tick++) this.step(true)
      this.heal()
      const healedAt = this.tick
      let target: { lsn: number } | null = null
      for (; this.tick < healedAt + livenessTicks; this.tick++) {
        this.step(false)
        if (target === null) target = this.proposeOnce()
        if (target !== null && this.allCommitted(target.lsn)) {
          recoveryTicks = this.tick - healedAt
          break
        }
      }
      if (recoveryTicks === null) {
        throw new InvariantViolation(
          `liveness: ${livenessTicks} ticks after healing, no new entry was committed on every node (${this.describe()})`,
        )
      }
    } catch (err) {
      // An invariant the simulator checks, or one the core asserts (CoreInvariantError).
      if (!(err instanceof Error)) throw err
      violation = `tick ${this.tick}: ${err instanceof InvariantViolation ? '' : `${err.name}: `}${err.message}`
    }
    return {
      seed: this.options.seed,
      nodes: this.options.nodes,
      ok: violation === null,
      violation,
      rates: this.rates,
      ticks: this.tick,
      elections: this.stats.elections,
      leaders: this.leaderOf.size,
      crashes: this.stats.crashes,
      partitions: this.stats.partitions,
      messages: this.stats.messages,
      epochBombs: this.stats.epochBombs,
      epochTop: this.stats.epochTop,
      committedLsn: this.committed.length,
      recoveryTicks,
    }
  }

  // ------------------------------------------------------------------ one tick

  private step(faults: boolean): void {
    // Deliver what is due, in (tick, send order).
    if (this.network.length > 0) {
      const due = this.network.filter((m) => m.deliverTick <= this.tick)
      if (due.length > 0) {
        this.network = this.network.filter((m) => m.deliverTick > this.tick)
        due.sort((a, b) => a.deliverTick - b.deliverTick || a.seq - b.seq)
        for (const { message } of due) this.deliver(message)
      }
    }
    for (const node of this.nodes.values()) this.completeDiskJobs(node)
    for (const node of this.nodes.values()) {
      if (node.core === null) continue
      node.core.tick()
      this.process(node)
    }
    for (const node of this.nodes.values()) {
      if (node.core === null && node.restartTick <= this.tick) {
        this.start(node)
        this.connectAll(node.id)
      }
    }
    if (faults) this.injectFaults()
    this.proposeRandom()
    this.checkAll()
  }

  private injectFaults(): void {
    const r = this.rng
    if (this.cut.size > 0 && this.tick >= this.partitionHealTick) this.healPartition()
    if (this.cut.size === 0 && r.chance(this.rates.partitionRate)) {
      // Split the members in two random groups (one may be a single node, or a leader).
      const shuffled = [...this.ids].sort(() => r.float() - 0.5)
      const size = r.int(1, Math.floor(this.ids.length / 2))
      const side = new Set(shuffled.slice(0, size))
      for (const a of this.ids) {
        for (const b of this.ids) {
          if (a < b && side.has(a) !== side.has(b)) this.cutLink(a, b)
        }
      }
      this.partitionHealTick = this.tick + r.int(electionTicks, electionTicks * 20)
      this.stats.partitions++
    }
    for (const node of this.nodes.values()) {
      if (node.core === null) continue
      if (
        r.chance(node.core.isLeader ? this.rates.leaderCrashRate : 0) ||
        r.chance(this.rates.crashRate)
      )
        this.crash(node)
    }
    if (this.bombRng.chance(this.rates.epochBombRate)) this.epochBomb()
  }

  /**
   * The faulty member sends a heartbeat at a bad epoch, as a peer with a bug would (the decoder
   * refuses the ones above epochMax on a real stream; the core must cope with all of them).
   * Not modelled: a member that aims each forged epoch at one step above its receiver's, again
   * and again; see "Limits" in the core's replica.ts.
   */
  private epochBomb(): void {
    const r = this.bombRng
    const to = this.ids.filter((id) => id !== this.faulty)[r.int(0, this.ids.length - 2)] as NodeId
    const garbage = r.int(0, epochMax)
    const epoch = r.pick([
      2 ** 53 - 1,
      epochMax + 1,
      epochMax,
      epochFreeMax + epochStepMax,
      garbage,
    ])
    this.stats.epochBombs++
    this.network.push({
      deliverTick: this.tick + 1,
      seq: this.seq++,
      message: {
        type: 'heartbeat',
        from: this.faulty,
        to,
        epoch,
        commitLsn: 0,
        leaderLastLsn: 0,
      },
    })
  }

  private heal(): void {
    this.healPartition()
    this.rates.dropRate = 0
    this.rates.duplicateRate = 0
    this.rates.delayTicksMax = Math.min(this.rates.delayTicksMax, 2)
    this.healed = true
    for (const node of this.nodes.values()) {
      if (node.core === null) {
        this.start(node)
        this.connectAll(node.id)
      }
    }
  }

  // ------------------------------------------------------------------ nodes

  private start(node: SimNode): void {
    const log = node.disk.log
    const runs: { epoch: number; startLsn: number }[] = []
    for (const e of log) {
      if (runs[runs.length - 1]?.epoch !== e.epoch) runs.push({ epoch: e.epoch, startLsn: e.lsn })
    }
    const random = this.rng.float.bind(this.rng)
    const config: CoreConfig = {
      id: node.id,
      members: this.ids,
      heartbeatTicks,
      probeTimeoutTicks: 4,
      appendEntriesMax: 8,
      appendBytesMax: 256,
      inflightAppendsMax: 4,
      inflightBytesMax: 1024,
      // Small, so the leader often reloads entries from its disk.
      logCacheBytesMax: 2048,
      electionTicks,
      random,
      makeNoop: () => noopData,
      ...(this.options.unsafe ? { unsafe: { [this.options.unsafe]: true } } : {}),
    }
    node.core = new ReplicaCore(config, {
      epoch: node.disk.hard.epoch,
      vote: node.disk.hard.vote,
      commitLsn: node.disk.hard.commitLsn,
      logStartLsn: 1,
      compactedEpoch: 0,
      lastLsn: log.length,
      lastEpoch: log[log.length - 1]?.epoch ?? 0,
      epochRuns: runs,
    })
    node.view = [...log]
    node.jobs = []
    node.epochSeen = node.disk.hard.epoch
    node.verifiedLsn = 0
  }

  private crash(node: SimNode): void {
    node.core = null
    node.jobs = []
    node.view = []
    node.restartTick = this.tick + this.rng.int(1, electionTicks * 10)
    this.stats.crashes++
    for (const other of this.nodes.values()) other.core?.peerDisconnected(node.id)
    for (const other of this.nodes.values()) if (other.core) this.process(other)
  }

  private linkUp(a: NodeId, b: NodeId): boolean {
    return !this.cut.has(a < b ? `${a}|${b}` : `${b}|${a}`)
  }

  private cutLink(a: NodeId, b: NodeId): void {
    this.cut.add(a < b ? `${a}|${b}` : `${b}|${a}`)
    const na = this.nodes.get(a) as SimNode
    const nb = this.nodes.get(b) as SimNode
    na.core?.peerDisconnected(b)
    nb.core?.peerDisconnected(a)
    if (na.core) this.process(na)
    if (nb.core) this.process(nb)
  }

  private healPartition(): void {
    const pairs = [...this.cut]
    this.cut.clear()
    for (const pair of pairs) {
      const [a, b] = pair.split('|') as [NodeId, NodeId]
      this.connect(a, b)
    }
  }

  private connectAll(id: NodeId): void {
    for (const other of this.ids) if (other !== id) this.connect(id, other)
  }

  /** A stream between a and b comes up (both alive, link not cut). */
  private connect(a: NodeId, b: NodeId): void {
    const na = this.nodes.get(a) as SimNode
    const nb = this.nodes.get(b) as SimNode
    if (na.core === null || nb.core === null || !this.linkUp(a, b)) return
    na.core.peerConnected(b)
    nb.core.peerConnected(a)
    this.process(na)
    this.process(nb)
  }

  // ------------------------------------------------------------------ network

  private send(from: SimNode, message: Message): void {
    this.checkPersistBeforeSend(from, message)
    this.stats.messages++
    const r = this.rng
    if (r.chance(this.rates.dropRate)) return
    const copies = r.chance(this.rates.duplicateRate) ? 2 : 1
    for (let i = 0; i < copies; i++) {
      this.network.push({
        deliverTick: this.tick + r.int(1, this.rates.delayTicksMax),
        seq: this.seq++,
        message,
      })
    }
  }

  private deliver(message: Message): void {
    const to = this.nodes.get(message.to) as SimNode
    if (to.core === null || !this.linkUp(message.from, message.to)) return
    to.core.step(message)
    this.process(to)
  }

  // ------------------------------------------------------------------ disk

  /** Handles every Ready the node has: sends, queues its disk write, serves loads. */
  private process(node: SimNode): void {
    for (let guard = 0; node.core !== null && node.core.hasReady(); guard++) {
      if (guard > 1000) throw new InvariantViolation(`${node.id}: Ready never drains`)
      const core = node.core
      const ready: Ready = core.takeReady()
      if (ready.truncateAfter !== null) {
        if (ready.truncateAfter < node.verifiedLsn) {
          throw new InvariantViolation(
            `${node.id} truncates after ${ready.truncateAfter}, removing committed entry ${ready.truncateAfter + 1}`,
          )
        }
        node.view.length = Math.min(node.view.length, ready.truncateAfter)
      }
      for (const e of ready.entries) {
        if (e.lsn !== node.view.length + 1)
          throw new InvariantViolation(
            `${node.id}: entry ${e.lsn} does not follow ${node.view.length}`,
          )
        node.view.push(e)
      }
      for (const m of ready.sendNow) this.send(node, m)
      // As the node does (log-io.ts): the hard state is one write and the truncation and
      // entries another, in this order; what waited on persistence goes out once the hard state
      // and every earlier write are durable, without waiting for this Ready's entries.
      if (ready.hardState !== null || ready.sendAfterPersist.length > 0) {
        this.queueDiskJob(node, {
          hardState: ready.hardState,
          epochAndVoteOnly: true,
          truncateAfter: null,
          entries: [],
          after: ready.sendAfterPersist,
        })
      }
      if (ready.truncateAfter !== null || ready.entries.length > 0) {
        this.queueDiskJob(node, {
          hardState: ready.hardState,
          truncateAfter: ready.truncateAfter,
          entries: ready.entries,
          after: [],
        })
      }
      for (const load of ready.loads) {
        // Only durable entries can be read back, as from LevelDB.
        core.entriesLoaded(load.to, node.disk.log.slice(load.fromLsn - 1, load.fromLsn - 1 + 8))
      }
      if (ready.snapshots.length > 0) {
        throw new InvariantViolation(
          `${node.id}: asked for a snapshot to ${ready.snapshots.join(', ')}, but nothing was compacted`,
        )
      }
    }
  }

  /** Queues a write; the disk completes writes in order, each after a random delay. */
  private queueDiskJob(node: SimNode, job: Omit<DiskJob, 'dueTick'>): void {
    const last = node.jobs[node.jobs.length - 1]
    node.jobs.push({
      dueTick: Math.max(last?.dueTick ?? 0, this.tick + this.rng.int(0, this.rates.diskTicksMax)),
      ...job,
    })
  }

  private completeDiskJobs(node: SimNode): void {
    while (
      node.core !== null &&
      node.jobs.length > 0 &&
      (node.jobs[0] as DiskJob).dueTick <= this.tick
    ) {
      const job = node.jobs.shift() as DiskJob
      const disk = node.disk
      if (job.hardState !== null) {
        if (job.hardState.epoch < disk.hard.epoch)
          throw new InvariantViolation(
            `${node.id}: durable epoch would go down from ${disk.hard.epoch} to ${job.hardState.epoch}`,
          )
        disk.hard = job.epochAndVoteOnly
          ? { ...job.hardState, commitLsn: disk.hard.commitLsn }
          : { ...job.hardState }
      }
      if (job.truncateAfter !== null) {
        if (job.truncateAfter < disk.hard.commitLsn && job.hardState === null) {
          throw new InvariantViolation(
            `${node.id}: truncating after ${job.truncateAfter}, below its durable commit LSN ${disk.hard.commitLsn}`,
          )
        }
        disk.log.length = Math.min(disk.log.length, job.truncateAfter)
      }
      for (const e of job.entries) {
        if (e.lsn !== disk.log.length + 1)
          throw new InvariantViolation(
            `${node.id}: durable entry ${e.lsn} does not follow ${disk.log.length}`,
          )
        disk.log.push(e)
      }
      if (disk.hard.commitLsn > disk.log.length)
        throw new InvariantViolation(
          `${node.id}: durable commit LSN ${disk.hard.commitLsn} is past its durable log (${disk.log.length})`,
        )
      const core = node.core
      const lastEntry = job.entries[job.entries.length - 1]
      if (lastEntry !== undefined) core.persisted(lastEntry.lsn, lastEntry.epoch)
      for (const m of job.after) this.send(node, m)
      this.process(node)
    }
  }

  // ------------------------------------------------------------------ proposals

  private proposeRandom(): void {
    if (!this.rng.chance(this.rates.proposeRate)) return
    this.proposeOnce()
  }

  /** The current leader (if any) proposes one entry; returns its LSN. */
  private proposeOnce(): { lsn: number } | null {
    for (const node of this.nodes.values()) {
      const core = node.core
      if (core === null || !core.isLeader || core.transferTarget !== null) continue
      const slot = core.nextSlot()
      const entry: CoreEntry = {
        lsn: slot.lsn,
        epoch: slot.epoch,
        data: new TextEncoder().encode(`${node.id}-${++this.proposals}`),
      }
      core.propose(entry)
      node.view.push(entry)
      this.queueDiskJob(node, { hardState: null, truncateAfter: null, entries: [entry], after: [] })
      this.process(node)
      return { lsn: entry.lsn }
    }
    return null
  }

  private allCommitted(lsn: number): boolean {
    for (const node of this.nodes.values()) {
      if (node.core === null || node.core.commitLsn < lsn) return false
    }
    return true
  }

  // ------------------------------------------------------------------ invariants

  /**
   * Persist before send: a message never carries an epoch (or a vote) this node has not made
   * durable. Pre-votes are the exception by design: they ask about the next epoch and change
   * nothing.
   */
  private checkPersistBeforeSend(node: SimNode, m: Message): void {
    const hard = node.disk.hard
    if (m.type === 'vote' && m.preVote) return
    if (m.type === 'voteAck' && m.preVote && m.granted) return
    if (m.epoch > hard.epoch) {
      throw new InvariantViolation(
        `persist before send: ${node.id} sent ${m.type} at epoch ${m.epoch} with epoch ${hard.epoch} on disk`,
      )
    }
    if (m.type === 'vote' && hard.vote !== node.id) {
      throw new InvariantViolation(
        `persist before send: ${node.id} asked for votes at ${m.epoch} without its own vote on disk`,
      )
    }
    if (m.type === 'voteAck' && m.granted && (hard.vote !== m.to || hard.epoch !== m.epoch)) {
      throw new InvariantViolation(
        `persist before send: ${node.id} granted its vote at ${m.epoch} to ${m.to} before it was durable`,
      )
    }
  }

  private checkAll(): void {
    for (const node of this.nodes.values()) {
      const core = node.core
      if (core === null) continue
      // Epochs never decrease, and never pass epochMax (past it, no election could start).
      if (core.epoch < node.epochSeen) {
        throw new InvariantViolation(
          `${node.id}: epoch went down from ${node.epochSeen} to ${core.epoch}`,
        )
      }
      if (core.epoch >= epochMax) {
        throw new InvariantViolation(`${node.id}: epoch ${core.epoch} reached epochMax`)
      }
      node.epochSeen = core.epoch
      this.stats.epochTop = Math.max(this.stats.epochTop, core.epoch)
      // At most one leader per epoch.
      if (core.isLeader) {
        const known = this.leaderOf.get(core.epoch)
        if (known === undefined) {
          this.leaderOf.set(core.epoch, node.id)
          this.stats.elections++
          // Leader completeness: a new leader holds every committed entry.
          for (let i = 0; i < this.committed.length; i++) {
            const e = node.view[i]
            if (e === undefined || entryKey(e) !== this.committed[i]) {
              throw new InvariantViolation(
                `${node.id} leads epoch ${core.epoch} without committed entry ${i + 1} (${this.committed[i]}); it has ${e ? entryKey(e) : 'nothing'}`,
              )
            }
          }
        } else if (known !== node.id) {
          throw new InvariantViolation(
            `two leaders in epoch ${core.epoch}: ${known} and ${node.id}`,
          )
        }
      }
      // Committed entries never change, and every node agrees on the committed prefix.
      const commit = core.commitLsn
      if (commit > node.view.length) {
        throw new InvariantViolation(
          `${node.id}: commit LSN ${commit} is past its log (${node.view.length})`,
        )
      }
      for (let lsn = node.verifiedLsn + 1; lsn <= commit; lsn++) {
        const key = entryKey(node.view[lsn - 1] as CoreEntry)
        const known = this.committed[lsn - 1]
        if (known === undefined) {
          this.committed.push(key)
          // A newly committed entry must be durable on a majority.
          let copies = 0
          for (const other of this.nodes.values()) {
            const d = other.disk.log[lsn - 1]
            if (d !== undefined && entryKey(d) === key) copies++
          }
          if (copies * 2 <= this.ids.length) {
            throw new InvariantViolation(
              `entry ${lsn} (${key}) committed by ${node.id} is durable on ${copies} of ${this.ids.length} nodes`,
            )
          }
        } else if (known !== key) {
          throw new InvariantViolation(
            `committed entry ${lsn} changed on ${node.id}: was ${known}, now ${key}`,
          )
        }
      }
      node.verifiedLsn = Math.max(node.verifiedLsn, commit)
    }
  }

  private describe(): string {
    return [...this.nodes.values()]
      .map((n) =>
        n.core === null
          ? `${n.id} down`
          : `${n.id} ${n.core.roleName} e${n.core.epoch} last ${n.core.lastLsn} commit ${n.core.commitLsn}`,
      )
      .join('; ')
  }
}

/** Runs one seed. */
export function simulate(options: SimOptions): SimResult {
  return new Simulation(options).run()
}
