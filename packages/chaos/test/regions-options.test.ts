import { regionsFileFor } from '../src/regions-cluster.js'
import { regionsCommand, validateRegionsOptions } from '../src/regions-run.js'
import type { ChaosOptions } from '../src/run.js'

const base: ChaosOptions = {
  backend: 'process',
  regions: 2,
  workload: 'regions',
  nemeses: ['partition-regions', 'kill-leader', 'pause-leader'],
  ack: 'quorum',
  durationMs: 30_000,
  seed: 181,
  nodes: 3,
  clients: 3,
  out: 'chaos-reports',
}

describe('regions mode options', () => {
  it('takes the process backend, the regions workload and the nemeses it can run', () => {
    expect(() => validateRegionsOptions(base)).not.toThrow()
    expect(() => validateRegionsOptions({ ...base, backend: 'docker' })).toThrow(/process backend/)
    expect(() => validateRegionsOptions({ ...base, workload: 'register' })).toThrow(
      /regions workload/,
    )
    expect(() => validateRegionsOptions({ ...base, nemeses: ['partition-one', 'kill'] })).toThrow(
      /partition-one: not with --regions/,
    )
    expect(() => validateRegionsOptions({ ...base, router: true })).toThrow(/--router/)
    expect(() => validateRegionsOptions({ ...base, regions: 4 })).toThrow(/2 or 3/)
  })

  it('prints the command that replays the run, teeth flags included', () => {
    expect(
      regionsCommand({
        ...base,
        nemeses: ['partition-regions'],
        durationMs: 20_000,
        seed: 182,
        nodeArgs: ['--unsafe-region-skip-conflict-record'],
      }),
    ).toBe(
      'pnpm chaos --backend process --regions 2 --nemesis partition-regions --duration 20s --seed 182 --nodes 3 --clients 3 --queued-clients 1 --unsafe-region-skip-conflict-record',
    )
  })
})

describe('regionsFileFor', () => {
  it("names the region's own members directly and the other region's at their proxies, on the same host", () => {
    const regions = [
      {
        id: 'us',
        members: [
          { id: 'n1', url: 'https://127.0.0.1:7001' },
          { id: 'n2', url: 'https://127.0.0.1:7002' },
        ],
      },
      { id: 'eu', members: [{ id: 'n4', url: 'https://127.0.0.1:7011' }] },
    ]
    const ports: Record<string, number> = { n1: 9001, n2: 9002, n4: 9004 }
    expect(regionsFileFor(regions, 'us', (id) => ports[id] as number)).toEqual({
      regions: [
        {
          id: 'us',
          members: [
            { id: 'n1', url: 'https://127.0.0.1:7001' },
            { id: 'n2', url: 'https://127.0.0.1:7002' },
          ],
        },
        { id: 'eu', members: [{ id: 'n4', url: 'https://127.0.0.1:9004' }] },
      ],
    })
    expect(regionsFileFor(regions, 'eu', (id) => ports[id] as number).regions[0]?.members).toEqual([
      { id: 'n1', url: 'https://127.0.0.1:9001' },
      { id: 'n2', url: 'https://127.0.0.1:9002' },
    ])
  })
})
