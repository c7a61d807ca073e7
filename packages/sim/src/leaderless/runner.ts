import {
  simulateLeaderless,
  type LeaderlessSimResult,
  type LeaderlessUnsafeRule,
} from './simulator.js'

export interface LeaderlessRunSummary {
  seeds: number
  passed: number
  failures: LeaderlessSimResult[]
  messages: number
  crashes: number
  partitions: number
  writesAcked: number
  readsChecked: number
  hintsReplayed: number
  tombstonesCollected: number
  antiEntropyRepairs: number
  /** Ticks from healing to convergence: median and max over passing seeds. */
  convergeTicksP50: number
  convergeTicksMax: number
  durationMs: number
}

/** Runs seeds `first .. first + count - 1`; stops at the first failure when `stopOnFailure`. */
export function runLeaderlessSeeds(options: {
  first: number
  count: number
  unsafe?: LeaderlessUnsafeRule
  stopOnFailure?: boolean
  faultTicks?: number
}): LeaderlessRunSummary {
  const started = performance.now()
  const failures: LeaderlessSimResult[] = []
  const converge: number[] = []
  const totals = {
    messages: 0,
    crashes: 0,
    partitions: 0,
    writesAcked: 0,
    readsChecked: 0,
    hintsReplayed: 0,
    tombstonesCollected: 0,
    antiEntropyRepairs: 0,
  }
  let passed = 0
  let seeds = 0
  for (let seed = options.first; seed < options.first + options.count; seed++) {
    seeds++
    const result = simulateLeaderless({
      seed,
      ...(options.unsafe ? { unsafe: options.unsafe } : {}),
      ...(options.faultTicks ? { faultTicks: options.faultTicks } : {}),
    })
    for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += result[k]
    if (result.ok) {
      passed++
      if (result.convergeTicks !== null) converge.push(result.convergeTicks)
    } else {
      failures.push(result)
      if (options.stopOnFailure) break
    }
  }
  converge.sort((a, b) => a - b)
  return {
    seeds,
    passed,
    failures,
    ...totals,
    convergeTicksP50: converge[Math.floor(converge.length / 2)] ?? 0,
    convergeTicksMax: converge[converge.length - 1] ?? 0,
    durationMs: performance.now() - started,
  }
}
