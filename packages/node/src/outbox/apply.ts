/**
 * The leader's side of queued writes: applies a member's outbox entries (its own, in process,
 * or another member's, from POST /internal/v1/outbox/apply) through the normal write path,
 * with ack=quorum, and reports one outcome per entry.
 *
 * Order: entries get their LSNs in the order given. `Sequencer.write` takes its LSN in the
 * synchronous part of the call, so calling it for each entry without awaiting in between keeps
 * the order. An entry that takes no new LSN (deduplicated by its request id, refused, or
 * waiting on an earlier attempt with its id) is settled before the next one is sequenced: if
 * it must be retried, every later entry is returned as `retry` too, so no later entry is
 * applied ahead of it.
 *
 * Outcomes: `applied` (LSN and epoch; a request id seen before gives the first application's),
 * `failed` (a coded error that retrying cannot change: a condition that does not hold, a
 * grant the user lost), or `retry` (no decision: this node stopped leading, the quorum did not
 * answer in time, the disk queue is full; the member sends it again with the same request id).
 */
import { mayWrite } from '@kvstore/core'
import {
  KvError,
  type ErrorCode,
  type OutboxEntry,
  type OutboxOutcome,
  type TicketError,
} from '@kvstore/protocol'
import type { Sequencer, Store } from '@kvstore/storage'
import type { Replicator } from '../cluster/replicator.js'
import type { AuthStore } from '../security/auth-store.js'

/** Codes that are no decision about the write: it is sent again later. */
const retryCodes: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'KV_ERR_NOT_LEADER',
  'KV_ERR_ACK_TIMEOUT',
  'KV_ERR_STALE_EPOCH',
  'KV_ERR_OVERLOADED',
  'KV_ERR_NOT_READY',
  'KV_ERR_SHUTTING_DOWN',
  'KV_ERR_SLOT_MOVING',
  'KV_ERR_STORAGE',
  'KV_ERR_UNAVAILABLE',
  'KV_ERR_REPLICA_BEHIND',
  'KV_ERR_NOT_A_MEMBER',
  'KV_ERR_INTERNAL',
])

export interface ApplyDeps {
  store: Store
  sequencer: Sequencer
  replicator: Replicator
  auth: AuthStore
  ackTimeoutMs: number
  /** A broken invariant: the node stops. */
  onFatal: (err: Error) => void
  isInvariantError: (err: unknown) => boolean
}

export function ticketErrorOf(err: KvError): TicketError {
  return { code: err.code, message: err.message, details: { ...err.details } }
}

function outcomeOf(seq: number, err: unknown, deps: ApplyDeps): OutboxOutcome {
  if (!(err instanceof KvError)) {
    if (deps.isInvariantError(err)) deps.onFatal(err as Error)
    return {
      seq,
      status: 'retry',
      error: { code: 'KV_ERR_INTERNAL', message: (err as Error).message, details: {} },
    }
  }
  return { seq, status: retryCodes.has(err.code) ? 'retry' : 'failed', error: ticketErrorOf(err) }
}

/** Why the entry's user may not make this write any more, or null (auth off: never). */
function grantProblem(auth: AuthStore, entry: OutboxEntry): KvError | null {
  if (!auth.enabled) return null
  const permissions = auth.permissions(entry.user)
  if (permissions === null)
    return new KvError(
      'KV_ERR_PERMISSION_DENIED',
      `user ${JSON.stringify(entry.user)} no longer exists; the queued write was not applied`,
    )
  for (const [index, op] of entry.ops.entries()) {
    const key = op.key.toString('utf8')
    if (!mayWrite(permissions, key))
      return new KvError(
        'KV_ERR_PERMISSION_DENIED',
        `permission denied: ${entry.user} may no longer write ${JSON.stringify(key)}; the queued write was not applied`,
        entry.kind === 'batch' ? { opIndex: index } : {},
      )
  }
  return null
}

/** Applies `entries` in order on this leader; one outcome per entry, in the same order. */
export async function applyEntries(
  deps: ApplyDeps,
  entries: readonly OutboxEntry[],
): Promise<OutboxOutcome[]> {
  const { replicator, sequencer, store } = deps
  const retryAll = (err: unknown) => entries.map((e) => outcomeOf(e.seq, err, deps))
  try {
    replicator.checkWritable()
    // Room for the whole call in the disk queue, so that no entry in the middle is refused
    // for a full queue after the ones before it took their LSNs.
    const depth = store.queueDepth
    let bytes = 0
    for (const entry of entries)
      for (const op of entry.ops) bytes += 64 + op.key.length + (op.value?.length ?? 0)
    if (
      depth.writes + entries.length > store.writeQueueWritesMax ||
      depth.bytes + bytes > store.writeQueueBytesMax
    )
      throw new KvError('KV_ERR_OVERLOADED', 'too many writes are waiting for the disk', {
        queuedWrites: depth.writes,
        queuedBytes: depth.bytes,
      })
  } catch (err) {
    return retryAll(err)
  }
  const outcomes: Promise<OutboxOutcome>[] = []
  let stop: TicketError | null = null
  for (const entry of entries) {
    if (stop !== null) {
      outcomes.push(Promise.resolve({ seq: entry.seq, status: 'retry', error: stop }))
      continue
    }
    const denied = grantProblem(deps.auth, entry)
    if (denied !== null) {
      outcomes.push(Promise.resolve(outcomeOf(entry.seq, denied, deps)))
      continue
    }
    const before = replicator.lastLsn
    const outcome = sequencer
      .write({
        kind: entry.kind,
        ops: entry.ops,
        ...(entry.requestId !== '' ? { requestId: entry.requestId } : {}),
      })
      .then(async (result): Promise<OutboxOutcome> => {
        await replicator.waitForAck(result.lsn, result.epoch, 'quorum', deps.ackTimeoutMs)
        return { seq: entry.seq, status: 'applied', lsn: result.lsn, epoch: result.epoch }
      })
      .catch((err: unknown) => outcomeOf(entry.seq, err, deps))
    outcomes.push(outcome)
    if (replicator.lastLsn === before) {
      const settled = await outcome
      if (settled.status === 'retry') stop = settled.error
    }
  }
  return Promise.all(outcomes)
}
