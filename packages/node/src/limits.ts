/**
 * The node package's limits, in one module (as TigerBeetle's constants.zig). Every name puts
 * its unit last. Two checks keep them honest, and every problem they find carries a stable
 * code (`KV_LIMIT_...`):
 * - `constantProblems` checks the package's own constants against each other and against
 *   protocol's limits. It runs when this module loads, so a build whose constants contradict
 *   each other never starts.
 * - `configLimitProblems` checks an effective configuration (the sizes an operator may set)
 *   against the same. `parseConfig` runs it at start-up and refuses the configuration, naming
 *   the code of every check that failed.
 *
 * Sizes users choose (valueBytesMax, requestBodyBytesMax, ...) are options in the config table
 * (config/options-*.ts), with defaults and ceilings from protocol's limits.ts; this module
 * holds the constants no option sets, and the relations between both.
 */
import { frameLimits, leaderlessLimits } from '@kvstore/protocol'
import { checkLimits } from '@kvstore/protocol/limits'
import type { NodeConfig } from './config/types.js'

const KiB = 1024
const MiB = 1024 * KiB

/** Upper bounds on what the node's encoders add around user data (not exact sizes). */
export const encodingLimits = {
  /** Per op in a log entry: field tags, lengths and flags. */
  entryOpOverheadBytesMax: 16,
  /** A log entry's own fields, besides its ops and its request id. */
  entryOverheadBytesMax: 1 * KiB,
  /** A replication frame's own fields, around its entries or snapshot records. */
  frameOverheadBytesMax: 64 * KiB,
  /** Per sibling in a leaderless record: its dot, timestamp, flags and lengths. */
  siblingOverheadBytesMax: 256,
  /** Per version-vector entry in a leaderless record, besides the actor's id: counter, tags. */
  vectorEntryOverheadBytesMax: 16,
  /** A leaderless record's own fields, besides its key, version vector and siblings. */
  recordOverheadBytesMax: 1 * KiB,
} as const

/** Longest member id (--id, and the ids in --members). */
export const memberIdBytesMax = 64

/**
 * The replicator's fixed limits (single-leader mode), passed to the core
 * (cluster/core-setup.ts) and used to read the log for a follower (cluster/log-io.ts).
 */
export const replicationLimits = {
  /** Entries in one append frame, at most. */
  appendEntriesMax: 4096,
  /** Append frames sent to one follower and not yet acknowledged, at most. */
  inflightAppendsMax: 256,
} as const

/**
 * Leaderless mode's fixed limits: the engine (leaderless/*.ts) and the peer channel
 * (leaderless/rpc.ts) import them from here.
 */
/** Leaf buckets per replica-set Merkle tree: 2^treeDepth. */
export const treeDepth = 10
/** Dots reserved per durable write of the counter. */
export const counterReservation = 10_000
/** Records sent in one anti-entropy RangeKeys message, at most. */
export const aeRecordsPerMessageMax = 2000
/** How long an anti-entropy call may take (a batch of merges on a busy peer) (ms). */
export const aeCallTimeoutMs = 30_000
/**
 * Key digests sent in one anti-entropy RangeDigests message, at most (a leaf with more keys,
 * or more key bytes than aeBytesPerMessageMax, is exchanged by records instead).
 */
export const aeDigestsPerMessageMax = 20_000
/** Leaves asked for in one RangeKeys message, at most. */
export const aeLeavesPerMessageMax = 64
/**
 * Bytes of keys and values in one anti-entropy message, roughly, at most: a message is cut
 * before the record that would cross it (a record alone always goes).
 */
export const aeBytesPerMessageMax = 8 * MiB
/** Anti-entropy records merged at once (their writes share LevelDB batches). */
export const aeMergeConcurrency = 32
/**
 * Bytes an anti-entropy message counts per record beside its key and values (vector, dots,
 * timestamps, framing): an estimate for cutting messages, not a bound.
 */
export const recordOverheadBytes = 64
/** Bytes an anti-entropy message counts per sibling beside its value: an estimate. */
export const siblingOverheadBytes = 48
/** Hints read per page when replaying. */
export const hintReplayBatch = 256
/** Hints in flight at once to one member while replaying. */
export const hintReplayConcurrency = 16
/** Longest a replay pass to one member runs before the next pass takes over (ms). */
export const hintReplayBudgetMs = 5000
/** How far ahead of this clock a peer's timestamp may be before it is refused. */
export const clockSkewMaxMs = 60_000
/** Entries read per page when loading the local state and counting hints at start. */
export const loadPageEntries = 10_000

/**
 * Handoff records merged at once: more than anti-entropy's, since a handoff moves whole ranges
 * and more writes per LevelDB batch (and fsync) is what makes it fast; the records are in
 * memory already (one message, bounded).
 */
export const handoffMergeConcurrency = 256
/** Entries a handoff source reads from its store per pull, at most (it then answers). */
export const handoffScanEntriesMax = 8192
/** Bytes of records a handoff puller asks for per pull (and a leaving member pushes per call). */
export const handoffBytesPerMessageMax = 4 * MiB
/** How often the member driving a handoff tells the others how far it got (ms). */
export const handoffProgressIntervalMs = 1000
/** How long the member driving a handoff waits after a failed step before retrying (ms). */
export const handoffRetryMs = 1000
/**
 * How long the member driving a handoff waits for every live member to hold the switched ring
 * before it ends the change (ms); a member still behind then refuses nothing it should not,
 * it learns the ring on its next message.
 */
export const ringSwitchWaitMs = 15_000
/** How long a ring fetch, proposal step or commit push to one member may take (ms). */
export const ringCallTimeoutMs = 5000

/** Calls waiting on one peer at most; past it a call fails at once. */
export const callsInFlightMax = 16_384
/** Bytes waiting to be sent to one peer at most; past it a call fails at once. */
export const channelBufferBytesMax = 64 * MiB
/** Requests from one peer in service at once; past it the channel is not read. */
export const servesInFlightMax = 1024
/** Bytes of requests from one peer's channel in service at once; past it the channel is not read. */
export const servesBytesMax = 128 * MiB
/** One-request streams (`/peer/v1/ll`) one peer session may have open at once. */
export const oneShotStreamsMax = 8
/** Bytes one peer session may have buffered across its one-request streams. */
export const oneShotBytesMax = leaderlessLimits.messageBytesMax + 16 * MiB

/** The leaderless limits the checks below take. */
export const leaderlessNodeLimits = {
  aeRecordsPerMessageMax,
  aeDigestsPerMessageMax,
  aeBytesPerMessageMax,
  aeLeavesPerMessageMax,
  treeDepth,
  recordOverheadBytes,
  channelBufferBytesMax,
  servesBytesMax,
  oneShotBytesMax,
} as const

/** Every fixed limit of the node package, as the checks take them. */
export interface NodeConstants {
  encoding: Readonly<Record<keyof typeof encodingLimits, number>>
  memberIdBytesMax: number
  replication: Readonly<Record<keyof typeof replicationLimits, number>>
  leaderless: Readonly<Record<keyof typeof leaderlessNodeLimits, number>>
}

/** Protocol's limits that the node's must fit. */
export interface PeerLimits {
  frame: Readonly<Record<keyof typeof frameLimits, number>>
  leaderless: Readonly<Record<keyof typeof leaderlessLimits, number>>
}

export const nodeConstants: NodeConstants = {
  encoding: encodingLimits,
  memberIdBytesMax,
  replication: replicationLimits,
  leaderless: leaderlessNodeLimits,
}

export const peerLimits: PeerLimits = { frame: frameLimits, leaderless: leaderlessLimits }

/** The stable code of each check, named in the start-up error when it fails. */
export const limitCodes = [
  // Constants, checked at load.
  'KV_LIMIT_MEMBER_ID',
  'KV_LIMIT_APPEND_ENTRIES',
  'KV_LIMIT_AE_RECORDS',
  'KV_LIMIT_AE_DIGESTS',
  'KV_LIMIT_AE_LEAVES',
  'KV_LIMIT_AE_BUDGET',
  'KV_LIMIT_PEER_BUFFER',
  // Configuration, checked at start-up.
  'KV_LIMIT_REQUEST',
  'KV_LIMIT_REPLICATION_FRAME',
  'KV_LIMIT_REPLICATION_WINDOW',
  'KV_LIMIT_WRITE_QUEUE',
  'KV_LIMIT_INFLIGHT_BODY',
  'KV_LIMIT_RECORD_MESSAGE',
  'KV_LIMIT_AE_MESSAGE',
  'KV_LIMIT_SIBLINGS',
] as const
export type LimitCode = (typeof limitCodes)[number]

/** A pair of limits that do not fit, and why that matters. */
export interface LimitProblem {
  code: LimitCode
  message: string
}

/** Limits that do not fit each other; the message names every problem with its code. */
export class LimitsError extends Error {
  readonly problems: readonly LimitProblem[]
  constructor(what: string, problems: readonly LimitProblem[]) {
    super(`${what}: ${problems.map(formatLimitProblem).join('; ')}`)
    this.name = 'LimitsError'
    this.problems = problems
  }
}

export function formatLimitProblem(problem: LimitProblem): string {
  return `${problem.code}: ${problem.message}`
}

/** The sizes of a configuration that the limits depend on. */
export type LimitsConfig = Pick<
  NodeConfig,
  | 'mode'
  | 'keyBytesMax'
  | 'valueBytesMax'
  | 'batchOpsMax'
  | 'requestBodyBytesMax'
  | 'listLimitMax'
  | 'listLimitDefault'
  | 'listBytesMax'
  | 'requestIdBytesMax'
  | 'writeQueueBytesMax'
  | 'inflightBodyBytesMax'
  | 'replicationAppendBytesMax'
  | 'replicationInflightBytesMax'
  | 'siblingsMax'
  | 'siblingsWarn'
>

/** An upper bound on the encoded size of one log entry under these limits. */
export function largestEntryBytes(
  config: Pick<
    NodeConfig,
    'valueBytesMax' | 'keyBytesMax' | 'requestBodyBytesMax' | 'requestIdBytesMax' | 'batchOpsMax'
  >,
  encoding: NodeConstants['encoding'] = encodingLimits,
): number {
  const payload = Math.max(config.valueBytesMax + config.keyBytesMax, config.requestBodyBytesMax)
  return (
    payload +
    config.requestIdBytesMax +
    config.batchOpsMax * encoding.entryOpOverheadBytesMax +
    encoding.entryOverheadBytesMax
  )
}

/**
 * The largest replication frame this node sends or accepts: an append carries up to
 * `replicationAppendBytesMax` of entries but always at least one whole entry, and a snapshot
 * chunk stops after the record that passes that size.
 */
export function replicationFrameBytesMax(
  config: Parameters<typeof largestEntryBytes>[0] & Pick<NodeConfig, 'replicationAppendBytesMax'>,
  encoding: NodeConstants['encoding'] = encodingLimits,
): number {
  return (
    config.replicationAppendBytesMax +
    largestEntryBytes(config, encoding) +
    encoding.frameOverheadBytesMax
  )
}

/**
 * An upper bound on one key's leaderless record (all its siblings, its version vector and
 * its key), as stored, sent in a hint, a read or write reply, or an anti-entropy message.
 */
export function leaderlessRecordBytesMax(
  config: Pick<NodeConfig, 'keyBytesMax' | 'valueBytesMax' | 'siblingsMax'>,
  encoding: NodeConstants['encoding'] = encodingLimits,
  peer: PeerLimits = peerLimits,
): number {
  const vector =
    peer.leaderless.vectorEntriesMax *
    (peer.leaderless.actorBytesMax + encoding.vectorEntryOverheadBytesMax)
  const siblings = config.siblingsMax * (config.valueBytesMax + encoding.siblingOverheadBytesMax)
  return config.keyBytesMax + vector + siblings + encoding.recordOverheadBytesMax
}

/** Checks the node's constants against each other and protocol's limits; empty when they fit. */
export function constantProblems(
  constants: NodeConstants = nodeConstants,
  peer: PeerLimits = peerLimits,
): LimitProblem[] {
  const problems: LimitProblem[] = []
  const { replication, leaderless } = constants
  const idMax = Math.min(peer.frame.nodeIdBytesMax, peer.leaderless.actorBytesMax)
  if (constants.memberIdBytesMax > idMax) {
    problems.push({
      code: 'KV_LIMIT_MEMBER_ID',
      message: `memberIdBytesMax (${constants.memberIdBytesMax}) must be at most ${idMax} (frameLimits.nodeIdBytesMax and leaderlessLimits.actorBytesMax), or peers would refuse the frames and records that name a member`,
    })
  }
  if (replication.appendEntriesMax > peer.frame.entriesPerFrameMax) {
    problems.push({
      code: 'KV_LIMIT_APPEND_ENTRIES',
      message: `appendEntriesMax (${replication.appendEntriesMax}) must be at most frameLimits.entriesPerFrameMax (${peer.frame.entriesPerFrameMax}), or followers would refuse full appends`,
    })
  }
  if (leaderless.aeRecordsPerMessageMax > peer.leaderless.recordsPerMessageMax) {
    problems.push({
      code: 'KV_LIMIT_AE_RECORDS',
      message: `aeRecordsPerMessageMax (${leaderless.aeRecordsPerMessageMax}) must be at most leaderlessLimits.recordsPerMessageMax (${peer.leaderless.recordsPerMessageMax}), or peers would refuse full anti-entropy messages`,
    })
  }
  if (leaderless.aeDigestsPerMessageMax > peer.leaderless.digestsPerMessageMax) {
    problems.push({
      code: 'KV_LIMIT_AE_DIGESTS',
      message: `aeDigestsPerMessageMax (${leaderless.aeDigestsPerMessageMax}) must be at most leaderlessLimits.digestsPerMessageMax (${peer.leaderless.digestsPerMessageMax}), or peers would refuse full digest messages`,
    })
  }
  const leaves = 2 ** leaderless.treeDepth
  if (leaves > peer.leaderless.leavesPerMessageMax) {
    problems.push({
      code: 'KV_LIMIT_AE_LEAVES',
      message: `a Merkle tree of depth ${leaderless.treeDepth} has ${leaves} leaves, more than one reply may carry (leaderlessLimits.leavesPerMessageMax, ${peer.leaderless.leavesPerMessageMax})`,
    })
  }
  if (leaderless.aeLeavesPerMessageMax < 1 || leaderless.aeLeavesPerMessageMax > leaves) {
    problems.push({
      code: 'KV_LIMIT_AE_LEAVES',
      message: `aeLeavesPerMessageMax (${leaderless.aeLeavesPerMessageMax}) must be between 1 and the tree's ${leaves} leaves`,
    })
  }
  // A message holds its byte budget, or one record alone (configLimitProblems checks that a
  // record fits a peer message); the framing around each record must fit beside the budget.
  const aeFramedBytes =
    leaderless.aeBytesPerMessageMax +
    leaderless.aeRecordsPerMessageMax * leaderless.recordOverheadBytes
  if (aeFramedBytes > peer.leaderless.messageBytesMax) {
    problems.push({
      code: 'KV_LIMIT_AE_BUDGET',
      message: `aeBytesPerMessageMax (${leaderless.aeBytesPerMessageMax}) plus ${leaderless.aeRecordsPerMessageMax} records' framing (${leaderless.recordOverheadBytes} bytes each) must fit leaderlessLimits.messageBytesMax (${peer.leaderless.messageBytesMax})`,
    })
  }
  for (const name of ['channelBufferBytesMax', 'servesBytesMax', 'oneShotBytesMax'] as const) {
    if (leaderless[name] < peer.leaderless.messageBytesMax) {
      problems.push({
        code: 'KV_LIMIT_PEER_BUFFER',
        message: `${name} (${leaderless[name]}) must be at least leaderlessLimits.messageBytesMax (${peer.leaderless.messageBytesMax}), or the largest peer message could never pass`,
      })
    }
  }
  return problems
}

/**
 * Checks the limits of an effective configuration against each other, the node's constants
 * and protocol's limits; empty when they fit. `parseConfig` runs it at start-up.
 */
export function configLimitProblems(
  config: LimitsConfig,
  constants: NodeConstants = nodeConstants,
  peer: PeerLimits = peerLimits,
): LimitProblem[] {
  const problems: LimitProblem[] = checkLimits(config).map((message) => ({
    code: 'KV_LIMIT_REQUEST',
    message,
  }))
  const frameBytes = replicationFrameBytesMax(config, constants.encoding)
  if (config.mode !== 'standalone' && frameBytes > peer.frame.frameBytesMax) {
    problems.push({
      code: 'KV_LIMIT_REPLICATION_FRAME',
      message: `replication frames must carry the largest write: replicationAppendBytesMax (${config.replicationAppendBytesMax}) plus the largest entry (valueBytesMax + keyBytesMax, or requestBodyBytesMax: ${largestEntryBytes(config, constants.encoding)}) must stay under ${peer.frame.frameBytesMax} bytes`,
    })
  }
  if (
    config.mode === 'single-leader' &&
    config.replicationInflightBytesMax < config.replicationAppendBytesMax
  ) {
    problems.push({
      code: 'KV_LIMIT_REPLICATION_WINDOW',
      message: `replicationInflightBytesMax (${config.replicationInflightBytesMax}) must be at least replicationAppendBytesMax (${config.replicationAppendBytesMax}), or a follower's window could not hold one full append`,
    })
  }
  if (config.writeQueueBytesMax < config.requestBodyBytesMax) {
    problems.push({
      code: 'KV_LIMIT_WRITE_QUEUE',
      message: `writeQueueBytesMax (${config.writeQueueBytesMax}) must be at least requestBodyBytesMax (${config.requestBodyBytesMax}), or the largest write could never be queued`,
    })
  }
  if (config.inflightBodyBytesMax < config.requestBodyBytesMax) {
    problems.push({
      code: 'KV_LIMIT_INFLIGHT_BODY',
      message: `inflightBodyBytesMax (${config.inflightBodyBytesMax}) must be at least requestBodyBytesMax (${config.requestBodyBytesMax}), or the largest request could never be taken`,
    })
  }
  if (config.mode === 'leaderless') {
    const recordBytes = leaderlessRecordBytesMax(config, constants.encoding, peer)
    if (recordBytes > peer.leaderless.messageBytesMax) {
      problems.push({
        code: 'KV_LIMIT_RECORD_MESSAGE',
        message: `siblingsMax (${config.siblingsMax}) values of valueBytesMax (${config.valueBytesMax}) bytes must fit in one peer message of ${peer.leaderless.messageBytesMax} bytes (a record may take ${recordBytes}); lower one of them`,
      })
    } else if (
      recordBytes + constants.leaderless.aeBytesPerMessageMax >
      peer.leaderless.messageBytesMax
    ) {
      problems.push({
        code: 'KV_LIMIT_AE_MESSAGE',
        message: `an anti-entropy message (aeBytesPerMessageMax, ${constants.leaderless.aeBytesPerMessageMax}, plus the record that passes it, up to ${recordBytes} with siblingsMax ${config.siblingsMax} and valueBytesMax ${config.valueBytesMax}) must fit in one peer message of ${peer.leaderless.messageBytesMax} bytes; lower siblingsMax or valueBytesMax`,
      })
    }
    if (config.siblingsMax > peer.leaderless.siblingsMax) {
      problems.push({
        code: 'KV_LIMIT_SIBLINGS',
        message: `siblingsMax (${config.siblingsMax}) must be at most ${peer.leaderless.siblingsMax}, the most siblings a peer accepts in one record`,
      })
    }
    if (config.siblingsWarn > config.siblingsMax) {
      problems.push({
        code: 'KV_LIMIT_SIBLINGS',
        message: `siblingsWarn (${config.siblingsWarn}) must be at most siblingsMax (${config.siblingsMax})`,
      })
    }
  }
  return problems
}

/** Throws `LimitsError` when an effective configuration's limits do not fit. */
export function assertConfigLimits(config: LimitsConfig): void {
  const problems = configLimitProblems(config)
  if (problems.length > 0) throw new LimitsError('the configured limits do not fit', problems)
}

// At load: a build whose constants contradict each other, or protocol's, never starts.
const loadProblems = constantProblems()
if (loadProblems.length > 0) {
  throw new LimitsError('the node package limits do not fit each other', loadProblems)
}
