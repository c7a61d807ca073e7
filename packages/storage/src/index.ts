export { DigestHasher, hashDigestRecord } from './digest.js'
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
  ComputeView,
  WriteRequest,
  WriteResult,
} from './sequencer.js'
export { Store } from './store.js'
export type { CommittedPage, CommittedRead } from './committed.js'
export { LocalRecords, LocalSpace, localKey } from './local-records.js'
export type { LocalOp } from './local-records.js'
export { encodeEntries } from './writer.js'
export type {
  BatchStats,
  EncodedEntries,
  EpochRun,
  HardStateUpdate,
  ListItem,
  ListOptions,
  LogChange,
  LogReadLimits,
  RawLogEntry,
  RollbackRecord,
  StateDigest,
  StateSnapshot,
  StoreLogger,
  StoreOptions,
  StoreState,
} from './types.js'
export {
  BackupChecker,
  backupPieces,
  checkBackupFiles,
  readBackupRecords,
  readManifest,
  verifyBackup,
  writeBackup,
  writeBackupDir,
} from './backup.js'
export type { BackupCheck, BackupOrigin, BackupPiece } from './backup.js'
export {
  archiveDirs,
  baseDirName,
  chainSegments,
  decodeSegment,
  encodeSegment,
  listBases,
  listSegments,
  openArchiveDir,
  pruneArchive,
  readSegment,
  segmentFileName,
  writeSegment,
} from './archive.js'
export type { BaseInfo, SegmentEntry, SegmentInfo } from './archive.js'
export { describeArchive, planRestore, restore, restoredEpoch } from './restore.js'
export type { RestoreOptions, RestorePlan, RestoreResult, RestoreTarget } from './restore.js'
