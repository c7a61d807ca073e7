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
  }, 120_000)

  it('replays a seed exactly', () => {
    const a = simulate({ seed: 77, nodes: 5 })
    const b = simulate({ seed: 77, nodes: 5 })
    expect(b).toEqual(a)
    expect(simulate({ seed: 78, nodes: 5 })).not.toEqual(a)
  })

  it.each(['grantEveryVote', 'skipUpToDateCheck'] as const)(
    'catches a core that breaks a rule (%s) within a few hundred seeds',
    (unsafe) => {
      const summary = runSeeds({ first: 1, count: 300, unsafe, stopOnFailure: true })
      expect(summary.failures).toHaveLength(1)
      const violation = summary.failures[0]?.violation ?? ''
      expect(violation).toMatch(
        unsafe === 'grantEveryVote'
          ? /two leaders in epoch/
          : /without committed entry|committed entry \d+ changed|CoreInvariantError/,
      )
      // Found early, and the same seed fails the same way again.
      expect(summary.seeds).toBeLessThan(100)
      const failed = summary.failures[0]!
      expect(simulate({ seed: failed.seed, nodes: failed.nodes, unsafe }).violation).toBe(violation)
    },
  )
})
