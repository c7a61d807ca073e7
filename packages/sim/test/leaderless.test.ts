import { leaderlessUnsafeRules, runLeaderlessSeeds, simulateLeaderless } from '../src/index.js'

describe('the leaderless simulator (5 members, N = 3)', () => {
  it('passes 1,000 seeds: no lost write at R + W > N, no resurrection, the sibling cap, convergence', () => {
    const summary = runLeaderlessSeeds({ first: 1, count: 1000 })
    const failures = summary.failures.map(
      (f) => `seed ${f.seed}: ${f.violation}; replay: pnpm sim --mode leaderless --seed ${f.seed}`,
    )
    expect(failures).toEqual([])
    // The seeds really exercised the faults and every repair path.
    expect(summary.crashes).toBeGreaterThan(1000)
    expect(summary.partitions).toBeGreaterThan(1000)
    expect(summary.writesAcked).toBeGreaterThan(50_000)
    expect(summary.readsChecked).toBeGreaterThan(50_000)
    expect(summary.hintsReplayed).toBeGreaterThan(5000)
    expect(summary.antiEntropyRepairs).toBeGreaterThan(5000)
    expect(summary.tombstonesCollected).toBeGreaterThan(500)
    // Every replica set converged within the bound after healing (10 s of simulated time).
    expect(summary.convergeTicksMax).toBeLessThan(1000)
  }, 120_000)

  it('replays a seed exactly', () => {
    const a = simulateLeaderless({ seed: 77 })
    expect(simulateLeaderless({ seed: 77 })).toEqual(a)
    expect(simulateLeaderless({ seed: 78 })).not.toEqual(a)
  })

  it.each(leaderlessUnsafeRules)(
    'catches an unsafe rule (%s) within a few hundred seeds',
    (unsafe) => {
      const summary = runLeaderlessSeeds({ first: 1, count: 300, unsafe, stopOnFailure: true })
      expect(summary.failures).toHaveLength(1)
      const failed = summary.failures[0]!
      expect(failed.violation).toMatch(
        unsafe === 'collectWithoutConfirmations' ? /resurrection/ : /lost write: a read of/,
      )
      expect(summary.seeds).toBeLessThan(200)
      // The same seed fails the same way again.
      expect(simulateLeaderless({ seed: failed.seed, unsafe }).violation).toBe(failed.violation)
    },
  )
})
