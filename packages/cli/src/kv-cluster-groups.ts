/**
 * `kv-cluster --groups N`: the layout of a local sharded deployment (pure: no I/O), which
 * kv-cluster then starts. N single-leader groups g1..gN of `nodes` members each (g1n1, g1n2,
 * ...), and one kv-router (r1) in front of them, all on one host, sharing one CA, one cluster id
 * and one auth secret, with a shard map file that splits the 4,096 slots evenly.
 *
 * Ports: member i of group k listens on the client port P + 10(k-1) + (i-1) and the peer port
 * Q + 10(k-1) + (i-1) (P = 7001 and Q = 7101 by default: g1 on 7001-7003, g2 on 7011-7013, ...);
 * the router on P - 1 (7000).
 */
import { formatSlotRanges, slotCount, type ShardMapFile } from '@kvstore/protocol'

/** Groups kv-cluster starts at most, and members per group. */
export const groupsMax = 9
export const groupNodesMax = 9
/** Ports between the first members of two groups. */
export const groupPortStride = 10

export interface LocalMember {
  id: string
  clientUrl: string
  peerUrl: string
}

export interface LocalGroup {
  id: string
  members: LocalMember[]
  /** The slots it starts with, as `first-last`. */
  slots: string
}

export interface ShardedLayout {
  groups: LocalGroup[]
  router: { id: string; host: string; port: number; url: string }
}

export interface ShardedLayoutOptions {
  groups: number
  nodes: number
  host: string
  clientPort: number
  peerPort: number
  routerPort: number
}

/** `slotCount` slots cut into `n` contiguous ranges whose sizes differ by one at most. */
export function evenSlotRanges(n: number): { first: number; last: number }[] {
  return Array.from({ length: n }, (_, k) => ({
    first: Math.floor((k * slotCount) / n),
    last: Math.floor(((k + 1) * slotCount) / n) - 1,
  }))
}

/** What is wrong with the options, or null. */
export function shardedLayoutProblem(o: ShardedLayoutOptions): string | null {
  if (!Number.isInteger(o.groups) || o.groups < 1 || o.groups > groupsMax)
    return `--groups must be 1 to ${groupsMax}`
  if (!Number.isInteger(o.nodes) || o.nodes < 1 || o.nodes > groupNodesMax)
    return `--nodes (members per group) must be 1 to ${groupNodesMax}`
  const span = (o.groups - 1) * groupPortStride + o.nodes
  const ports: [string, number, number][] = [
    ['--client-port', o.clientPort, span],
    ['--peer-port', o.peerPort, span],
    ['--router-port', o.routerPort, 1],
  ]
  for (const [name, port, count] of ports)
    if (!Number.isInteger(port) || port < 1 || port + count - 1 > 65535)
      return `${name} must leave room for ${count} port${count === 1 ? '' : 's'} below 65536`
  // No two ranges may overlap.
  for (let i = 0; i < ports.length; i++)
    for (let j = i + 1; j < ports.length; j++) {
      const [a, ap, an] = ports[i] as [string, number, number]
      const [b, bp, bn] = ports[j] as [string, number, number]
      if (ap < bp + bn && bp < ap + an)
        return `${a} ${ap} (${an} ports) and ${b} ${bp} (${bn} ports) overlap`
    }
  return null
}

/** The groups, members, ports and router of `kv-cluster --groups N`. */
export function shardedLayout(o: ShardedLayoutOptions): ShardedLayout {
  const problem = shardedLayoutProblem(o)
  if (problem !== null) throw new Error(problem)
  const ranges = evenSlotRanges(o.groups)
  const groups = ranges.map((range, k) => {
    const id = `g${k + 1}`
    return {
      id,
      slots: formatSlotRanges([range]),
      members: Array.from({ length: o.nodes }, (_, i) => {
        const offset = k * groupPortStride + i
        return {
          id: `${id}n${i + 1}`,
          clientUrl: `https://${o.host}:${o.clientPort + offset}`,
          peerUrl: `https://${o.host}:${o.peerPort + offset}`,
        }
      }),
    }
  })
  return {
    groups,
    router: {
      id: 'r1',
      host: o.host,
      port: o.routerPort,
      url: `https://${o.host}:${o.routerPort}`,
    },
  }
}

/** The shard map file of a layout: the directory and each group's starting slots. */
export function shardMapFileOf(layout: ShardedLayout): ShardMapFile {
  return {
    slotCount,
    groups: layout.groups.map((g) => ({
      id: g.id,
      members: g.members.map((m) => ({ id: m.id, url: m.clientUrl })),
      slots: g.slots,
    })),
  }
}

/** kv-node's arguments for member `member` of `group` (before the user's own, after `--`). */
export function groupNodeArgs(options: {
  group: LocalGroup
  member: LocalMember
  dataDir: string
  host: string
  certsDir: string
  shardMapFile: string
}): string[] {
  const { group, member } = options
  return [
    '--id',
    member.id,
    '--data-dir',
    options.dataDir,
    '--host',
    options.host,
    '--members',
    group.members.map((m) => `${m.id}@${m.clientUrl}@${m.peerUrl}`).join(','),
    '--certs-dir',
    options.certsDir,
    // The first member of each group is its preferred leader.
    '--leader',
    (group.members[0] as LocalMember).id,
    '--shard-map',
    options.shardMapFile,
    '--shard-group',
    group.id,
  ]
}

/**
 * kv-router's arguments: the shard map, its port, its certificate for both its TLS listener
 * and its identity towards the groups (kv://<cluster>/router/r1), and the user its own calls
 * act for.
 */
export function routerArgs(options: {
  layout: ShardedLayout
  certsDir: string
  shardMapFile: string
}): string[] {
  const { router } = options.layout
  const cert = `${options.certsDir}/${router.id}.crt`
  const key = `${options.certsDir}/${router.id}.key`
  return [
    '--id',
    router.id,
    '--host',
    router.host,
    '--port',
    String(router.port),
    '--shard-map',
    options.shardMapFile,
    '--tls-cert',
    cert,
    '--tls-key',
    key,
    '--tls-ca',
    `${options.certsDir}/ca.crt`,
    '--identity-cert',
    cert,
    '--identity-key',
    key,
    // A router certificate is no user: the router's own calls (probes, shard map refreshes)
    // act for root, whom every group has.
    '--probe-user',
    'root',
  ]
}
