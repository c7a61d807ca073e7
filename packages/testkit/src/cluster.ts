import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
/**
 * Real single-leader clusters for tests and benchmarks: kv-node processes on free loopback
 * ports, with the faults a test needs (SIGSTOP, SIGCONT, kill -9, restart).
 */
import {
  NodeCluster,
  getJson,
  lastLogs,
  layout,
  type ClusterMember,
  type ClusterOptions,
} from './members.js'

export type { ClusterMember, ClusterOptions } from './members.js'

interface LeaderView {
  self: string
  leaderId: string | null
  writable: boolean
  members: { id: string; connected?: boolean }[]
}

export class TestCluster extends NodeCluster {
  /** The leader as last found by waitForLeader. */
  private leaderId: string

  private constructor(
    where: Awaited<ReturnType<typeof layout>>,
    args: string[],
    options: ClusterOptions,
  ) {
    super(where, args, options)
    this.leaderId = (where.members[0] as ClusterMember).id
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
    const cluster = new TestCluster(await layout(size, 'kv-cluster-', options), args, options)
    await cluster.startAll(
      () => cluster.waitForLeader(),
      () => cluster.stop(),
    )
    return cluster
  }

  /**
   * Starts `groups` single-leader groups of `size` nodes as one sharded deployment: members
   * n1.. of g1, then g2's, and so on (ids are unique across groups), every node with the same
   * shard map file (written under the first group's directory), which splits the 4,096 slots
   * evenly in group order unless `slots` says otherwise. Returns the groups and the file.
   */
  static async startShardGroups(
    groups: number,
    size = 3,
    args: string[] = [],
    options: ClusterOptions & { slots?: string[] } = {},
  ): Promise<{ groups: TestCluster[]; mapFile: string }> {
    const layouts: Awaited<ReturnType<typeof layout>>[] = []
    for (let g = 0; g < groups; g++)
      layouts.push(
        await layout(size, `kv-shard-g${g + 1}-`, { ...options, firstMember: 1 + g * size }),
      )
    const per = Math.floor(4096 / groups)
    const map = {
      slotCount: 4096,
      groups: layouts.map((where, g) => ({
        id: `g${g + 1}`,
        members: where.members.map((m) => ({ id: m.id, url: m.url })),
        slots: options.slots?.[g] ?? `${g * per}-${g === groups - 1 ? 4095 : (g + 1) * per - 1}`,
      })),
    }
    const mapFile = join((layouts[0] as Awaited<ReturnType<typeof layout>>).dir, 'shard-map.json')
    await writeFile(mapFile, JSON.stringify(map, null, 2))
    const started: TestCluster[] = []
    try {
      for (const [g, where] of layouts.entries()) {
        const cluster = new TestCluster(
          where,
          [...args, '--shard-map', mapFile, '--shard-group', `g${g + 1}`],
          options,
        )
        started.push(cluster)
        await cluster.startAll(
          () => cluster.waitForLeader(),
          () => cluster.stop(),
        )
      }
    } catch (err) {
      for (const cluster of started) await cluster.stop().catch(() => {})
      throw err
    }
    return { groups: started, mapFile }
  }

  /**
   * Starts `ids.length` regions of `size` members each (multi-leader): each a single-leader
   * cluster with `--region <id> --regions <file>`, member ids unique across regions. `urlsFor`
   * may rewrite the URLs a region sees for another region's members (proxies); each region
   * then gets its own regions file.
   */
  static async startRegions(
    ids: string[] = ['us', 'eu'],
    size = 3,
    args: string[] = [],
    options: ClusterOptions & {
      urlsFor?: (
        viewer: string,
        region: string,
        member: { id: string; url: string },
      ) => string | Promise<string>
    } = {},
  ): Promise<{ regions: TestCluster[]; files: string[] }> {
    const layouts: Awaited<ReturnType<typeof layout>>[] = []
    for (const [r, id] of ids.entries())
      layouts.push(
        await layout(size, `kv-region-${id}-`, { ...options, firstMember: 1 + r * size }),
      )
    const files: string[] = []
    for (const [r, viewer] of ids.entries()) {
      const file = join((layouts[r] as Awaited<ReturnType<typeof layout>>).dir, 'regions.json')
      const regions = []
      for (const [i, where] of layouts.entries()) {
        const members = []
        for (const m of where.members)
          members.push({
            id: m.id,
            url:
              i === r || options.urlsFor === undefined
                ? m.url
                : await options.urlsFor(viewer, ids[i] as string, { id: m.id, url: m.url }),
          })
        regions.push({ id: ids[i] as string, members })
      }
      await writeFile(file, JSON.stringify({ regions }, null, 2))
      files.push(file)
    }
    const started: TestCluster[] = []
    try {
      for (const [r, where] of layouts.entries()) {
        const cluster = new TestCluster(
          where,
          [...args, '--region', ids[r] as string, '--regions', files[r] as string],
          options,
        )
        started.push(cluster)
        await cluster.startAll(
          () => cluster.waitForLeader(),
          () => cluster.stop(),
        )
      }
    } catch (err) {
      for (const cluster of started) await cluster.stop().catch(() => {})
      throw err
    }
    return { regions: started, files }
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
      const all = await Promise.all(
        this.active().map(async (m) => ({
          m,
          view: await getJson<LeaderView>(`${m.url}/v1/cluster`),
        })),
      )
      // A node that joins counts once it follows a leader (it has none before it is added).
      const counted = all.filter(
        ({ m, view }) => !this.joining.has(m.id) || (view !== null && view.leaderId !== null),
      )
      const running = counted.map(({ m }) => m)
      const views = counted.map(({ view }) => view)
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

  get leader(): ClusterMember {
    return this.member(this.leaderId)
  }

  get followers(): ClusterMember[] {
    return this.members.filter((m) => m.id !== this.leaderId && !this.retired.has(m.id))
  }

  /** Members removed from the configuration: left out of every wait from then on. */
  readonly retired = new Set<string>()

  /** Nodes started to join (--join): waits count them once they follow a leader. */
  readonly joining = new Set<string>()

  /** Running members that are not retired. */
  active(): ClusterMember[] {
    return this.members.filter((m) => m.process !== null && !this.retired.has(m.id))
  }

  /**
   * Starts a new node `id` that joins the running cluster (--join; it is a member only once
   * the configuration names it: POST /admin/v1/members).
   */
  async startJoining(id: string, extra: string[] = []): Promise<ClusterMember> {
    const member = await this.allocateMember(id)
    this.joining.add(id)
    await this.startMember(id, ['--join', ...extra])
    return member
  }

  /** Starts a stopped member on its ports and data directory (with `extra` arguments). */
  async startMember(id: string, extra: string[] = []): Promise<void> {
    await this.spawn(id, [], extra)
  }

  /** SIGTERM (SIGKILL after 15 s), and wait for the exit; returns the exit code. */
  stopMember(id: string): Promise<number | null> {
    return this.terminate(id)
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
      const running = this.active()
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
    await this.removeDir()
  }
}
