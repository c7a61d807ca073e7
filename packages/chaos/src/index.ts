export * from './history.js'
export * from './checkers/index.js'
export {
  currentLeader,
  convergedDigests,
  rolledBackKeys,
  waitForLeader,
  UnsupportedFault,
  type ChaosCluster,
  type ChaosNode,
} from './cluster.js'
export { DockerCluster } from './docker-cluster.js'
export { ProcessCluster } from './process-cluster.js'
export {
  nemesisNames,
  parseNemeses,
  prng,
  runNemesis,
  type FaultWindow,
  type NemesisName,
} from './nemesis.js'
export { latencySvg, throughputSvg, writeReport, type RunSummary } from './report.js'
export { runChaos, type ChaosOptions, type ChaosResult } from './run.js'
export { HistoryRecorder, startWorkload, workloadNames, type WorkloadName } from './workloads.js'
