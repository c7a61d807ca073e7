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
 *   With configuration changes on, bombs stay within what the defense covers there: never at
 *   epochFreeMax + epochStepMax or garbage above epochFreeMax, and never fewer than two voters.
 *   Limits of the core found here: a node far behind in epoch catches up only when a majority
 *   of the voters of its own configuration vouch, but a joining node (or one whose
 *   configuration is stale) hears only from the leader, so nothing joins a cluster above
 *   epochFreeMax + epochStepMax; and a faulty sole voter is its own majority.
 *
 * - Snapshots (seeds with membership): nodes compact their logs near their durable commit
 *   LSN; a leader sends a follower whose next entry it compacted a snapshot of its committed
 *   state with the configuration it holds (`snapshotInstalled(lsn, epoch, membership)`), one at
 *   a time per follower, taken as the node's receiver takes it. `snapshotAt: 'logEnd'` cuts it
 *   at the leader's durable log end instead, as the node's store does today.
 * - Membership: the run starts with `nodes` voters and `spares` more nodes running outside the
 *   configuration (joining nodes). The leader changes the configuration through the log, one
 *   single-server step at a time and only when `checkMembershipChange` allows, as the node
 *   does: it adds a learner, promotes one, removes a voter (the leader too, with or without
 *   handing leadership over first) or a learner, and replaces a voter (add, promote, remove).
 *   Removed nodes keep running and are never added again (a new id joins instead, up to a cap).
 *   Configuration entries are encoded in the entry's bytes; the "node layer" here decodes them
 *   into `CoreEntry.membership` on every append received and every entry read from disk, builds
 *   `CoreInit.memberships` from the durable log and commit LSN at each restart, and the first
 *   leader seals the seed configuration into the log. Membership draws from a PRNG of its own
 *   (rate 0 for a quarter of the seeds: those run as they did before membership existed).
 *
 * Safety invariants are checked after every event (see `observe` and `check*`); liveness once
 * the faults heal: a leader must be elected, commit a new entry on every member of its
 * configuration, and every member must hold that configuration, committed.
 */
import {
  MembershipChangeInProgressError,
  ReplicaCore,
  majoritiesCanBeDisjoint,
  majority,
  membersOf,
  singleChangeProblem,
  epochFreeMax,
  epochMax,
  epochStepMax,
  type CoreConfig,
  type CoreEntry,
  type CoreMembership,
  type MembershipAt,
  type HardState,
  type Message,
  type NodeId,
  type Ready,
} from '@kvstore/core'
import { Prng } from './prng.js'

export type UnsafeRule =
  | 'grantEveryVote'
  | 'skipUpToDateCheck'
  | 'countLeaderBeforeDurable'
  | 'membershipOnCommit'
  | 'concurrentMembershipChanges'

export const unsafeRules: readonly UnsafeRule[] = [
  'grantEveryVote',
  'skipUpToDateCheck',
  'countLeaderBeforeDurable',
  'membershipOnCommit',
  'concurrentMembershipChanges',
]

export interface SimOptions {
  seed: number
  /** Voters of the first configuration: 3 or 5. */
  nodes: number
  /**
   * Configuration changes: 'seeded' (default) lets the seed pick their rate, 0 for a quarter of
   * the seeds; 'off' never changes the configuration (and starts no spare node).
   */
  membership?: 'seeded' | 'off'
  /** Ticks with faults before everything heals. */
  faultTicks?: number
  /** Ticks after healing within which a leader must commit a new entry everywhere. */
  livenessTicks?: number
  /** Break one rule of the core on purpose (tests that the simulator catches it). */
  unsafe?: UnsafeRule
  /** Called with a line for each notable event (leaders, configurations, faults): `--trace`. */
  trace?: (line: string) => void
  /**
   * Where a leader cuts the snapshot it sends: at its commit LSN (default; Raft's rule) or at
   * its durable log end, as the node's store does today (its state is applied to the log end,
   * and the follower takes the snapshot's LSN as committed): see `sendSnapshot`.
   */
  snapshotAt?: 'commit' | 'logEnd'
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
  /** Per tick without a configuration change under way: the leader starts one. */
  membershipRate: number
  /**
   * Per configuration change proposed while faults last: a fault right after it, in the window
   * where the configurations in the cluster differ most (the leader and part of its new
   * configuration cut off from the rest, or the leader crashed).
   */
  membershipFaultRate: number
  /** Per node per tick: it compacts its log up to near its durable commit LSN (snapshots). */
  compactRate: number
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
  /** Snapshots installed by followers whose next entry the leader had compacted. */
  snapshotsInstalled: number
  /** Configuration entries proposed (the seed's seal included). */
  membershipChanges: number
  /** Of those, leaders proposing their own removal. */
  leaderRemovals: number
  /** Nodes the run ever started (the first voters, spares and joiners). */
  nodesStarted: number
  /** The voters of the last configuration the liveness check saw committed everywhere. */
  finalVoters: NodeId[]
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
  /**
   * What survives a crash. `log` holds every entry from LSN 1 (index LSN - 1): those below
   * `logStart` stand for the applied state a snapshot holds (compacted from the log), the rest
   * for the log itself. Keeping them lets every check compare whole histories.
   */
  disk: { hard: HardState; log: CoreEntry[]; logStart: number }
  /** The log as the running core believes it: the disk plus writes not yet complete. */
  view: CoreEntry[]
  /** LSNs of the configuration entries in `view`, in order. */
  configLsns: number[]
  jobs: DiskJob[]
  restartTick: number
  /** Highest epoch this node ever held in memory during its current life. */
  epochSeen: number
  /** Its log matches the committed log up to here (checked). */
  verifiedLsn: number
  /**
   * The voters in effect when the node's last event began (seen at the previous observation):
   * the configuration a leader's commit decision in this event counted.
   */
  votersBefore: readonly NodeId[]
}

interface InFlight {
  deliverTick: number
  seq: number
  message: Message
}

/** A snapshot on its way from a leader: the state up to `lsn` (entries 1..lsn). */
interface SnapshotInFlight {
  /** Its first chunk arrives (the follower starts the install, or refuses it). */
  deliverTick: number
  /** Its last chunk arrives (the install completes). */
  finishTick: number
  /** The follower took the first chunk. */
  begun: boolean
  from: NodeId
  to: NodeId
  /** The sender's epoch when it sent it. */
  epoch: number
  lsn: number
  entries: CoreEntry[]
  membership: MembershipAt | null
}

/** One single-server step of a configuration change the simulator drives. */
type MemberStep =
  | { kind: 'addLearner'; id: NodeId }
  | { kind: 'promote'; id: NodeId }
  | { kind: 'remove'; id: NodeId }
  /** The leader `from` hands leadership to another voter (before it removes itself). */
  | { kind: 'transfer'; from: NodeId }

interface MemberPlan {
  name: string
  steps: MemberStep[]
  /** The tick the plan gives up at (a step that never becomes possible). */
  giveUpTick: number
}

const heartbeatTicks = 2
const electionTicks = 10
/** Nodes beyond the first voters that run from the start, outside the configuration. */
const sparesDefault = 2
/** More nodes may join (fresh ids) up to the first voters plus this many. */
const extraNodesMax = 4

const noopData = new TextEncoder().encode('noop')
const configTag = 'config '

function entryKey(e: CoreEntry): string {
  return `${e.epoch}:${Buffer.from(e.data).toString('latin1')}`
}

/** A configuration entry's bytes, as the node encodes a MEMBERSHIP entry (unique by `n`). */
function encodeConfig(m: CoreMembership, n: number): Uint8Array {
  return new TextEncoder().encode(
    `${configTag}${n} v=${m.voters.join(',')} l=${m.learners.join(',')}`,
  )
}

/**
 * An entry as the node hands it to the core: from its bytes only (what came over the wire or
 * from disk), with `membership` set when it is a configuration entry.
 */
function decodeEntry(e: CoreEntry): CoreEntry {
  const entry: CoreEntry = { lsn: e.lsn, epoch: e.epoch, data: e.data }
  if (e.data[0] !== 0x63 /* 'c' */) return entry
  const text = Buffer.from(e.data).toString('latin1')
  if (!text.startsWith(configTag)) return entry
  const fields = text.slice(configTag.length).split(' ')
  const list = (f: string | undefined, tag: string): NodeId[] => {
    if (f === undefined || !f.startsWith(tag)) throw new Error(`bad configuration entry ${text}`)
    const rest = f.slice(tag.length)
    return rest === '' ? [] : rest.split(',')
  }
  entry.membership = { voters: list(fields[1], 'v='), learners: list(fields[2], 'l=') }
  return entry
}

/**
 * Whether two leaders could each still reach a majority of their own voters, the two
 * majorities disjoint. `a` and `b` are the voters each counts; `availableA` and `availableB`
 * the nodes that could still take that leader's messages. See `checkQuorumsOverlap`.
 */
function disjointAvailableMajorities(
  a: readonly NodeId[],
  availableA: (id: NodeId) => boolean,
  b: readonly NodeId[],
  availableB: (id: NodeId) => boolean,
): boolean {
  const inA = new Set(a.filter(availableA))
  const inB = new Set(b.filter(availableB))
  let onlyA = 0
  let shared = 0
  for (const id of inA) {
    if (inB.has(id)) shared++
    else onlyA++
  }
  const onlyB = inB.size - shared
  // Each majority takes the nodes only its side has first, then shared ones.
  const needA = majority(a.length) - onlyA
  const needB = majority(b.length) - onlyB
  if (onlyA + shared < majority(a.length) || onlyB + shared < majority(b.length)) return false
  return Math.max(0, needA) + Math.max(0, needB) <= shared
}

export class Simulation {
  readonly options: Required<Omit<SimOptions, 'unsafe' | 'trace'>> & { unsafe: UnsafeRule | null }
  private readonly trace: ((line: string) => void) | null
  readonly rates: FaultRates
  private readonly rng: Prng
  /** Epoch bombs draw from their own PRNG (see the file comment). */
  private readonly bombRng: Prng
  /** Configuration changes draw from their own PRNG (see the file comment). */
  private readonly memberRng: Prng
  /** The member whose forged frames the bombs are (a peer speaks only as itself). */
  private readonly faulty: NodeId
  /** Every node ever started: the first voters, the spares, and the nodes that joined since. */
  private readonly ids: NodeId[]
  /** The voters of the first configuration (every node's `CoreConfig.members`). */
  private readonly seedVoters: NodeId[]
  private readonly nodesMax: number
  private readonly nodes = new Map<NodeId, SimNode>()
  private network: InFlight[] = []
  private snapshotsInFlight: SnapshotInFlight[] = []
  /** "from>to": the one snapshot a leader streams to a follower at a time (the node's sender). */
  private readonly snapshotsSending = new Set<string>()
  /** Asked for again while one was being sent: the core is told it failed once that ends. */
  private readonly snapshotsAgain = new Set<string>()
  /** Whether any node ever compacted (else a snapshot request is a bug). */
  private compactedAny = false
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
  /** The configuration change under way, if any. */
  private plan: MemberPlan | null = null
  /** Nodes a removal was proposed for: never added again (the node refuses them too). */
  private readonly retired = new Set<NodeId>()
  private finalVoters: NodeId[] = []
  private stats = {
    elections: 0,
    crashes: 0,
    partitions: 0,
    messages: 0,
    epochBombs: 0,
    epochTop: 0,
    membershipChanges: 0,
    leaderRemovals: 0,
    snapshotsInstalled: 0,
  }

  constructor(options: SimOptions) {
    this.options = {
      faultTicks: 1500,
      livenessTicks: 1500,
      membership: 'seeded',
      snapshotAt: 'commit',
      ...options,
      unsafe: options.unsafe ?? null,
    }
    this.trace = options.trace ?? null
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
      membershipRate: 0,
      membershipFaultRate: 0,
      compactRate: 0,
    }
    this.seedVoters = Array.from({ length: options.nodes }, (_, i) => `n${i + 1}`)
    this.memberRng = new Prng((options.seed ^ 0x2545f491) >>> 0)
    if (this.options.membership === 'seeded') {
      this.rates.membershipRate = this.memberRng.pick([0, 0.01, 0.03, 0.1])
      this.rates.membershipFaultRate = this.memberRng.pick([0, 0.1, 0.3])
      this.rates.compactRate = this.memberRng.pick([0, 0.005, 0.02])
    }
    const spares = this.rates.membershipRate > 0 ? sparesDefault : 0
    this.nodesMax = this.rates.membershipRate > 0 ? options.nodes + extraNodesMax : options.nodes
    this.ids = Array.from({ length: options.nodes + spares }, (_, i) => `n${i + 1}`)
    this.bombRng = new Prng((options.seed ^ 0x5bd1e995) >>> 0)
    this.rates.epochBombRate = this.bombRng.pick([0, 0, 0.002, 0.01])
    this.faulty = this.bombRng.pick(this.seedVoters)
    for (const id of this.ids) this.addNode(id)
    for (const id of this.ids) this.connectAll(id)
  }

  private addNode(id: NodeId): SimNode {
    const node: SimNode = {
      id,
      core: null,
      disk: { hard: { epoch: 0, vote: '', commitLsn: 0 }, log: [], logStart: 1 },
      view: [],
      configLsns: [],
      jobs: [],
      restartTick: -1,
      epochSeen: 0,
      verifiedLsn: 0,
      votersBefore: [],
    }
    this.nodes.set(id, node)
    this.start(node)
    return node
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
        if (target !== null && this.converged(target.lsn)) {
          recoveryTicks = this.tick - healedAt
          break
        }
      }
      if (recoveryTicks === null) {
        throw new InvariantViolation(
          `liveness: ${livenessTicks} ticks after healing, no new entry was committed on every member, or the members' configurations did not converge (${this.describe()})`,
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
      snapshotsInstalled: this.stats.snapshotsInstalled,
      membershipChanges: this.stats.membershipChanges,
      leaderRemovals: this.stats.leaderRemovals,
      nodesStarted: this.ids.length,
      finalVoters: this.finalVoters,
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
    if (this.snapshotsInFlight.length > 0) this.deliverSnapshots()
    for (const node of this.nodes.values()) this.completeDiskJobs(node)
    for (const node of this.nodes.values()) {
      if (node.core === null) continue
      node.core.tick()
      this.process(node)
    }
    if (this.rates.compactRate > 0) {
      for (const node of this.nodes.values()) {
        if (node.core !== null && this.memberRng.chance(this.rates.compactRate)) this.compact(node)
      }
    }
    for (const node of this.nodes.values()) {
      if (node.core === null && node.restartTick <= this.tick) {
        this.start(node)
        this.connectAll(node.id)
      }
    }
    if (faults) this.injectFaults()
    this.proposeRandom()
    if (this.rates.membershipRate > 0) this.changeMembership(faults)
    this.checkAll()
  }

  private injectFaults(): void {
    const r = this.rng
    if (this.cut.size > 0 && this.tick >= this.partitionHealTick) this.healPartition()
    if (this.cut.size === 0 && r.chance(this.rates.partitionRate)) {
      // Split the nodes in two random groups (one may be a single node, or a leader).
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
      this.log(() => `partition ${[...side].join(',')} | rest until ${this.partitionHealTick}`)
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
    if (this.rates.membershipRate > 0) {
      // With configuration changes, only bombs the defense covers there (see the file comment):
      // out of range, at epochMax, or garbage up to epochFreeMax (which any node may follow).
      const epoch = r.pick([2 ** 53 - 1, epochMax + 1, epochMax, r.int(0, epochFreeMax)])
      this.sendBomb(to, epoch)
      return
    }
    const garbage = r.int(0, epochMax)
    const epoch = r.pick([
      2 ** 53 - 1,
      epochMax + 1,
      epochMax,
      epochFreeMax + epochStepMax,
      garbage,
    ])
    this.sendBomb(to, epoch)
  }

  private sendBomb(to: NodeId, epoch: number): void {
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
    // A change under way stays where it is (its entry, if proposed, commits); none starts.
    this.plan = null
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
    const logStart = node.disk.logStart
    const runs: { epoch: number; startLsn: number }[] = []
    for (const e of log.slice(logStart - 1)) {
      if (runs[runs.length - 1]?.epoch !== e.epoch) runs.push({ epoch: e.epoch, startLsn: e.lsn })
    }
    const random = this.rng.float.bind(this.rng)
    const config: CoreConfig = {
      id: node.id,
      members: this.seedVoters,
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
    // As the node reads its data directory: every entry decoded from its bytes.
    const view = log.map(decodeEntry)
    this.log(
      () =>
        `start ${node.id} e${node.disk.hard.epoch} log ${log.length} commit ${node.disk.hard.commitLsn}`,
    )
    node.core = new ReplicaCore(config, {
      epoch: node.disk.hard.epoch,
      vote: node.disk.hard.vote,
      commitLsn: node.disk.hard.commitLsn,
      logStartLsn: logStart,
      compactedEpoch: log[logStart - 2]?.epoch ?? 0,
      lastLsn: log.length,
      lastEpoch: log[log.length - 1]?.epoch ?? 0,
      epochRuns: runs,
      memberships: this.membershipsOf(view, node.disk.hard.commitLsn),
    })
    node.view = view
    node.configLsns = view.filter((e) => e.membership !== undefined).map((e) => e.lsn)
    node.jobs = []
    node.epochSeen = node.disk.hard.epoch
    node.verifiedLsn = 0
    node.votersBefore = node.core.membership.voters
  }

  /**
   * `CoreInit.memberships` from a durable log, as the node builds it (membership-config.ts):
   * the last configuration at or below the commit LSN (the seed when there is none), then every
   * one above it, oldest first; nothing (the seed) when the log holds none.
   */
  private membershipsOf(log: readonly CoreEntry[], commitLsn: number): MembershipAt[] {
    let base: MembershipAt | null = null
    const tail: MembershipAt[] = []
    for (const e of log) {
      if (e.membership === undefined) continue
      const at = { lsn: e.lsn, membership: e.membership }
      if (e.lsn <= commitLsn) base = at
      else tail.push(at)
    }
    if (base === null && tail.length === 0) return []
    return [base ?? { lsn: 0, membership: { voters: this.seedVoters, learners: [] } }, ...tail]
  }

  private crash(node: SimNode): void {
    this.log(() => `crash ${node.id}`)
    node.core = null
    node.jobs = []
    node.view = []
    node.configLsns = []
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
    // Entries cross the wire as bytes; the receiving node decodes them for its core.
    to.core.step(
      message.type === 'append'
        ? { ...message, entries: message.entries.map(decodeEntry) }
        : message,
    )
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
        this.truncateView(node, ready.truncateAfter)
      }
      for (const e of ready.entries) this.appendView(node, e)
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
        // Only durable entries can be read back, as from LevelDB, and decoded.
        const from = Math.max(load.fromLsn, node.disk.logStart)
        core.entriesLoaded(
          load.to,
          from === load.fromLsn ? node.disk.log.slice(from - 1, from - 1 + 8).map(decodeEntry) : [],
        )
      }
      if (ready.snapshots.length > 0 && !this.compactedAny) {
        throw new InvariantViolation(
          `${node.id}: asked for a snapshot to ${ready.snapshots.join(', ')}, but nothing was compacted`,
        )
      }
      for (const to of ready.snapshots) this.sendSnapshot(node, to)
    }
    this.observe(node)
  }

  private appendView(node: SimNode, e: CoreEntry): void {
    if (e.lsn !== node.view.length + 1)
      throw new InvariantViolation(`${node.id}: entry ${e.lsn} does not follow ${node.view.length}`)
    node.view.push(e)
    if (e.membership !== undefined) node.configLsns.push(e.lsn)
  }

  private truncateView(node: SimNode, after: number): void {
    node.view.length = Math.min(node.view.length, after)
    while ((node.configLsns[node.configLsns.length - 1] ?? 0) > after) node.configLsns.pop()
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
        if (job.truncateAfter < disk.logStart - 1) {
          throw new InvariantViolation(
            `${node.id}: truncating after ${job.truncateAfter}, into its compacted log (it starts at ${disk.logStart})`,
          )
        }
        disk.log.length = Math.min(disk.log.length, job.truncateAfter)
      }
      for (const e of job.entries) {
        if (e.lsn !== disk.log.length + 1)
          throw new InvariantViolation(
            `${node.id}: durable entry ${e.lsn} does not follow ${disk.log.length}`,
          )
        // The disk keeps the bytes; whoever reads them back decodes them.
        disk.log.push({ lsn: e.lsn, epoch: e.epoch, data: e.data })
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

  // ------------------------------------------------------------------ snapshots

  /**
   * The node compacts its log up to near its durable commit LSN, as the node does once the
   * state holds those entries: the log starts after them, and a follower that needs one gets a
   * snapshot instead.
   */
  private compact(node: SimNode): void {
    const disk = node.disk
    const retainFrom = disk.hard.commitLsn + 1 - this.memberRng.int(0, 8)
    if (retainFrom <= disk.logStart) return
    disk.logStart = retainFrom
    this.compactedAny = true
    ;(node.core as ReplicaCore).compacted(retainFrom, disk.log[retainFrom - 2]?.epoch ?? 0)
    this.process(node)
  }

  /**
   * The leader streams a snapshot of its state to `to`: cut at its commit LSN, or (as the
   * node's store does, `snapshotAt: 'logEnd'`) at its durable log end. The snapshot holds the
   * configuration the state holds at that LSN, with the LSN that made it.
   */
  private sendSnapshot(leader: SimNode, to: NodeId): void {
    const core = leader.core as ReplicaCore
    const lsn =
      this.options.snapshotAt === 'logEnd'
        ? leader.disk.log.length
        : Math.min(core.commitLsn, leader.disk.log.length)
    let membership: MembershipAt | null = null
    for (let i = leader.configLsns.length - 1; i >= 0; i--) {
      const at = leader.configLsns[i] as number
      if (at > lsn) continue
      membership = { lsn: at, membership: leader.view[at - 1]?.membership as CoreMembership }
      break
    }
    const key = `${leader.id}>${to}`
    if (this.snapshotsSending.has(key)) {
      this.snapshotsAgain.add(key)
      return
    }
    this.snapshotsSending.add(key)
    this.log(() => `${leader.id} sends a snapshot at ${lsn} to ${to}`)
    const deliverTick = this.tick + this.rng.int(1, this.rates.delayTicksMax)
    this.snapshotsInFlight.push({
      deliverTick,
      finishTick: deliverTick + this.rng.int(0, 4),
      begun: false,
      from: leader.id,
      to,
      epoch: core.epoch,
      lsn,
      entries: leader.disk.log.slice(0, lsn),
      membership,
    })
  }

  private deliverSnapshots(): void {
    const keep: SnapshotInFlight[] = []
    for (const snap of this.snapshotsInFlight) {
      if (!snap.begun && snap.deliverTick <= this.tick) {
        if (!this.beginSnapshot(snap)) {
          this.snapshotDone(snap, false)
          continue
        }
        snap.begun = true
      }
      if (snap.begun && snap.finishTick <= this.tick) {
        this.snapshotDone(snap, this.finishSnapshot(snap))
        continue
      }
      keep.push(snap)
    }
    this.snapshotsInFlight = keep
  }

  /** The transfer ended: the leader's core hears of a failure, or of a request made meanwhile. */
  private snapshotDone(snap: SnapshotInFlight, installed: boolean): void {
    const key = `${snap.from}>${snap.to}`
    this.snapshotsSending.delete(key)
    const again = this.snapshotsAgain.delete(key)
    const from = this.nodes.get(snap.from) as SimNode
    if (from.core === null) return
    if (installed) from.core.snapshotSent(snap.to, snap.lsn)
    if (!installed || again) from.core.snapshotFailed(snap.to)
    this.process(from)
  }

  /**
   * The first chunk, as the node's receiver takes it: refused below the follower's durable
   * commit LSN or when the core will not take it from the sender now (`snapshotOffered`);
   * otherwise the core refuses appends until the install completes (`awaitSnapshot`).
   */
  private beginSnapshot(snap: SnapshotInFlight): boolean {
    const to = this.nodes.get(snap.to) as SimNode
    const core = to.core
    if (core === null || !this.linkUp(snap.from, snap.to)) return false
    const last = { lsn: snap.lsn, epoch: snap.entries[snap.lsn - 1]?.epoch ?? 0 }
    if (snap.lsn < to.disk.hard.commitLsn || !core.snapshotOffered(snap.from, snap.epoch, last)) {
      this.process(to)
      return false
    }
    core.awaitSnapshot()
    this.process(to)
    return true
  }

  /**
   * The last chunk: the state and log are replaced at once (atomic on the node's disk; writes
   * in flight complete first, as none could follow it). A follower that crashed or lost the
   * stream meanwhile keeps its disk as it was (the node keeps a partial state and waits for a
   * new snapshot; not modelled).
   */
  private finishSnapshot(snap: SnapshotInFlight): boolean {
    const to = this.nodes.get(snap.to) as SimNode
    if (to.core === null || !this.linkUp(snap.from, snap.to)) return false
    if (to.jobs.length > 0) this.completeAllJobs(to)
    if (to.core === null || snap.lsn < to.disk.hard.commitLsn) return false
    const entries = snap.entries.map((e) => ({ lsn: e.lsn, epoch: e.epoch, data: e.data }))
    to.disk.log = entries
    to.disk.logStart = snap.lsn + 1
    to.disk.hard = { ...to.disk.hard, commitLsn: snap.lsn }
    to.view = entries.map(decodeEntry)
    to.configLsns = to.view.filter((e) => e.membership !== undefined).map((e) => e.lsn)
    this.compactedAny = true
    this.stats.snapshotsInstalled++
    this.log(() => `${to.id} installs a snapshot at ${snap.lsn} from ${snap.from}`)
    to.core.snapshotInstalled(snap.lsn, entries[snap.lsn - 1]?.epoch ?? 0, snap.membership)
    this.process(to)
    return true
  }

  /** Completes every write in flight now (a snapshot install waits for them). */
  private completeAllJobs(node: SimNode): void {
    for (const job of node.jobs) job.dueTick = this.tick
    this.completeDiskJobs(node)
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
      this.propose(node, entry)
      return { lsn: entry.lsn }
    }
    return null
  }

  private propose(node: SimNode, entry: CoreEntry): void {
    const core = node.core as ReplicaCore
    core.propose(entry)
    this.appendView(node, entry)
    this.queueDiskJob(node, { hardState: null, truncateAfter: null, entries: [entry], after: [] })
    this.process(node)
  }

  // ------------------------------------------------------------------ membership

  /**
   * One turn of the operator: the first leader seals the seed configuration into the log; while
   * the faults last, a change starts now and then (`membershipRate`) and its steps are tried on
   * a leader every tick, each only when `checkMembershipChange` allows (so with the core's
   * rules, one at a time, each after the last one committed).
   */
  private changeMembership(faults: boolean): void {
    const leaders = [...this.nodes.values()].filter((n) => n.core?.isLeader === true)
    if (leaders.length === 0) return
    const leader = leaders.length === 1 ? leaders[0]! : this.memberRng.pick(leaders)
    const core = leader.core as ReplicaCore
    if (core.transferTarget !== null) return
    // The node's maybeSealMembership: once, by a leader that may change the configuration.
    if (core.membershipLsn === 0 && core.leaderReady && core.pendingMembershipLsn === null) {
      this.proposeMembership(leader, core.membership)
      return
    }
    if (!faults) return
    if (this.plan !== null && this.tick >= this.plan.giveUpTick) this.plan = null
    if (this.plan === null) {
      if (!this.memberRng.chance(this.rates.membershipRate)) return
      this.plan = this.pickPlan(leader.id, core.membership)
      if (this.plan === null) return
    }
    // A step already done (by this leader or an earlier one) is skipped; one that no longer
    // fits the configuration in effect ends the plan.
    for (;;) {
      const step = this.plan.steps[0]
      if (step === undefined) {
        this.plan = null
        return
      }
      const m = core.membership
      if (step.kind === 'transfer') {
        if (leader.id !== step.from) {
          this.plan.steps.shift()
          continue
        }
        const to = m.voters.filter(
          (v) => v !== leader.id && (this.nodes.get(v)?.core ?? null) !== null,
        )
        this.plan.steps.shift()
        if (to.length === 0) continue
        const target = this.memberRng.pick(to)
        this.log(() => `${leader.id} hands leadership to ${target}`)
        core.transferLeadership(target)
        this.process(leader)
        return
      }
      const next = this.applyStep(step, m)
      if (next === 'done') {
        this.plan.steps.shift()
        continue
      }
      if (next === null) {
        this.plan = null
        return
      }
      try {
        core.checkMembershipChange(next)
      } catch (err) {
        if (err instanceof MembershipChangeInProgressError) return
        throw err
      }
      if (step.kind === 'remove') this.retired.add(step.id)
      this.proposeMembership(leader, next)
      this.plan.steps.shift()
      return
    }
  }

  /** The configuration a step makes from `m`; 'done' if `m` has it already, null if it no longer fits. */
  private applyStep(step: MemberStep, m: CoreMembership): CoreMembership | 'done' | null {
    const voter = m.voters.includes((step as { id: NodeId }).id)
    const learner = m.learners.includes((step as { id: NodeId }).id)
    switch (step.kind) {
      case 'addLearner':
        if (voter || learner) return 'done'
        if (this.retired.has(step.id)) return null
        return { voters: m.voters, learners: [...m.learners, step.id] }
      case 'promote':
        if (voter) return 'done'
        if (!learner) return null
        return {
          voters: [...m.voters, step.id],
          learners: m.learners.filter((id) => id !== step.id),
        }
      case 'remove':
        if (!voter && !learner) return 'done'
        if (voter && m.voters.length <= (this.rates.epochBombRate > 0 ? 2 : 1)) return null
        return {
          voters: m.voters.filter((id) => id !== step.id),
          learners: m.learners.filter((id) => id !== step.id),
        }
      case 'transfer':
        return 'done'
    }
  }

  /** A node that may join: a spare never in the configuration, or a new one (up to a cap). */
  private joiner(m: CoreMembership): NodeId | null {
    const members = new Set(membersOf(m))
    const free = this.ids.filter((id) => !members.has(id) && !this.retired.has(id))
    if (free.length > 0) return this.memberRng.pick(free)
    if (this.ids.length >= this.nodesMax) return null
    const id = `n${this.ids.length + 1}`
    this.ids.push(id)
    this.addNode(id)
    this.connectAll(id)
    return id
  }

  private pickPlan(leaderId: NodeId, m: CoreMembership): MemberPlan | null {
    const r = this.memberRng
    const votersMax = this.options.nodes + 2
    const kinds: string[] = []
    if (m.learners.length > 0 && m.voters.length < votersMax) kinds.push('promote')
    if (m.learners.length > 0) kinds.push('removeLearner')
    // A faulty member (epoch bombs) must never be a majority on its own.
    const votersMin = this.rates.epochBombRate > 0 ? 2 : 1
    if (m.voters.length > votersMin) kinds.push('removeVoter', 'replace')
    if (m.voters.length > votersMin && m.voters.includes(leaderId)) kinds.push('removeLeader')
    if (m.voters.length < votersMax) kinds.push('addLearner', 'grow')
    if (kinds.length === 0) return null
    const kind = r.pick(kinds)
    const steps: MemberStep[] = []
    const joiner = (): NodeId | null => this.joiner(m)
    switch (kind) {
      case 'promote':
        steps.push({ kind: 'promote', id: r.pick(m.learners) })
        break
      case 'removeLearner':
        steps.push({ kind: 'remove', id: r.pick(m.learners) })
        break
      case 'removeVoter':
        steps.push({ kind: 'remove', id: r.pick(m.voters) })
        break
      case 'removeLeader':
        // The node hands leadership over first; the core's fallback (a leader that commits its
        // own removal steps down) is exercised when it does not.
        if (r.chance(0.5)) steps.push({ kind: 'transfer', from: leaderId })
        steps.push({ kind: 'remove', id: leaderId })
        break
      case 'addLearner':
      case 'grow':
      case 'replace': {
        const id = joiner()
        if (id === null) return null
        steps.push({ kind: 'addLearner', id })
        if (kind !== 'addLearner') steps.push({ kind: 'promote', id })
        if (kind === 'replace') steps.push({ kind: 'remove', id: r.pick(m.voters) })
        break
      }
    }
    return { name: kind, steps, giveUpTick: this.tick + electionTicks * 30 }
  }

  private proposeMembership(node: SimNode, next: CoreMembership): void {
    const core = node.core as ReplicaCore
    const problem = singleChangeProblem(core.membership, next)
    if (problem !== null)
      throw new InvariantViolation(`the simulator proposed a bad change: ${problem}`)
    const slot = core.nextSlot()
    const membership = { voters: [...next.voters], learners: [...next.learners] }
    this.stats.membershipChanges++
    if (core.isVoter(node.id) && !next.voters.includes(node.id)) this.stats.leaderRemovals++
    this.log(
      () =>
        `${node.id} e${core.epoch} proposes config at ${slot.lsn}: ${next.voters.join(',')} + ${next.learners.join(',')}`,
    )
    this.propose(node, {
      lsn: slot.lsn,
      epoch: slot.epoch,
      data: encodeConfig(membership, ++this.proposals),
      membership,
    })
    if (!this.healed && this.memberRng.chance(this.rates.membershipFaultRate)) {
      this.faultAfterChange(node, membership)
    }
  }

  /**
   * A fault right after a change: the leader with a random part of its new configuration cut
   * off from everyone else (the entry reaches only some), or the leader crashed.
   */
  private faultAfterChange(leader: SimNode, next: CoreMembership): void {
    const r = this.memberRng
    if (r.chance(0.3)) {
      this.crash(leader)
      return
    }
    if (this.cut.size > 0) return
    const side = new Set([leader.id, ...membersOf(next).filter(() => r.chance(0.5))])
    for (const a of this.ids) {
      for (const b of this.ids) {
        if (a < b && side.has(a) !== side.has(b)) this.cutLink(a, b)
      }
    }
    this.partitionHealTick = this.tick + r.int(electionTicks, electionTicks * 10)
    this.stats.partitions++
    this.log(() => `partition ${[...side].join(',')} | rest until ${this.partitionHealTick}`)
  }

  /**
   * After healing: a leader committed `lsn` on every member of its configuration, that
   * configuration is committed, and every member holds it as committed (configurations
   * converged). Nodes outside it (removed, or never added) may hold anything.
   */
  private converged(lsn: number): boolean {
    let leader: ReplicaCore | null = null
    for (const node of this.nodes.values()) {
      if (node.core?.isLeader && (leader === null || node.core.epoch > leader.epoch))
        leader = node.core
    }
    if (leader === null || leader.pendingMembershipLsn !== null) return false
    for (const id of leader.members) {
      const core = this.nodes.get(id)?.core
      if (core === undefined || core === null || core.commitLsn < lsn) return false
      if (core.membershipLsn !== leader.membershipLsn) return false
      if (core.committedMembershipLsn !== leader.membershipLsn) return false
    }
    this.finalVoters = [...leader.membership.voters]
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
    for (const node of this.nodes.values()) this.observe(node)
  }

  /** The invariants about one node, checked after every event it handled. */
  private observe(node: SimNode): void {
    const core = node.core
    if (core === null) return
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
    if (core.epoch > this.stats.epochTop) this.stats.epochTop = core.epoch
    const commit0 = core.commitLsn
    // At most one leader per epoch.
    if (core.isLeader) {
      const known = this.leaderOf.get(core.epoch)
      if (known === undefined) {
        this.leaderOf.set(core.epoch, node.id)
        this.stats.elections++
        this.log(
          () =>
            `${node.id} leads e${core.epoch} last ${core.lastLsn} commit ${commit0} voters ${core.membership.voters.join(',')}`,
        )
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
        throw new InvariantViolation(`two leaders in epoch ${core.epoch}: ${known} and ${node.id}`)
      }
      this.checkQuorumsOverlap(node)
    }
    // Committed entries never change, and every node agrees on the committed prefix.
    const commit = core.commitLsn
    if (commit > node.view.length) {
      throw new InvariantViolation(
        `${node.id}: commit LSN ${commit} is past its log (${node.view.length})`,
      )
    }
    if (commit > node.verifiedLsn) {
      // A leader decides commits (one that just committed its own removal has stepped down
      // since, at the same epoch); followers only learn of them.
      const decided = core.isLeader || this.leaderOf.get(core.epoch) === node.id
      for (let lsn = node.verifiedLsn + 1; lsn <= commit; lsn++) {
        const key = entryKey(node.view[lsn - 1] as CoreEntry)
        const known = this.committed[lsn - 1]
        if (known === undefined) {
          this.committed.push(key)
          if (decided) this.checkCommitDurable(node, lsn, key)
        } else if (known !== key) {
          throw new InvariantViolation(
            `committed entry ${lsn} changed on ${node.id}: was ${known}, now ${key}`,
          )
        }
      }
      node.verifiedLsn = commit
    }
    // The configuration in effect is the newest in the log (or, unsafely, the newest
    // committed): what the node layer decoded is what the core acts on.
    let expected = 0
    for (let i = node.configLsns.length - 1; i >= 0; i--) {
      const lsn = node.configLsns[i] as number
      if (this.options.unsafe !== 'membershipOnCommit' || lsn <= commit) {
        expected = lsn
        break
      }
    }
    if (core.membershipLsn !== expected) {
      throw new InvariantViolation(
        `${node.id}: the configuration in effect is from LSN ${core.membershipLsn}, but its log says ${expected}`,
      )
    }
    node.votersBefore = core.membership.voters
  }

  /**
   * A newly committed entry is durable on a majority of the voters the leader counted: those in
   * effect when the event that committed it began (a leader removing itself does not count
   * itself; its configuration is in effect from the moment the entry is in its log).
   */
  private checkCommitDurable(node: SimNode, lsn: number, key: string): void {
    const voters = node.votersBefore
    let copies = 0
    for (const id of voters) {
      const d = this.nodes.get(id)?.disk.log[lsn - 1]
      if (d !== undefined && entryKey(d) === key) copies++
    }
    if (copies < majority(voters.length)) {
      throw new InvariantViolation(
        `entry ${lsn} (${key}) committed by ${node.id} is durable on ${copies} of ${voters.length} voters (${voters.join(',')})`,
      )
    }
  }

  /**
   * No two disjoint majorities at any moment. Two leaders may coexist (one deposed that does
   * not know it yet), in different epochs and with different configurations - normal in Raft,
   * and so is a lagging follower holding an older configuration. What must never happen is that
   * both can still decide: a majority of each one's voters could still take its messages, and
   * the two majorities share no node. Then both could commit (or one commit and the other
   * overwrite it), and nothing would tell either of the other.
   *
   * Precisely: for every pair of nodes that lead at this moment, A at epoch a and B at epoch
   * b > a, with voters Va and Vb (the configurations in effect on each, which are what its
   * commit counts), let avail(e) be the nodes whose durable epoch is at most e (a node at a
   * higher epoch refuses that leader's appends, now and after any restart; a node that granted
   * B its vote made epoch b durable first, so it is out of avail(a)). It is a violation when
   * some majority of Va inside avail(a) and some majority of Vb inside avail(b) are disjoint.
   * Sound: under single-server changes, one at a time, each leader's own-epoch entry committed
   * first, B won with a majority of a configuration that overlaps every majority of Va (Raft
   * thesis §4.1; Ongaro's raft-dev fix), so every majority of Va holds a node at epoch >= b and
   * avail(a) holds no majority of Va. Candidates are not checked (whether they could win is
   * decided by votes not yet given); their wins are checked as they happen.
   */
  private checkQuorumsOverlap(node: SimNode): void {
    for (const other of this.nodes.values()) {
      if (other === node || other.core?.isLeader !== true) continue
      const [a, b] =
        (other.core as ReplicaCore).epoch < (node.core as ReplicaCore).epoch
          ? [other, node]
          : [node, other]
      const ca = a.core as ReplicaCore
      const cb = b.core as ReplicaCore
      const va = ca.membership.voters
      const vb = cb.membership.voters
      if (!majoritiesCanBeDisjoint(va, vb)) continue
      const availableTo = (epoch: number) => (id: NodeId) =>
        (this.nodes.get(id)?.disk.hard.epoch ?? 0) <= epoch
      if (disjointAvailableMajorities(va, availableTo(ca.epoch), vb, availableTo(cb.epoch))) {
        throw new InvariantViolation(
          `disjoint majorities: ${a.id} leads epoch ${ca.epoch} with voters ${va.join(',')} and ${b.id} leads epoch ${cb.epoch} with voters ${vb.join(',')}; a majority of each can still take its leader's messages, and they share no node`,
        )
      }
    }
  }

  private log(line: () => string): void {
    if (this.trace !== null) this.trace(`${this.tick} ${line()}`)
  }

  private describe(): string {
    return [...this.nodes.values()]
      .map((n) =>
        n.core === null
          ? `${n.id} down`
          : `${n.id} ${n.core.roleName} e${n.core.epoch} last ${n.core.lastLsn} commit ${n.core.commitLsn} config@${n.core.membershipLsn} ${n.core.isVoter(n.id) ? 'voter' : n.core.isMember(n.id) ? 'learner' : 'outside'} [${n.core.membership.voters.join(',')}${n.core.membership.learners.length > 0 ? ` + ${n.core.membership.learners.join(',')}` : ''}]`,
      )
      .join('; ')
  }
}

/** Runs one seed. */
export function simulate(options: SimOptions): SimResult {
  return new Simulation(options).run()
}
