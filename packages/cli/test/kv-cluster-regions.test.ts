/**
 * The layout of `kv-cluster --regions N` (pure): the regions and their ports, the one regions
 * file every node starts with, and each node's arguments.
 */
import { configSpec, parseConfig } from '@kvstore/node'
import { regionsOfFile } from '@kvstore/protocol'
import {
  localRegionIds,
  regionNodeArgs,
  regionsFileOf,
  regionsLayout,
  regionsLayoutProblem,
  type LocalRegion,
} from '../src/kv-cluster-regions.js'

const defaults = { regions: 2, nodes: 3, host: '127.0.0.1', clientPort: 7001, peerPort: 7101 }

describe('kv-cluster --regions', () => {
  it('lays out us on 7001-7003 (n1-n3) and eu on 7011-7013 (n4-n6)', () => {
    const layout = regionsLayout(defaults)
    expect(
      layout.regions.map((r) => [
        r.id,
        r.members.map((m) => `${m.id} ${m.clientUrl} ${m.peerUrl}`),
      ]),
    ).toEqual([
      [
        'us',
        [
          'n1 https://127.0.0.1:7001 https://127.0.0.1:7101',
          'n2 https://127.0.0.1:7002 https://127.0.0.1:7102',
          'n3 https://127.0.0.1:7003 https://127.0.0.1:7103',
        ],
      ],
      [
        'eu',
        [
          'n4 https://127.0.0.1:7011 https://127.0.0.1:7111',
          'n5 https://127.0.0.1:7012 https://127.0.0.1:7112',
          'n6 https://127.0.0.1:7013 https://127.0.0.1:7113',
        ],
      ],
    ])
  })

  it('writes one regions file naming every member by its client URL, valid as the nodes read it', () => {
    for (let n = 2; n <= localRegionIds.length; n++)
      for (const nodes of [1, 3, 5]) {
        const layout = regionsLayout({ ...defaults, regions: n, nodes })
        const file = regionsFileOf(layout)
        expect(regionsOfFile(file).map((r) => r.id)).toEqual(localRegionIds.slice(0, n))
        const ids = file.regions.flatMap((r) => r.members.map((m) => m.id))
        expect(new Set(ids).size).toBe(n * nodes)
        const ports = layout.regions.flatMap((r) =>
          r.members.flatMap((m) => [m.clientUrl, m.peerUrl].map((u) => new URL(u).port)),
        )
        expect(new Set(ports).size).toBe(ports.length)
      }
    expect(regionsFileOf(regionsLayout(defaults)).regions[1]).toEqual({
      id: 'eu',
      members: [
        { id: 'n4', url: 'https://127.0.0.1:7011' },
        { id: 'n5', url: 'https://127.0.0.1:7012' },
        { id: 'n6', url: 'https://127.0.0.1:7013' },
      ],
    })
  })

  it('refuses counts and ports out of range, and overlapping port ranges', () => {
    expect(regionsLayoutProblem({ ...defaults, regions: 1 })).toMatch(/--regions must be 2 to 3/)
    expect(regionsLayoutProblem({ ...defaults, regions: 4 })).toMatch(/--regions must be 2 to 3/)
    expect(regionsLayoutProblem({ ...defaults, regions: Number('x') })).toMatch(/--regions/)
    expect(regionsLayoutProblem({ ...defaults, nodes: 0 })).toMatch(/--nodes/)
    expect(regionsLayoutProblem({ ...defaults, nodes: 10 })).toMatch(/--nodes/)
    expect(regionsLayoutProblem({ ...defaults, clientPort: 65530 })).toMatch(/--client-port/)
    expect(regionsLayoutProblem({ ...defaults, peerPort: 7011 })).toMatch(/overlap/)
    expect(regionsLayoutProblem({ ...defaults, regions: 3, nodes: 9 })).toBeNull()
    expect(() => regionsLayout({ ...defaults, regions: 5 })).toThrow(/--regions/)
  })

  it('starts each node with its region, the regions file and its preferred leader', () => {
    const layout = regionsLayout(defaults)
    const region = layout.regions[1] as LocalRegion
    const args = regionNodeArgs({
      region,
      member: region.members[1] as LocalRegion['members'][number],
      dataDir: '/d/n5',
      host: '127.0.0.1',
      certsDir: '/d/certs',
      regionsFile: '/d/regions.json',
    })
    expect(args).toEqual([
      '--id',
      'n5',
      '--data-dir',
      '/d/n5',
      '--host',
      '127.0.0.1',
      '--members',
      'n4@https://127.0.0.1:7011@https://127.0.0.1:7111,n5@https://127.0.0.1:7012@https://127.0.0.1:7112,n6@https://127.0.0.1:7013@https://127.0.0.1:7113',
      '--certs-dir',
      '/d/certs',
      '--leader',
      'n4',
      '--region',
      'eu',
      '--regions',
      '/d/regions.json',
    ])
    // Only flags kv-node knows, and a configuration it accepts.
    const known = new Set(configSpec.map((s) => s.flag))
    for (const arg of args.filter((a) => a.startsWith('--'))) expect(known, arg).toContain(arg)
    expect(() => parseConfig(args, {})).not.toThrow()
  })
})
