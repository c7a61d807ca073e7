/**
 * The layout of `kv-cluster --groups N` (pure): the groups and their ports, the shard map file
 * splitting the 4,096 slots evenly, and the arguments of each node and of the router.
 */
import { configSpec, parseConfig } from '@kvstore/node'
import { countSlots, parseSlotRanges, shardMapOfFile, slotCount } from '@kvstore/protocol'
import {
  evenSlotRanges,
  groupNodeArgs,
  routerArgs,
  shardMapFileOf,
  shardedLayout,
  shardedLayoutProblem,
  type LocalGroup,
} from '../src/kv-cluster-groups.js'

const defaults = {
  groups: 2,
  nodes: 3,
  host: '127.0.0.1',
  clientPort: 7001,
  peerPort: 7101,
  routerPort: 7000,
}

describe('kv-cluster --groups', () => {
  it('lays out 2 groups of 3 on 7001-7003 and 7011-7013, and the router on 7000', () => {
    const layout = shardedLayout(defaults)
    expect(
      layout.groups.map((g) => [g.id, g.slots, g.members.map((m) => `${m.id} ${m.clientUrl}`)]),
    ).toEqual([
      [
        'g1',
        '0-2047',
        [
          'g1n1 https://127.0.0.1:7001',
          'g1n2 https://127.0.0.1:7002',
          'g1n3 https://127.0.0.1:7003',
        ],
      ],
      [
        'g2',
        '2048-4095',
        [
          'g2n1 https://127.0.0.1:7011',
          'g2n2 https://127.0.0.1:7012',
          'g2n3 https://127.0.0.1:7013',
        ],
      ],
    ])
    expect(layout.groups[1]?.members[2]?.peerUrl).toBe('https://127.0.0.1:7113')
    expect(layout.router).toEqual({
      id: 'r1',
      host: '127.0.0.1',
      port: 7000,
      url: 'https://127.0.0.1:7000',
    })
  })

  it('splits the slots evenly, for any number of groups, and writes a valid shard map', () => {
    for (let n = 1; n <= 9; n++) {
      const ranges = evenSlotRanges(n)
      const sizes = ranges.map((r) => r.last - r.first + 1)
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(slotCount)
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1)
      ranges.forEach((r, i) => expect(r.first).toBe(i === 0 ? 0 : (ranges[i - 1]?.last ?? 0) + 1))
      const layout = shardedLayout({ ...defaults, groups: n, nodes: 1 + (n % 3) })
      const map = shardMapOfFile(shardMapFileOf(layout))
      expect(map.groups.map((g) => g.id)).toEqual(layout.groups.map((g) => g.id))
      for (const g of layout.groups)
        expect(countSlots(parseSlotRanges(g.slots))).toBeGreaterThanOrEqual(Math.floor(4096 / n))
      // Every port is distinct.
      const ports = [
        layout.router.port,
        ...layout.groups.flatMap((g) =>
          g.members.flatMap((m) =>
            [new URL(m.clientUrl).port, new URL(m.peerUrl).port].map(Number),
          ),
        ),
      ]
      expect(new Set(ports).size).toBe(ports.length)
    }
    expect(evenSlotRanges(3)).toEqual([
      { first: 0, last: 1364 },
      { first: 1365, last: 2729 },
      { first: 2730, last: 4095 },
    ])
  })

  it('refuses counts and ports out of range, and overlapping port ranges', () => {
    expect(shardedLayoutProblem({ ...defaults, groups: 0 })).toMatch(/--groups must be 1 to 9/)
    expect(shardedLayoutProblem({ ...defaults, groups: 10 })).toMatch(/--groups must be 1 to 9/)
    expect(shardedLayoutProblem({ ...defaults, groups: Number('x') })).toMatch(/--groups/)
    expect(shardedLayoutProblem({ ...defaults, nodes: 0 })).toMatch(/--nodes/)
    expect(shardedLayoutProblem({ ...defaults, clientPort: 65530 })).toMatch(/--client-port/)
    expect(shardedLayoutProblem({ ...defaults, routerPort: 0 })).toMatch(/--router-port/)
    expect(shardedLayoutProblem({ ...defaults, routerPort: 7012 })).toMatch(
      /--client-port 7001 \(13 ports\) and --router-port 7012 \(1 ports?\) overlap/,
    )
    expect(shardedLayoutProblem({ ...defaults, groups: 3, peerPort: 7021 })).toMatch(/overlap/)
    expect(shardedLayoutProblem({ ...defaults, groups: 9, nodes: 9 })).toBeNull()
    expect(() => shardedLayout({ ...defaults, groups: 0 })).toThrow(/--groups/)
  })

  it('starts each node with its group, the shard map and its preferred leader', () => {
    const layout = shardedLayout(defaults)
    const group = layout.groups[1] as LocalGroup
    const args = groupNodeArgs({
      group,
      member: group.members[1] as LocalGroup['members'][number],
      dataDir: '/d/g2n2',
      host: '127.0.0.1',
      certsDir: '/d/certs',
      shardMapFile: '/d/shard-map.json',
    })
    expect(args).toEqual([
      '--id',
      'g2n2',
      '--data-dir',
      '/d/g2n2',
      '--host',
      '127.0.0.1',
      '--members',
      'g2n1@https://127.0.0.1:7011@https://127.0.0.1:7111,g2n2@https://127.0.0.1:7012@https://127.0.0.1:7112,g2n3@https://127.0.0.1:7013@https://127.0.0.1:7113',
      '--certs-dir',
      '/d/certs',
      '--leader',
      'g2n1',
      '--shard-map',
      '/d/shard-map.json',
      '--shard-group',
      'g2',
    ])
    expect(routerArgs({ layout, certsDir: '/d/certs', shardMapFile: '/d/shard-map.json' })).toEqual(
      [
        '--id',
        'r1',
        '--host',
        '127.0.0.1',
        '--port',
        '7000',
        '--shard-map',
        '/d/shard-map.json',
        '--tls-cert',
        '/d/certs/r1.crt',
        '--tls-key',
        '/d/certs/r1.key',
        '--tls-ca',
        '/d/certs/ca.crt',
        '--identity-cert',
        '/d/certs/r1.crt',
        '--identity-key',
        '/d/certs/r1.key',
        '--probe-user',
        'root',
      ],
    )
  })

  // The node's sharding flags land with the node side of sharding (issue 17); until then this
  // checks nothing.
  const nodeHasShardFlags = configSpec.some((s) => s.flag === '--shard-map')
  it.runIf(nodeHasShardFlags)('gives kv-node only flags it knows', () => {
    const layout = shardedLayout(defaults)
    const group = layout.groups[0] as LocalGroup
    const args = groupNodeArgs({
      group,
      member: group.members[0] as LocalGroup['members'][number],
      dataDir: '/d/g1n1',
      host: '127.0.0.1',
      certsDir: '/d/certs',
      shardMapFile: '/d/shard-map.json',
    })
    const known = new Set(configSpec.map((s) => s.flag))
    for (const arg of args.filter((a) => a.startsWith('--'))) expect(known, arg).toContain(arg)
    expect(() => parseConfig(args, {})).not.toThrow()
  })
})
