import { simulate, type SimResult, type UnsafeRule } from './simulator.js'

export interface RunSummary {
  seeds: number
  passed: number
  failures: SimResult[]
  elections: number
  crashes: number
  partitions: number
  messages: number
  /** Forged heartbeats at absurd epochs, over every seed. */
  epochBombs: number
  committed: number
  /** Snapshots installed, over every seed. */
  snapshotsInstalled: number
  /** Configuration entries proposed, over every seed. */
  membershipChanges: number
  /** Leaders that proposed their own removal, over every seed. */
  leaderRemovals: number
  /** Nodes started, over every seed (the first voters, spares and joiners). */
  nodesStarted: number
  /** Ticks from healing to a new commit everywhere: median and max over passing seeds. */
  recoveryTicksP50: number
  recoveryTicksMax: number
  durationMs: number
}

/**
 * Runs seeds `first .. first + count - 1`, alternating 3 and 5 members (even seeds 3, odd 5),
 * or all with `nodes` when given. Stops at the first failure when `stopOnFailure`.
 */
export function runSeeds(options: {
  first: number
  count: number
  nodes?: number
  unsafe?: UnsafeRule
  stopOnFailure?: boolean
  faultTicks?: number
  membership?: 'seeded' | 'off'
  snapshotAt?: 'commit' | 'logEnd'
}): RunSummary {
  const started = performance.now()
  const failures: SimResult[] = []
  const recovery: number[] = []
  const totals = {
    elections: 0,
    crashes: 0,
    partitions: 0,
    messages: 0,
    epochBombs: 0,
    committed: 0,
    snapshotsInstalled: 0,
    membershipChanges: 0,
    leaderRemovals: 0,
    nodesStarted: 0,
  }
  let passed = 0
  let seeds = 0
  for (let seed = options.first; seed < options.first + options.count; seed++) {
    seeds++
    const result = simulate({
      seed,
      nodes: options.nodes ?? (seed % 2 === 0 ? 3 : 5),
      ...(options.unsafe ? { unsafe: options.unsafe } : {}),
      ...(options.faultTicks ? { faultTicks: options.faultTicks } : {}),
      ...(options.membership ? { membership: options.membership } : {}),
      ...(options.snapshotAt ? { snapshotAt: options.snapshotAt } : {}),
    })
    totals.elections += result.elections
    totals.crashes += result.crashes
    totals.partitions += result.partitions
    totals.messages += result.messages
    totals.epochBombs += result.epochBombs
    totals.committed += result.committedLsn
    totals.snapshotsInstalled += result.snapshotsInstalled
    totals.membershipChanges += result.membershipChanges
    totals.leaderRemovals += result.leaderRemovals
    totals.nodesStarted += result.nodesStarted
    if (result.ok) {
      passed++
      if (result.recoveryTicks !== null) recovery.push(result.recoveryTicks)
    } else {
      failures.push(result)
      if (options.stopOnFailure) break
    }
  }
  recovery.sort((a, b) => a - b)
  return {
    seeds,
    passed,
    failures,
    ...totals,
    recoveryTicksP50: recovery[Math.floor(recovery.length / 2)] ?? 0,
    recoveryTicksMax: recovery[recovery.length - 1] ?? 0,
    durationMs: performance.now() - started,
  }
}
