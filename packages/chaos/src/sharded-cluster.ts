/**
 * The sharded process backend (`--router`): several single-leader groups of kv-node processes
 * (2 groups of 3 by default: n1..n3 in g1, n4..n6 in g2), one shard map file that every node
 * and router is started with (g1 starts with slots 0-2047, g2 with 2048-4095), and kv-router
 * processes (2 by default) in front of them. TLS and auth are on, as shipped.
 *
 * To a nemesis it is one cluster whose `nodes` are the members of every group: a kill or a
 * pause picks among all of them. Network faults are refused, as on the process backend.
 * Membership changes are refused too: a group's members must match the shard map file.
 *
 * Each router has a router certificate (kv://<cluster>/router/<id>, signed by the cluster's CA
 * and made in the run's directory), as a deployment does: it serves its client port with it and
 * presents it to the groups, which then let it act for the user a client's certificate names
 * (kv-on-behalf-of; root, for the chaos clients). Its own calls (probes, map refreshes) act
 * for root (--probe-user).
 */
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeRouterCert } from '@kvstore/cli'
import { slotCount, type ShardMapFile } from '@kvstore/protocol'
import { UnsupportedFault, type ChaosCluster, type ChaosNode, type MemberSpec } from './cluster.js'
import { freePort } from './node-process.js'
import { ProcessCluster } from './process-cluster.js'
import { startKvRouter, type KvRouterProcess } from './router-process.js'
import type { ChaosSecurity } from './security.js'

export interface ShardGroupHandle {
  id: string
  /** The group's members, as a cluster of their own (leader lookups, digests). */
  cluster: ChaosCluster
}

export interface RouterHandle extends ChaosNode {
  process: KvRouterProcess | null
}

/** A cluster of shard groups behind routers. */
export interface ShardedCluster extends ChaosCluster {
  readonly groups: readonly ShardGroupHandle[]
  /** The routers: clients of a --router run talk to these only. */
  readonly routers: readonly ChaosNode[]
  /** The shard map file every node and router was started with. */
  readonly mapFile: string
  /** The group of a member. */
  groupOf(nodeId: string): string
  /** Is the node stopped with SIGSTOP (pause) now? */
  isPaused(nodeId: string): boolean
  /** kill -9 a router; `startRouter` brings it back on the same port. */
  killRouter(id: string): Promise<void>
  startRouter(id: string): Promise<void>
  isRouterRunning(id: string): boolean
}

export function isSharded(cluster: ChaosCluster): cluster is ShardedCluster {
  return (cluster as Partial<ShardedCluster>).groups !== undefined
}

export interface ShardedProcessClusterOptions {
  groups: number
  /** Members per group. */
  nodesPerGroup: number
  routers: number
  /** Extra kv-node arguments and environment for every node. */
  args?: string[]
  env?: Record<string, string>
  /** Extra kv-router arguments for every router. */
  routerArgs?: string[]
  logDir: string
  security: ChaosSecurity
}

/** The slots group `g` (0-based) of `groups` starts with: an even split, in order. */
export function startingSlots(g: number, groups: number): { first: number; last: number } {
  const per = Math.floor(slotCount / groups)
  return { first: g * per, last: g === groups - 1 ? slotCount - 1 : (g + 1) * per - 1 }
}

export class ShardedProcessCluster implements ShardedCluster {
  readonly backend = 'process' as const
  readonly groups: { id: string; cluster: ProcessCluster }[]
  readonly routers: RouterHandle[]
  readonly mapFile: string
  private readonly dir: string
  private readonly options: ShardedProcessClusterOptions
  private readonly routerArgs: Map<string, string[]> = new Map()

  private constructor(
    dir: string,
    groups: { id: string; cluster: ProcessCluster }[],
    routers: RouterHandle[],
    options: ShardedProcessClusterOptions,
  ) {
    this.dir = dir
    this.groups = groups
    this.routers = routers
    this.mapFile = join(dir, 'shard-map.json')
    this.options = options
  }

  get nodes(): ChaosNode[] {
    return this.groups.flatMap((g) => g.cluster.nodes)
  }

  get tls(): ChaosSecurity['tls'] {
    return this.options.security.tls
  }

  static async start(options: ShardedProcessClusterOptions): Promise<ShardedProcessCluster> {
    if (options.groups * options.nodesPerGroup > 9)
      throw new Error(
        `${options.groups} groups of ${options.nodesPerGroup} need more than the 9 member certificates (n1..n9) a chaos run has`,
      )
    const dir = await mkdtemp(join(tmpdir(), 'kv-chaos-shards-'))
    const mapFile = join(dir, 'shard-map.json')
    const groups: { id: string; cluster: ProcessCluster }[] = []
    for (let g = 0; g < options.groups; g++) {
      const id = `g${g + 1}`
      groups.push({
        id,
        cluster: await ProcessCluster.prepare({
          nodes: options.nodesPerGroup,
          ids: Array.from(
            { length: options.nodesPerGroup },
            (_, i) => `n${g * options.nodesPerGroup + i + 1}`,
          ),
          args: [...(options.args ?? []), '--shard-map', mapFile, '--shard-group', id],
          ...(options.env !== undefined ? { env: options.env } : {}),
          logDir: options.logDir,
          security: options.security,
        }),
      })
    }
    const map: ShardMapFile = {
      slotCount,
      groups: groups.map((g, i) => {
        const { first, last } = startingSlots(i, options.groups)
        return {
          id: g.id,
          members: g.cluster.nodes.map((m) => ({ id: m.id, url: m.url })),
          slots: `${first}-${last}`,
        }
      }),
    }
    await writeFile(mapFile, JSON.stringify(map, null, 2))
    const routers: RouterHandle[] = []
    for (let r = 1; r <= options.routers; r++) {
      routers.push({ id: `r${r}`, url: `https://127.0.0.1:${await freePort()}`, process: null })
    }
    const cluster = new ShardedProcessCluster(dir, groups, routers, options)
    try {
      // The groups start one after the other (2 cores): each waits for its leader.
      for (const g of groups) await g.cluster.launch()
      await cluster.makeRouterCertificates()
      for (const r of routers) await cluster.startRouter(r.id)
      return cluster
    } catch (err) {
      await cluster.stop()
      throw err
    }
  }

  /** A router certificate for each router, signed by the cluster's CA, in the run's dir. */
  private async makeRouterCertificates(): Promise<void> {
    const certs = this.options.security.certsDir
    const ca = {
      certPem: await readFile(join(certs, 'ca.crt'), 'utf8'),
      keyPem: await readFile(join(certs, 'ca.key'), 'utf8'),
    }
    const clusterId = (await readFile(join(certs, 'cluster-id'), 'utf8')).trim()
    const routerCerts = join(this.dir, 'router-certs')
    await mkdir(routerCerts, { recursive: true })
    for (const r of this.routers) {
      const pair = await makeRouterCert(ca, { clusterId, routerId: r.id })
      await writeFile(join(routerCerts, `${r.id}.crt`), pair.certPem)
      await writeFile(join(routerCerts, `${r.id}.key`), pair.keyPem, { mode: 0o600 })
      this.routerArgs.set(r.id, [
        '--id',
        r.id,
        '--host',
        '127.0.0.1',
        '--port',
        new URL(r.url).port,
        '--log-level',
        'info',
        '--shard-map',
        this.mapFile,
        '--cert-file',
        join(routerCerts, `${r.id}.crt`),
        '--key-file',
        join(routerCerts, `${r.id}.key`),
        '--ca-file',
        join(certs, 'ca.crt'),
        '--identity-cert',
        join(routerCerts, `${r.id}.crt`),
        '--identity-key',
        join(routerCerts, `${r.id}.key`),
        // A router certificate is no user: its own calls act for root, whom every group has.
        '--probe-user',
        'root',
        ...(this.options.routerArgs ?? []),
      ])
    }
  }

  private groupHandle(nodeId: string): { id: string; cluster: ProcessCluster } {
    const g = this.groups.find((x) => x.cluster.nodes.some((n) => n.id === nodeId))
    if (g === undefined) throw new Error(`no node ${nodeId}`)
    return g
  }

  groupOf(nodeId: string): string {
    return this.groupHandle(nodeId).id
  }

  private router(id: string): RouterHandle {
    const r = this.routers.find((x) => x.id === id)
    if (r === undefined) throw new Error(`no router ${id}`)
    return r
  }

  isRouterRunning(id: string): boolean {
    return this.router(id).process?.running() ?? false
  }

  async startRouter(id: string): Promise<void> {
    const r = this.router(id)
    if (this.isRouterRunning(id)) return
    const args = this.routerArgs.get(id)
    if (args === undefined) throw new Error(`router ${id} has no certificate yet`)
    await mkdir(this.options.logDir, { recursive: true })
    const output = createWriteStream(join(this.options.logDir, `${id}.log`), { flags: 'a' })
    r.process = await startKvRouter({ args, readyUrl: r.url, output, timeoutMs: 20_000 })
    r.process.child.once('close', () => output.end())
  }

  async killRouter(id: string): Promise<void> {
    const r = this.router(id)
    if (!(r.process?.running() ?? false)) return
    r.process?.child.kill('SIGKILL')
    await r.process?.exited
  }

  isRunning(id: string): boolean {
    return this.groupHandle(id).cluster.isRunning(id)
  }

  /** Is the node stopped with SIGSTOP (pause) now? */
  isPaused(id: string): boolean {
    return this.groupHandle(id).cluster.isPaused(id)
  }

  async kill(id: string): Promise<void> {
    await this.groupHandle(id).cluster.kill(id)
  }

  async start(id: string): Promise<void> {
    await this.groupHandle(id).cluster.start(id)
  }

  async pause(id: string): Promise<void> {
    await this.groupHandle(id).cluster.pause(id)
  }

  async resume(id: string): Promise<void> {
    await this.groupHandle(id).cluster.resume(id)
  }

  private unsupported(what: string): never {
    throw new UnsupportedFault(
      `${what} needs per-node networks, which the sharded process backend does not have`,
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
    for (const g of this.groups) await g.cluster.heal()
  }

  async join(): Promise<MemberSpec> {
    throw new UnsupportedFault(
      "membership changes are not supported with shard groups: a group's members must match the shard map file",
    )
  }

  async retire(): Promise<void> {
    throw new UnsupportedFault('membership changes are not supported with shard groups')
  }

  async archive(): Promise<{ node: string; dir: string } | null> {
    return null
  }

  async stop(): Promise<void> {
    await Promise.all(this.routers.map((r) => this.killRouter(r.id)))
    await Promise.all(this.groups.map((g) => g.cluster.stop()))
    await rm(this.dir, { recursive: true, force: true })
  }
}
