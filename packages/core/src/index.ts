export { CoreInvariantError, invariant } from './invariant.js'
export { LogWindow } from './log.js'
export type { EpochRun, LogInit } from './log.js'
export { allLsn, isMajority, majority, majorityLsn } from './quorum.js'
export {
  MembershipChangeInProgressError,
  NotLeaderError,
  ReplicaCore,
  TransferInProgressError,
  epochFreeMax,
  epochStepMax,
} from './replica.js'
/** The bound on every epoch (defined in the protocol's limits), for the simulator and tests. */
export { epochMax } from '@kvstore/protocol/limits'
export type { CoreConfig, CoreInit, MembershipAt, RoleName } from './replica.js'
export {
  liveMajority,
  majoritiesCanBeDisjoint,
  membersOf,
  membershipShapeProblem,
  singleChangeProblem,
} from './membership.js'
export type { CoreMembership } from './membership.js'
export { Progress } from './progress.js'
export type { Inflight, ProgressState } from './progress.js'
export type * from './types.js'
export { HashRing, hash32 } from './ring.js'
export { Prng, prng } from './prng.js'
export type { RingRange } from './ring.js'
export {
  covers,
  descends,
  emptyVersioned,
  merge as mergeVersioned,
  mergeVectors,
  read as readVersioned,
  sameState,
  update as updateVersioned,
} from './dvv.js'
export type { Dot, Sibling, VersionVector, Versioned } from './dvv.js'
export { HybridClock, compareHlc } from './hlc.js'
export type { HlcTimestamp } from './hlc.js'
export { MerkleTree } from './merkle.js'
export type { MerkleEntry } from './merkle.js'
export {
  allTombstones,
  collectable,
  liveSiblings,
  mergeStates,
  resolve as resolveConflicts,
  stateDigest,
  survivorsOf,
  writeState,
} from './conflicts.js'
export type { ConflictMode, Payload, Resolved, VersionedState } from './conflicts.js'
export { compilePermissions, mayList, mayRead, mayWrite, noPermissions } from './access.js'
export type { AccessKind, Permissions, RoleGrants } from './access.js'
/** Leaderless mode's coordinator decisions (quorums, merge, hints, tombstones, anti-entropy). */
export * from './leaderless/index.js'
export { RegionClock, resolveRemoteWrite } from './regions.js'
export type { RemoteOutcome } from './regions.js'
