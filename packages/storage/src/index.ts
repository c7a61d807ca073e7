export { hashDigestRecord } from './digest.js'
export { requestFingerprint, sameRequest } from './fingerprint.js'
export { InvariantError, StorageError, invariant } from './invariant.js'
export { checkStorageLimits, storageLimits } from './limits.js'
export { RecordCache } from './record-cache.js'
export { Sequencer, standaloneWriter } from './sequencer.js'
export type {
  LogWriter,
  OpResult,
  SequencerOptions,
  WriteOp,
  WriteRequest,
  WriteResult,
} from './sequencer.js'
export { Store } from './store.js'
export { encodeEntries } from './writer.js'
export type {
  BatchStats,
  EncodedEntries,
  EpochRun,
  HardStateUpdate,
  ListItem,
  ListOptions,
  LogReadLimits,
  RawLogEntry,
  RollbackRecord,
  StateDigest,
  StateSnapshot,
  StoreLogger,
  StoreOptions,
  StoreState,
} from './types.js'
