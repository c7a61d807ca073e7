/**
 * `kv-cluster --regions N`: the layout of a local multi-region deployment (pure: no I/O), which
 * kv-cluster then starts. N regions (us, eu, ap: the ids the chaos suite uses) of `nodes`
 * single-leader members each, member ids unique across regions (n1..n3 in us, n4..n6 in eu,
 * ...), all on one host, sharing one CA, one cluster id and one auth secret, with one regions
 * file that every node starts with (`--region <id> --regions <file>`).
 *
 * Ports: member i of region k listens on the client port P + 10(k-1) + (i-1) and the peer port
 * Q + 10(k-1) + (i-1) (P = 7001 and Q = 7101 by default: us on 7001-7003, eu on 7011-7013, ...),
 * as `kv-cluster --groups` lays out its groups.
 */
import { regionsOfFile, type RegionsFile } from '@kvstore/protocol'
import { groupNodesMax, groupPortStride, type LocalMember } from './kv-cluster-groups.js'

/** Region ids, in order: `--regions N` uses the first N. */
export const localRegionIds = ['us', 'eu', 'ap'] as const

export interface LocalRegion {
  id: string
  members: LocalMember[]
}

export interface RegionsLayout {
  regions: LocalRegion[]
}

export interface RegionsLayoutOptions {
  regions: number
  nodes: number
  host: string
  clientPort: number
  peerPort: number
}

/** What is wrong with the options, or null. */
export function regionsLayoutProblem(o: RegionsLayoutOptions): string | null {
  if (!Number.isInteger(o.regions) || o.regions < 2 || o.regions > localRegionIds.length)
    return `--regions must be 2 to ${localRegionIds.length} (regions ${localRegionIds.join(', ')})`
  if (!Number.isInteger(o.nodes) || o.nodes < 1 || o.nodes > groupNodesMax)
    return `--nodes (members per region) must be 1 to ${groupNodesMax}`
  const span = (o.regions - 1) * groupPortStride + o.nodes
  const ports: [string, number][] = [
    ['--client-port', o.clientPort],
    ['--peer-port', o.peerPort],
  ]
  for (const [name, port] of ports)
    if (!Number.isInteger(port) || port < 1 || port + span - 1 > 65535)
      return `${name} must leave room for ${span} ports below 65536`
  if (o.clientPort < o.peerPort + span && o.peerPort < o.clientPort + span)
    return `--client-port ${o.clientPort} and --peer-port ${o.peerPort} (${span} ports each) overlap`
  return null
}

/** The regions, members and ports of `kv-cluster --regions N`. */
export function regionsLayout(o: RegionsLayoutOptions): RegionsLayout {
  const problem = regionsLayoutProblem(o)
  if (problem !== null) throw new Error(problem)
  return {
    regions: localRegionIds.slice(0, o.regions).map((id, k) => ({
      id,
      members: Array.from({ length: o.nodes }, (_, i) => {
        const offset = k * groupPortStride + i
        return {
          id: `n${k * o.nodes + i + 1}`,
          clientUrl: `https://${o.host}:${o.clientPort + offset}`,
          peerUrl: `https://${o.host}:${o.peerPort + offset}`,
        }
      }),
    })),
  }
}

/**
 * The regions file of a layout: every region with its members' client URLs. On one host every
 * node reaches every other directly, so one file serves every region. Checked as the nodes
 * check it.
 */
export function regionsFileOf(layout: RegionsLayout): RegionsFile {
  const file: RegionsFile = {
    regions: layout.regions.map((r) => ({
      id: r.id,
      members: r.members.map((m) => ({ id: m.id, url: m.clientUrl })),
    })),
  }
  regionsOfFile(file)
  return file
}

/** kv-node's arguments for member `member` of `region` (before the user's own, after `--`). */
export function regionNodeArgs(options: {
  region: LocalRegion
  member: LocalMember
  dataDir: string
  host: string
  certsDir: string
  regionsFile: string
}): string[] {
  const { region, member } = options
  return [
    '--id',
    member.id,
    '--data-dir',
    options.dataDir,
    '--host',
    options.host,
    '--members',
    region.members.map((m) => `${m.id}@${m.clientUrl}@${m.peerUrl}`).join(','),
    '--certs-dir',
    options.certsDir,
    // The first member of each region is its preferred leader.
    '--leader',
    (region.members[0] as LocalMember).id,
    '--region',
    region.id,
    '--regions',
    options.regionsFile,
  ]
}
