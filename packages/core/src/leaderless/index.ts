export {
  AntiEntropyIndex,
  differingLeaves,
  replicaSetOf,
  ringReplicaSets,
  sharedSets,
} from './anti-entropy.js'
export { mintWrite, siblingsRefusal } from './coordinate.js'
export { hintExpired, mayHintFor, pickStandIn } from './hints.js'
export { mergeIncoming } from './merge.js'
export type { IncomingMerge } from './merge.js'
export { ReadQuorum, mergeReplies, omittedValue, staleReplicas, versionsOf } from './read-quorum.js'
export type { MergePolicy, Omitted, ReadStatus, VersionsOnly } from './read-quorum.js'
export { collectionConfirmed, confirmsTombstone, tombstoneCollectable } from './tombstones.js'
export type { ConfirmationAnswer } from './tombstones.js'
export { WriteQuorum, changeReachable, reachableTargets } from './write-quorum.js'
export type { WriteQuorumOptions, WriteStatus } from './write-quorum.js'
export {
  RingPlacement,
  acceptorFor,
  agreementQuorum,
  chooseValue,
  compareBallots,
  handoffStreams,
  handoffTargets,
  handsOver,
  onAccept,
  onPrepare,
  ownersAfter,
  ownersBefore,
  planAbort,
  planAdvance,
  planJoin,
  planLeave,
  planReplace,
  readOwners,
  ringMember,
  ringMembersMax,
  ringProblem,
  ringRemovedMax,
  sameRing,
  seedRing,
} from './ring-state.js'
export type {
  AcceptorReply,
  AcceptorState,
  Ballot,
  HandoffPhase,
  RingChange,
  RingChangeKind,
  RingMember,
  RingMemberState,
  RingPlan,
  RingRefusal,
  RingState,
  WritePlacement,
} from './ring-state.js'
