/**
 * Regions (multi-leader):
 *
 *   GET  /v1/regions                  this region, the others, shipping lag and cursors
 *   GET  /admin/v1/conflicts          the conflict record (?limit=&after=)
 *   GET  /admin/v1/regions/digest     a digest of the live user keys, equal on converged regions
 *   POST /internal/v1/regions/cursor  another region's leader asks where to resume {source}
 *   POST /internal/v1/regions/ship    another region's leader ships a batch (protobuf)
 *
 * The work is in regions/ (shipper.ts sends, receiver.ts applies).
 */
import { jsonBody, objectAnswer, query } from '../schemas/index.js'
import type { FastifyInstance } from 'fastify'
import { DecodeError, KvError, decodeRegionBatch } from '@kvstore/protocol'
import { parsePositiveInteger, type AppContext } from '../context.js'
import { methodNotAllowed } from '../errors.js'
import type { Regions } from '../../regions/index.js'

const conflictsLimitMax = 1000

export function registerRegionRoutes(app: FastifyInstance, ctx: AppContext): void {
  const regions = (): Regions => {
    if (ctx.regions === null)
      throw new KvError(
        'KV_ERR_UNSUPPORTED_IN_MODE',
        'this node is not in a region (start it with --region and --regions)',
      )
    return ctx.regions
  }

  app.get(
    '/v1/regions',
    {
      config: { access: 'authenticated' },
      schema: {
        summary: 'The regions, their members and replication lag (docs/regions.md)',
        tags: ['regions'],
        response: { 200: objectAnswer('The regions view') },
      },
    },
    async () => regions().view(),
  )
  methodNotAllowed(app, '/v1/regions', ['GET'])

  app.get(
    '/admin/v1/regions/digest',
    {
      config: { access: 'admin' },
      schema: {
        summary: "A digest of this region's state, to compare regions",
        tags: ['regions'],
        response: { 200: objectAnswer('The region digest') },
      },
    },
    async () => regions().digest(),
  )
  methodNotAllowed(app, '/admin/v1/regions/digest', ['GET'])

  app.get(
    '/admin/v1/conflicts',
    {
      config: { access: 'admin' },
      schema: {
        summary: 'Conflicts between regions resolved by last-writer-wins, one page',
        tags: ['regions'],
        querystring: query({
          after: { description: 'A conflict id from an earlier page.' },
          limit: { description: 'Conflicts per page.' },
        }),
        response: { 200: objectAnswer('One page of conflicts') },
      },
    },
    async (request) => {
      const query = request.query as Record<string, unknown>
      let limit = 100
      if (query.limit !== undefined) {
        const parsed = typeof query.limit === 'string' ? parsePositiveInteger(query.limit) : null
        if (parsed === null || parsed < 1 || parsed > conflictsLimitMax)
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            `limit must be a whole number from 1 to ${conflictsLimitMax}`,
          )
        limit = parsed
      }
      let after: string | null = null
      if (query.after !== undefined) {
        if (typeof query.after !== 'string' || !/^[0-9]{20}-[0-9]{1,6}$/.test(query.after))
          throw new KvError(
            'KV_ERR_INVALID_CURSOR',
            'after must be a conflict id from an earlier page (such as 00000000000000000042-0)',
          )
        after = query.after
      }
      return regions().conflicts(after, limit)
    },
  )
  methodNotAllowed(app, '/admin/v1/conflicts', ['GET'])

  app.post(
    '/internal/v1/regions/cursor',
    {
      config: { access: 'region-peer' },
      schema: {
        summary: "Where another region's shipping should resume (region peers only)",
        tags: ['peers'],
        body: jsonBody({
          type: 'object',
          properties: { source: { type: 'string' } },
          required: ['source'],
        }),
        response: { 200: objectAnswer('{ cursor }') },
      },
    },
    async (request) => {
      let body: unknown = request.body
      if (Buffer.isBuffer(body)) {
        try {
          body = JSON.parse(body.toString('utf8'))
        } catch {
          body = undefined
        }
      }
      const source = (body as { source?: unknown } | undefined)?.source
      if (typeof source !== 'string')
        throw new KvError('KV_ERR_MALFORMED_BODY', 'the body must be JSON such as {"source":"us"}')
      regions().checkCaller(request.peerMember, source)
      return { cursor: regions().receiver.cursorFor(source) }
    },
  )
  methodNotAllowed(app, '/internal/v1/regions/cursor', ['POST'])

  // A batch holds up to regionShipBatchBytesMax of writes, and at least one whole entry (a
  // batch write of up to requestBodyBytesMax); protobuf framing adds little.
  const bodyLimit =
    ctx.config.regionShipBatchBytesMax +
    Math.max(ctx.config.requestBodyBytesMax, ctx.config.valueBytesMax) +
    1024 * 1024
  app.post(
    '/internal/v1/regions/ship',
    {
      bodyLimit,
      config: { access: 'region-peer' },
      schema: {
        summary: 'A batch of changes shipped from another region (region peers only)',
        tags: ['peers'],
        body: {
          content: {
            'application/x-protobuf': {
              schema: { type: 'string', description: 'A RegionBatch (protobuf)' },
            },
          },
        },
        response: { 200: objectAnswer('What was applied') },
      },
    },
    async (request) => {
      if (!Buffer.isBuffer(request.body))
        throw new KvError(
          'KV_ERR_MALFORMED_BODY',
          'the body must be a protobuf RegionBatch (content-type application/x-protobuf)',
        )
      let batch
      try {
        batch = decodeRegionBatch(request.body)
      } catch (err) {
        if (err instanceof DecodeError) throw new KvError('KV_ERR_MALFORMED_BODY', err.message)
        throw err
      }
      regions().checkCaller(request.peerMember, batch.source)
      return regions().receiver.apply(batch)
    },
  )
  methodNotAllowed(app, '/internal/v1/regions/ship', ['POST'])
}
