/**
 * Node configuration. One table (`configSpec`, in config/spec.ts) defines every option: its
 * flag, environment variable, type, default, bounds and description. Parsing, validation,
 * `kv-node --help` and the configuration reference (docs/reference/configuration.md) all come from it.
 *
 * Precedence, highest first: command-line flags, environment variables, the JSON config file
 * (`--config`), defaults.
 *
 * This module only gathers the parts:
 * - config/types.ts: `NodeConfig`, `OptionSpec`, `ConfigError` and the enumerations;
 * - config/options-*.ts and config/spec.ts: the option table;
 * - config/parse.ts: flags, environment and config file;
 * - config/validate.ts: checks across options;
 * - config/members.ts: --members, the cluster and W/R;
 * - config/text.ts: `kv-node --help` and the markdown table;
 * - ../limits.ts: the limits the options must fit.
 */
export {
  ackModes,
  clusterModes,
  ConfigError,
  conflictModes,
  logLevels,
  type AckMode,
  type ClusterConfig,
  type ClusterMode,
  type ConflictMode,
  type LogLevel,
  type MemberConfig,
  type NodeConfig,
  type OptionSpec,
} from './config/types.js'
export { configSpec } from './config/spec.js'
export { parseConfig, type ParsedArgs } from './config/parse.js'
export { clientTlsOn, isLoopbackHost, peerTlsOn, unsafeOptionsOn } from './config/validate.js'
export { clusterOf, parseMembers, resolveQuorum } from './config/members.js'
export { configTableMarkdown, formatBytes, helpText } from './config/text.js'
export { largestEntryBytes, replicationFrameBytesMax } from './limits.js'
