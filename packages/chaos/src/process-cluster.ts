/**
 * The process backend: kv-node processes on 127.0.0.1 (the built dist, as a user runs it).
 * It kills (SIGKILL), pauses (SIGSTOP) and restarts. Network faults need the docker backend:
 * loopback has no per-node network to cut.
 *
 * In leaderless mode (`leaderless: true`, with `--mode leaderless` and its options in `args`)
 * the cluster is up once every node is ready: there is no leader to wait for.
 */
import type { ChaosSecurity } from './security.js'
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  UnsupportedFault,
  freePort,
  waitForLeader,
  waitReady,
  type ChaosCluster,
  type ChaosNode,
} from './cluster.js'

const kvNodeBin = fileURLToPath(new URL('../../cli/dist/kv-node.js', import.meta.url))

/** Every node process this runner started, so none outlives it (even on Ctrl-C). */
const children = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL')
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const child of children) child.kill('SIGKILL')
    process.exit(130)
  })
}

export interface ProcessClusterOptions {
  nodes: number
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
}

interface Member extends ChaosNode {
  peerUrl: string
  child: ChildProcess | null
  exited: Promise<void>
}

export class ProcessCluster implements ChaosCluster {
  readonly backend = 'process' as const
  readonly nodes: Member[]
  get tls(): ChaosSecurity['tls'] {
    return this.options.security.tls
  }
  private readonly dir: string
  private readonly membersFlag: string
  private readonly options: ProcessClusterOptions

  private constructor(dir: string, nodes: Member[], options: ProcessClusterOptions) {
    this.dir = dir
    this.nodes = nodes
    this.options = options
    this.membersFlag = nodes.map((m) => `${m.id}@${m.url}@${m.peerUrl}`).join(',')
  }

  static async start(options: ProcessClusterOptions): Promise<ProcessCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'kv-chaos-'))
    const nodes: Member[] = []
    const used = new Set<number>()
    const port = async () => {
      for (;;) {
        const p = await freePort()
        if (!used.has(p)) {
          used.add(p)
          return p
        }
      }
    }
    for (let i = 1; i <= options.nodes; i++) {
      nodes.push({
        id: `n${i}`,
        url: `https://127.0.0.1:${await port()}`,
        peerUrl: `https://127.0.0.1:${await port()}`,
        child: null,
        exited: Promise.resolve(),
      })
    }
    const cluster = new ProcessCluster(dir, nodes, options)
    try {
      for (const n of nodes) await cluster.start(n.id)
      if (!options.leaderless) await waitForLeader(cluster)
      return cluster
    } catch (err) {
      await cluster.stop()
      throw err
    }
  }

  private member(id: string): Member {
    const m = this.nodes.find((n) => n.id === id)
    if (!m) throw new Error(`no node ${id}`)
    return m
  }

  isRunning(id: string): boolean {
    const child = this.member(id).child
    return child !== null && child.exitCode === null && child.signalCode === null
  }

  async start(id: string): Promise<void> {
    const m = this.member(id)
    if (this.isRunning(id)) return
    const logDir = this.options.logDir ?? join(this.dir, 'logs')
    await mkdir(logDir, { recursive: true })
    const log = createWriteStream(join(logDir, `${id}.log`), { flags: 'a' })
    const child = spawn(
      process.execPath,
      [
        kvNodeBin,
        '--id',
        id,
        '--data-dir',
        join(this.dir, id),
        '--members',
        this.membersFlag,
        '--log-level',
        'info',
        '--certs-dir',
        this.options.security.certsDir,
        ...(this.options.args ?? []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.options.env } },
    )
    child.stdout?.pipe(log)
    child.stderr?.pipe(log)
    m.child = child
    children.add(child)
    m.exited = new Promise((resolve) =>
      child.once('exit', () => {
        children.delete(child)
        resolve()
      }),
    )
    await waitReady(m, 20_000, () => this.isRunning(id))
  }

  async kill(id: string): Promise<void> {
    const m = this.member(id)
    if (!this.isRunning(id)) return
    m.child?.kill('SIGCONT')
    m.child?.kill('SIGKILL')
    await m.exited
  }

  async pause(id: string): Promise<void> {
    if (this.isRunning(id)) this.member(id).child?.kill('SIGSTOP')
  }

  async resume(id: string): Promise<void> {
    if (this.isRunning(id)) this.member(id).child?.kill('SIGCONT')
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

  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (m) => {
        if (!this.isRunning(m.id)) return
        m.child?.kill('SIGCONT')
        m.child?.kill('SIGKILL')
        await m.exited
      }),
    )
    await rm(this.dir, { recursive: true, force: true })
  }
}
