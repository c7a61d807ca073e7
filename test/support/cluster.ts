/**
 * Real multi-process clusters for tests: kv-node processes on free loopback ports, with the
 * faults a test needs (SIGSTOP, SIGCONT, kill -9, restart).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startNodeProcess, type NodeProcess } from './node-process.js'

export interface ClusterMember {
  id: string
  url: string
  peerUrl: string
  dataDir: string
  process: NodeProcess | null
}

/** Ports handed out by this test process: the OS may offer a just-closed one again. */
const handedOut = new Set<number>()

/** A port that was free on 127.0.0.1 a moment ago, and not handed out before by this process. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer()
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const address = server.address()
        const port = typeof address === 'object' && address !== null ? address.port : 0
        server.close(() => resolve(port))
      })
    })
    if (!handedOut.has(port)) {
      handedOut.add(port)
      return port
    }
  }
}

export class TestCluster {
  readonly members: ClusterMember[]
  readonly dir: string
  private readonly args: string[]
  /** The leader as last found by waitForLeader. */
  private leaderId: string

  private constructor(dir: string, members: ClusterMember[], args: string[]) {
    this.leaderId = (members[0] as ClusterMember).id
    this.dir = dir
    this.members = members
    this.args = args
  }

  /**
   * Starts `size` nodes and waits until a leader takes writes (the first member is the
   * preferred leader, so usually it). `args` go to every node.
   */
  static async start(size = 3, args: string[] = []): Promise<TestCluster> {
    const dir = await mkdtemp(join(tmpdir(), 'kv-cluster-'))
    const members: ClusterMember[] = []
    for (let i = 1; i <= size; i++) {
      members.push({
        id: `n${i}`,
        url: `https://127.0.0.1:${await freePort()}`,
        peerUrl: `https://127.0.0.1:${await freePort()}`,
        dataDir: join(dir, `n${i}`),
        process: null,
      })
    }
    const cluster = new TestCluster(dir, members, args)
    await Promise.all(members.map((m) => cluster.startMember(m.id)))
    await cluster.waitForLeader()
    return cluster
  }

  /**
   * Waits until one running member takes writes and every other running member follows it;
   * returns it (also as `leader` from then on).
   */
  async waitForLeader(timeoutMs = 30_000): Promise<ClusterMember> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const running = this.members.filter((m) => m.process !== null)
      const views = await Promise.all(
        running.map((m) =>
          fetch(`${m.url}/v1/cluster`, { signal: AbortSignal.timeout(1000) })
            .then(
              (r) =>
                r.json() as Promise<{ self: string; leaderId: string | null; writable: boolean }>,
            )
            .catch(() => null),
        ),
      )
      const writable = views.filter((v) => v?.writable === true)
      if (writable.length === 1) {
        const id = (writable[0] as { self: string }).self
        if (views.every((v) => v?.leaderId === id)) {
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
    return this.members.map((m) => `${m.id}@${m.url}@${m.peerUrl}`).join(',')
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

  async startMember(id: string, extra: string[] = []): Promise<void> {
    const member = this.member(id)
    member.process = await startNodeProcess([
      '--id',
      id,
      '--data-dir',
      member.dataDir,
      '--members',
      this.membersFlag,
      ...this.args,
      ...extra,
    ])
  }

  /** SIGKILL, and wait for the process to be gone. */
  async kill(id: string): Promise<void> {
    const member = this.member(id)
    if (!member.process) return
    process.kill(member.process.pid, 'SIGKILL')
    await member.process.exited
    member.process = null
  }

  /** SIGTERM, and wait for a clean exit. */
  async stopMember(id: string): Promise<number | null> {
    const member = this.member(id)
    if (!member.process) return null
    process.kill(member.process.pid, 'SIGCONT')
    process.kill(member.process.pid, 'SIGTERM')
    const { code } = await member.process.exited
    member.process = null
    return code
  }

  pause(id: string): void {
    const pid = this.member(id).process?.pid
    if (pid !== undefined) process.kill(pid, 'SIGSTOP')
  }

  resume(id: string): void {
    const pid = this.member(id).process?.pid
    if (pid !== undefined) process.kill(pid, 'SIGCONT')
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
        const logs = running
          .filter((_, i) => (applied[i] ?? 0) < target)
          .map(
            (m) =>
              `${m.id}:\n${(m.process?.logs ?? [])
                .slice(-40)
                .map((l) => JSON.stringify(l))
                .join('\n')}`,
          )
        throw new Error(
          `members did not reach LSN ${target}: ${applied.join(', ')}\n${views.join('\n')}\n${logs.join('\n')}`,
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.members.map((m) => this.stopMember(m.id).catch(() => null)))
    await rm(this.dir, { recursive: true, force: true })
  }
}
