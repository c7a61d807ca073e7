/**
 * @kvstore/testkit: what every test and benchmark shares. Private: shipped code never imports
 * it. The process launcher and free ports come from the chaos suite (shipped, so it cannot
 * import this kit), and so is the proxy a test cuts between regions; the PRNG from the core.
 */
export { assertBuilt, freePort, kvNodeBin } from '@kvstore/chaos/node-process'
export { keyPath } from '@kvstore/client'
export { TestCluster, type ClusterMember, type ClusterOptions } from './cluster.js'
export { LeaderlessCluster, type LeaderlessMember } from './leaderless-cluster.js'
export {
  kvBin,
  kvClusterBin,
  startNodeProcess,
  terminate,
  type NodeProcess,
  type NodeProcessOptions,
} from './node-process.js'
export { fetchJson } from './members.js'
export { http2Preface, rapidResetPair } from './http2-frames.js'
export {
  kvRouterBin,
  startRouterProcess,
  stopRouterProcess,
  type RouterProcess,
} from './router-process.js'
export { metric, metricTotal, metricValue, metricsText } from './metrics.js'
export { Prng, prng, testSeed } from './seed.js'
export { nodeSecurity, useNodeSecurity, type NodeSecurity } from './security.js'
export { rejection, until, waitFor } from './wait.js'
export { CutProxy } from '@kvstore/chaos/region-proxy'
