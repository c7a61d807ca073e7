/** What both cluster launchers share: members on free loopback ports, and how nodes start. */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from '@kvstore/chaos/node-process'
import { startNodeProcess, terminate, type NodeProcess } from './node-process.js'
import { nodeSecurity, type NodeSecurity } from './security.js'

export interface ClusterMember {
  id: string
  /** Client URL (HTTP API). */
  url: string
  /** Peer URL (node-to-node). */
  peerUrl: string
  dataDir: string
  /** The running process; null while stopped. */
  process: NodeProcess | null
}

/** How a cluster launcher runs its nodes; tests take the defaults. */
export interface ClusterOptions {
  /** How the nodes are secured; the one set by useNodeSecurity when omitted. */
  security?: NodeSecurity
  /** Parent of the members' data directories; a fresh temporary one when omitted. */
  dir?: string
  /** --log-level of every node; KV_TEST_LOG_LEVEL or info by default. */
  logLevel?: string
  /**
   * Keep every node's log lines (default true). Off (a benchmark), nodes count as started once
   * GET /ready answers, and their output is not read at all.
   */
  keepLogs?: boolean
  /** Pass the nodes' stderr through to this process's. */
  inheritStderr?: boolean
  /** The number of the first member: 4 names them n4, n5, ... (shard groups need distinct ids). */
  firstMember?: number
}

/** Members n1..n`size`, each with a client and a peer port, under `dir`. */
export async function newMembers(
  size: number,
  dir: string,
  security: NodeSecurity,
  first = 1,
): Promise<ClusterMember[]> {
  const members: ClusterMember[] = []
  for (let i = first; i < first + size; i++) {
    members.push({
      id: `n${i}`,
      url: `${security.scheme}://127.0.0.1:${await freePort()}`,
      peerUrl: `${security.scheme}://127.0.0.1:${await freePort()}`,
      dataDir: join(dir, `n${i}`),
      process: null,
    })
  }
  return members
}

/** `--members` as every node gets it: id@clientURL@peerURL, comma-separated. */
export function membersFlag(members: readonly ClusterMember[]): string {
  return members.map((m) => `${m.id}@${m.url}@${m.peerUrl}`).join(',')
}

export function securityOf(options: ClusterOptions): NodeSecurity {
  return options.security ?? nodeSecurity()
}

/**
 * A request answered with JSON, or null when it fails or does not answer within `timeoutMs`:
 * a GET, or with `body` a POST of that body as JSON.
 */
export async function fetchJson<T>(
  url: string,
  options: { body?: unknown; timeoutMs?: number } = {},
): Promise<T | null> {
  const { body, timeoutMs = 1000 } = options
  try {
    const res = await fetch(url, {
      ...(body === undefined
        ? {}
        : {
            method: 'POST',
            body: JSON.stringify(body),
            headers: { 'content-type': 'application/json' },
          }),
      signal: AbortSignal.timeout(timeoutMs),
    })
    if (!res.ok) {
      await res.arrayBuffer()
      return null
    }
    return (await res.json()) as T
  } catch {
    return null
  }
}

/** A GET answered with JSON, or null when it fails or does not answer within `timeoutMs`. */
export function getJson<T>(url: string, timeoutMs = 1000): Promise<T | null> {
  return fetchJson<T>(url, { timeoutMs })
}

/** The last log lines of `members`, for a failure message. */
export function lastLogs(members: readonly ClusterMember[], lines = 40): string {
  return members
    .map(
      (m) =>
        `${m.id}:\n${(m.process?.logs ?? [])
          .slice(-lines)
          .map((l) => JSON.stringify(l))
          .join('\n')}`,
    )
    .join('\n')
}

/** Where a cluster lives: its members, and the directory of their data. */
export interface Layout {
  dir: string
  /** The cluster made `dir`, so closing it deletes it. */
  ownDir: boolean
  members: ClusterMember[]
}

/** A fresh layout of `size` members, in `options.dir` or a new temporary `prefix` directory. */
export async function layout(
  size: number,
  prefix: string,
  options: ClusterOptions,
): Promise<Layout> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), prefix)))
  return {
    dir,
    ownDir: options.dir === undefined,
    members: await newMembers(size, dir, securityOf(options), options.firstMember ?? 1),
  }
}

/** What both cluster launchers share: members, how their nodes start, and the process faults. */
export abstract class NodeCluster {
  readonly members: ClusterMember[]
  /** Parent of every member's data directory. */
  readonly dir: string
  protected readonly args: string[]
  protected readonly options: ClusterOptions
  private readonly security: NodeSecurity
  private readonly ownDir: boolean

  protected constructor(where: Layout, args: string[], options: ClusterOptions) {
    this.members = where.members
    this.dir = where.dir
    this.ownDir = where.ownDir
    this.args = args
    this.options = options
    this.security = securityOf(options)
  }

  /** `--members` as every node gets it: id@clientURL@peerURL, comma-separated. */
  get membersFlag(): string {
    return membersFlag(this.members)
  }

  /**
   * A new member `id` on fresh loopback ports, with its data directory under the cluster's
   * (not started: start it with `startMember(id, ['--join'])` in single-leader mode). From
   * then on every node started gets it in --members; running ones learn of it from the
   * configuration, when it is added.
   */
  async allocateMember(id: string): Promise<ClusterMember> {
    if (this.members.some((m) => m.id === id)) throw new Error(`${id} is already a member`)
    const member: ClusterMember = {
      id,
      url: `${this.security.scheme}://127.0.0.1:${await freePort()}`,
      peerUrl: `${this.security.scheme}://127.0.0.1:${await freePort()}`,
      dataDir: join(this.dir, id),
      process: null,
    }
    this.members.push(member)
    return member
  }

  member(id: string): ClusterMember {
    const member = this.members.find((m) => m.id === id)
    if (!member) throw new Error(`no member ${id}`)
    return member
  }

  /** Starts a stopped member on its ports and data directory (with `extra` arguments). */
  abstract startMember(id: string, extra?: string[]): Promise<void>

  /**
   * Starts every member and waits until `settled` resolves; on a failure, `close`s the cluster
   * and rethrows.
   */
  protected async startAll(
    settled: () => Promise<unknown>,
    close: () => Promise<void>,
  ): Promise<void> {
    try {
      await Promise.all(this.members.map((m) => this.startMember(m.id)))
      await settled()
    } catch (err) {
      await close()
      throw err
    }
  }

  /**
   * Starts member `id`'s node: `modeArgs`, its identity and data, the cluster's `args`, `extra`.
   * Done once it serves: GET /ready answers 200 (a cluster that keeps no logs), or it logged
   * "node started"; with `untilStarted`, always the latter (a member that is not ready until
   * something else happens, such as a joining one).
   */
  protected async spawn(
    id: string,
    modeArgs: string[],
    extra: string[],
    untilStarted = false,
  ): Promise<void> {
    const member = this.member(id)
    const keepLogs = this.options.keepLogs ?? true
    // "node started" is an info line.
    const logLevel = untilStarted && !keepLogs ? 'info' : this.options.logLevel
    member.process = await startNodeProcess(
      [
        ...modeArgs,
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
        ...(keepLogs || untilStarted ? {} : { readyUrl: member.url }),
        ...(logLevel !== undefined ? { logLevel } : {}),
        ...(this.options.inheritStderr ? { inheritStderr: true } : {}),
      },
    )
  }

  /** kill -9 (a paused process too), and wait for the process to be gone. */
  async kill(id: string): Promise<void> {
    const member = this.member(id)
    const proc = member.process
    if (!proc) return
    proc.child.kill('SIGCONT')
    proc.child.kill('SIGKILL')
    await proc.exited
    member.process = null
  }

  /** SIGTERM (SIGKILL after 15 s), and wait for the exit; returns the exit code. */
  async terminate(id: string): Promise<number | null> {
    const member = this.member(id)
    if (!member.process) return null
    const code = await terminate(member.process)
    member.process = null
    return code
  }

  /** SIGSTOP: the process stays, but answers nothing until resume(). */
  pause(id: string): void {
    this.member(id).process?.child.kill('SIGSTOP')
  }

  resume(id: string): void {
    this.member(id).process?.child.kill('SIGCONT')
  }

  /** Deletes the data directory, if the cluster made it. */
  protected async removeDir(): Promise<void> {
    if (this.ownDir) await rm(this.dir, { recursive: true, force: true })
  }
}
