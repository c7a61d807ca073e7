export { Prng } from './prng.js'
export { InvariantViolation, Simulation, simulate } from './simulator.js'
export type { FaultRates, SimOptions, SimResult, UnsafeRule } from './simulator.js'
export { runSeeds } from './runner.js'
export type { RunSummary } from './runner.js'
export {
  LeaderlessSimulation,
  leaderlessUnsafeRules,
  simulateLeaderless,
  tickMs as leaderlessTickMs,
} from './leaderless/simulator.js'
export type {
  LeaderlessFaultRates,
  LeaderlessSimOptions,
  LeaderlessSimResult,
  LeaderlessUnsafeRule,
} from './leaderless/simulator.js'
export { LeaderlessChecker } from './leaderless/checker.js'
export { runLeaderlessSeeds } from './leaderless/runner.js'
export type { LeaderlessRunSummary } from './leaderless/runner.js'
