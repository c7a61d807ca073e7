/**
 * Every bound the store enforces. Each one has a default, which a node's configuration may
 * change within the hard ceiling given here, and which is checked when the node starts.
 * Exceeding a limit at run time gives a stable error code; nothing grows without bound.
 *
 * Units come last in every name (bytes, ops, ms, writes).
 *
 * This is the protocol package's one limits module (as TigerBeetle's constants.zig): request
 * and storage limits, what a replication frame and a leaderless peer message may hold, and the
 * bounds on LSNs and epochs. `limitsFitProblems` checks that they fit each other, and runs
 * when this module loads: a build whose limits contradict each other does not start.
 */

const KiB = 1024
const MiB = 1024 * KiB

/** Default limits for requests and storage. */
export const limitsDefault = {
  /** Longest key, in UTF-8 bytes. */
  keyBytesMax: 1 * KiB,
  /** Largest value, in bytes. */
  valueBytesMax: 1 * MiB,
  /** Most operations in one atomic batch. */
  batchOpsMax: 1000,
  /** Largest request body, in bytes (batches are JSON with base64 values, so they need room). */
  requestBodyBytesMax: 4 * MiB,
  /** Most keys one list page returns. */
  listLimitMax: 1000,
  /** Keys one list page returns when the request gives no limit. */
  listLimitDefault: 100,
  /** A list page stops once it holds this many bytes of keys and values. */
  listBytesMax: 4 * MiB,
  /** Longest client request id, in bytes. */
  requestIdBytesMax: 128,
  /** Most log entries that share one LevelDB batch and one fsync (1 turns group commit off). */
  groupCommitWritesMax: 1024,
  /** Most bytes of encoded entries that share one LevelDB batch. */
  groupCommitBytesMax: 8 * MiB,
  /** Most writes waiting for the disk before new writes are refused with KV_ERR_OVERLOADED. */
  writeQueueWritesMax: 16_384,
  /** Most bytes waiting for the disk before new writes are refused with KV_ERR_OVERLOADED. */
  writeQueueBytesMax: 256 * MiB,
} as const

/** Values that configuration may never exceed. */
export const limitsCeiling = {
  keyBytesMax: 8 * KiB,
  valueBytesMax: 64 * MiB,
  batchOpsMax: 100_000,
  requestBodyBytesMax: 256 * MiB,
  listLimitMax: 100_000,
  listBytesMax: 1024 * MiB,
  requestIdBytesMax: 1 * KiB,
  groupCommitWritesMax: 100_000,
  groupCommitBytesMax: 256 * MiB,
  writeQueueWritesMax: 10_000_000,
  writeQueueBytesMax: 4096 * MiB,
} as const

/** Limits on what a peer may send in one frame. */
export const frameLimits = {
  /** Largest frame on the wire, length prefix excluded. */
  frameBytesMax: 64 * MiB,
  nodeIdBytesMax: 64,
  entriesPerFrameMax: 100_000,
  membersPerFrameMax: 1000,
  snapshotRecordsPerFrameMax: 100_000,
  textBytesMax: 4096,
} as const

/** Limits on what a versioned record or a peer message may hold. */
export const leaderlessLimits = {
  /** Actors in one version vector (every node that ever coordinated a write of the key). */
  vectorEntriesMax: 1024,
  /** Siblings in one record as decoded; the configured cap (siblingsMax) is far lower. */
  siblingsMax: 1024,
  actorBytesMax: 128,
  /** Records in one anti-entropy message. */
  recordsPerMessageMax: 100_000,
  /** Key digests in one RangeDigests message, and keys named in one DigestsReply. */
  digestsPerMessageMax: 1_000_000,
  /** Replica sets named in one RangeRoots request. */
  setsPerMessageMax: 100_000,
  /** Leaf digests in one reply (a tree of depth 20 at most). */
  leavesPerMessageMax: 2 ** 20,
  /** Auth records in one AuthSync or AuthState message. */
  authRecordsPerMessageMax: 1_000_000,
  /** An auth digest's length. */
  authDigestBytesMax: 128,
  textBytesMax: 4096,
  /** Members one ring names. */
  ringMembersMax: 256,
  /** Removed ids one ring remembers (the oldest are forgotten first). */
  ringRemovedMax: 1024,
  /** Largest peer message, in bytes. */
  messageBytesMax: 64 * MiB,
} as const

/** The request and storage limits a node runs with. */
export interface Limits {
  keyBytesMax: number
  valueBytesMax: number
  batchOpsMax: number
  requestBodyBytesMax: number
  listLimitMax: number
  listLimitDefault: number
  listBytesMax: number
  requestIdBytesMax: number
}

/**
 * Bound on LSNs. LSNs are uint64 on disk and on the wire, but are JavaScript numbers in memory,
 * so they must stay exact integers, and so must the next one: a valid LSN is strictly below
 * `lsnMax`, so that `lsn + 1` is always safe. Decoders refuse anything else.
 */
export const lsnMax = Number.MAX_SAFE_INTEGER

/**
 * Largest epoch anything may carry: a frame, a log entry, a record on disk, a node's state.
 *
 * Why a bound far below 2^53: an epoch is the election term, raised by one per election, and a
 * peer's higher epoch is adopted at once. With no bound but "a safe integer", one frame at
 * 2^53 - 1 moved every node there, after which no election could ever start (2^53 is not a
 * safe integer). Every value at or below `epochMax` leaves 2^53 - 2^48 (about 8.7e15) safe
 * increments above it, so `epoch + 1` is never the thing that fails. Legitimate elections never
 * get near it: 2^48 elections at one per millisecond take about 8900 years.
 *
 * The bound alone does not keep a cluster able to elect, though: peers refuse frames above it,
 * so a node sitting at `epochMax` could not campaign. The core therefore never lets one message
 * carry it most of the way there (see `epochFreeMax` and `epochStepMax` in the core's
 * replica.ts): no single frame, valid or not, can leave a node unable to elect.
 */
export const epochMax = 2 ** 48

/** A valid LSN: a safe integer in [min, lsnMax). */
export function isLsn(value: unknown, min = 0): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= min && value < lsnMax
}

/** A valid epoch: an integer in [0, epochMax]. */
export function isEpoch(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 && value <= epochMax
}

/** Log entry format version written by this build. */
export const formatVersion = 1

/**
 * Checks the relations between limits that a configuration could break. Returns a list of
 * problems, empty when the limits are coherent.
 */
export function checkLimits(limits: Limits): string[] {
  const problems: string[] = []
  const positive = [
    'keyBytesMax',
    'valueBytesMax',
    'batchOpsMax',
    'requestBodyBytesMax',
    'listLimitMax',
    'listLimitDefault',
    'listBytesMax',
    'requestIdBytesMax',
  ] as const
  for (const name of positive) {
    const value = limits[name]
    if (!Number.isSafeInteger(value) || value < 1) {
      problems.push(`${name} must be a positive integer, got ${String(value)}`)
    }
  }
  for (const name of Object.keys(limitsCeiling) as (keyof typeof limitsCeiling)[]) {
    if (!(name in limits)) continue
    const value = (limits as unknown as Record<string, number>)[name]
    if (value !== undefined && value > limitsCeiling[name]) {
      problems.push(`${name} is ${value}, above its ceiling of ${limitsCeiling[name]}`)
    }
  }
  if (limits.requestBodyBytesMax < limits.valueBytesMax) {
    problems.push(
      `requestBodyBytesMax (${limits.requestBodyBytesMax}) must be at least valueBytesMax (${limits.valueBytesMax}), or a value of the largest size could never be sent`,
    )
  }
  if (limits.listLimitDefault > limits.listLimitMax) {
    problems.push(
      `listLimitDefault (${limits.listLimitDefault}) must not exceed listLimitMax (${limits.listLimitMax})`,
    )
  }
  return problems
}

/** The limits `limitsFitProblems` checks, as this module defines them. */
export interface ProtocolLimits {
  limitsDefault: Readonly<Record<keyof typeof limitsDefault, number>>
  limitsCeiling: Readonly<Record<keyof typeof limitsCeiling, number>>
  frameLimits: Readonly<Record<keyof typeof frameLimits, number>>
  leaderlessLimits: Readonly<Record<keyof typeof leaderlessLimits, number>>
}

/**
 * Checks that this package's limits fit each other: the defaults are coherent and within
 * their ceilings, and what a default request may carry fits a replication frame and a peer
 * message. Returns a list of problems, empty when they fit. Runs at load, below; a
 * configuration's own values are checked by the node when it starts.
 */
export function limitsFitProblems(
  limits: ProtocolLimits = { limitsDefault, limitsCeiling, frameLimits, leaderlessLimits },
): string[] {
  const { limitsDefault: d, limitsCeiling: c, frameLimits: f, leaderlessLimits: l } = limits
  const problems = checkLimits(d).map((p) => `limitsDefault: ${p}`)
  for (const name of Object.keys(c) as (keyof typeof limitsCeiling)[]) {
    if (c[name] < d[name])
      problems.push(`limitsCeiling.${name} (${c[name]}) is below its default (${d[name]})`)
  }
  if (c.requestIdBytesMax > f.textBytesMax) {
    problems.push(
      `limitsCeiling.requestIdBytesMax (${c.requestIdBytesMax}) must fit frameLimits.textBytesMax (${f.textBytesMax}): request ids travel in snapshot frames`,
    )
  }
  if (d.requestBodyBytesMax >= f.frameBytesMax) {
    problems.push(
      `limitsDefault.requestBodyBytesMax (${d.requestBodyBytesMax}) must be below frameLimits.frameBytesMax (${f.frameBytesMax}): the largest default write must fit one replication frame`,
    )
  }
  if (d.valueBytesMax >= l.messageBytesMax) {
    problems.push(
      `limitsDefault.valueBytesMax (${d.valueBytesMax}) must be below leaderlessLimits.messageBytesMax (${l.messageBytesMax}): the largest default value must fit one peer message`,
    )
  }
  if (f.nodeIdBytesMax > l.actorBytesMax) {
    problems.push(
      `frameLimits.nodeIdBytesMax (${f.nodeIdBytesMax}) must be at most leaderlessLimits.actorBytesMax (${l.actorBytesMax}): a member id is an actor in version vectors`,
    )
  }
  return problems
}

const loadProblems = limitsFitProblems()
if (loadProblems.length > 0) {
  throw new Error(`protocol limits do not fit each other: ${loadProblems.join('; ')}`)
}
