/**
 * The option table's rows for watches (GET /v1/watch, node/src/watch): how many a node serves,
 * each watcher's buffer, the shared in-memory tail of committed entries, progress events, and
 * the teeth switch of the watch checker.
 */
import { KiB, MiB, type OptionSpec } from './types.js'

export const watchOptions: readonly OptionSpec[] = [
  {
    key: 'watchersMax',
    flag: '--watchers-max',
    env: 'KV_WATCHERS_MAX',
    kind: 'integer',
    default: 10_000,
    min: 1,
    max: 1_000_000,
    group: 'limits',
    description:
      'Most watch streams (GET /v1/watch) this node serves at once; past it new ones are refused with KV_ERR_WATCHERS_TOO_MANY.',
  },
  {
    key: 'watchBufferBytesMax',
    flag: '--watch-buffer-bytes-max',
    env: 'KV_WATCH_BUFFER_BYTES_MAX',
    kind: 'bytes',
    default: 1 * MiB,
    min: 4 * KiB,
    max: 1024 * MiB,
    group: 'limits',
    description:
      'Most bytes of events waiting to be sent to one watcher; a watcher that falls further behind gets a last KV_ERR_WATCH_TOO_SLOW event with its position, and its stream ends.',
  },
  {
    key: 'watchTailBytesMax',
    flag: '--watch-tail-bytes-max',
    env: 'KV_WATCH_TAIL_BYTES_MAX',
    kind: 'bytes',
    default: 32 * MiB,
    min: 0,
    max: 64 * 1024 * MiB,
    group: 'limits',
    description:
      'Bytes of recently committed, decoded entries kept in memory and shared by every watcher of this node; a watcher behind it reads the log instead.',
  },
  {
    key: 'watchProgressIntervalMs',
    flag: '--watch-progress-interval-ms',
    env: 'KV_WATCH_PROGRESS_INTERVAL_MS',
    kind: 'integer',
    default: 1000,
    min: 10,
    max: 60_000,
    group: 'http',
    description:
      "How often each watch stream gets a progress event (the watcher's position and this node's commit LSN), so an idle watcher knows it is up to date and a dead connection is noticed.",
  },
  {
    key: 'unsafeWatchApplied',
    flag: '--unsafe-watch-applied',
    env: 'KV_UNSAFE_WATCH_APPLIED',
    kind: 'boolean',
    default: false,
    unsafe: true,
    group: 'cluster',
    description:
      "UNSAFE, for the chaos suite's teeth test only: watch streams show entries as soon as this node has them in its log (applied), not once they are committed, so a watcher can see a write that a failover then rolls back. Logged as a warning at start-up.",
  },
  {
    key: 'unsafeWatchSkipOnResume',
    flag: '--unsafe-watch-skip-on-resume',
    env: 'KV_UNSAFE_WATCH_SKIP_ON_RESUME',
    kind: 'boolean',
    default: false,
    unsafe: true,
    group: 'cluster',
    description:
      "UNSAFE, for the chaos suite's teeth test only: a watch that resumes (fromLsn above 0, or Last-Event-ID) skips the first change it would send, leaving a gap. Logged as a warning at start-up.",
  },
]
