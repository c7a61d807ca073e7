/** The node package's limits. */
import type { NodeConfig } from './config/types.js'

/** An upper bound on the encoded size of one log entry under these limits. */
export function largestEntryBytes(config: NodeConfig): number {
  const payload = Math.max(config.valueBytesMax + config.keyBytesMax, config.requestBodyBytesMax)
  // Field tags and lengths: a few bytes per op, and the entry's own fields.
  return payload + config.requestIdBytesMax + config.batchOpsMax * 16 + 1024
}

/**
 * The largest replication frame this node sends or accepts: an append carries up to
 * `replicationAppendBytesMax` of entries but always at least one whole entry, and a snapshot
 * chunk stops after the record that passes that size.
 */
export function replicationFrameBytesMax(config: NodeConfig): number {
  return config.replicationAppendBytesMax + largestEntryBytes(config) + 64 * 1024
}
