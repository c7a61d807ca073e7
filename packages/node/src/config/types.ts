/** The configuration's types: the option table's row, the resolved configuration, its errors. */
import { ackModes, type AckMode, type Limits } from '@kvstore/protocol'

export { ackModes, type AckMode }

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof logLevels)[number]

export const clusterModes = ['standalone', 'single-leader', 'leaderless'] as const
export type ClusterMode = (typeof clusterModes)[number]

export const conflictModes = ['siblings', 'lww'] as const
export type ConflictMode = (typeof conflictModes)[number]

/** One member of a cluster, as the configuration names it. */
export interface MemberConfig {
  id: string
  /** Where clients reach it (HTTP/1.1 and h2c). */
  clientUrl: string
  /** Where peers reach it (h2c replication streams). */
  peerUrl: string
}

/** The request limits (key, value, batch, body, list, request id) are protocol's `Limits`. */
export interface NodeConfig extends Limits {
  nodeId: string
  clusterId: string | undefined
  dataDir: string
  host: string
  port: number
  logLevel: LogLevel
  fsync: boolean
  groupCommitWritesMax: number
  groupCommitBytesMax: number
  writeQueueWritesMax: number
  writeQueueBytesMax: number
  requestTimeoutMs: number
  keepAliveTimeoutMs: number
  connectionsMax: number
  h2StreamsMax: number
  shutdownTimeoutMs: number
  mode: ClusterMode
  /** Members in compact form (id@clientURL@peerURL, comma-separated) or JSON. */
  members: string | undefined
  leader: string | undefined
  join: boolean
  learnerPromoteLagEntriesMax: number
  membershipCatchUpTimeoutMs: number
  shardMap: string | undefined
  shardGroup: string | undefined
  shardFenceTimeoutMs: number
  region: string | undefined
  regions: string | undefined
  regionShipBatchBytesMax: number
  regionConflictsMax: number
  regionClockSkewMaxMs: number
  regionTombstoneGcMs: number
  shardMoveBytesPerSMax: number
  defaultAck: AckMode
  ackTimeoutMs: number
  readWaitMs: number
  heartbeatIntervalMs: number
  electionTimeoutMs: number
  logRetentionEntries: number
  logRetentionEntriesMax: number
  replicationInflightBytesMax: number
  replicationAppendBytesMax: number
  requestIdRetentionMs: number
  rollbackEntriesMax: number
  leveldbCacheBytes: number
  leveldbWriteBufferBytes: number
  readCacheBytes: number
  replicas: number
  /** `quorum`, `all` or a number of replicas, as text. */
  defaultW: string
  defaultR: string
  conflicts: ConflictMode
  vnodes: number
  quorumTimeoutMs: number
  hintWindowMs: number
  hintsMax: number
  antiEntropyIntervalMs: number
  handoffBytesPerSMax: number
  tombstoneGcMs: number
  siblingsMax: number
  siblingsWarn: number
  certsDir: string | undefined
  certFile: string | undefined
  keyFile: string | undefined
  caFile: string | undefined
  insecure: boolean
  unsafePlaintextPeers: boolean
  /** Test-only: fencing off (see its row in options-cluster.ts). */
  unsafeNoFencing: boolean
  /** Test-only: configuration changes overlap (see its row in options-cluster.ts). */
  unsafeConcurrentMembershipChanges: boolean
  unsafeShardMoveWithoutFence: boolean
  unsafeRegionSkipConflictRecord: boolean
  auth: boolean
  rootPasswordFile: string | undefined
  authSecretFile: string | undefined
  tokenTtlMs: number
  authUsersMax: number
  authRolesMax: number
  authGrantsMax: number
  auditLog: string
  inflightBodyBytesMax: number
  connectionsPerIpMax: number
  headersTimeoutMs: number
  tlsHandshakeTimeoutMs: number
  h2ResetsPerSecondMax: number
  rateLimitPerSecond: number
  rateLimitBurst: number
  loginsInFlightMax: number
  backupsInFlightMax: number
  backupCommitWaitMs: number
  /** Where this member archives base backups and log segments; undefined: no archive. */
  archiveDir: string | undefined
  archiveSegmentMs: number
  archiveSegmentEntriesMax: number
  archiveSegmentBytesMax: number
  archiveHoldEntriesMax: number
  archiveKeepBackups: number
  archiveBaseIntervalMs: number
  // ---- queued writes (options-queued.ts)
  outboxEntriesMax: number
  outboxBytesMax: number
  outboxAgeMaxMs: number
  ticketsMax: number
  ticketRetentionMs: number
  /** Test-only: queued writes forwarded twice without their request id (options-queued.ts). */
  unsafeOutboxApplyTwice: boolean
  // ---- watches (options-watch.ts)
  watchersMax: number
  watchBufferBytesMax: number
  watchTailBytesMax: number
  watchProgressIntervalMs: number
  /** Test-only: watches show applied entries, not committed ones (options-watch.ts). */
  unsafeWatchApplied: boolean
  /** Test-only: a resumed watch skips its first change (options-watch.ts). */
  unsafeWatchSkipOnResume: boolean
  // ---- leases (options-leases.ts)
  leasesMax: number
  leaseKeysMax: number
  // ---- the dashboard, GET /ui (options-ui.ts)
  uiSampleIntervalMs: number
  uiHistorySamplesMax: number
  uiLeadershipChangesMax: number
  uiStreamsMax: number
  uiStreamBufferBytesMax: number
  // ---- the RESP front (options-resp.ts)
  /** -1: off. */
  respPort: number
  respConnectionsMax: number
  respPendingRepliesMax: number
  respOutputBytesMax: number
  respCommandBytesMax: number
  respArgsMax: number
  respPendingBytesMax: number
  respAuthTimeoutMs: number
}

export type Kind = 'string' | 'integer' | 'bytes' | 'boolean' | 'enum'

export interface OptionSpec {
  key: keyof NodeConfig
  flag: string
  env: string
  kind: Kind
  /** Default value; a function of the other options for derived defaults. */
  default: string | number | boolean | undefined | ((config: Partial<NodeConfig>) => unknown)
  /** How the default reads in --help and the configuration reference. */
  defaultText?: string
  min?: number
  max?: number
  values?: readonly string[]
  group: 'node' | 'security' | 'cluster' | 'leaderless' | 'storage' | 'limits' | 'http' | 'backup'
  description: string
  /**
   * A switch for tests that breaks a guarantee. Its key starts with `unsafe` and its
   * description with UNSAFE; the docs mark it, and the node logs a warning at start-up while
   * it is on.
   */
  unsafe?: true
}

/** A resolved cluster: the members, this node and the leader. */
export interface ClusterConfig {
  mode: Exclude<ClusterMode, 'standalone'>
  self: MemberConfig
  members: MemberConfig[]
  leaderId: string
}

/** A configuration that cannot be used; the message says which option and why. */
export class ConfigError extends Error {
  /** The stable codes of the failed checks that have one (KV_LIMIT_..., see limits.ts). */
  readonly codes: readonly string[]
  constructor(message: string, codes: readonly string[] = []) {
    super(message)
    this.name = 'ConfigError'
    this.codes = codes
  }
}

export const KiB = 1024
export const MiB = 1024 * KiB
