/**
 * The option table's rows for the live dashboard (GET /ui, node/src/ui): how often the node
 * samples the cluster, how much history it keeps, and how many pages it streams to at once.
 */
import { KiB, MiB, type OptionSpec } from './types.js'

export const uiOptions: readonly OptionSpec[] = [
  {
    key: 'uiSampleIntervalMs',
    flag: '--ui-sample-interval-ms',
    env: 'KV_UI_SAMPLE_INTERVAL_MS',
    kind: 'integer',
    default: 500,
    min: 50,
    max: 60_000,
    group: 'http',
    description:
      "How often the dashboard (/ui) samples this node's view of the cluster (roles, epoch, LSNs, each follower's lag) and sends it to the open pages.",
  },
  {
    key: 'uiHistorySamplesMax',
    flag: '--ui-history-samples-max',
    env: 'KV_UI_HISTORY_SAMPLES_MAX',
    kind: 'integer',
    default: 600,
    min: 10,
    max: 100_000,
    group: 'limits',
    description:
      'Samples of lag per follower (hints per member, leaderless) the dashboard keeps in memory; the oldest go first. 600 samples at the default interval are the last five minutes.',
  },
  {
    key: 'uiLeadershipChangesMax',
    flag: '--ui-leadership-changes-max',
    env: 'KV_UI_LEADERSHIP_CHANGES_MAX',
    kind: 'integer',
    default: 200,
    min: 1,
    max: 100_000,
    group: 'limits',
    description:
      "Leadership changes (epoch or leader seen to change) the dashboard's timeline keeps in memory; the oldest go first.",
  },
  {
    key: 'uiStreamsMax',
    flag: '--ui-streams-max',
    env: 'KV_UI_STREAMS_MAX',
    kind: 'integer',
    default: 32,
    min: 1,
    max: 10_000,
    group: 'limits',
    description:
      'Most dashboard streams (GET /ui/v1/stream) this node serves at once; past it new ones are refused with KV_ERR_DASHBOARD_STREAMS_TOO_MANY.',
  },
  {
    key: 'uiStreamBufferBytesMax',
    flag: '--ui-stream-buffer-bytes-max',
    env: 'KV_UI_STREAM_BUFFER_BYTES_MAX',
    kind: 'bytes',
    default: 1 * MiB,
    min: 16 * KiB,
    max: 256 * MiB,
    group: 'limits',
    description:
      'Most unsent bytes of one dashboard stream; a page that reads more slowly misses samples (each carries the whole current state) until it catches up, so the buffer never grows past this.',
  },
]
