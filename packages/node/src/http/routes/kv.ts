/**
 * Single-key routes and listing:
 *
 *   PUT    /v1/kv/<key>   body = the value's bytes; If-Match / If-None-Match: * conditions
 *   GET    /v1/kv/<key>   the value's bytes; ETag = version; If-None-Match gives 304
 *   HEAD   /v1/kv/<key>   the same headers, no body
 *   DELETE /v1/kv/<key>   If-Match conditions
 *   GET    /v1/kv?prefix=&start=&limit=&cursor=&values=   one page of keys
 *
 * A key is everything after `/v1/kv/`, percent-decoded, so it may contain `/`.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import {
  formatStamp,
  keyToBytes,
  putResponseSchema,
  queuedResponseSchema,
  type DeleteResponse,
  type ListResponse,
  type PutResponse,
  type ReadConsistency,
  type StoredRecord,
} from '@kvstore/protocol'
import type { ListItem, WriteOp } from '@kvstore/storage'
import { parsePositiveInteger, type AppContext } from '../context.js'
import {
  awaitSession,
  completeWrite,
  sessionOf,
  stampFields,
  sessionSatisfied,
  setReadHeaders,
} from '../replication.js'
import { methodNotAllowed, type RouteErrorConfig } from '../errors.js'
import type { RouteSecurityConfig } from '../../security/http-auth.js'
import { acceptQueued, isQueued } from '../../outbox/routes.js'
import { awaitCommittedSession, readCommittedKey, setCommittedReadHeaders } from '../committed.js'
import { checkLeasesSupported, leaseExtrasOf, withLeaseExtras } from '../../leases/write.js'
import type { OpenApiRouteConfig } from '../openapi.js'
import { deleteResponseSchema, listResponseSchema } from '@kvstore/protocol'
import {
  headers,
  keyParams,
  noBody,
  query,
  rawBody,
  readHeaders,
  sessionParameter,
  writeHeaders,
  writeParameters,
} from '../schemas/index.js'

const consistencyParameter = {
  description:
    'default (this replica, may show a write that can still roll back), committed (the state at the commit LSN) or linearizable (leader only).',
  enum: ['default', 'committed', 'linearizable'],
} as const

type KeyRequest = FastifyRequest<{ Params: { '*': string } }>

const emptyBuffer = Buffer.alloc(0)

function singleHeader(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name]
  if (value === undefined) return undefined
  if (Array.isArray(value)) {
    throw new KvError('KV_ERR_INVALID_PRECONDITION', `${name} may appear only once`)
  }
  return value
}

/** Reads a version from an ETag-style value: "12" or 12. */
function parseVersionTag(text: string, header: string): number {
  const trimmed = text.trim()
  const bare =
    trimmed.startsWith('"') && trimmed.endsWith('"') && trimmed.length >= 2
      ? trimmed.slice(1, -1)
      : trimmed
  const version = parsePositiveInteger(bare)
  if (version === null) {
    throw new KvError(
      'KV_ERR_INVALID_PRECONDITION',
      `${header} must be * or one version as returned in ETag (such as "12"); got ${JSON.stringify(text)}`,
    )
  }
  return version
}

/** The conditions of a PUT or DELETE, from If-Match and If-None-Match. */
function conditionsOf(
  request: FastifyRequest,
  allowIfNoneMatch: boolean,
): Pick<WriteOp, 'ifVersion' | 'ifAbsent' | 'ifExists'> {
  const ifMatch = singleHeader(request, 'if-match')
  const ifNoneMatch = singleHeader(request, 'if-none-match')
  if (ifMatch !== undefined && ifNoneMatch !== undefined) {
    throw new KvError(
      'KV_ERR_INVALID_PRECONDITION',
      'send either If-Match or If-None-Match, not both',
    )
  }
  if (ifNoneMatch !== undefined) {
    if (!allowIfNoneMatch) {
      throw new KvError('KV_ERR_INVALID_PRECONDITION', 'If-None-Match is not supported on DELETE')
    }
    if (ifNoneMatch.trim() !== '*') {
      throw new KvError(
        'KV_ERR_INVALID_PRECONDITION',
        `on writes If-None-Match only accepts * (create only); got ${JSON.stringify(ifNoneMatch)}`,
      )
    }
    return { ifAbsent: true }
  }
  if (ifMatch !== undefined) {
    if (ifMatch.trim() === '*') return { ifExists: true }
    return { ifVersion: parseVersionTag(ifMatch, 'If-Match') }
  }
  return {}
}

interface ListCursor {
  v: 1
  /** The last key of the previous page. */
  after: string
  /** The prefix the cursor was issued for. */
  prefix: string
}

function encodeCursor(cursor: ListCursor): string {
  return Buffer.from(JSON.stringify(cursor), 'utf8').toString('base64url')
}

function decodeCursor(text: string, prefix: string, keyBytesMax: number): Buffer {
  const invalid = (why: string) => new KvError('KV_ERR_INVALID_CURSOR', `invalid cursor: ${why}`)
  // A cursor holds two keys as JSON (each byte at most 6 characters), in base64url.
  const cursorCharsMax = Math.ceil(((keyBytesMax * 6 + 2) * 2 + 64) / 3) * 4
  if (text.length > cursorCharsMax || !/^[A-Za-z0-9_-]+$/.test(text)) {
    throw invalid('not a cursor returned by this API')
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'))
  } catch {
    throw invalid('not a cursor returned by this API')
  }
  const c = parsed as Partial<ListCursor> | null
  if (
    c === null ||
    typeof c !== 'object' ||
    c.v !== 1 ||
    typeof c.after !== 'string' ||
    typeof c.prefix !== 'string'
  ) {
    throw invalid('not a cursor returned by this API')
  }
  if (c.prefix !== prefix)
    throw invalid(`it belongs to prefix ${JSON.stringify(c.prefix)}, not ${JSON.stringify(prefix)}`)
  try {
    return keyToBytes(c.after, keyBytesMax)
  } catch {
    throw invalid('it holds an invalid key')
  }
}

/**
 * If-None-Match on a read: `*`, or a list of entity tags compared weakly (RFC 9110 13.1.2),
 * so `W/"12"` and `"12"` both match version 12.
 */
function etagListMatches(header: string, etag: string): boolean {
  const trimmed = header.trim()
  if (trimmed === '*') return true
  return trimmed.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag)
}

const listParams = new Set([
  'prefix',
  'start',
  'limit',
  'cursor',
  'values',
  'session',
  'consistency',
])

/**
 * `?consistency=`: `linearizable` (leader only, confirmed with a majority), `committed` (the
 * state at this replica's commit LSN: never a write that can roll back) or `default`.
 */
function consistencyOf(request: FastifyRequest): ReadConsistency {
  const value = (request.query as Record<string, unknown> | undefined)?.consistency
  if (value === undefined || value === 'default') return 'default'
  if (value === 'linearizable' || value === 'committed') return value
  throw new KvError(
    'KV_ERR_INVALID_ARGUMENT',
    `consistency must be default, committed or linearizable; got ${JSON.stringify(value)}`,
  )
}

/** Listing pages the longest scan collects: keys of slots not owned here are skipped. */
const listScanPagesMax = 16

/**
 * One page of keys, leaving out keys of slots this group does not own (sharding: records a move
 * left here, or one being imported). `lastKey` is the last key scanned, where the next page
 * starts, even when it was left out.
 */
async function listOwned(
  ctx: AppContext,
  options: Parameters<AppContext['store']['list']>[0],
  list: AppContext['store']['list'] = (o) => ctx.store.list(o),
): Promise<{ items: ListItem[]; more: boolean; lastKey: Buffer | null }> {
  const page = await list(options)
  const state = ctx.shards?.state
  const lastOf = (items: ListItem[]) => (items[items.length - 1]?.key as Buffer | undefined) ?? null
  if (state === undefined) return { ...page, lastKey: lastOf(page.items) }
  const items = page.items.filter((item) => state.lists(item.key))
  let more = page.more
  let lastKey = lastOf(page.items)
  for (let n = 1; more && items.length < options.limit && n < listScanPagesMax; n++) {
    const next = await list({
      ...options,
      ...(lastKey !== null ? { after: lastKey } : {}),
      limit: options.limit - items.length,
    })
    items.push(...next.items.filter((item) => state.lists(item.key)))
    more = next.more
    lastKey = lastOf(next.items) ?? lastKey
  }
  return { items, more, lastKey }
}

export function registerKvRoutes(app: FastifyInstance, ctx: AppContext): void {
  const { store, config, metrics } = ctx
  const keyOf = (request: KeyRequest): Buffer => keyToBytes(request.params['*'], config.keyBytesMax)

  app.put(
    '/v1/kv/*',
    {
      bodyLimit: config.valueBytesMax,
      config: {
        bodyTooLargeCode: 'KV_ERR_VALUE_TOO_LARGE',
        access: 'write-key',
        // A response schema lets fastify compile the serialiser of this hot route.
        compiledSerializer: true,
      } satisfies RouteErrorConfig & RouteSecurityConfig & OpenApiRouteConfig,
      schema: {
        summary: 'Write a key',
        description:
          'The body is the value, stored as sent (any bytes). If-None-Match: * creates only (201); If-Match: "<version>" or * updates only.',
        tags: ['keys'],
        params: keyParams,
        querystring: query({
          ...writeParameters,
          lease: { description: 'Attach the key to this lease (POST /v1/leases).' },
          ttlMs: { description: 'Give the key its own lease of this many milliseconds.' },
        }),
        headers: headers({
          ...writeHeaders,
          'if-match': 'Write only if the key has this version ("12") or exists (*).',
          'if-none-match': 'Only * (create only).',
        }),
        body: {
          content: {
            'application/octet-stream': {
              schema: { type: 'string', description: 'The value, any bytes' },
            },
          },
        },
        response: {
          200: { description: 'Written', ...putResponseSchema },
          201: { description: 'Created (If-None-Match: *)', ...putResponseSchema },
          202: {
            description: 'Queued (ack=queued): GET /v1/tickets/<id>',
            ...queuedResponseSchema,
          },
        },
      },
    },
    async (request: KeyRequest, reply) => {
      const key = keyOf(request)
      const value = (request.body as Buffer | undefined) ?? emptyBuffer
      const conditions = conditionsOf(request, true)
      // ?lease=, ?ttlMs=, If-Fence (leases/write.ts): decided at the leader with the write.
      const extras = leaseExtrasOf(request)
      if (extras !== null) checkLeasesSupported(ctx, isQueued(request))
      // ack=queued: into this member's outbox, applied by the leader later (outbox/routes.ts).
      if (isQueued(request))
        return acceptQueued(ctx, request, reply, {
          kind: 'put',
          ops: [{ type: 'put', key, value, ...conditions }],
        })
      const plain = {
        kind: 'put' as const,
        ops: [{ type: 'put' as const, key, value, ...conditions }],
      }
      const leased = extras === null ? null : withLeaseExtras(ctx, reply, extras, plain)
      const result = await completeWrite(ctx, request, reply, leased?.write ?? plain).finally(() =>
        leased?.settled(),
      )
      metrics.writes.put++
      // An unconditional PUT is a blind write (no read of the old value), so it cannot tell
      // whether it created the key; If-None-Match: * can, and answers 201.
      void reply.code(conditions.ifAbsent === true ? 201 : 200).header('etag', `"${result.lsn}"`)
      return {
        key: request.params['*'],
        version: result.lsn,
        lsn: result.lsn,
        session: result.session,
        ...stampFields(result.results[0]),
      } satisfies PutResponse
    },
  )

  const sendRecord = (
    request: KeyRequest,
    reply: FastifyReply,
    record: StoredRecord | null,
    appliedLsn: number,
    committedAt?: { commitLsn: number; appliedLsn: number },
  ): void => {
    if (committedAt) setCommittedReadHeaders(ctx, reply, committedAt)
    else setReadHeaders(ctx, reply, appliedLsn)
    if (record === null || record.tombstone) {
      reply.send(
        new KvError(
          'KV_ERR_KEY_NOT_FOUND',
          `key ${JSON.stringify(request.params['*'])} does not exist`,
          {
            key: request.params['*'],
          },
        ),
      )
      return
    }
    const etag = `"${record.version}"`
    void reply.header('etag', etag)
    if (record.stamp !== undefined) void reply.header('kv-stamp', formatStamp(record.stamp))
    const ifNoneMatch = request.headers['if-none-match']
    if (typeof ifNoneMatch === 'string' && etagListMatches(ifNoneMatch, etag)) {
      reply.code(304).send()
      return
    }
    reply.type('application/octet-stream').send(record.value)
  }

  // Not an async handler: a read served by the record cache answers in the same tick, with
  // no promise. A miss reads LevelDB in libuv's thread pool (a lookup that misses the
  // memtable can touch several files, and the event loop has HTTP to parse meanwhile).
  app.get(
    '/v1/kv/*',
    {
      config: { access: 'read-key' },
      schema: {
        summary: 'Read a key',
        description:
          "The value as stored; ETag is its version (If-None-Match gives 304); kv-applied-lsn, kv-session and the replica's role and lag in headers.",
        tags: ['keys'],
        params: keyParams,
        querystring: query({ consistency: consistencyParameter, session: sessionParameter }),
        headers: headers({ ...readHeaders, 'if-none-match': 'ETags or *: 304 when one matches.' }),
        response: {
          200: rawBody('application/octet-stream', 'The value, as written'),
          304: noBody('Not modified (If-None-Match matched)'),
        },
      },
    },
    (request: KeyRequest, reply) => {
      const key = keyOf(request)
      const consistency = consistencyOf(request)
      ctx.shards?.state.check(key, consistency === 'linearizable' ? 'linearizable' : 'read')
      if (consistency === 'linearizable' && ctx.replicator) {
        // On the leader only: a barrier through a majority, then a record that is committed.
        const replicator = ctx.replicator
        if (!replicator.isLeader) {
          reply.send(replicator.notLeader())
          return
        }
        replicator
          .readBarrier()
          .then(async () => {
            const appliedLsn = store.appliedLsn
            const record = await replicator.linearizable(await store.get(key))
            sendRecord(request, reply, record, appliedLsn)
          })
          .catch((err: unknown) => reply.send(err))
        return
      }
      if (consistency === 'committed') {
        // The state at the commit LSN, from the undo records of uncommitted entries (committed.ts).
        readCommittedKey(ctx, request, key)
          .then((read) => sendRecord(request, reply, read.record, read.appliedLsn, read))
          .catch((err: unknown) => reply.send(err))
        return
      }
      const session = sessionOf(request)
      if (!sessionSatisfied(ctx, session)) {
        // The session wrote or read past what this replica has applied: wait for it first.
        awaitSession(ctx, request, session)
          .then(() =>
            store.get(key).then((record) => sendRecord(request, reply, record, store.appliedLsn)),
          )
          .catch((err: unknown) => reply.send(err))
        return
      }
      const appliedLsn = store.appliedLsn
      const cached = store.getCached(key)
      if (cached !== undefined) {
        sendRecord(request, reply, cached, appliedLsn)
        return
      }
      store.get(key).then(
        (record) => sendRecord(request, reply, record, appliedLsn),
        (err: unknown) => reply.send(err),
      )
    },
  )

  app.delete(
    '/v1/kv/*',
    {
      config: { access: 'write-key' },
      schema: {
        summary: 'Delete a key',
        tags: ['keys'],
        params: keyParams,
        querystring: query(writeParameters),
        headers: headers({
          ...writeHeaders,
          'if-match': 'Delete only if the key has this version ("12") or exists (*).',
        }),
        response: {
          200: {
            description: 'Deleted (also when the key did not exist)',
            ...deleteResponseSchema,
          },
          202: { description: 'Queued (ack=queued)', ...queuedResponseSchema },
        },
      },
    },
    async (request: KeyRequest, reply) => {
      const key = keyOf(request)
      const conditions = conditionsOf(request, false)
      if (isQueued(request))
        return acceptQueued(ctx, request, reply, {
          kind: 'delete',
          ops: [{ type: 'delete', key, ...conditions }],
        })
      const result = await completeWrite(ctx, request, reply, {
        kind: 'delete',
        ops: [{ type: 'delete', key, ...conditions }],
      })
      metrics.writes.delete++
      return {
        key: request.params['*'],
        deleted: true,
        lsn: result.lsn,
        previousVersion: result.results[0]?.previousVersion ?? null,
        session: result.session,
        ...(result.deduplicated ? { deduplicated: true as const } : {}),
        ...stampFields(result.results[0]),
      } satisfies DeleteResponse
    },
  )
  methodNotAllowed(app, '/v1/kv/*', ['GET', 'PUT', 'DELETE'])

  app.get(
    '/v1/kv',
    {
      config: { access: 'list' },
      schema: {
        summary: 'List keys',
        description: 'One page of keys in order; pass nextCursor back as cursor for the next.',
        tags: ['keys'],
        querystring: query({
          prefix: { description: 'Only keys that start with this.' },
          start: { description: 'Start at this key (inclusive).' },
          limit: { description: "Keys per page, 1 to the node's --list-limit-max." },
          cursor: { description: 'nextCursor of the previous page.' },
          values: {
            description: 'true: each item carries valueBase64.',
            enum: ['true', 'false', '1', '0'],
          },
          session: sessionParameter,
          consistency: { description: 'default or committed.', enum: ['default', 'committed'] },
        }),
        headers: headers(readHeaders),
        response: { 200: listResponseSchema },
      },
    },
    async (request, reply) => {
      const query = request.query as Record<string, string | string[] | undefined>
      for (const [name, value] of Object.entries(query)) {
        if (!listParams.has(name)) {
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            `unknown query parameter ${JSON.stringify(name)}; use prefix, start, limit, cursor, values, session or consistency`,
          )
        }
        if (Array.isArray(value)) {
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            `query parameter ${name} may appear only once`,
          )
        }
      }
      const text = query as Record<string, string | undefined>
      const prefixText = text.prefix ?? ''
      const prefix = prefixText === '' ? undefined : keyToBytes(prefixText, config.keyBytesMax)
      const start =
        text.start === undefined || text.start === ''
          ? undefined
          : keyToBytes(text.start, config.keyBytesMax)
      let limit = config.listLimitDefault
      if (text.limit !== undefined) {
        const parsed = parsePositiveInteger(text.limit)
        if (parsed === null || parsed > config.listLimitMax) {
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            `limit must be a whole number from 1 to ${config.listLimitMax}; got ${JSON.stringify(text.limit)}`,
          )
        }
        limit = parsed
      }
      let values = false
      if (text.values !== undefined) {
        if (!['true', 'false', '1', '0'].includes(text.values)) {
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            `values must be true or false; got ${JSON.stringify(text.values)}`,
          )
        }
        values = text.values === 'true' || text.values === '1'
      }
      const after =
        text.cursor === undefined || text.cursor === ''
          ? undefined
          : decodeCursor(text.cursor, prefixText, config.keyBytesMax)
      const consistency = consistencyOf(request)
      if (consistency === 'linearizable') {
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'a listing takes consistency=default or committed, not linearizable',
        )
      }
      const committed = consistency === 'committed'
      // Committed: the commit LSN the first page read was taken at (each read is one snapshot).
      const at: { commitLsn: number | null } = { commitLsn: null }
      const listCommitted: AppContext['store']['list'] = async (o) => {
        const page = await store.listCommitted(o, ctx.replicator?.knownCommitLsn)
        at.commitLsn ??= page.commitLsn
        return page
      }
      if (committed) await awaitCommittedSession(ctx, request, sessionOf(request))
      else await awaitSession(ctx, request, sessionOf(request))
      const appliedLsn = store.appliedLsn
      const page = await listOwned(
        ctx,
        {
          ...(prefix ? { prefix } : {}),
          ...(start ? { start } : {}),
          ...(after ? { after } : {}),
          limit,
          bytesMax: config.listBytesMax,
        },
        committed ? listCommitted : undefined,
      )
      const items = page.items.map(({ key, record }) => ({
        key: key.toString('utf8'),
        version: record.version,
        valueBytes: record.value.length,
        ...(values ? { valueBase64: record.value.toString('base64') } : {}),
        ...(record.stamp !== undefined ? { stamp: formatStamp(record.stamp) } : {}),
      }))
      const { commitLsn } = at
      if (commitLsn !== null) setCommittedReadHeaders(ctx, reply, { commitLsn, appliedLsn })
      else setReadHeaders(ctx, reply, appliedLsn)
      return {
        items,
        nextCursor:
          page.more && page.lastKey !== null
            ? encodeCursor({ v: 1, after: page.lastKey.toString('utf8'), prefix: prefixText })
            : null,
        appliedLsn,
        ...(commitLsn !== null ? { commitLsn } : {}),
      } satisfies ListResponse
    },
  )
  methodNotAllowed(app, '/v1/kv', ['GET'])
}
