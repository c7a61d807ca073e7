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
export {
  configurationMarkdown,
  errorTableMarkdown,
  generatedSections,
  metricsMarkdown,
} from './docs.js'
export type { GeneratedSection } from './docs.js'
export { metricsCatalog } from './metrics.js'
export type { MetricInfo } from './metrics.js'
export { registeredRoutes } from './http/openapi.js'
export type { RegisteredRoute } from './http/openapi.js'
export { openApiDocuments, openApiMarkdown } from './http/openapi-docs.js'
export type { OpenApiDocument } from './http/openapi-docs.js'
