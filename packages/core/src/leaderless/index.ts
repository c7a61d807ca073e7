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
export { WriteQuorum, reachableTargets } from './write-quorum.js'
export type { WriteQuorumOptions, WriteStatus } from './write-quorum.js'
