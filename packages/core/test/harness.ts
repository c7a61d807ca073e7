/**
 * A small deterministic cluster of cores for tests: each node has an in-memory "disk" (its
 * durable log), messages go through a queue that a test can cut per link, and every Ready is
 * handled the way the node process does it: truncate, append, persist, then send.
 */
import {
  ReplicaCore,
  type CoreConfig,
  type CoreEntry,
  type Message,
  type NodeId,
  type Ready,
} from '../src/index.js'

export const testConfig = {
  heartbeatTicks: 1,
  probeTimeoutTicks: 3,
  appendEntriesMax: 16,
  appendBytesMax: 1024,
  inflightAppendsMax: 4,
  inflightBytesMax: 4096,
  logCacheBytesMax: 1 << 20,
} satisfies Omit<CoreConfig, 'id' | 'members'>

export interface TestNode {
  core: ReplicaCore
  disk: CoreEntry[]
  diskStart: number
  /** Snapshot LSN installed, if any. */
  snapshotLsn: number
}

export class Harness {
  readonly nodes = new Map<NodeId, TestNode>()
  readonly queue: Message[] = []
  /** Links that drop everything: "a->b". */
  readonly cut = new Set<string>()
  /** Every message ever delivered, for assertions. */
  readonly delivered: Message[] = []
  /** When false, Ready entries are not made durable until `flushDisks`. */
  autoPersist = true
  /** Snapshots a follower refused (see `snapshotOffered`). */
  snapshotsRefused = 0
  private readonly unpersisted = new Map<NodeId, Ready[]>()

  /**
   * `logs` gives nodes a durable log to start from, as `[epoch, payload]` pairs (all
   * uncommitted); every node starts at the highest epoch in any log, or 1.
   */
  constructor(
    ids: NodeId[],
    private readonly config: Partial<Omit<CoreConfig, 'id' | 'members'>> = {},
    logs: Record<NodeId, [epoch: number, payload: string][]> = {},
    /** Settings for single nodes (an election timeout of their own, say). */
    private readonly perNode: Record<NodeId, Partial<Omit<CoreConfig, 'id' | 'members'>>> = {},
    /** The first configuration's voters (default: every node); the others start outside it. */
    private readonly voters: NodeId[] = ids,
  ) {
    const startEpoch = Math.max(
      1,
      ...Object.values(logs).flatMap((log) => log.map(([epoch]) => epoch)),
    )
    for (const id of ids) {
      const disk: CoreEntry[] = (logs[id] ?? []).map(([epoch, payload], i) => ({
        lsn: i + 1,
        epoch,
        data: Buffer.from(payload),
      }))
      const runs: { epoch: number; startLsn: number }[] = []
      for (const entry of disk) {
        if (runs[runs.length - 1]?.epoch !== entry.epoch)
          runs.push({ epoch: entry.epoch, startLsn: entry.lsn })
      }
      const core = new ReplicaCore(
        { ...testConfig, ...config, ...perNode[id], id, members: voters },
        {
          epoch: startEpoch,
          vote: '',
          commitLsn: 0,
          logStartLsn: 1,
          compactedEpoch: 0,
          lastLsn: disk.length,
          lastEpoch: disk[disk.length - 1]?.epoch ?? 0,
          epochRuns: runs,
        },
      )
      this.nodes.set(id, { core, disk, diskStart: 1, snapshotLsn: 0 })
    }
  }

  /**
   * Restarts `id` from what its disk holds (its durable log, keeping the first `keep` entries
   * when given, as after a disk that lost its tail), at `epoch` (default: its current one).
   * Hard state other than the epoch starts empty, as if it had not been written.
   */
  restart(id: NodeId, options: { keep?: number; epoch?: number } = {}): TestNode {
    const old = this.node(id)
    const disk = old.disk.slice(0, options.keep ?? old.disk.length)
    const runs: { epoch: number; startLsn: number }[] = []
    for (const entry of disk) {
      if (runs[runs.length - 1]?.epoch !== entry.epoch)
        runs.push({ epoch: entry.epoch, startLsn: entry.lsn })
    }
    const core = new ReplicaCore(
      { ...testConfig, ...this.config, ...this.perNode[id], id, members: this.voters },
      {
        epoch: options.epoch ?? old.core.epoch,
        vote: '',
        commitLsn: 0,
        logStartLsn: old.diskStart,
        compactedEpoch: 0,
        lastLsn: old.diskStart - 1 + disk.length,
        lastEpoch: disk[disk.length - 1]?.epoch ?? 0,
        epochRuns: runs,
      },
    )
    // Messages to or from the old incarnation are gone with its connections.
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const m = this.queue[i] as Message
      if (m.to === id || m.from === id) this.queue.splice(i, 1)
    }
    this.unpersisted.delete(id)
    const node = { core, disk, diskStart: old.diskStart, snapshotLsn: old.snapshotLsn }
    this.nodes.set(id, node)
    return node
  }

  node(id: NodeId): TestNode {
    const node = this.nodes.get(id)
    if (!node) throw new Error(`no node ${id}`)
    return node
  }

  /**
   * Leader proposes `count` entries with payload `tag-n`. They reach its disk at once and, unless
   * `durable` is false, are reported durable (as the node does once its write completes).
   */
  propose(leader: NodeId, count: number, tag = 'v', durable = true): void {
    const { core } = this.node(leader)
    for (let i = 0; i < count; i++) {
      const slot = core.nextSlot()
      const entry = { lsn: slot.lsn, epoch: slot.epoch, data: Buffer.from(`${tag}-${slot.lsn}`) }
      core.propose(entry)
      this.node(leader).disk.push(entry)
    }
    if (durable) core.persisted(core.lastLsn)
    this.process()
  }

  /** The leader's proposals so far are durable. */
  persistLeader(leader: NodeId): void {
    const node = this.node(leader)
    node.core.persisted(node.core.lastLsn)
    this.process()
  }

  connect(leader: NodeId): void {
    for (const id of this.nodes.keys()) if (id !== leader) this.node(leader).core.peerConnected(id)
    this.process()
  }

  /** Every stream between every pair is up (as a mesh transport would have it). */
  connectAll(): void {
    for (const a of this.nodes.keys()) {
      for (const b of this.nodes.keys()) if (a !== b) this.node(a).core.peerConnected(b)
    }
    this.process()
  }

  /**
   * Cuts (or restores) both directions between `a` and every node in `others`; the streams on
   * those links break (or come back), as TCP connections would.
   */
  isolate(a: NodeId, others: NodeId[], cut = true): void {
    for (const b of others) {
      for (const link of [`${a}->${b}`, `${b}->${a}`]) {
        if (cut) this.cut.add(link)
        else this.cut.delete(link)
      }
      for (const [x, y] of [
        [a, b],
        [b, a],
      ] as const) {
        if (cut) this.node(x).core.peerDisconnected(y)
        else this.node(x).core.peerConnected(y)
      }
    }
    this.process()
  }

  /** Handles every Ready and delivers messages until nothing moves. */
  process(limit = 10_000): void {
    for (let round = 0; round < limit; round++) {
      let moved = false
      for (const [id, node] of this.nodes) {
        if (!node.core.hasReady()) continue
        moved = true
        this.handle(id, node, node.core.takeReady())
      }
      const message = this.queue.shift()
      if (message !== undefined) {
        moved = true
        if (!this.cut.has(`${message.from}->${message.to}`)) {
          this.delivered.push(message)
          this.node(message.to).core.step(message)
        }
      }
      if (!moved) return
    }
    throw new Error('harness did not settle')
  }

  flushDisks(): void {
    for (const [id, readies] of this.unpersisted) {
      const node = this.node(id)
      for (const ready of readies) this.persist(node, ready)
      this.unpersisted.set(id, [])
    }
    this.process()
  }

  tick(times = 1): void {
    for (let i = 0; i < times; i++) {
      for (const node of this.nodes.values()) node.core.tick()
      this.process()
    }
  }

  private handle(id: NodeId, node: TestNode, ready: Ready): void {
    this.queue.push(...ready.sendNow)
    for (const load of ready.loads) {
      const from = load.fromLsn - node.diskStart
      node.core.entriesLoaded(load.to, node.disk.slice(from, from + 8))
    }
    for (const to of ready.snapshots) {
      // Install the leader's state at its commit LSN on the follower, as the node would.
      const lsn = node.core.commitLsn
      const epoch = node.core.log.epochAt(lsn) ?? 0
      const follower = this.node(to)
      // As the node does: the follower takes it only from a member it takes as its leader.
      if (!follower.core.snapshotOffered(id, node.core.epoch)) {
        this.snapshotsRefused++
        continue
      }
      follower.disk = []
      follower.diskStart = lsn + 1
      follower.snapshotLsn = lsn
      follower.core.snapshotInstalled(lsn, epoch)
    }
    if (this.autoPersist || (ready.entries.length === 0 && ready.truncateAfter === null)) {
      this.persist(node, ready)
    } else {
      const list = this.unpersisted.get(id) ?? []
      list.push(ready)
      this.unpersisted.set(id, list)
    }
  }

  private persist(node: TestNode, ready: Ready): void {
    if (ready.truncateAfter !== null) {
      node.disk = node.disk.filter((e) => e.lsn <= (ready.truncateAfter as number))
    }
    for (const entry of ready.entries) {
      const last = node.disk[node.disk.length - 1]
      if (last !== undefined && entry.lsn !== last.lsn + 1)
        throw new Error(`disk gap on ${node.core.id}`)
      node.disk.push(entry)
    }
    const last = node.disk[node.disk.length - 1]
    if (ready.entries.length > 0 && last !== undefined) node.core.persisted(last.lsn, last.epoch)
    this.queue.push(...ready.sendAfterPersist)
  }

  /** The payloads of a node's durable log, for comparisons. */
  log(id: NodeId): string[] {
    return this.node(id).disk.map((e) => Buffer.from(e.data).toString())
  }
}
