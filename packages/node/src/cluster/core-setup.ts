/**
 * How the node sets up its replication core: the core's settings from the node's config, its
 * starting state from the store's metadata, the entries it appends of its own, the counters the
 * metrics read, and how much of the log to keep.
 */
import type { CoreConfig, CoreInit, ReplicaCore } from '@kvstore/core'
import type { Logger } from 'pino'
import { EntryKind, type LogEntry, type Op } from '@kvstore/protocol'
import type { Store } from '@kvstore/storage'
import type { ClusterConfig, NodeConfig } from '../config.js'
import type { PeerSecurity } from './peer-server.js'
import { replicationLimits } from '../limits.js'

export interface ReplicatorOptions {
  config: NodeConfig
  cluster: ClusterConfig
  store: Store
  logger: Logger
  /** Mutual TLS between members and the identity checks on every connection and frame. */
  security: PeerSecurity
  /**
   * The auth store's first records, written in the cluster's first entry (LSN 1) by whichever
   * member leads first; null when the cluster starts with auth off or this data directory
   * already has a log.
   */
  bootstrapOps?: Op[] | null
  /**
   * Fencing off, for the chaos suite's teeth test only (config `unsafeNoFencing`, env
   * KV_UNSAFE_NO_FENCING=1): a leader ignores newer epochs, never steps down for silence, and
   * serves writes and linearizable reads without confirming it still leads. The checkers must
   * catch the result. Default false.
   */
  unsafeNoFencing?: boolean
  now?: () => number
}

/** Ticks (heartbeat intervals) in one election timeout. */
export function electionTicksOf(config: NodeConfig): number {
  return Math.max(2, Math.round(config.electionTimeoutMs / config.heartbeatIntervalMs))
}

/** The core's settings for this node. */
export function coreConfigOf(
  config: NodeConfig,
  cluster: ClusterConfig,
  options: { unsafeNoFencing: boolean; makeNoop: (lsn: number, epoch: number) => Uint8Array },
): CoreConfig {
  return {
    id: cluster.self.id,
    members: cluster.members.map((m) => m.id),
    heartbeatTicks: 1,
    probeTimeoutTicks: 10,
    appendEntriesMax: replicationLimits.appendEntriesMax,
    appendBytesMax: config.replicationAppendBytesMax,
    inflightAppendsMax: replicationLimits.inflightAppendsMax,
    inflightBytesMax: config.replicationInflightBytesMax,
    // Entries kept in memory for followers near the head; one further behind reads from
    // disk. A larger cache mostly adds old-generation objects that slow full GCs.
    logCacheBytesMax: 2 * config.replicationInflightBytesMax,
    // One tick per heartbeat interval; elections after 1 to 2 election timeouts of silence.
    electionTicks: electionTicksOf(config),
    ...(options.unsafeNoFencing || config.unsafeConcurrentMembershipChanges
      ? {
          unsafe: {
            ...(options.unsafeNoFencing ? { skipCheckQuorum: true } : {}),
            // Test-only (config unsafeConcurrentMembershipChanges): the chaos suite must catch it.
            ...(config.unsafeConcurrentMembershipChanges
              ? { concurrentMembershipChanges: true }
              : {}),
          },
        }
      : {}),
    random: Math.random,
    makeNoop: options.makeNoop,
  }
}

/** The core's starting state: what the store holds. */
export function coreInitOf(meta: Store['meta']): CoreInit {
  return {
    epoch: meta.epoch,
    vote: meta.vote,
    commitLsn: meta.commitLsn,
    lastLsn: meta.appliedLsn,
    lastEpoch: meta.lastEpoch,
    logStartLsn: meta.logStartLsn,
    compactedEpoch: meta.compactedEpoch,
    epochRuns: meta.epochRuns,
  }
}

/** Counters for metrics. */
export interface ReplicatorStats {
  /** Entries sent, per follower. */
  readonly entriesShipped: Map<string, number>
  /** Append frames that carried entries, per follower. */
  readonly appendFramesShipped: Map<string, number>
  readonly snapshotsSent: number
  readonly snapshotsInstalled: number
  /** Times this node won an election. */
  electionsWon: number
  /** Times this node stopped leading. */
  stepDowns: number
  ackTimeouts: number
  badFrames: number
  /** Elections this node started (pre-votes that turned into votes). */
  readonly electionsStarted: number
  /** Peer messages the core dropped for their epoch. */
  readonly epochMessagesDropped: number
}

/** The replicator's counters; those kept elsewhere are read from where they are kept. */
export function replicatorStats(
  core: Pick<ReplicaCore, 'electionsStarted' | 'epochMessagesDropped'>,
  snapshots: { sent: () => number; installed: () => number },
): ReplicatorStats {
  return {
    entriesShipped: new Map<string, number>(),
    appendFramesShipped: new Map<string, number>(),
    get snapshotsSent() {
      return snapshots.sent()
    },
    get snapshotsInstalled() {
      return snapshots.installed()
    },
    electionsWon: 0,
    stepDowns: 0,
    ackTimeouts: 0,
    badFrames: 0,
    get electionsStarted() {
      return core.electionsStarted
    },
    get epochMessagesDropped() {
      return core.epochMessagesDropped
    },
  }
}

/**
 * An entry that changes nothing: a new leader's first, or a linearizable read's barrier. The
 * very first entry of a cluster (LSN 1) carries the auth store's first records instead, so
 * that the cluster is secured by the same entry that starts it, and no LSN is spent on it.
 */
export function noopEntryOf(
  lsn: number,
  epoch: number,
  bootstrapOps: Op[] | null,
  timestampMs: number,
): LogEntry {
  if (lsn === 1 && bootstrapOps !== null && bootstrapOps.length > 0) {
    return { epoch, lsn, kind: EntryKind.Batch, ops: bootstrapOps, timestampMs, requestId: '' }
  }
  return { epoch, lsn, kind: EntryKind.Noop, ops: [], timestampMs, requestId: '' }
}

/**
 * Where the log may be compacted from: `retentionEntries` behind the commit LSN; on a leader,
 * no further than a connected follower still needs (`followerMatches`), up to
 * `retentionEntriesMax`; never past the commit LSN.
 */
export function retainFromLsn(input: {
  commitLsn: number
  isLeader: boolean
  followerMatches: number[]
  retentionEntries: number
  retentionEntriesMax: number
}): number {
  const { commitLsn: commit } = input
  let retainFrom = commit + 1 - input.retentionEntries
  if (input.isLeader) {
    for (const match of input.followerMatches) retainFrom = Math.min(retainFrom, match + 1)
    retainFrom = Math.max(retainFrom, commit + 1 - input.retentionEntriesMax)
  }
  return Math.min(retainFrom, commit + 1)
}
