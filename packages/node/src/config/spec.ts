/**
 * The option table: one row per option, with its flag, environment variable, type, default,
 * bounds and description. Parsing, validation, `kv-node --help` and the
 * configuration reference all come from it. The rows live in three files by area; their order
 * here is the order of the reference table.
 */
import { backupOptions } from './options-backup.js'
import { clusterOptions } from './options-cluster.js'
import { nodeOptions } from './options-node.js'
import { queuedOptions } from './options-queued.js'
import { leaseOptions } from './options-leases.js'
import { serverOptions } from './options-server.js'
import { watchOptions } from './options-watch.js'
import { uiOptions } from './options-ui.js'
import { respOptions } from './options-resp.js'
import type { OptionSpec } from './types.js'

export const configSpec: readonly OptionSpec[] = [
  ...nodeOptions,
  ...serverOptions,
  ...clusterOptions,
  ...queuedOptions,
  ...leaseOptions,
  ...backupOptions,
  ...watchOptions,
  ...uiOptions,
  ...respOptions,
]
