/**
 * The replication side of the client API:
 *
 * - every write chooses its durability with `?ack=async|quorum|all` or a `kv-ack` header;
 * - a write may carry a `kv-request-id`: a retry with the same id is applied once;
 * - every write answers with a session token (`kv-session`), and a read that sends it back
 *   waits until this replica has applied that far (read-your-writes, monotonic reads);
 * - every read tells the replica's applied LSN and lag in headers.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import { decodeSession, encodeSession, formatStamp, type SessionPosition } from '@kvstore/protocol'
import type { OpResult, WriteRequest, WriteResult } from '@kvstore/storage'
import { ackModes, type AckMode } from '../config.js'
import type { AppContext } from './context.js'

const requestIdPattern = /^[\x21-\x7e]+$/

function single(request: FastifyRequest, header: string): string | undefined {
  const value = request.headers[header]
  return Array.isArray(value) ? value[0] : value
}

/** The write's durability: `ack` query parameter, else `kv-ack` header, else the default. */
export function ackModeOf(request: FastifyRequest, ctx: AppContext): AckMode {
  const query = request.query as Record<string, unknown>
  const raw = (typeof query.ack === 'string' ? query.ack : undefined) ?? single(request, 'kv-ack')
  if (raw === undefined) return ctx.config.defaultAck
  if (!(ackModes as readonly string[]).includes(raw)) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `ack must be async, quorum, all or queued; got ${JSON.stringify(raw)}`,
    )
  }
  return raw as AckMode
}

/** The `kv-request-id` header, checked. */
export function requestIdOf(request: FastifyRequest, ctx: AppContext): string | undefined {
  const id = single(request, 'kv-request-id')
  if (id === undefined) return undefined
  if (!requestIdPattern.test(id) || Buffer.byteLength(id) > ctx.config.requestIdBytesMax) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `kv-request-id must be 1 to ${ctx.config.requestIdBytesMax} printable ASCII characters`,
    )
  }
  return id
}

/**
 * The write path every front shares (HTTP here, RESP in node/src/resp): refuses unless this
 * node may take writes (KV_ERR_NOT_LEADER), sequences the write, and waits for `ack`.
 */
export async function sequenceWrite(
  ctx: AppContext,
  write: WriteRequest,
  ack: AckMode,
): Promise<WriteResult> {
  const { replicator } = ctx
  replicator?.checkWritable()
  const result = await ctx.sequencer.write(write)
  if (replicator)
    await replicator.waitForAck(result.lsn, result.epoch, ack, ctx.config.ackTimeoutMs)
  return result
}

/**
 * Runs a write on the leader: sequences it, waits for the durability it asked for, and sets
 * `kv-lsn` and `kv-session`. On a follower it refuses with KV_ERR_NOT_LEADER.
 */
export async function completeWrite(
  ctx: AppContext,
  request: FastifyRequest,
  reply: FastifyReply,
  write: WriteRequest,
): Promise<WriteResult & { session: string }> {
  const ack = ackModeOf(request, ctx)
  const requestId = requestIdOf(request, ctx)
  const result = await sequenceWrite(
    ctx,
    requestId === undefined ? write : { ...write, requestId },
    ack,
  )
  const session = encodeSession({ epoch: result.epoch, lsn: result.lsn })
  void reply.header('kv-lsn', String(result.lsn)).header('kv-session', session)
  if (result.deduplicated) void reply.header('kv-deduplicated', 'true')
  return { ...result, session }
}

/** Regions: a write result's stamps as the API shows them (nothing outside region mode). */
export function stampFields(result: OpResult | undefined): {
  stamp?: string
  previousStamp?: string | null
} {
  if (result?.stamp === undefined) return {}
  return {
    stamp: formatStamp(result.stamp),
    previousStamp:
      result.previousStamp === undefined || result.previousStamp === null
        ? null
        : formatStamp(result.previousStamp),
  }
}

/** The session position a read sends (`kv-session` header or `session` query parameter). */
export function sessionOf(request: FastifyRequest): SessionPosition | null {
  const query = request.query as Record<string, unknown>
  const raw =
    (typeof query.session === 'string' ? query.session : undefined) ?? single(request, 'kv-session')
  return raw === undefined || raw === '' ? null : decodeSession(raw)
}

/** How long a read may wait for its session: `kv-read-wait-ms`, at most readWaitMs. */
export function readWaitOf(request: FastifyRequest, ctx: AppContext): number {
  const raw = single(request, 'kv-read-wait-ms')
  if (raw === undefined) return ctx.config.readWaitMs
  if (!/^[0-9]{1,9}$/.test(raw)) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `kv-read-wait-ms must be a whole number of milliseconds; got ${JSON.stringify(raw)}`,
    )
  }
  return Math.min(Number(raw), ctx.config.readWaitMs)
}

/** True when this replica has applied the session's position (no waiting needed). */
export function sessionSatisfied(ctx: AppContext, position: SessionPosition | null): boolean {
  return position === null || ctx.store.appliedLsn >= position.lsn
}

/**
 * Waits until this replica has applied the session's position, up to `readWaitMs`; then
 * KV_ERR_REPLICA_BEHIND, naming the leader so the client can go there.
 */
export async function awaitSession(
  ctx: AppContext,
  request: FastifyRequest,
  position: SessionPosition | null,
): Promise<void> {
  if (sessionSatisfied(ctx, position) || position === null) return
  const waitMs = readWaitOf(request, ctx)
  const applied = ctx.replicator ? await ctx.replicator.waitApplied(position.lsn, waitMs) : false
  if (applied) return
  const leader = ctx.replicator?.leaderMember
  throw new KvError(
    'KV_ERR_REPLICA_BEHIND',
    `this replica has applied up to LSN ${ctx.store.appliedLsn}, not ${position.lsn}, after waiting ${waitMs} ms`,
    {
      appliedLsn: ctx.store.appliedLsn,
      requiredLsn: position.lsn,
      leaderId: leader?.id ?? null,
      leaderUrl: leader?.clientUrl ?? null,
    },
  )
}

/** Headers every read carries: applied LSN, lag, role, and a session token for this point. */
export function setReadHeaders(ctx: AppContext, reply: FastifyReply, appliedLsn: number): void {
  const { replicator } = ctx
  void reply.header('kv-applied-lsn', String(appliedLsn))
  if (replicator) {
    const lag = replicator.lag()
    void reply
      .header('kv-lag-entries', String(lag.entries))
      .header('kv-lag-ms', String(lag.ms))
      .header('kv-role', replicator.role)
      .header('kv-session', encodeSession({ epoch: replicator.epoch, lsn: appliedLsn }))
  }
}
