/**
 * Key routes in leaderless mode (they replace the single-leader key and batch routes):
 *
 *   PUT    /v1/kv/<key>?w=&sloppy=   body = the value; kv-context: token from a read
 *   GET    /v1/kv/<key>?r=&repair=&format=json
 *          one live value: 200 with its bytes; several: 300 with JSON siblings; none: 404
 *   DELETE /v1/kv/<key>?w=&sloppy=   kv-context optional (without it: what a read quorum holds)
 *
 * Every answer carries the causal context in `kv-context`. Any member may be asked for any key.
 *
 * Admin and inspection:
 *   GET /admin/v1/ranges          Merkle root per replica set this member belongs to
 *   GET /admin/v1/local/<key>     this member's own copy of a key
 *   GET /admin/v1/hints           hints held here, per target
 *   POST /admin/v1/anti-entropy   run one anti-entropy exchange with every peer now
 */
import {
  antiEntropyResponseSchema,
  hintsResponseSchema,
  leaderlessWriteResponseSchema,
  localCopySchema,
  rangesResponseSchema,
  siblingsResponseSchema,
} from '@kvstore/protocol'
import { headers, keyParams, query as queryString, sessionParameter } from '../schemas/index.js'

const quorumParameter = (what: string) => ({
  description: `${what}: a count, quorum (a majority of the key's replicas) or all.`,
})
const leaderlessWriteQuery = queryString({
  w: quorumParameter('Acks to wait for'),
  sloppy: {
    description: 'true: a sloppy quorum (hinted handoff) when replicas are down.',
    enum: ['true', 'false'],
  },
  ttlMs: { description: 'The key expires after this many milliseconds.' },
})
const contextHeader = headers({
  'kv-context': 'The kv-context of the read the write is based on: the values it saw are replaced.',
  'kv-request-id': 'An id that makes a retried write apply once.',
})

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import {
  DecodeError,
  decodeContext,
  encodeContext,
  keyToBytes,
  type AntiEntropyResponse,
  type CausalContext,
  type HintsResponse,
  type LeaderlessWriteResponse,
  type LocalCopy,
  type RangesResponse,
  type SiblingsResponse,
} from '@kvstore/protocol'
import { liveSiblings } from '@kvstore/core'
import type { AppContext } from '../context.js'
import { methodNotAllowed, type RouteErrorConfig } from '../errors.js'
import type { RouteSecurityConfig } from '../../security/http-auth.js'
import { requestIdOf } from '../replication.js'
import { formatHlc, type LeaderlessEngine } from '../../leaderless/engine.js'
import { parseTtlMs } from '../../leases/write.js'

type KeyRequest = FastifyRequest<{ Params: { '*': string } }>

const emptyBuffer = Buffer.alloc(0)

function query(request: FastifyRequest): Record<string, unknown> {
  return (request.query as Record<string, unknown> | undefined) ?? {}
}

function oneParam(request: FastifyRequest, name: string): string | undefined {
  const value = query(request)[name]
  if (value === undefined) return undefined
  if (typeof value !== 'string') {
    throw new KvError('KV_ERR_INVALID_ARGUMENT', `query parameter ${name} may appear only once`)
  }
  return value
}

function booleanParam(request: FastifyRequest, name: string): boolean {
  const value = oneParam(request, name)
  if (value === undefined || value === 'false' || value === '0') return false
  if (value === 'true' || value === '1' || value === '') return true
  throw new KvError(
    'KV_ERR_INVALID_ARGUMENT',
    `${name} must be true or false; got ${JSON.stringify(value)}`,
  )
}

function contextOf(request: FastifyRequest): CausalContext | null {
  const raw = request.headers['kv-context']
  if (raw === undefined || raw === '') return null
  if (Array.isArray(raw))
    throw new KvError('KV_ERR_INVALID_CONTEXT', 'kv-context may appear only once')
  try {
    return decodeContext(raw.trim())
  } catch (err) {
    if (err instanceof DecodeError) {
      throw new KvError(
        'KV_ERR_INVALID_CONTEXT',
        `kv-context is not a context this cluster returned: ${err.message}`,
      )
    }
    throw err
  }
}

/** Headers and parameters only single-leader mode understands. */
function refuseSingleLeaderOptions(request: FastifyRequest): void {
  for (const header of ['if-match', 'if-none-match', 'kv-session', 'kv-ack']) {
    if (
      request.headers[header] !== undefined &&
      !(header === 'if-none-match' && request.method === 'GET')
    ) {
      throw new KvError(
        'KV_ERR_UNSUPPORTED_IN_MODE',
        `${header} needs single-leader mode; in leaderless mode send kv-context (from a read) to overwrite what you read, and choose w and r per request`,
      )
    }
  }
  const q = query(request)
  for (const name of ['ack', 'session', 'consistency']) {
    if (q[name] !== undefined) {
      throw new KvError(
        'KV_ERR_UNSUPPORTED_IN_MODE',
        `${name}= needs single-leader mode; in leaderless mode choose w= (writes) and r= (reads): with R + W > N a read sees the latest acknowledged write`,
      )
    }
  }
}

const knownWriteParams = new Set(['w', 'sloppy', 'ttlMs', 'lease', 'ack', 'session', 'consistency'])
const knownReadParams = new Set(['r', 'repair', 'format', 'ack', 'session', 'consistency'])

function checkParams(request: FastifyRequest, known: Set<string>): void {
  for (const name of Object.keys(query(request))) {
    if (!known.has(name)) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `unknown query parameter ${JSON.stringify(name)}; use ${[...known].filter((n) => !['ack', 'session', 'consistency'].includes(n)).join(', ')}`,
      )
    }
  }
}

export function registerLeaderlessRoutes(
  app: FastifyInstance,
  ctx: AppContext,
  engine: LeaderlessEngine,
): void {
  const { config, metrics } = ctx
  const keyOf = (request: KeyRequest): string => {
    keyToBytes(request.params['*'], config.keyBytesMax)
    return request.params['*']
  }

  const write = async (request: KeyRequest, reply: FastifyReply, value: Buffer | null) => {
    checkParams(request, knownWriteParams)
    refuseSingleLeaderOptions(request)
    const key = keyOf(request)
    const w = engine.resolveW(oneParam(request, 'w'))
    const sloppy = booleanParam(request, 'sloppy')
    const context = contextOf(request)
    const requestId = requestIdOf(request, ctx) ?? null
    // Per-key TTL (docs/leases.md): HLC expiry; leases and fencing need a leader.
    if (oneParam(request, 'lease') !== undefined || request.headers['if-fence'] !== undefined)
      throw new KvError(
        'KV_ERR_LEASES_UNSUPPORTED',
        'leases and fencing tokens need single-leader mode; leaderless mode supports ?ttlMs= only',
      )
    const ttlText = oneParam(request, 'ttlMs')
    if (ttlText !== undefined && value === null)
      throw new KvError('KV_ERR_INVALID_LEASE', 'a DELETE takes no ttlMs')
    const ttlMs = ttlText === undefined ? undefined : parseTtlMs(ttlText)
    const outcome = await engine.coordinateWrite(key, {
      value,
      context,
      w,
      sloppy,
      requestId,
      ...(ttlMs !== undefined ? { ttlMs } : {}),
    })
    void reply.header('kv-context', outcome.context).header('kv-timestamp', outcome.timestamp)
    if (outcome.deduplicated) void reply.header('kv-deduplicated', 'true')
    return outcome
  }

  app.put(
    '/v1/kv/*',
    {
      bodyLimit: config.valueBytesMax,
      config: {
        bodyTooLargeCode: 'KV_ERR_VALUE_TOO_LARGE',
        access: 'write-key',
      } satisfies RouteErrorConfig & RouteSecurityConfig,
      schema: {
        summary: 'Write a key (W acks from its replicas)',
        tags: ['keys'],
        params: keyParams,
        querystring: leaderlessWriteQuery,
        headers: contextHeader,
        body: {
          content: {
            'application/octet-stream': {
              schema: { type: 'string', description: 'The value, any bytes' },
            },
          },
        },
        response: { 200: leaderlessWriteResponseSchema },
      },
    },
    async (request: KeyRequest, reply) => {
      const value = (request.body as Buffer | undefined) ?? emptyBuffer
      const outcome = await write(request, reply, value)
      metrics.writes.put++
      return outcome satisfies LeaderlessWriteResponse
    },
  )

  app.delete(
    '/v1/kv/*',
    {
      config: { access: 'write-key' },
      schema: {
        summary: 'Delete a key (a tombstone, W acks)',
        tags: ['keys'],
        params: keyParams,
        querystring: leaderlessWriteQuery,
        headers: contextHeader,
        response: { 200: leaderlessWriteResponseSchema },
      },
    },
    async (request: KeyRequest, reply) => {
      const outcome = await write(request, reply, null)
      metrics.writes.delete++
      return { ...outcome, deleted: true as const } satisfies LeaderlessWriteResponse
    },
  )

  app.get(
    '/v1/kv/*',
    {
      config: { access: 'read-key' },
      schema: {
        summary: 'Read a key (R answers): the value, or its siblings',
        tags: ['keys'],
        params: keyParams,
        querystring: queryString({
          r: quorumParameter('Answers to wait for'),
          repair: {
            description: 'background (default) or blocking read repair.',
            enum: ['background', 'blocking'],
          },
          format: {
            description: 'json: always the siblings form; raw: the bytes of one value.',
            enum: ['json', 'raw'],
          },
          session: sessionParameter,
        }),
        response: {
          200: {
            description: 'One value (raw bytes), or with format=json its siblings',
            content: {
              'application/octet-stream': { schema: { type: 'string' } },
              'application/json': { schema: siblingsResponseSchema },
            },
          },
          300: {
            description:
              'Concurrent values (siblings): resolve them with a write carrying kv-context',
            content: { 'application/json': { schema: siblingsResponseSchema } },
          },
        },
      },
    },
    async (request: KeyRequest, reply) => {
      checkParams(request, knownReadParams)
      refuseSingleLeaderOptions(request)
      const key = keyOf(request)
      const r = engine.resolveR(oneParam(request, 'r'))
      const repair = oneParam(request, 'repair') ?? 'background'
      if (repair !== 'background' && repair !== 'blocking') {
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `repair must be background or blocking; got ${JSON.stringify(repair)}`,
        )
      }
      const format = oneParam(request, 'format')
      if (format !== undefined && format !== 'json' && format !== 'raw') {
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `format must be json or raw; got ${JSON.stringify(format)}`,
        )
      }
      const result = await engine.coordinateRead(key, r, repair === 'blocking')
      void reply.header('kv-replicas-answered', String(result.answered))
      const state = result.state
      // Values whose TTL has passed by this coordinator's clock read as absent (docs/leases.md).
      const live = state === null ? [] : liveSiblings(state, Date.now())
      if (state !== null && live.length === 0 && liveSiblings(state).length > 0)
        engine.expireRead(key, state)
      if (state !== null) void reply.header('kv-context', encodeContext(state))
      void reply.header('kv-siblings', String(live.length))
      if (live.length === 0) {
        throw new KvError('KV_ERR_KEY_NOT_FOUND', `key ${JSON.stringify(key)} does not exist`, {
          key,
          ...(state !== null ? { context: encodeContext(state), deleted: true } : {}),
        })
      }
      const newest = live[live.length - 1] as (typeof live)[number]
      void reply.header('kv-timestamp', formatHlc(newest.value.hlc))
      if (live.length === 1 && format !== 'json') {
        return reply
          .type('application/octet-stream')
          .send(Buffer.from(newest.value.value as Uint8Array))
      }
      const body: SiblingsResponse = {
        key,
        context: encodeContext(state as NonNullable<typeof state>),
        siblings: live.map((s) => ({
          valueBase64: Buffer.from(s.value.value as Uint8Array).toString('base64'),
          timestamp: formatHlc(s.value.hlc),
        })),
      }
      return reply
        .code(live.length > 1 && format !== 'json' ? 300 : 200)
        .type('application/json; charset=utf-8')
        .send(body)
    },
  )
  methodNotAllowed(app, '/v1/kv/*', ['GET', 'PUT', 'DELETE'])

  const unsupported = (what: string) => async () => {
    throw new KvError(
      'KV_ERR_UNSUPPORTED_IN_MODE',
      `${what} needs single-leader mode: in leaderless mode keys are spread over the ring and written one at a time`,
    )
  }
  app.get(
    '/v1/kv',
    {
      config: { access: 'authenticated' },
      schema: {
        summary: 'Listing keys needs single-leader mode: always KV_ERR_UNSUPPORTED_IN_MODE',
        tags: ['keys'],
        response: {},
      },
    },
    unsupported('listing keys'),
  )
  methodNotAllowed(app, '/v1/kv', ['GET'])
  app.post(
    '/v1/batch',
    {
      config: { access: 'authenticated' },
      schema: {
        summary: 'A batch needs single-leader mode: always KV_ERR_UNSUPPORTED_IN_MODE',
        tags: ['keys'],
        response: {},
      },
    },
    unsupported('a batch'),
  )
  methodNotAllowed(app, '/v1/batch', ['POST'])

  app.get(
    '/admin/v1/ranges',
    {
      schema: {
        summary: 'Hashes of the key ranges this member holds (anti-entropy)',
        tags: ['leaderless'],
        response: { 200: rangesResponseSchema },
      },
    },
    async (): Promise<RangesResponse> => ({
      self: engine.self,
      ranges: engine.rangeRoots(),
    }),
  )
  methodNotAllowed(app, '/admin/v1/ranges', ['GET'])

  app.get(
    '/admin/v1/local/*',
    {
      schema: {
        summary: "This member's own copy of a key (no quorum)",
        tags: ['leaderless'],
        params: keyParams,
        response: { 200: localCopySchema },
      },
    },
    async (request: KeyRequest) => {
      const key = keyOf(request)
      const state = await engine.localState(key)
      if (state === null) {
        throw new KvError(
          'KV_ERR_KEY_NOT_FOUND',
          `this member holds no copy of ${JSON.stringify(key)}`,
          { key },
        )
      }
      return {
        key,
        member: engine.self,
        replicas: engine.preferenceList(key),
        vector: state.vector,
        siblings: state.siblings.map((s) => ({
          node: s.dot.node,
          counter: s.dot.counter,
          tombstone: s.value.value === null,
          valueBase64:
            s.value.value === null ? null : Buffer.from(s.value.value).toString('base64'),
          timestamp: formatHlc(s.value.hlc),
        })),
      } satisfies LocalCopy
    },
  )
  methodNotAllowed(app, '/admin/v1/local/*', ['GET'])

  app.get(
    '/admin/v1/hints',
    {
      schema: {
        summary: 'Hints held for replicas that were down, per target',
        tags: ['leaderless'],
        response: { 200: hintsResponseSchema },
      },
    },
    async (): Promise<HintsResponse> => ({
      total: engine.hintsHeld,
      byTarget: engine.hintBacklog(),
    }),
  )
  methodNotAllowed(app, '/admin/v1/hints', ['GET'])

  app.post(
    '/admin/v1/anti-entropy',
    {
      config: { access: 'admin', audit: 'anti-entropy' },
      schema: {
        summary: 'Run anti-entropy with every peer now',
        tags: ['leaderless'],
        response: { 200: antiEntropyResponseSchema },
      },
    },
    async () => {
      const peers: Record<string, number | string> = {}
      for (const member of engine.members) {
        if (member.id === engine.self) continue
        try {
          peers[member.id] = await engine.exchangeWith(member.id)
        } catch (err) {
          peers[member.id] = `failed: ${(err as Error).message}`
        }
      }
      return { self: engine.self, keysRepaired: peers } satisfies AntiEntropyResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/anti-entropy', ['POST'])
}
