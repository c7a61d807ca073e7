/**
 * Lease routes (single-leader mode; see lessor.ts and docs/leases.md):
 *
 *   POST   /v1/leases                  {"ttlMs": 10000}  → 201 {id, ttlMs, lsn}
 *   GET    /v1/leases                  the leases (admin)
 *   GET    /v1/leases/<id>             {id, ttlMs, grantedLsn, remainingMs, keys}
 *   POST   /v1/leases/<id>/keepalive   renews it (leader only, not logged) → {id, ttlMs}
 *   DELETE /v1/leases/<id>             revokes it: deletes its keys and it, in one entry
 *
 * Any authenticated user may grant and renew a lease; reading one needs read on its keys,
 * and revoking one write on them (what its end deletes).
 */
import {
  leaseGrantRequestSchema,
  leaseInfoSchema,
  leaseKeepAliveSchema,
  leaseListSchema,
  leaseRevokedSchema,
  leaseSchema,
} from '../http/schemas/leases.js'
import {
  headers,
  jsonBody,
  nameParams,
  query,
  writeHeaders,
  writeParameters,
} from '../http/schemas/index.js'

const id = nameParams('id', 'A lease id, such as 1234-5')
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { encodeSession } from '@kvstore/protocol'
import { KvError } from '@kvstore/protocol/errors'
import { requestFingerprint } from '@kvstore/storage'
import type { AppContext } from '../http/context.js'
import { completeWrite } from '../http/replication.js'
import { methodNotAllowed } from '../http/errors.js'
import { authorizeBatch, type RouteSecurityConfig } from '../security/http-auth.js'
import { isQueued } from '../outbox/routes.js'
import { checkLeasesSupported, parseLeaseId, parseTtlMs } from './write.js'

type IdRequest = FastifyRequest<{ Params: { id: string } }>

const grantBodyBytesMax = 1024
const listLimit = 1000
/** What a grant's request id is bound to, with its TTL. */
const grantMarker = Buffer.from('\u0000lease-grant', 'utf8')

function parseGrantBody(body: Buffer | undefined): number {
  if (body === undefined || body.length === 0)
    throw new KvError('KV_ERR_INVALID_LEASE', 'the body is empty; send {"ttlMs": 10000}')
  let parsed: unknown
  try {
    parsed = JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw new KvError(
      'KV_ERR_INVALID_LEASE',
      `the body is not valid JSON: ${(err as Error).message}`,
    )
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new KvError(
      'KV_ERR_INVALID_LEASE',
      'the body must be a JSON object like {"ttlMs": 10000}',
    )
  for (const field of Object.keys(parsed))
    if (field !== 'ttlMs')
      throw new KvError(
        'KV_ERR_INVALID_LEASE',
        `unknown field ${JSON.stringify(field)}; the body has only "ttlMs"`,
      )
  return parseTtlMs((parsed as { ttlMs?: unknown }).ttlMs)
}

export function registerLeaseRoutes(app: FastifyInstance, ctx: AppContext): void {
  const lessorOf = () => {
    checkLeasesSupported(ctx, false)
    return ctx.lessor as NonNullable<AppContext['lessor']>
  }

  app.post(
    '/v1/leases',
    {
      bodyLimit: grantBodyBytesMax,
      config: { access: 'authenticated' } satisfies RouteSecurityConfig,
      schema: {
        summary: 'Grant a lease of ttlMs; attach keys with PUT ?lease=<id>',
        tags: ['leases'],
        querystring: query(writeParameters),
        headers: headers(writeHeaders),
        body: jsonBody(leaseGrantRequestSchema),
        response: { 201: leaseSchema },
      },
    },
    async (request, reply) => {
      checkLeasesSupported(ctx, isQueued(request))
      const lessor = lessorOf()
      const ttlMs = parseGrantBody(request.body as Buffer | undefined)
      let id = ''
      let release: (() => void) | null = null
      try {
        const result = await completeWrite(ctx, request, reply, {
          kind: 'batch',
          ops: [],
          fingerprint: requestFingerprint({
            kind: 'batch',
            ops: [{ type: 'put', key: grantMarker, value: Buffer.from(String(ttlMs)) }],
          }),
          compute: (view) => {
            const ops = lessor.grantOps(view, ttlMs, (leaseId) => {
              id = leaseId
            })
            release = lessor.reserve()
            return ops
          },
        })
        lessor.stats.granted++
        // A retry with the same request id: the first grant's id, from its position.
        if (id === '') id = `${result.lsn}-${result.epoch}`
        void reply.code(201)
        return { id, ttlMs, lsn: result.lsn }
      } finally {
        const r = release as (() => void) | null
        r?.()
      }
    },
  )

  app.get(
    '/v1/leases',
    {
      config: { access: 'admin' },
      schema: {
        summary: 'The live leases (up to 1000)',
        tags: ['leases'],
        response: { 200: leaseListSchema },
      },
    },
    async () => {
      const lessor = lessorOf()
      const items = lessor.list(listLimit)
      return { items, total: lessor.size, leader: ctx.replicator?.isLeader ?? true }
    },
  )
  methodNotAllowed(app, '/v1/leases', ['GET', 'POST'])

  app.get(
    '/v1/leases/:id',
    {
      config: { access: 'authenticated' } satisfies RouteSecurityConfig,
      schema: {
        summary: "A lease's TTL, remaining time and attached keys",
        tags: ['leases'],
        params: id,
        response: { 200: leaseInfoSchema },
      },
    },
    async (request: IdRequest) => {
      const lessor = lessorOf()
      const id = parseLeaseId(request.params.id)
      const { record, keys } = await lessor.info(id)
      const names = keys.map((k) => k.toString('utf8'))
      authorizeBatch(
        ctx.security.auth,
        request,
        names.map((key) => ({ key, write: false })),
      )
      let remainingMs: number | null = null
      try {
        remainingMs = lessor.remainingMs(id)
      } catch {
        remainingMs = null
      }
      return { id, ttlMs: record.ttlMs, grantedLsn: record.grantedLsn, remainingMs, keys: names }
    },
  )

  app.delete(
    '/v1/leases/:id',
    {
      config: { access: 'authenticated' } satisfies RouteSecurityConfig,
      schema: {
        summary: 'Revoke a lease: its keys are deleted with it, in one entry',
        tags: ['leases'],
        params: id,
        response: { 200: leaseRevokedSchema },
      },
    },
    async (request: IdRequest, reply) => {
      const lessor = lessorOf()
      const id = parseLeaseId(request.params.id)
      ctx.replicator?.checkWritable()
      const { keys } = await lessor.info(id)
      authorizeBatch(
        ctx.security.auth,
        request,
        keys.map((k) => ({ key: k.toString('utf8'), write: true })),
      )
      const ended = await lessor.end(id, 'revoked')
      if (ctx.replicator)
        await ctx.replicator.waitForAck(ended.lsn, ended.epoch, 'quorum', ctx.config.ackTimeoutMs)
      // A session token, as a write gives: a read that carries it sees the keys gone.
      void reply
        .header('kv-lsn', String(ended.lsn))
        .header('kv-session', encodeSession({ epoch: ended.epoch, lsn: ended.lsn }))
      return { id, revoked: true, lsn: ended.lsn, deletedKeys: ended.deleted }
    },
  )
  methodNotAllowed(app, '/v1/leases/:id', ['GET', 'DELETE'])

  app.post(
    '/v1/leases/:id/keepalive',
    {
      config: { access: 'authenticated' } satisfies RouteSecurityConfig,
      schema: {
        summary: 'Renew a lease at the leader',
        tags: ['leases'],
        params: id,
        response: { 200: leaseKeepAliveSchema },
      },
    },
    async (request: IdRequest) => {
      const lessor = lessorOf()
      const id = parseLeaseId(request.params.id)
      const { ttlMs } = lessor.keepAlive(id)
      return { id, ttlMs }
    },
  )
  methodNotAllowed(app, '/v1/leases/:id/keepalive', ['POST'])
}
