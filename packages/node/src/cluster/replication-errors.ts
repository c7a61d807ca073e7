/**
 * The answers a client gets when replication cannot do what it asked, each with its stable
 * code and what the client needs to go on (the leader to go to, the session to read back with).
 */
import { KvError, encodeSession } from '@kvstore/protocol'
import type { AckMode, MemberConfig } from '../config.js'

/** KV_ERR_NOT_LEADER naming the leader, for a write that reached a follower. */
export function notLeaderError(leader: MemberConfig | undefined): KvError {
  return new KvError(
    'KV_ERR_NOT_LEADER',
    leader
      ? `this node is a follower; send writes to the leader ${leader.id} at ${leader.clientUrl}`
      : 'this node is a follower and no leader is known',
    { leaderId: leader?.id ?? null, leaderUrl: leader?.clientUrl ?? null },
  )
}

/** KV_ERR_NOT_READY from a leader still committing the first entry of its epoch. */
export function leaderNotReadyError(self: string, epoch: number): KvError {
  return new KvError(
    'KV_ERR_NOT_READY',
    `this node was elected leader of epoch ${epoch} moments ago and is committing its first entry; retry shortly`,
    { leaderId: self },
  )
}

/** The answer to a write whose leader was deposed before it was confirmed. */
export function staleEpochError(lsn: number, epoch: number, currentEpoch: number): KvError {
  return new KvError(
    'KV_ERR_STALE_EPOCH',
    `this node led at epoch ${epoch} and no longer does: the write at LSN ${lsn} is durable here but may not survive under the next leader; read it back, or retry it with the same kv-request-id`,
    { lsn, epoch, currentEpoch },
  )
}

/** KV_ERR_ACK_TIMEOUT: the write is durable on the leader, but not confirmed as asked in time. */
export function ackTimeoutError(
  lsn: number,
  mode: AckMode,
  timeoutMs: number,
  confirmedBy: string[],
  epoch: number,
): KvError {
  return new KvError(
    'KV_ERR_ACK_TIMEOUT',
    `the write at LSN ${lsn} is durable on the leader but ${mode === 'all' ? 'not every member' : 'no majority'} confirmed it within ${timeoutMs} ms (confirmed by ${confirmedBy.join(', ')}); it may still replicate`,
    {
      lsn,
      ack: mode,
      confirmedBy: confirmedBy.join(','),
      session: encodeSession({ epoch, lsn }),
    },
  )
}

/**
 * A linearizable read whose confirmation failed: the leader could not show it still leads, so
 * the read is not served (KV_ERR_NOT_LEADER). Other errors pass as they are.
 */
export function unconfirmedReadError(err: unknown): Error {
  if (
    err instanceof KvError &&
    (err.code === 'KV_ERR_ACK_TIMEOUT' || err.code === 'KV_ERR_STALE_EPOCH')
  ) {
    return new KvError(
      'KV_ERR_NOT_LEADER',
      `this node could not confirm with a majority that it still leads (${err.code}); the linearizable read was not served`,
      { leaderId: null, leaderUrl: null },
    )
  }
  return err as Error
}
