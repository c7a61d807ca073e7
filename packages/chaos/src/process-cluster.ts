/**
 * The process backend: kv-node processes on 127.0.0.1 (the built dist, as a user runs it).
 * It kills (SIGKILL), pauses (SIGSTOP) and restarts. Network faults need the docker backend:
 * loopback has no per-node network to cut.
 *
 * Membership changes: `join(id)` starts a new kv-node on free loopback ports with an empty data
 * directory, `--join` and `--members` naming the nodes now and itself; `retire(id)` kills a
 * removed member and drops it from `nodes`. In leaderless mode a joined node is not ready until it
 * is added to the ring, so `join` waits only for it to start.
 *
 * In leaderless mode (`leaderless: true`, with `--mode leaderless` and its options in `args`)
 * the cluster is up once every node is ready: there is no leader to wait for.
 */
import type { ChaosSecurity } from './security.js'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  UnsupportedFault,
  waitForLeader,
  type ChaosCluster,
  type ChaosNode,
  type MemberSpec,
} from './cluster.js'
import { freePort, startKvNode, type KvNodeProcess } from './node-process.js'

export interface ProcessClusterOptions {
  nodes: number
  /** The members' ids (default n1..nN); a sharded run gives each group its own. */
  ids?: string[]
  /** Extra kv-node arguments for every node. */
  args?: string[]
  /** Extra environment for every node (test-only switches). */
  env?: Record<string, string>
  /** Where node logs go (one file per node); a temporary directory when omitted. */
  logDir?: string
  /** The nodes run in leaderless mode: do not wait for a leader. */
  leaderless?: boolean
  /** The cluster's certificates and root's credentials. */
  security: ChaosSecurity
  /** This member archives its log (`--archive-dir`) for the archive-restore check. */
  archiveOn?: string
}

interface Member extends ChaosNode {
  peerUrl: string
  process: KvNodeProcess | null
  /** --members as this node was first started with (a restart gets the same, as in docker). */
  membersFlag: string
  /** Started with --join (a node added while the cluster runs). */
  joined: boolean
}

const membersFlagOf = (nodes: readonly { id: string; url: string; peerUrl: string }[]) =>
  nodes.map((m) => `${m.id}@${m.url}@${m.peerUrl}`).join(',')

export class ProcessCluster implements ChaosCluster {
  readonly backend = 'process' as const
  readonly nodes: Member[]
  get tls(): ChaosSecurity['tls'] {
    return this.options.security.tls
  }
  private readonly dir: string
  private readonly options: ProcessClusterOptions
  /** Members removed and stopped (retire): out of `nodes`, stopped for good. */
  private readonly retired: Member[] = []
  /** Members stopped with SIGSTOP and not continued yet. */
  private readonly paused = new Set<string>()

  private constructor(dir: string, nodes: Member[], options: ProcessClusterOptions) {
    this.dir = dir
    this.nodes = nodes
    this.options = options
  }

  static async start(options: ProcessClusterOptions): Promise<ProcessCluster> {
    const cluster = await ProcessCluster.prepare(options)
    await cluster.launch()
    return cluster
  }

  /**
   * Picks the members' ports without starting them: a sharded run writes its shard map file
   * (which names every member's client URL) before any node starts. `launch` starts them.
   */
  static async prepare(options: ProcessClusterOptions): Promise<ProcessCluster> {
    const ids = options.ids ?? Array.from({ length: options.nodes }, (_, i) => `n${i + 1}`)
    const dir = await mkdtemp(join(tmpdir(), 'kv-chaos-'))
    const nodes: Member[] = []
    for (const id of ids) {
      nodes.push({
        id,
        url: `https://127.0.0.1:${await freePort()}`,
        peerUrl: `https://127.0.0.1:${await freePort()}`,
        process: null,
        membersFlag: '',
        joined: false,
      })
    }
    const flag = membersFlagOf(nodes)
    for (const n of nodes) n.membersFlag = flag
    return new ProcessCluster(dir, nodes, options)
  }

  /** Starts every member and waits for a leader (single-leader); stops them all on failure. */
  async launch(): Promise<void> {
    try {
      for (const n of this.nodes) await this.start(n.id)
      if (!this.options.leaderless) await waitForLeader(this)
    } catch (err) {
      await this.stop()
      throw err
    }
  }

  private member(id: string): Member {
    const m = this.nodes.find((n) => n.id === id)
    if (!m) throw new Error(`no node ${id}`)
    return m
  }

  isRunning(id: string): boolean {
    return this.member(id).process?.running() ?? false
  }

  async start(id: string): Promise<void> {
    await this.startMember(id, true)
  }

  /**
   * Starts node `id`; `ready`: resolves once it answers /ready, else once it says it started
   * (a new leaderless member is not ready until it is added to the ring).
   */
  private async startMember(id: string, ready: boolean): Promise<void> {
    const m = this.member(id)
    if (this.isRunning(id)) return
    const logDir = this.options.logDir ?? join(this.dir, 'logs')
    await mkdir(logDir, { recursive: true })
    const output = createWriteStream(join(logDir, `${id}.log`), { flags: 'a' })
    m.process = await startKvNode({
      args: [
        '--id',
        id,
        '--data-dir',
        join(this.dir, id),
        '--members',
        m.membersFlag,
        ...(m.joined ? ['--join'] : []),
        '--log-level',
        'info',
        '--certs-dir',
        this.options.security.certsDir,
        ...(this.options.args ?? []),
        ...(this.options.archiveOn === id
          ? ['--archive-dir', join(this.dir, 'archive'), '--archive-segment-ms', '200']
          : []),
      ],
      ...(this.options.env !== undefined ? { env: this.options.env } : {}),
      output,
      keepLogs: false,
      ...(ready ? { readyUrl: m.url } : {}),
      timeoutMs: 20_000,
    })
    m.process.child.once('close', () => output.end())
  }

  async kill(id: string): Promise<void> {
    await this.killMember(this.member(id))
  }

  private async killMember(m: Member): Promise<void> {
    this.paused.delete(m.id)
    if (!(m.process?.running() ?? false)) return
    m.process?.child.kill('SIGCONT')
    m.process?.child.kill('SIGKILL')
    await m.process?.exited
  }

  async join(id: string): Promise<MemberSpec> {
    if ([...this.nodes, ...this.retired].some((n) => n.id === id)) {
      throw new Error(`${id} was a member of this cluster already: a new member needs a new id`)
    }
    const m: Member = {
      id,
      url: `https://127.0.0.1:${await freePort()}`,
      peerUrl: `https://127.0.0.1:${await freePort()}`,
      process: null,
      membersFlag: '',
      joined: true,
    }
    m.membersFlag = membersFlagOf([...this.nodes, m])
    this.nodes.push(m)
    try {
      // Leaderless: the new node serves once it has learned the ring, but is not ready until
      // it is added; single-leader: it is ready as a non-member already.
      await this.startMember(id, this.options.leaderless !== true)
    } catch (err) {
      this.nodes.splice(this.nodes.indexOf(m), 1)
      this.retired.push(m)
      throw err
    }
    return { id, clientUrl: m.url, peerUrl: m.peerUrl }
  }

  async retire(id: string): Promise<void> {
    const m = this.member(id)
    await this.killMember(m)
    this.nodes.splice(this.nodes.indexOf(m), 1)
    this.retired.push(m)
  }

  async pause(id: string): Promise<void> {
    if (!this.isRunning(id)) return
    this.member(id).process?.child.kill('SIGSTOP')
    this.paused.add(id)
  }

  async resume(id: string): Promise<void> {
    this.paused.delete(id)
    if (this.isRunning(id)) this.member(id).process?.child.kill('SIGCONT')
  }

  /** Is the node stopped with SIGSTOP (pause) now? */
  isPaused(id: string): boolean {
    return this.paused.has(id)
  }

  private unsupported(what: string): never {
    throw new UnsupportedFault(
      `${what} needs per-node networks: use --backend docker (the process backend shares loopback)`,
    )
  }

  async partition(): Promise<void> {
    this.unsupported('a partition')
  }

  async cutLinks(): Promise<void> {
    this.unsupported('cutting links')
  }

  async loss(): Promise<void> {
    this.unsupported('packet loss')
  }

  async slow(): Promise<void> {
    this.unsupported('a slow link')
  }

  async heal(): Promise<void> {
    for (const n of this.nodes) await this.resume(n.id)
  }

  async archive(): Promise<{ node: string; dir: string } | null> {
    const node = this.options.archiveOn
    return node === undefined ? null : { node, dir: join(this.dir, 'archive') }
  }

  async stop(): Promise<void> {
    await Promise.all([...this.nodes, ...this.retired].map((m) => this.killMember(m)))
    await rm(this.dir, { recursive: true, force: true })
  }
}
