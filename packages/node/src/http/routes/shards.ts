/**
 * Sharding:
 *
 *   GET  /v1/shards                     this group's view of the shard map, its move and imports
 *   POST /admin/v1/shards/moves         move slots out of this group {slots: "0-99", to: "g2"}
 *   POST /admin/v1/shards/moves/abort   roll back the move (or finish it, if the target took it)
 *   POST /internal/v1/shards/import/*   the target side of a move: other groups' members only
 *
 * The work is in shards/mover.ts (source) and shards/importer.ts (target).
 */
import { jsonBody as jsonRequest, objectAnswer } from '../schemas/index.js'
import type { FastifyInstance } from 'fastify'
import { KvError } from '@kvstore/protocol'
import type { AppContext } from '../context.js'
import { methodNotAllowed } from '../errors.js'
import type { Shards } from '../../shards/index.js'

/** JSON bodies arrive as objects, or as bytes under the catch-all parser. */
function jsonBody(body: unknown, example: string): Record<string, unknown> {
  let parsed: unknown = body
  if (Buffer.isBuffer(body)) {
    try {
      parsed = JSON.parse(body.toString('utf8'))
    } catch {
      parsed = undefined
    }
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new KvError('KV_ERR_MALFORMED_BODY', `the body must be JSON such as ${example}`)
  return parsed as Record<string, unknown>
}

export function registerShardRoutes(app: FastifyInstance, ctx: AppContext): void {
  const shards = (): Shards => {
    if (ctx.shards === null)
      throw new KvError(
        'KV_ERR_UNSUPPORTED_IN_MODE',
        'this node is not sharded (start it with --shard-map and --shard-group)',
      )
    return ctx.shards
  }

  app.get(
    '/v1/shards',
    {
      config: { access: 'authenticated' },
      schema: {
        summary: 'The shard map as this group sees it, and its moves (docs/shards.md)',
        tags: ['shards'],
        response: { 200: objectAnswer('The shard view') },
      },
    },
    async () => shards().state.view(),
  )
  methodNotAllowed(app, '/v1/shards', ['GET'])

  app.post(
    '/admin/v1/shards/moves',
    {
      config: { access: 'admin', audit: 'shard-move' },
      schema: {
        summary: 'Move slots to another group',
        tags: ['shards'],
        body: jsonRequest({
          type: 'object',
          properties: {
            slots: { type: 'string', description: 'Slot ranges such as 0-99' },
            to: { type: 'string', description: 'The target group' },
          },
          required: ['slots', 'to'],
          additionalProperties: false,
        }),
        response: { 202: objectAnswer('{ move }: the move started') },
      },
    },
    async (request, reply) => {
      const example = '{"slots":"0-99","to":"g2"}'
      const body = jsonBody(request.body, example)
      const extra = Object.keys(body).filter((k) => k !== 'slots' && k !== 'to')
      if (extra.length > 0)
        throw new KvError(
          'KV_ERR_MALFORMED_BODY',
          `unknown field ${JSON.stringify(extra[0])}; the body is ${example}`,
        )
      if (typeof body.slots !== 'string' || typeof body.to !== 'string')
        throw new KvError(
          'KV_ERR_MALFORMED_BODY',
          `"slots" and "to" must be strings, as in ${example}`,
        )
      const move = await shards().mover.begin(body.slots, body.to)
      void reply.code(202)
      return { move }
    },
  )
  methodNotAllowed(app, '/admin/v1/shards/moves', ['POST'])
  app.post(
    '/admin/v1/shards/moves/abort',
    {
      config: { access: 'admin', audit: 'shard-move-abort' },
      schema: {
        summary: 'Abort the slot move in progress',
        tags: ['shards'],
        response: { 200: objectAnswer('{ move }') },
      },
    },
    async () => ({ move: await shards().mover.abort() }),
  )
  methodNotAllowed(app, '/admin/v1/shards/moves/abort', ['POST'])

  // The target side. A body carries a copy chunk of records, or log entries, in base64: at
  // least one whole entry, and an entry can be a batch of requestBodyBytesMax. Twice that
  // covers base64 and JSON, plus the chunk the sender adds before it stops.
  const bodyLimit =
    2 * Math.max(ctx.config.requestBodyBytesMax, ctx.config.valueBytesMax) + 2 * 1024 * 1024
  const internal = (
    name: 'begin' | 'copy' | 'entries' | 'resume' | 'commit' | 'abandon',
    handle: (body: Record<string, unknown>) => Promise<unknown>,
  ) => {
    const path = `/internal/v1/shards/import/${name}`
    app.post(
      path,
      {
        bodyLimit,
        config: { access: 'shard-peer' },
        schema: {
          summary: `Slot import: ${name} (shard peers only)`,
          tags: ['peers'],
          body: jsonRequest({ type: 'object' }),
          response: { 200: objectAnswer("The import step's answer") },
        },
      },
      async (request) => handle(jsonBody(request.body, '{"id": ...}')),
    )
    methodNotAllowed(app, path, ['POST'])
  }
  /* eslint-disable @typescript-eslint/no-explicit-any */
  internal('begin', (b) => shards().importer.begin(b as any))
  internal('copy', (b) => shards().importer.copy(b as any))
  internal('entries', (b) => shards().importer.entries(b as any))
  internal('resume', (b) => shards().importer.resume(b as any))
  internal('commit', (b) => shards().importer.commit(b as any))
  internal('abandon', (b) => shards().importer.abandon(b as any))
  /* eslint-enable @typescript-eslint/no-explicit-any */
}
