/**
 * Real leaderless clusters for tests and benchmarks: kv-node processes started with
 * `--mode leaderless` on free loopback ports, each with its own data directory, with the faults
 * a test needs (kill -9, SIGSTOP, SIGCONT, restart on the same data).
 *
 *   const cluster = await LeaderlessCluster.start(5, ['--replicas', '3'])
 *   await cluster.stop('n2')          // kill -9
 *   await cluster.restart('n2')       // same ports, same data directory
 *   await cluster.close()             // kills what still runs, deletes the data
 */
import { join } from 'node:path'
import { keyPath } from '@kvstore/client'
import { freePort } from '@kvstore/chaos/node-process'
import {
  NodeCluster,
  getJson,
  lastLogs,
  layout,
  securityOf,
  type ClusterMember,
  type ClusterOptions,
} from './members.js'

export type LeaderlessMember = ClusterMember

/** A member as its own GET /v1/cluster shows the others. */
interface ViewMember {
  id: string
  up: boolean
}

export class LeaderlessCluster extends NodeCluster {
  /**
   * Starts `size` nodes (n1..nSize) in leaderless mode, each given `args` as well, and waits
   * until every one answers /ready and sees every other one up.
   */
  static async start(
    size = 5,
    args: string[] = [],
    options: ClusterOptions = {},
  ): Promise<LeaderlessCluster> {
    const cluster = new LeaderlessCluster(
      await layout(size, 'kv-leaderless-', options),
      args,
      options,
    )
    await cluster.startAll(
      () => cluster.waitForViews(),
      () => cluster.close(),
    )
    return cluster
  }

  /** Members whose process runs. */
  get running(): LeaderlessMember[] {
    return this.members.filter((m) => m.process !== null)
  }

  /** Client URLs of every member, running or not. */
  get urls(): string[] {
    return this.members.map((m) => m.url)
  }

  /** The member whose client URL is `url`. */
  memberAt(url: string): LeaderlessMember {
    const member = this.members.find((m) => m.url === url)
    if (!member) throw new Error(`no member at ${url}`)
    return member
  }

  /** Starts a stopped member on its ports and data directory, and waits for its /ready. */
  async startMember(id: string, extra: string[] = []): Promise<void> {
    const member = this.member(id)
    if (member.process !== null) throw new Error(`${id} is running already`)
    await this.spawn(id, ['--mode', 'leaderless'], extra)
    await this.waitForReady(id)
  }

  /**
   * Starts a new member `id` on fresh ports and a fresh data directory with `--join` (its
   * --members: every member of this cluster and itself), and waits for its process to serve,
   * not for /ready (it is not ready until an admin adds it to the ring). It then belongs to
   * this cluster: later starts of any member name it in --members.
   */
  async join(id: string, extra: string[] = []): Promise<LeaderlessMember> {
    if (this.members.some((m) => m.id === id)) throw new Error(`${id} is a member already`)
    const scheme = securityOf(this.options).scheme
    const member: LeaderlessMember = {
      id,
      url: `${scheme}://127.0.0.1:${await freePort()}`,
      peerUrl: `${scheme}://127.0.0.1:${await freePort()}`,
      dataDir: join(this.dir, id),
      process: null,
    }
    this.members.push(member)
    await this.spawn(id, ['--mode', 'leaderless', '--join'], extra, true)
    return member
  }

  /** kill -9, and wait for the process to be gone. */
  stop(id: string): Promise<void> {
    return this.kill(id)
  }

  /** kill -9 if running, then start again on the same data (with `extra` arguments). */
  async restart(id: string, extra: string[] = []): Promise<void> {
    await this.stop(id)
    await this.startMember(id, extra)
  }

  /** Waits until the member answers GET /ready with 200. */
  async waitForReady(id: string, timeoutMs = 15_000): Promise<void> {
    const member = this.member(id)
    const deadline = Date.now() + timeoutMs
    for (;;) {
      try {
        const res = await fetch(`${member.url}/ready`, { signal: AbortSignal.timeout(1000) })
        await res.arrayBuffer()
        if (res.ok) return
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`${id} not ready within ${timeoutMs} ms`)
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }

  /**
   * Waits until every running member's GET /v1/cluster shows each running member up and each
   * stopped one down (failure detection has caught up with the processes).
   */
  async waitForViews(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const running = new Set(this.running.map((m) => m.id))
      const views = await Promise.all(
        this.running.map((m) => getJson<{ members?: ViewMember[] }>(`${m.url}/v1/cluster`)),
      )
      const settled = views.every(
        (v) =>
          v?.members !== undefined &&
          v.members.length === this.members.length &&
          v.members.every((vm) => vm.up === running.has(vm.id)),
      )
      if (settled) return
      if (Date.now() > deadline) {
        throw new Error(
          `views did not settle within ${timeoutMs} ms (running: ${[...running].join(',')}): ${JSON.stringify(views)}`,
        )
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /** The member's own stored copy of `key` (GET /admin/v1/local/<key>), or null when it has none. */
  async local(
    id: string,
    key: string,
  ): Promise<{
    key: string
    vector: Record<string, number>
    siblings: {
      node: string
      counter: number
      valueBase64: string | null
      tombstone: boolean
      timestamp: string
    }[]
  } | null> {
    const path = keyPath(key)
    const res = await fetch(`${this.member(id).url}/admin/v1/local/${path}`)
    if (res.status === 404) {
      await res.arrayBuffer()
      return null
    }
    if (!res.ok)
      throw new Error(`GET /admin/v1/local/${key} on ${id}: ${res.status} ${await res.text()}`)
    return (await res.json()) as NonNullable<Awaited<ReturnType<LeaderlessCluster['local']>>>
  }

  /** Hints the member holds, by the member they are for (GET /admin/v1/hints). */
  async hints(id: string): Promise<{ total: number; byTarget: Record<string, number> }> {
    const res = await fetch(`${this.member(id).url}/admin/v1/hints`)
    if (!res.ok) throw new Error(`GET /admin/v1/hints on ${id}: ${res.status} ${await res.text()}`)
    return (await res.json()) as { total: number; byTarget: Record<string, number> }
  }

  /** The last log lines of every member (or of `ids`), for a failure message. */
  logs(ids: string[] = this.members.map((m) => m.id), lines = 40): string {
    return lastLogs(
      ids.map((id) => this.member(id)),
      lines,
    )
  }

  /** Kills every member still running (kill -9) and deletes the data directories. */
  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => this.stop(m.id).catch(() => {})))
    await this.removeDir()
  }
}
