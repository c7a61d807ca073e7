/** The option table's rows for backups and the log archive (point-in-time restore). */
import { MiB, type OptionSpec } from './types.js'

export const backupOptions: readonly OptionSpec[] = [
  {
    key: 'backupsInFlightMax',
    flag: '--backups-in-flight-max',
    env: 'KV_BACKUPS_IN_FLIGHT_MAX',
    kind: 'integer',
    default: 1,
    min: 1,
    max: 16,
    group: 'backup',
    description:
      "Most backups this node takes at once (POST /admin/v1/backups, and the archive's base backups); one more is refused with KV_ERR_BACKUP_BUSY. Each holds a LevelDB snapshot open and reads the whole state.",
  },
  {
    key: 'backupCommitWaitMs',
    flag: '--backup-commit-wait-ms',
    env: 'KV_BACKUP_COMMIT_WAIT_MS',
    kind: 'integer',
    default: 5000,
    min: 0,
    max: 600_000,
    group: 'backup',
    description:
      "Single-leader: a backup is taken at a committed LSN. A follower applies entries before it learns they are committed, so a backup waits up to this long for the commit LSN to reach the snapshot's LSN, then fails with KV_ERR_REPLICA_BEHIND.",
  },
  {
    key: 'archiveDir',
    flag: '--archive-dir',
    env: 'KV_ARCHIVE_DIR',
    kind: 'string',
    default: undefined,
    defaultText: 'none (no archive)',
    group: 'backup',
    description:
      'Continuous archiving for point-in-time restore: this member keeps base backups of its state and every committed log entry since, in segments, in this directory (a local disk or a mounted volume; never the data directory). Any member may archive, in either cluster mode; a follower is the usual choice.',
  },
  {
    key: 'archiveSegmentMs',
    flag: '--archive-segment-ms',
    env: 'KV_ARCHIVE_SEGMENT_MS',
    kind: 'integer',
    default: 1000,
    min: 10,
    max: 3_600_000,
    group: 'backup',
    description:
      'While committed entries wait to be archived, a segment is written at least this often: with the archive keeping up, the writes a loss of the whole cluster could take are at most about this old (the RPO; see kv_archive_lag_seconds).',
  },
  {
    key: 'archiveSegmentEntriesMax',
    flag: '--archive-segment-entries-max',
    env: 'KV_ARCHIVE_SEGMENT_ENTRIES_MAX',
    kind: 'integer',
    default: 10_000,
    min: 1,
    max: 1_000_000,
    group: 'backup',
    description:
      'Most log entries in one archive segment; as many waiting entries cut a segment at once.',
  },
  {
    key: 'archiveSegmentBytesMax',
    flag: '--archive-segment-bytes-max',
    env: 'KV_ARCHIVE_SEGMENT_BYTES_MAX',
    kind: 'bytes',
    default: 8 * MiB,
    min: 4096,
    max: 256 * MiB,
    group: 'backup',
    description:
      'Most bytes of log entries (before compression) read into one archive segment (a larger single entry still goes alone).',
  },
  {
    key: 'archiveHoldEntriesMax',
    flag: '--archive-hold-entries-max',
    env: 'KV_ARCHIVE_HOLD_ENTRIES_MAX',
    kind: 'integer',
    default: 1_000_000,
    min: 0,
    max: 1_000_000_000,
    group: 'backup',
    description:
      'Log compaction keeps the entries the archive has not taken yet, while it is at most this many committed entries behind. Further behind, compaction goes on (writes never wait for the archive): the archive breaks (kv_archive_broken 1) and repairs itself with a new base backup.',
  },
  {
    key: 'archiveKeepBackups',
    flag: '--archive-keep-backups',
    env: 'KV_ARCHIVE_KEEP_BACKUPS',
    kind: 'integer',
    default: 2,
    min: 1,
    max: 1000,
    group: 'backup',
    description:
      'Base backups kept in the archive; older ones, and the segments only they need, are removed after each new base backup. A restore can reach any moment after the oldest kept.',
  },
  {
    key: 'archiveBaseIntervalMs',
    flag: '--archive-base-interval-ms',
    env: 'KV_ARCHIVE_BASE_INTERVAL_MS',
    kind: 'integer',
    default: 0,
    min: 0,
    max: 365 * 24 * 3_600_000,
    group: 'backup',
    defaultText: '0 (only when needed)',
    description:
      'How often the archive takes a new base backup (a restore replays segments from the newest one, so this bounds restore time). 0: only when the archive starts empty or has broken.',
  },
]
