/**
 * Real single-leader clusters for tests and benchmarks: kv-node processes on free loopback
 * ports, with the faults a test needs (SIGSTOP, SIGCONT, kill -9, restart).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  getJson,
  lastLogs,
  membersFlag,
  newMembers,
  securityOf,
  type ClusterMember,
  type ClusterOptions,
} from './members.js'
import { startNodeProcess, terminate } from './node-process.js'
import type { NodeSecurity } from './security.js'

export type { ClusterMember, ClusterOptions } from './members.js'

interface LeaderView {
  self: string
  leaderId: string | null
  writable: boolean
  members: { id: string; connected?: boolean }[]
}

export class TestCluster {
  readonly members: ClusterMember[]
  readonly dir: string
  private readonly args: string[]
  private readonly options: ClusterOptions
  private readonly security: NodeSecurity
  /** Whether stop() deletes `dir` (only when the cluster made it). */
  private readonly ownDir: boolean
  /** The leader as last found by waitForLeader. */
  private leaderId: string

  private constructor(
    dir: string,
    ownDir: boolean,
    members: ClusterMember[],
    args: string[],
    options: ClusterOptions,
  ) {
    this.leaderId = (members[0] as ClusterMember).id
    this.dir = dir
    this.ownDir = ownDir
    this.members = members
    this.args = args
    this.options = options
    this.security = securityOf(options)
  }

  /**
   * Starts `size` nodes and waits until a leader takes writes (the first member is the
   * preferred leader, so usually it). `args` go to every node.
   */
  static async start(
    size = 3,
    args: string[] = [],
    options: ClusterOptions = {},
  ): Promise<TestCluster> {
    const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'kv-cluster-')))
    const members = await newMembers(size, dir, securityOf(options))
    const cluster = new TestCluster(dir, options.dir === undefined, members, args, options)
    try {
      await Promise.all(members.map((m) => cluster.startMember(m.id)))
      await cluster.waitForLeader()
    } catch (err) {
      await cluster.stop()
      throw err
    }
    return cluster
  }

  /**
   * Waits until one running member takes writes and every other running member follows it
   * (and, with `connected`, the leader sees every running member connected); returns it (also
   * as `leader` from then on).
   */
  async waitForLeader(
    timeoutMs = 30_000,
    options: { connected?: boolean } = {},
  ): Promise<ClusterMember> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const running = this.members.filter((m) => m.process !== null)
      const views = await Promise.all(
        running.map((m) => getJson<LeaderView>(`${m.url}/v1/cluster`)),
      )
      const writable = views.filter((v) => v?.writable === true)
      if (writable.length === 1) {
        const view = writable[0] as LeaderView
        const id = view.self
        if (
          views.every((v) => v?.leaderId === id) &&
          (!options.connected ||
            running.every((m) => view.members.find((x) => x.id === m.id)?.connected))
        ) {
          this.leaderId = id
          return this.member(id)
        }
      }
      if (Date.now() > deadline) {
        throw new Error(`no leader within ${timeoutMs} ms: ${JSON.stringify(views)}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }

  get membersFlag(): string {
    return membersFlag(this.members)
  }

  member(id: string): ClusterMember {
    const member = this.members.find((m) => m.id === id)
    if (!member) throw new Error(`no member ${id}`)
    return member
  }

  get leader(): ClusterMember {
    return this.member(this.leaderId)
  }

  get followers(): ClusterMember[] {
    return this.members.filter((m) => m.id !== this.leaderId)
  }

  /** Starts a stopped member on its ports and data directory (with `extra` arguments). */
  async startMember(id: string, extra: string[] = []): Promise<void> {
    const member = this.member(id)
    const keepLogs = this.options.keepLogs ?? true
    member.process = await startNodeProcess(
      [
        '--id',
        id,
        '--data-dir',
        member.dataDir,
        '--members',
        this.membersFlag,
        ...this.args,
        ...extra,
      ],
      15_000,
      {
        security: this.security,
        cluster: true,
        keepLogs,
        ...(keepLogs ? {} : { readyUrl: member.url }),
        ...(this.options.logLevel !== undefined ? { logLevel: this.options.logLevel } : {}),
        ...(this.options.inheritStderr ? { inheritStderr: true } : {}),
      },
    )
  }

  /** SIGKILL, and wait for the process to be gone. */
  async kill(id: string): Promise<void> {
    const member = this.member(id)
    if (!member.process) return
    member.process.child.kill('SIGKILL')
    await member.process.exited
    member.process = null
  }

  /** SIGTERM (SIGKILL after 15 s), and wait for the exit; returns the exit code. */
  async stopMember(id: string): Promise<number | null> {
    const member = this.member(id)
    if (!member.process) return null
    const code = await terminate(member.process)
    member.process = null
    return code
  }

  pause(id: string): void {
    this.member(id).process?.child.kill('SIGSTOP')
  }

  resume(id: string): void {
    this.member(id).process?.child.kill('SIGCONT')
  }

  async status(
    id: string,
  ): Promise<{ appliedLsn: number; role: string; lagEntries: number; lagMs: number }> {
    const res = await fetch(`${this.member(id).url}/v1/status`)
    return (await res.json()) as {
      appliedLsn: number
      role: string
      lagEntries: number
      lagMs: number
    }
  }

  /** The end of a member's durable log (its own view, from /v1/cluster). */
  async logEnd(id: string): Promise<number> {
    const res = await fetch(`${this.member(id).url}/v1/cluster`)
    const view = (await res.json()) as { self: string; members: { id: string; ackedLsn: number }[] }
    return view.members.find((m) => m.id === view.self)?.ackedLsn ?? 0
  }

  async digest(id: string): Promise<{ appliedLsn: number; digest: string; keys: number }> {
    const res = await fetch(`${this.member(id).url}/v1/digest`)
    return (await res.json()) as { appliedLsn: number; digest: string; keys: number }
  }

  /** Waits until every running member has applied `lsn` (or the leader's applied LSN). */
  async waitForApplied(lsn?: number, timeoutMs = 30_000): Promise<number> {
    const target = lsn ?? (await this.status(this.leader.id)).appliedLsn
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const running = this.members.filter((m) => m.process !== null)
      const applied = await Promise.all(
        running.map((m) => this.status(m.id).then((s) => s.appliedLsn)),
      )
      if (applied.every((a) => a >= target)) return target
      if (Date.now() > deadline) {
        const views = await Promise.all(
          running.map((m) =>
            fetch(`${m.url}/v1/cluster`)
              .then((r) => r.text())
              .catch((err: unknown) => String(err)),
          ),
        )
        const behind = running.filter((_, i) => (applied[i] ?? 0) < target)
        throw new Error(
          `members did not reach LSN ${target}: ${applied.join(', ')}\n${views.join('\n')}\n${lastLogs(behind)}`,
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /** Stops every member (SIGTERM) and deletes the data the cluster made. */
  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => this.stopMember(m.id).catch(() => null)))
    if (this.ownDir) await rm(this.dir, { recursive: true, force: true })
  }
}
