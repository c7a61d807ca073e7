import { epochFreeMax, epochMax } from '@kvstore/core'
import { runSeeds, simulate } from '../src/index.js'

describe('the deterministic simulator', () => {
  it('passes 1,000 seeds (3 and 5 members) with every safety invariant and liveness', () => {
    const summary = runSeeds({ first: 1, count: 1000 })
    const failures = summary.failures.map(
      (f) =>
        `seed ${f.seed} (${f.nodes} nodes): ${f.violation}; replay: pnpm sim --seed ${f.seed} --nodes ${f.nodes}`,
    )
    expect(failures).toEqual([])
    // The seeds really exercised the faults and elections.
    expect(summary.crashes).toBeGreaterThan(1000)
    expect(summary.partitions).toBeGreaterThan(500)
    expect(summary.elections).toBeGreaterThan(3000)
    expect(summary.committed).toBeGreaterThan(100_000)
    expect(summary.epochBombs).toBeGreaterThan(1000)
  }, 120_000)

  it('survives epoch bombs: the cluster elects and commits after the worst single frames', () => {
    // Seeds whose faulty member sent forged heartbeats at 2^53 - 1, above epochMax, at
    // epochMax and at the highest epoch one message can carry.
    const bombed = Array.from({ length: 60 }, (_, i) => simulate({ seed: 5000 + i, nodes: 3 }))
      .concat(Array.from({ length: 40 }, (_, i) => simulate({ seed: 7000 + i, nodes: 5 })))
      .filter((r) => r.epochBombs > 0)
    expect(bombed.length).toBeGreaterThan(20)
    expect(bombed.filter((r) => !r.ok).map((r) => `seed ${r.seed}: ${r.violation}`)).toEqual([])
    // Some took a bomb they were allowed to take, and elected past it.
    expect(bombed.some((r) => r.epochTop > epochFreeMax)).toBe(true)
    expect(Math.max(...bombed.map((r) => r.epochTop))).toBeLessThan(epochMax / 2 + 2 ** 32)
  })

  it('replays a seed exactly', () => {
    const a = simulate({ seed: 77, nodes: 5 })
    const b = simulate({ seed: 77, nodes: 5 })
    expect(b).toEqual(a)
    expect(simulate({ seed: 78, nodes: 5 })).not.toEqual(a)
  })

  it.each(['grantEveryVote', 'skipUpToDateCheck', 'countLeaderBeforeDurable'] as const)(
    'catches a core that breaks a rule (%s) within a few hundred seeds',
    (unsafe) => {
      const summary = runSeeds({ first: 1, count: 300, unsafe, stopOnFailure: true })
      expect(summary.failures).toHaveLength(1)
      const violation = summary.failures[0]?.violation ?? ''
      expect(violation).toMatch(
        {
          grantEveryVote: /two leaders in epoch/,
          skipUpToDateCheck:
            /without committed entry|committed entry \d+ changed|CoreInvariantError/,
          // Pipelined replication: the leader's entries are shipped before its disk has them, so
          // it may count itself only once they are durable.
          countLeaderBeforeDurable: /committed by \w+ is durable on \d+ of \d+ nodes/,
        }[unsafe],
      )
      // Found early, and the same seed fails the same way again.
      expect(summary.seeds).toBeLessThan(100)
      const failed = summary.failures[0]!
      expect(simulate({ seed: failed.seed, nodes: failed.nodes, unsafe }).violation).toBe(violation)
    },
  )
})
