/**
 * The multi-region process backend (`--regions N`): N regions of `nodesPerRegion` kv-node
 * processes (2 x 3 by default: n1..n3 are region us, n4..n6 region eu), each a single-leader
 * cluster of its own started with `--region <id> --regions <file>`. Member ids are unique
 * across regions and every node has a certificate of the run's one CA (n1..n9), so a member of
 * one region is a known peer to the other.
 *
 * Each region gets its own regions file. In it the region's own members have their real client
 * URLs, and every member of another region is reached through a `CutProxy` on 127.0.0.1 (the
 * same IP as the member, another port, so TLS and its hostname check pass through untouched):
 * one proxy per (region, remote member). `cutRegions` cuts them all (both directions: each side
 * only reaches the other through its own proxies), `healRegions` heals them.
 *
 * To a nemesis it is one cluster whose `nodes` are the members of every region: a kill or a
 * pause picks among all of them; the leader nemeses pick a region first. Per-node network
 * faults (partition-one and the like) are refused, as on the process backend; membership
 * changes too (a region's members must match the regions files).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { UnsupportedFault, type ChaosCluster, type ChaosNode, type MemberSpec } from './cluster.js'
import { ProcessCluster } from './process-cluster.js'
import { CutProxy, type CutMode } from './region-proxy.js'
import type { ChaosSecurity } from './security.js'

/** Region ids, in order: the first N are used. */
export const regionIds = ['us', 'eu', 'ap'] as const

/** The regions file a node is started with (`--regions`), as the contract describes it. */
export interface RegionsFile {
  regions: { id: string; members: { id: string; url: string }[] }[]
}

/**
 * The regions file of region `viewer`: every region with its members' client URLs, the
 * viewer's own as they are, every other region's at the proxy `proxyPort(memberId)` gives,
 * on the member's own host (so TLS hostname checks pass through the proxy).
 */
export function regionsFileFor(
  regions: readonly { id: string; members: readonly { id: string; url: string }[] }[],
  viewer: string,
  proxyPort: (memberId: string) => number,
): RegionsFile {
  return {
    regions: regions.map((r) => ({
      id: r.id,
      members: r.members.map((m) => {
        if (r.id === viewer) return { id: m.id, url: m.url }
        const url = new URL(m.url)
        url.port = String(proxyPort(m.id))
        return { id: m.id, url: url.origin }
      }),
    })),
  }
}

export interface RegionHandle {
  id: string
  /** The region's members, as a cluster of their own (leader lookups). */
  cluster: ProcessCluster
  /** This region's regions file. */
  regionsFile: string
  /** This region's proxies to the other regions' members (remote member id -> proxy). */
  proxies: Map<string, CutProxy>
}

/** A cluster of regions joined by cuttable links. */
export interface RegionsCluster extends ChaosCluster {
  readonly regions: readonly { id: string; cluster: ChaosCluster }[]
  /** The region of a member. */
  regionOf(nodeId: string): string
  /** Cuts every link between regions, both ways. */
  cutRegions(mode: CutMode): Promise<void>
  /** Makes every link between regions whole. */
  healRegions(): Promise<void>
  /** The cut in force, or null. */
  readonly regionsCut: CutMode | null
  isPaused(nodeId: string): boolean
}

export function isRegioned(cluster: ChaosCluster): cluster is RegionsCluster {
  return (cluster as Partial<RegionsCluster>).regionOf !== undefined
}

export interface RegionsProcessClusterOptions {
  regions: number
  nodesPerRegion: number
  /** Extra kv-node arguments and environment for every node. */
  args?: string[]
  env?: Record<string, string>
  logDir: string
  security: ChaosSecurity
}

export class RegionsProcessCluster implements RegionsCluster {
  readonly backend = 'process' as const
  readonly regions: RegionHandle[]
  private readonly dir: string
  private readonly options: RegionsProcessClusterOptions
  private cut: CutMode | null = null

  private constructor(dir: string, regions: RegionHandle[], options: RegionsProcessClusterOptions) {
    this.dir = dir
    this.regions = regions
    this.options = options
  }

  get nodes(): ChaosNode[] {
    return this.regions.flatMap((r) => r.cluster.nodes)
  }

  get tls(): ChaosSecurity['tls'] {
    return this.options.security.tls
  }

  get regionsCut(): CutMode | null {
    return this.cut
  }

  static async start(options: RegionsProcessClusterOptions): Promise<RegionsProcessCluster> {
    if (options.regions < 2 || options.regions > regionIds.length)
      throw new Error(`--regions must be 2 to ${regionIds.length}`)
    if (options.regions * options.nodesPerRegion > 9)
      throw new Error(
        `${options.regions} regions of ${options.nodesPerRegion} need more than the 9 member certificates (n1..n9) a chaos run has`,
      )
    const dir = await mkdtemp(join(tmpdir(), 'kv-chaos-regions-'))
    const regions: RegionHandle[] = []
    const cluster = new RegionsProcessCluster(dir, regions, options)
    try {
      for (let r = 0; r < options.regions; r++) {
        const id = regionIds[r] as string
        const regionsFile = join(dir, `regions-${id}.json`)
        regions.push({
          id,
          regionsFile,
          proxies: new Map(),
          cluster: await ProcessCluster.prepare({
            nodes: options.nodesPerRegion,
            ids: Array.from(
              { length: options.nodesPerRegion },
              (_, i) => `n${r * options.nodesPerRegion + i + 1}`,
            ),
            args: [...(options.args ?? []), '--region', id, '--regions', regionsFile],
            ...(options.env !== undefined ? { env: options.env } : {}),
            logDir: options.logDir,
            security: options.security,
          }),
        })
      }
      // One proxy per (region, remote member), on the member's IP; then each region's file.
      for (const region of regions) {
        for (const other of regions) {
          if (other === region) continue
          for (const m of other.cluster.nodes) {
            const url = new URL(m.url)
            region.proxies.set(
              m.id,
              await CutProxy.start(url.hostname, { host: url.hostname, port: Number(url.port) }),
            )
          }
        }
        await writeFile(region.regionsFile, JSON.stringify(cluster.regionsFileOf(region), null, 2))
      }
      // The regions start one after the other (2 cores): each waits for its leader.
      for (const region of regions) await region.cluster.launch()
      return cluster
    } catch (err) {
      await cluster.stop()
      throw err
    }
  }

  /** A region's regions file: its own members direct, the others through its proxies. */
  regionsFileOf(region: RegionHandle): RegionsFile {
    return regionsFileFor(
      this.regions.map((r) => ({ id: r.id, members: r.cluster.nodes })),
      region.id,
      (id) => (region.proxies.get(id) as CutProxy).port,
    )
  }

  private regionHandle(nodeId: string): RegionHandle {
    const r = this.regions.find((x) => x.cluster.nodes.some((n) => n.id === nodeId))
    if (r === undefined) throw new Error(`no node ${nodeId}`)
    return r
  }

  regionOf(nodeId: string): string {
    return this.regionHandle(nodeId).id
  }

  async cutRegions(mode: CutMode): Promise<void> {
    this.cut = mode
    for (const r of this.regions) for (const p of r.proxies.values()) p.cut(mode)
  }

  async healRegions(): Promise<void> {
    this.cut = null
    for (const r of this.regions) for (const p of r.proxies.values()) p.heal()
  }

  isRunning(id: string): boolean {
    return this.regionHandle(id).cluster.isRunning(id)
  }

  isPaused(id: string): boolean {
    return this.regionHandle(id).cluster.isPaused(id)
  }

  async kill(id: string): Promise<void> {
    await this.regionHandle(id).cluster.kill(id)
  }

  async start(id: string): Promise<void> {
    await this.regionHandle(id).cluster.start(id)
  }

  async pause(id: string): Promise<void> {
    await this.regionHandle(id).cluster.pause(id)
  }

  async resume(id: string): Promise<void> {
    await this.regionHandle(id).cluster.resume(id)
  }

  private unsupported(what: string): never {
    throw new UnsupportedFault(
      `${what} needs per-node networks, which the regions process backend does not have (partition-regions cuts the links between regions)`,
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

  /** Resumes paused nodes and makes the links between regions whole. */
  async heal(): Promise<void> {
    for (const r of this.regions) await r.cluster.heal()
    await this.healRegions()
  }

  async join(): Promise<MemberSpec> {
    throw new UnsupportedFault(
      "membership changes are not supported with regions: a region's members must match the regions files",
    )
  }

  async retire(): Promise<void> {
    throw new UnsupportedFault('membership changes are not supported with regions')
  }

  async archive(): Promise<{ node: string; dir: string } | null> {
    return null
  }

  async stop(): Promise<void> {
    await Promise.all(this.regions.map((r) => r.cluster.stop()))
    await Promise.all(this.regions.flatMap((r) => [...r.proxies.values()].map((p) => p.close())))
    await rm(this.dir, { recursive: true, force: true })
  }
}
