export * from './history.js'
export * from './checkers/index.js'
export {
  currentLeader,
  convergedDigests,
  convergedRanges,
  rangesOf,
  waitLeaderlessUp,
  rolledBackKeys,
  waitForLeader,
  UnsupportedFault,
  type ChaosCluster,
  type ChaosNode,
} from './cluster.js'
export { DockerCluster } from './docker-cluster.js'
export { ProcessCluster } from './process-cluster.js'
export {
  assertBuilt,
  freePort,
  kvNodeBin,
  startKvNode,
  type KvNodeOptions,
  type KvNodeProcess,
} from './node-process.js'
export {
  leaderNemeses,
  nemesisNames,
  parseNemeses,
  prng,
  runNemesis,
  type FaultWindow,
  type NemesisName,
} from './nemesis.js'
export { latencySvg, throughputSvg, writeReport, type RunSummary } from './report.js'
export { quorumSize, runChaos, type ChaosOptions, type ChaosResult } from './run.js'
export {
  HistoryRecorder,
  leaderlessWorkloads,
  startWorkload,
  workloadNames,
  type WorkloadName,
} from './workloads.js'
export type { LeaderlessQuorums } from './workloads-leaderless.js'
