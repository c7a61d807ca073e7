export {
  clusterOf,
  ConfigError,
  configSpec,
  configTableMarkdown,
  helpText,
  parseConfig,
  replicationFrameBytesMax,
} from './config.js'
export type { NodeConfig, OptionSpec } from './config.js'
export { buildApp } from './http/app.js'
export { parseBatch } from './http/routes/batch.js'
export { KvNode, packageVersion } from './node.js'
export type { StartOptions } from './node.js'
export { runNode } from './main.js'
export { errorTableMarkdown } from './docs.js'
