/**
 * What every backup of this node starts from: a consistent snapshot of its state at a
 * committed LSN, with where it came from, and the limit on backups taken at once.
 *
 * Single-leader: a follower applies entries before it learns that they are committed, and an
 * entry applied but not committed can still be truncated by a new leader. So a backup opens its
 * snapshot, then waits (up to `backupCommitWaitMs`) until the commit LSN reaches the snapshot's
 * LSN with no truncation in between; otherwise it fails and the snapshot is closed.
 * Leaderless and standalone: the applied LSN is the member's own log, taken as it is.
 */
import { KvError } from '@kvstore/protocol'
import type { BackupOrigin, StateSnapshot, Store } from '@kvstore/storage'
import type { NodeConfig } from '../config.js'
import type { Replicator } from '../cluster/replicator.js'

/** Backups taken at once, at most (`backupsInFlightMax`); past it KV_ERR_BACKUP_BUSY. */
export class BackupGate {
  private inFlight = 0
  constructor(private readonly max: number) {}

  /** Takes a slot, or throws KV_ERR_BACKUP_BUSY; call the returned function exactly once. */
  acquire(): () => void {
    if (this.inFlight >= this.max) {
      throw new KvError(
        'KV_ERR_BACKUP_BUSY',
        `this node is already taking ${this.inFlight} backup(s) (backupsInFlightMax ${this.max}); retry when it has finished`,
        { backupsInFlightMax: this.max },
      )
    }
    this.inFlight++
    let released = false
    return () => {
      if (released) return
      released = true
      this.inFlight--
    }
  }

  get busy(): number {
    return this.inFlight
  }
}

export interface BackupSourceOptions {
  store: Store
  config: Pick<NodeConfig, 'mode' | 'backupCommitWaitMs' | 'nodeId'>
  replicator: Pick<Replicator, 'role'> | null
  now?: () => number
}

/** A snapshot at a committed LSN, and the origin its backup records. Close the snapshot. */
export interface CommittedSnapshot {
  snapshot: StateSnapshot
  origin: BackupOrigin
}

const pollMs = 10

/** Opens a snapshot of this node's state at a committed LSN (see the module comment). */
export async function openCommittedSnapshot(
  options: BackupSourceOptions,
): Promise<CommittedSnapshot> {
  const { store, config, replicator } = options
  const now = options.now ?? Date.now
  const truncations = store.truncations
  const snapshot = await store.openSnapshot()
  try {
    const lsn = snapshot.appliedLsn
    if (config.mode === 'single-leader') {
      const deadline = now() + config.backupCommitWaitMs
      while (store.commitLsn < lsn && store.truncations === truncations && now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, pollMs))
      }
      if (store.truncations !== truncations) {
        throw new KvError(
          'KV_ERR_REPLICA_BEHIND',
          `the backup's snapshot at LSN ${lsn} held entries that a new leader truncated before they were committed; retry the backup`,
          { lsn },
        )
      }
      if (store.commitLsn < lsn) {
        throw new KvError(
          'KV_ERR_REPLICA_BEHIND',
          `this replica has applied LSN ${lsn} but knows it committed only up to ${store.commitLsn} after ${config.backupCommitWaitMs} ms (backupCommitWaitMs): a backup must be at a committed LSN; retry, or back up another member`,
          { lsn, commitLsn: store.commitLsn },
        )
      }
    }
    const role = replicator ? replicator.role : config.mode === 'leaderless' ? 'replica' : 'leader'
    return {
      snapshot,
      origin: {
        clusterId: store.meta.clusterId,
        nodeId: config.nodeId,
        mode: config.mode,
        role,
        lsnTimeMs: await entryTimeMs(store, lsn),
        takenAtMs: now(),
      },
    }
  } catch (err) {
    await snapshot.close()
    throw err
  }
}

/** The wall-clock time of the entry at `lsn` while the log holds it; 0 otherwise. */
export async function entryTimeMs(store: Store, lsn: number): Promise<number> {
  if (lsn < 1 || lsn < store.meta.logStartLsn || lsn > store.appliedLsn) return 0
  try {
    const [entry] = await store.readLog(lsn, { entriesMax: 1, bytesMax: Infinity })
    return entry?.lsn === lsn ? entry.timestampMs : 0
  } catch {
    // Compacted or truncated meanwhile: the time is unknown.
    return 0
  }
}
