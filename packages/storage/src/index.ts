export { InvariantError, StorageError, invariant } from './invariant.js'
export { RecordCache } from './record-cache.js'
export { Sequencer } from './sequencer.js'
export type { OpResult, SequencerOptions, WriteOp, WriteRequest, WriteResult } from './sequencer.js'
export { Store, encodeEntries } from './store.js'
export type {
  BatchStats,
  EncodedEntries,
  HardStateUpdate,
  ListItem,
  ListOptions,
  StateDigest,
  StateSnapshot,
  StoreLogger,
  StoreOptions,
  StoreState,
} from './store.js'
