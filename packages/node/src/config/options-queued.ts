/**
 * The option table's rows for queued writes (`ack=queued`): the outbox every single-leader
 * member keeps, its tickets, and their limits (node/src/outbox). Also the checks across these
 * options (`queuedProblems`, called by validate.ts).
 */
import { MiB, type NodeConfig, type OptionSpec } from './types.js'

export const queuedOptions: readonly OptionSpec[] = [
  {
    key: 'outboxEntriesMax',
    flag: '--outbox-entries-max',
    env: 'KV_OUTBOX_ENTRIES_MAX',
    kind: 'integer',
    default: 100_000,
    min: 1,
    max: 10_000_000,
    group: 'cluster',
    description:
      'Most queued writes (ack=queued) this member holds for the leader; past it new ones are refused with KV_ERR_OUTBOX_FULL (reason entries).',
  },
  {
    key: 'outboxBytesMax',
    flag: '--outbox-bytes-max',
    env: 'KV_OUTBOX_BYTES_MAX',
    kind: 'bytes',
    default: 64 * MiB,
    min: 64 * 1024,
    max: 64 * 1024 * MiB,
    group: 'cluster',
    description:
      'Most bytes of keys and values of queued writes this member holds (they are kept in memory too); past it new ones are refused with KV_ERR_OUTBOX_FULL (reason bytes).',
  },
  {
    key: 'outboxAgeMaxMs',
    flag: '--outbox-age-max-ms',
    env: 'KV_OUTBOX_AGE_MAX_MS',
    kind: 'integer',
    default: 300_000,
    min: 100,
    max: 7 * 24 * 3_600_000,
    group: 'cluster',
    description:
      "While this member's oldest queued write has waited longer than this, new ones are refused with KV_ERR_OUTBOX_FULL (reason age). Must stay below --request-id-retention-ms, so a write forwarded again is still recognised by its request id.",
  },
  {
    key: 'ticketsMax',
    flag: '--tickets-max',
    env: 'KV_TICKETS_MAX',
    kind: 'integer',
    default: 200_000,
    min: 1,
    max: 100_000_000,
    group: 'cluster',
    description:
      'Most tickets of queued writes this member keeps (pending ones included); past it the oldest finished ones are forgotten. At least --outbox-entries-max.',
  },
  {
    key: 'ticketRetentionMs',
    flag: '--ticket-retention-ms',
    env: 'KV_TICKET_RETENTION_MS',
    kind: 'integer',
    default: 3_600_000,
    min: 1000,
    max: 30 * 24 * 3_600_000,
    group: 'cluster',
    description:
      'How long the ticket of a finished queued write (applied or failed) is kept for GET /v1/tickets/<id>.',
  },
  {
    key: 'unsafeOutboxApplyTwice',
    flag: '--unsafe-outbox-apply-twice',
    env: 'KV_UNSAFE_OUTBOX_APPLY_TWICE',
    kind: 'boolean',
    default: false,
    unsafe: true,
    group: 'cluster',
    description:
      "UNSAFE, for the chaos suite's teeth test only: this member's outbox forwarder drops each queued write's request id and forwards it twice in a row, so the leader applies it twice; its ticket keeps the first outcome, so the key's final version is not the ticket's LSN. Single-leader mode only; logged as a warning at start-up.",
  },
]

/** What the queued-write options must satisfy together (see configProblems). */
export function queuedProblems(config: NodeConfig): string[] {
  const problems: string[] = []
  if (config.outboxAgeMaxMs >= config.requestIdRetentionMs) {
    problems.push(
      `outboxAgeMaxMs (${config.outboxAgeMaxMs}) must be below requestIdRetentionMs (${config.requestIdRetentionMs}), or a queued write forwarded again could outlive the record that makes it apply once`,
    )
  }
  if (config.ticketsMax < config.outboxEntriesMax) {
    problems.push(
      `ticketsMax (${config.ticketsMax}) must be at least outboxEntriesMax (${config.outboxEntriesMax}): every queued write keeps a ticket`,
    )
  }
  if (config.unsafeOutboxApplyTwice && config.mode !== 'single-leader') {
    problems.push(
      '--unsafe-outbox-apply-twice needs --mode single-leader (queued writes are single-leader)',
    )
  }
  return problems
}
