/**
 * `consistency=committed` reads (GET /v1/kv/<key> and listing): the state as of the commit LSN
 * this replica has stored, so a read never shows a write a failover could still roll back.
 * Nothing waits, except a read carrying a session token: it waits until this replica's commit
 * LSN reaches the token's LSN (read-your-writes at the committed level), and answers with a
 * token for the commit position it read at.
 *
 * The work is in storage's committed.ts (the applied state with uncommitted entries undone from
 * their undo records, in one LevelDB snapshot).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import { encodeSession, type SessionPosition } from '@kvstore/protocol'
import type { AppContext } from './context.js'
import { awaitSession, readWaitOf, sessionOf, setReadHeaders } from './replication.js'

/**
 * Waits until this replica's stored commit LSN reaches the session's LSN, up to `readWaitMs`
 * (or `kv-read-wait-ms`); then KV_ERR_REPLICA_BEHIND, naming the leader.
 */
export async function awaitCommittedSession(
  ctx: AppContext,
  request: FastifyRequest,
  position: SessionPosition | null,
): Promise<void> {
  if (position === null) return
  const { replicator, store } = ctx
  // A single node commits what it applies.
  if (!replicator) return awaitSession(ctx, request, position)
  if (store.commitLsn >= position.lsn && !store.isInstallingSnapshot) return
  const waitMs = readWaitOf(request, ctx)
  if (await replicator.waitCommitted(position.lsn, waitMs)) return
  const leader = replicator.leaderMember
  throw new KvError(
    'KV_ERR_REPLICA_BEHIND',
    `this replica knows entries committed up to LSN ${store.commitLsn}, not ${position.lsn}, after waiting ${waitMs} ms (a consistency=committed read waits for its session's LSN to commit)`,
    {
      appliedLsn: store.appliedLsn,
      commitLsn: store.commitLsn,
      requiredLsn: position.lsn,
      leaderId: leader?.id ?? null,
      leaderUrl: leader?.clientUrl ?? null,
    },
  )
}

/**
 * The read headers (`kv-applied-lsn`, lag, role), plus `kv-commit-lsn`, the LSN the read shows
 * the state at, and a session token for that position.
 */
export function setCommittedReadHeaders(
  ctx: AppContext,
  reply: FastifyReply,
  at: { commitLsn: number; appliedLsn: number },
): void {
  setReadHeaders(ctx, reply, at.appliedLsn)
  void reply.header('kv-commit-lsn', String(at.commitLsn))
  if (ctx.replicator) {
    void reply.header(
      'kv-session',
      encodeSession({ epoch: ctx.replicator.epoch, lsn: at.commitLsn }),
    )
  }
}

/** The key's committed record, after the session (if any) is satisfied. */
export async function readCommittedKey(
  ctx: AppContext,
  request: FastifyRequest,
  key: Buffer,
): Promise<Awaited<ReturnType<AppContext['store']['getCommitted']>>> {
  await awaitCommittedSession(ctx, request, sessionOf(request))
  return ctx.store.getCommitted(key, ctx.replicator?.knownCommitLsn)
}
