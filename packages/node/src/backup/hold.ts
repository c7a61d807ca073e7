/**
 * How far log compaction may go while a log archive still needs entries: a pure function, so
 * that the rule has its own tests (test/archive-hold.test.ts).
 */

/** What the archive tells compaction: where it stands (null: it holds nothing back now). */
export interface ArchiveHold {
  /** The last LSN the archive has (compaction must keep archivedLsn + 1 on), or null. */
  archivedLsn: number | null
  /** This member's committed LSN (what the archive may take). */
  committedLsn: number
  /** `archiveHoldEntriesMax`: further behind than this, the archive stops holding. */
  holdEntriesMax: number
}

/**
 * Where compaction may start the log, given where it would (`retainFrom`) and the archive: no
 * further than the first entry the archive has not taken, unless the archive is more than
 * `holdEntriesMax` committed entries behind. Then compaction goes on (writes never wait for
 * the archive, and the log never grows without bound); the archive breaks and is repaired
 * with a new base backup.
 */
export function archiveRetainFrom(retainFrom: number, hold: ArchiveHold | null): number {
  if (hold === null || hold.archivedLsn === null) return retainFrom
  if (hold.committedLsn - hold.archivedLsn > hold.holdEntriesMax) return retainFrom
  return Math.min(retainFrom, hold.archivedLsn + 1)
}

/** What the places that compact the log ask: where they may compact from. */
export type CompactionHold = (retainFrom: number) => number
