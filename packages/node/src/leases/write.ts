/**
 * The lease and fence parts of a client write (PUT /v1/kv/<key> and POST /v1/batch):
 *
 *   ?lease=<id>        attach every put of the write to the lease
 *   ?ttlMs=<ms>        a lease of the write's own, granted in the same entry (the shorthand)
 *   If-Fence: <token>  with Fence-Lock: <name>: refuse the write (409 KV_ERR_FENCED) when a
 *                      write fenced by that lock already carried a higher token
 *
 * Both are decided at the leader in the sequencer's synchronous step (`compute`), so nothing
 * can slip in between the check and the write. A write with none of them is left as it is.
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import { leaseIdPattern, leaseTtlMsMax, leaseTtlMsMin, fenceLockBytesMax } from '@kvstore/protocol'
import { requestFingerprint, type WriteRequest } from '@kvstore/storage'
import type { AppContext } from '../http/context.js'
import type { LeaseExtras } from './lessor.js'

const lockNamePattern = /^[\x21-\x7e]+$/

function single(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name]
  if (Array.isArray(value))
    throw new KvError('KV_ERR_INVALID_FENCE', `${name} may appear only once`)
  return value
}

function queryOf(request: FastifyRequest, name: string): string | undefined {
  const value = (request.query as Record<string, unknown> | undefined)?.[name]
  if (value === undefined) return undefined
  if (typeof value !== 'string')
    throw new KvError('KV_ERR_INVALID_LEASE', `query parameter ${name} may appear only once`)
  return value
}

/** Parses a TTL in ms, within the limits. */
export function parseTtlMs(text: unknown): number {
  const value =
    typeof text === 'number'
      ? text
      : typeof text === 'string' && /^[0-9]{1,16}$/.test(text)
        ? Number(text)
        : NaN
  if (!Number.isSafeInteger(value) || value < leaseTtlMsMin || value > leaseTtlMsMax) {
    throw new KvError(
      'KV_ERR_INVALID_LEASE',
      `ttlMs must be a whole number of milliseconds from ${leaseTtlMsMin} to ${leaseTtlMsMax}; got ${JSON.stringify(text)}`,
      { ttlMsMin: leaseTtlMsMin, ttlMsMax: leaseTtlMsMax },
    )
  }
  return value
}

export function parseLeaseId(text: unknown): string {
  if (typeof text !== 'string' || !leaseIdPattern.test(text)) {
    throw new KvError(
      'KV_ERR_INVALID_LEASE',
      `a lease id looks like 1234-5 (as POST /v1/leases returns it); got ${JSON.stringify(text)}`,
    )
  }
  return text
}

/** The write's lease and fence, from its query and headers; null when it has none. */
export function leaseExtrasOf(request: FastifyRequest): LeaseExtras | null {
  const lease = queryOf(request, 'lease')
  const ttl = queryOf(request, 'ttlMs')
  const token = single(request, 'if-fence')
  const lock = single(request, 'fence-lock')
  if (lease === undefined && ttl === undefined && token === undefined && lock === undefined)
    return null
  const extras: LeaseExtras = {}
  if (lease !== undefined && ttl !== undefined)
    throw new KvError(
      'KV_ERR_INVALID_LEASE',
      'send either ?lease= (attach to a lease) or ?ttlMs= (a lease of its own), not both',
    )
  if (lease !== undefined) extras.lease = parseLeaseId(lease)
  if (ttl !== undefined) extras.ttlMs = parseTtlMs(ttl)
  if (token !== undefined || lock !== undefined) {
    if (token === undefined || lock === undefined)
      throw new KvError(
        'KV_ERR_INVALID_FENCE',
        'If-Fence and Fence-Lock go together: the token, and the lock that handed it out',
      )
    const t = token.trim()
    const value = /^[1-9][0-9]{0,15}$/.test(t) ? Number(t) : NaN
    if (!Number.isSafeInteger(value))
      throw new KvError(
        'KV_ERR_INVALID_FENCE',
        `If-Fence must be a positive whole number (the lock's fencing token); got ${JSON.stringify(token)}`,
      )
    if (!lockNamePattern.test(lock) || Buffer.byteLength(lock) > fenceLockBytesMax)
      throw new KvError(
        'KV_ERR_INVALID_FENCE',
        `Fence-Lock must be 1 to ${fenceLockBytesMax} printable ASCII characters without spaces; got ${JSON.stringify(lock)}`,
      )
    extras.fence = { lock, token: value }
  }
  return extras
}

/** Refuses leases and fences where this node cannot give them. */
export function checkLeasesSupported(ctx: AppContext, queued: boolean): void {
  const why =
    ctx.lessor === null
      ? 'this node keeps no leases (leaderless mode supports ?ttlMs= only)'
      : queued
        ? 'queued writes (ack=queued) cannot carry a lease, a TTL or a fence'
        : ctx.regions !== null
          ? 'region mode does not support leases or fences'
          : ctx.shards !== null
            ? 'shard mode does not support leases or fences'
            : null
  if (why !== null) throw new KvError('KV_ERR_LEASES_UNSUPPORTED', why)
}

/**
 * The write with its lease and fence decided in the sequencer's step. Its ops stay the
 * client's (and its fingerprint covers the extras), so a retry with the same request id is
 * recognised. Sets `kv-lease` on the reply to the lease the write attached its keys to.
 */
export function withLeaseExtras(
  ctx: AppContext,
  reply: FastifyReply,
  extras: LeaseExtras,
  write: WriteRequest,
): { write: WriteRequest; settled: () => void } {
  const lessor = ctx.lessor
  if (lessor === null) throw new KvError('KV_ERR_LEASES_UNSUPPORTED', 'this node keeps no leases')
  let release: (() => void) | null = null
  const fingerprint = requestFingerprint({
    kind: 'batch',
    ops: [
      ...write.ops,
      {
        type: 'put',
        key: Buffer.from('\u0000lease-extras'),
        value: Buffer.from(JSON.stringify(extras)),
      },
    ],
  })
  return {
    write: {
      ...write,
      kind: 'batch',
      fingerprint,
      compute: (view) => {
        const ops = lessor.extraOps(view, write.ops, extras, (id) => {
          void reply.header('kv-lease', id)
        })
        if (extras.ttlMs !== undefined) release = lessor.reserve()
        return ops
      },
    },
    settled: () => {
      const r = release as (() => void) | null
      r?.()
    },
  }
}
