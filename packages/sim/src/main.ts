#!/usr/bin/env node
/**
 * `pnpm sim`: runs the deterministic simulator over many seeds.
 *
 *   pnpm sim --seeds 10000            # seeds 1..10000, alternating 3 and 5 members
 *   pnpm sim --seed 4242 --nodes 5    # replay one seed exactly
 *   pnpm sim --unsafe grantEveryVote  # break a rule and watch the simulator catch it
 *   pnpm sim --mode leaderless --seeds 1000        # leaderless mode: 5 members, N = 3
 *   pnpm sim --mode leaderless --seed 79 --unsafe countHintsTowardStrictW
 */
import { parseArgs } from 'node:util'
import { runSeeds } from './runner.js'
import { simulate, unsafeRules, type UnsafeRule } from './simulator.js'
import { runLeaderlessSeeds } from './leaderless/runner.js'
import {
  leaderlessUnsafeRules,
  simulateLeaderless,
  tickMs,
  type LeaderlessUnsafeRule,
} from './leaderless/simulator.js'

function fail(message: string): never {
  process.stderr.write(`kv-sim: ${message}\n`)
  process.exit(2)
}

const { values } = parseArgs({
  options: {
    seeds: { type: 'string', default: '1000' },
    first: { type: 'string', default: '1' },
    seed: { type: 'string' },
    nodes: { type: 'string' },
    unsafe: { type: 'string' },
    'fault-ticks': { type: 'string' },
    membership: { type: 'string', default: 'seeded' },
    'snapshot-at': { type: 'string', default: 'commit' },
    trace: { type: 'boolean', default: false },
    mode: { type: 'string', default: 'single-leader' },
    help: { type: 'boolean', default: false },
  },
})

if (values.help) {
  process.stdout.write(
    [
      'Usage: pnpm sim [--seeds N] [--first S] [--nodes 3|5] [--fault-ticks T] [--membership seeded|off] [--unsafe RULE]',
      '       pnpm sim --seed S [--nodes 3|5] [--trace]   replay one seed, printing its fault rates',
      '  --nodes: voters of the first configuration (two spare nodes run too, and join over time)',
      '  --membership off: no configuration changes and no spare nodes (the runs from before them)',
      "  --snapshot-at logEnd: leaders cut snapshots at their log end, as the node's store does",
      '       pnpm sim --mode leaderless [--seeds N] [--first S] [--fault-ticks T] [--unsafe LRULE]',
      '       pnpm sim --mode leaderless --seed S   replay one leaderless seed (5 members, N = 3)',
      `RULE: ${unsafeRules.join(', ')} (breaks the core on purpose; the run must fail)`,
      `LRULE: ${leaderlessUnsafeRules.join(', ')}`,
      '',
    ].join('\n'),
  )
  process.exit(0)
}

const int = (name: string, value: string | undefined, min: number): number | undefined => {
  if (value === undefined) return undefined
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}`)
  return n
}
if (values.mode !== 'single-leader' && values.mode !== 'leaderless')
  fail('--mode must be single-leader or leaderless')
if (values.mode === 'leaderless') runLeaderless()

function runLeaderless(): never {
  if (values.nodes !== undefined)
    fail('--nodes does not apply to leaderless mode (5 members, N = 3)')
  const unsafe = values.unsafe as LeaderlessUnsafeRule | undefined
  if (unsafe !== undefined && !leaderlessUnsafeRules.includes(unsafe))
    fail(`--unsafe must be one of ${leaderlessUnsafeRules.join(', ')} in leaderless mode`)
  const faultTicks = int('fault-ticks', values['fault-ticks'], 1)
  const options = { ...(unsafe ? { unsafe } : {}), ...(faultTicks ? { faultTicks } : {}) }
  const replay = (seed: number) =>
    `pnpm sim --mode leaderless --seed ${seed}${unsafe ? ` --unsafe ${unsafe}` : ''}${faultTicks ? ` --fault-ticks ${faultTicks}` : ''}`
  if (values.seed !== undefined) {
    const result = simulateLeaderless({ seed: int('seed', values.seed, 0) as number, ...options })
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
    process.exit(result.ok ? 0 : 1)
  }
  const count = int('seeds', values.seeds, 1) as number
  const first = int('first', values.first, 0) as number
  const summary = runLeaderlessSeeds({ first, count, ...options })
  const rows = [
    ['seeds', `${first}..${first + count - 1} (leaderless, 5 members, N = 3)`],
    ['passed', `${summary.passed} of ${summary.seeds}`],
    ['crashes / partitions', `${summary.crashes} / ${summary.partitions}`],
    ['messages', String(summary.messages)],
    ['writes acknowledged', String(summary.writesAcked)],
    ['reads checked', String(summary.readsChecked)],
    ['hints replayed', String(summary.hintsReplayed)],
    ['anti-entropy repairs', String(summary.antiEntropyRepairs)],
    ['tombstones collected', String(summary.tombstonesCollected)],
    [
      'ticks from heal to convergence',
      `p50 ${summary.convergeTicksP50}, max ${summary.convergeTicksMax} (1 tick = ${tickMs} ms)`,
    ],
    ['time', `${(summary.durationMs / 1000).toFixed(1)} s`],
  ]
  for (const [k, v] of rows) process.stdout.write(`${(k as string).padEnd(40)} ${v}\n`)
  for (const f of summary.failures.slice(0, 10))
    process.stdout.write(`\nFAILED seed ${f.seed}: ${f.violation}\n  replay: ${replay(f.seed)}\n`)
  process.exit(summary.failures.length === 0 ? 0 : 1)
}

const nodes = int('nodes', values.nodes, 1)
if (nodes !== undefined && nodes !== 3 && nodes !== 5) fail('--nodes must be 3 or 5')
const unsafe = values.unsafe as UnsafeRule | undefined
if (unsafe !== undefined && !unsafeRules.includes(unsafe))
  fail(`--unsafe must be one of ${unsafeRules.join(', ')}`)
const faultTicks = int('fault-ticks', values['fault-ticks'], 1)
if (values.membership !== 'seeded' && values.membership !== 'off')
  fail('--membership must be seeded or off')
const membership = values.membership
const snapshotAt = values['snapshot-at']
if (snapshotAt !== 'commit' && snapshotAt !== 'logEnd')
  fail('--snapshot-at must be commit or logEnd')

const replay = (seed: number, n: number) =>
  `pnpm sim --seed ${seed} --nodes ${n}${unsafe ? ` --unsafe ${unsafe}` : ''}${faultTicks ? ` --fault-ticks ${faultTicks}` : ''}${membership === 'off' ? ' --membership off' : ''}${snapshotAt === 'logEnd' ? ' --snapshot-at logEnd' : ''}`

if (values.seed !== undefined) {
  const seed = int('seed', values.seed, 0) as number
  const n = nodes ?? (seed % 2 === 0 ? 3 : 5)
  const result = simulate({
    seed,
    nodes: n,
    membership,
    snapshotAt,
    ...(unsafe ? { unsafe } : {}),
    ...(faultTicks ? { faultTicks } : {}),
    ...(values.trace ? { trace: (line: string) => process.stdout.write(`${line}\n`) } : {}),
  })
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`)
  process.exit(result.ok ? 0 : 1)
}

const count = int('seeds', values.seeds, 1) as number
const first = int('first', values.first, 0) as number
const summary = runSeeds({
  first,
  count,
  ...(nodes ? { nodes } : {}),
  membership,
  snapshotAt,
  ...(unsafe ? { unsafe } : {}),
  ...(faultTicks ? { faultTicks } : {}),
})
const rows = [
  [
    'seeds',
    `${first}..${first + count - 1} (${nodes ? `${nodes} nodes` : 'even seeds 3 nodes, odd 5'})`,
  ],
  ['passed', `${summary.passed} of ${summary.seeds}`],
  ['leaders elected', String(summary.elections)],
  ['crashes / partitions', `${summary.crashes} / ${summary.partitions}`],
  ['messages', String(summary.messages)],
  ['epoch bombs (forged heartbeats)', String(summary.epochBombs)],
  ['entries committed', String(summary.committed)],
  [
    'configuration changes (leader removals)',
    `${summary.membershipChanges} (${summary.leaderRemovals})`,
  ],
  ['nodes started (voters, spares, joiners)', String(summary.nodesStarted)],
  ['snapshots installed', String(summary.snapshotsInstalled)],
  [
    'ticks from heal to a commit everywhere',
    `p50 ${summary.recoveryTicksP50}, max ${summary.recoveryTicksMax}`,
  ],
  ['time', `${(summary.durationMs / 1000).toFixed(1)} s`],
]
for (const [k, v] of rows) process.stdout.write(`${(k as string).padEnd(40)} ${v}\n`)
for (const f of summary.failures.slice(0, 10)) {
  process.stdout.write(
    `\nFAILED seed ${f.seed} (${f.nodes} nodes): ${f.violation}\n  replay: ${replay(f.seed, f.nodes)}\n`,
  )
}
process.exit(summary.failures.length === 0 ? 0 : 1)
