/**
 * POST /v1/batch: puts and deletes applied atomically, in order, as one log entry.
 *
 *   { "ops": [
 *       { "op": "put", "key": "a", "value": "text" },
 *       { "op": "put", "key": "b", "valueBase64": "AAEC" },
 *       { "op": "delete", "key": "c" },
 *       { "op": "put", "key": "d", "value": "x", "ifVersion": 12 }   // or ifAbsent / ifExists
 *   ] }
 *
 * Either every op is applied or none is. Each op sees the effect of the ops before it. If a
 * condition fails, nothing is written and the answer is 412 naming the op.
 */
import { batchRequestSchema, batchResponseSchema, queuedResponseSchema } from '@kvstore/protocol'
import { headers, jsonBody, query, writeHeaders, writeParameters } from '../schemas/index.js'
import type { FastifyInstance } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import { keyToBytes, type BatchResponse } from '@kvstore/protocol'
import type { WriteOp } from '@kvstore/storage'
import type { AppContext } from '../context.js'
import { completeWrite, stampFields } from '../replication.js'
import { methodNotAllowed, type RouteErrorConfig } from '../errors.js'
import { authorizeBatch, type RouteSecurityConfig } from '../../security/http-auth.js'
import { acceptQueued, isQueued } from '../../outbox/routes.js'
import { checkLeasesSupported, leaseExtrasOf, withLeaseExtras } from '../../leases/write.js'

const opFields = new Set(['op', 'key', 'value', 'valueBase64', 'ifVersion', 'ifAbsent', 'ifExists'])
const base64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

function malformed(message: string, opIndex?: number): KvError {
  return new KvError(
    'KV_ERR_MALFORMED_BODY',
    opIndex === undefined ? message : `ops[${opIndex}]: ${message}`,
    opIndex === undefined ? {} : { opIndex },
  )
}

/** Deepest nesting a batch body needs: {"ops": [{...}]}. */
const batchDepthMax = 3
/** Fields an op may have, plus room for the separators of the body itself. */
const valuesPerOpMax = opFields.size + 1

/**
 * A linear pass over the raw bytes before JSON.parse: the nesting depth and the number of
 * values. JSON.parse takes time that grows with nesting (4 MiB of "[[[[..." blocked the event
 * loop for 1.5 s, long enough to cost a leader its leadership) and with the count of values;
 * a body no batch can be is refused before it is parsed, so parsing stays a few milliseconds.
 */
function checkShape(body: Buffer, batchOpsMax: number): void {
  const valuesMax = (batchOpsMax + 1) * valuesPerOpMax
  let depth = 0
  let values = 0
  let inString = false
  for (let i = 0; i < body.length; i++) {
    const c = body[i] as number
    if (inString) {
      if (c === 0x5c)
        i++ // a backslash escapes the next byte
      else if (c === 0x22) inString = false
      continue
    }
    if (c === 0x22) {
      inString = true
    } else if (c === 0x7b || c === 0x5b) {
      // { or [
      if (++depth > batchDepthMax)
        throw malformed(
          `the body nests deeper than ${batchDepthMax} levels; a batch is {"ops": [{...}, ...]}`,
        )
      values++
    } else if (c === 0x7d || c === 0x5d) {
      depth--
    } else if (c === 0x2c) {
      // ,
      if (++values > valuesMax)
        throw new KvError(
          'KV_ERR_BATCH_TOO_LARGE',
          `the body holds more than ${valuesMax} values; a batch has at most ${batchOpsMax} ops of ${opFields.size} fields`,
          { batchOpsMax },
        )
    }
  }
}

/** Validates a batch body and turns it into write ops. Throws a KvError naming the problem. */
export function parseBatch(
  body: Buffer | undefined,
  limits: { keyBytesMax: number; valueBytesMax: number; batchOpsMax: number },
): WriteOp[] {
  if (body === undefined || body.length === 0) {
    throw malformed('the body is empty; send {"ops": [...]}')
  }
  checkShape(body, limits.batchOpsMax)
  let parsed: unknown
  try {
    parsed = JSON.parse(body.toString('utf8'))
  } catch (err) {
    throw malformed(`the body is not valid JSON: ${(err as Error).message}`)
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw malformed('the body must be a JSON object like {"ops": [...]}')
  }
  for (const field of Object.keys(parsed)) {
    if (field !== 'ops')
      throw malformed(`unknown field ${JSON.stringify(field)}; the body has only "ops"`)
  }
  const ops = (parsed as { ops?: unknown }).ops
  if (!Array.isArray(ops)) throw malformed('"ops" must be an array')
  if (ops.length === 0) throw malformed('"ops" is empty; a batch needs at least one op')
  if (ops.length > limits.batchOpsMax) {
    throw new KvError(
      'KV_ERR_BATCH_TOO_LARGE',
      `the batch has ${ops.length} ops; the limit is ${limits.batchOpsMax}`,
      { ops: ops.length, batchOpsMax: limits.batchOpsMax },
    )
  }
  return ops.map((raw: unknown, index): WriteOp => {
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      throw malformed('each op must be an object', index)
    }
    const op = raw as Record<string, unknown>
    for (const field of Object.keys(op)) {
      if (!opFields.has(field)) throw malformed(`unknown field ${JSON.stringify(field)}`, index)
    }
    if (op.op !== 'put' && op.op !== 'delete') {
      throw malformed('"op" must be "put" or "delete"', index)
    }
    if (typeof op.key !== 'string') throw malformed('"key" must be a string', index)
    let key: Buffer
    try {
      key = keyToBytes(op.key, limits.keyBytesMax)
    } catch (err) {
      const e = err as KvError
      throw new KvError(e.code, `ops[${index}]: ${e.message}`, { ...e.details, opIndex: index })
    }
    const result: WriteOp = { type: op.op, key }
    if (op.op === 'put') {
      const hasText = op.value !== undefined
      const hasBase64 = op.valueBase64 !== undefined
      if (hasText === hasBase64)
        throw malformed('a put needs exactly one of "value" or "valueBase64"', index)
      let value: Buffer
      if (hasText) {
        if (typeof op.value !== 'string') throw malformed('"value" must be a string', index)
        value = Buffer.from(op.value, 'utf8')
      } else {
        if (typeof op.valueBase64 !== 'string' || !base64.test(op.valueBase64)) {
          throw malformed('"valueBase64" must be standard padded base64', index)
        }
        value = Buffer.from(op.valueBase64, 'base64')
      }
      if (value.length > limits.valueBytesMax) {
        throw new KvError(
          'KV_ERR_VALUE_TOO_LARGE',
          `ops[${index}]: the value is ${value.length} bytes; the limit is ${limits.valueBytesMax}`,
          { opIndex: index, valueBytes: value.length, limitBytes: limits.valueBytesMax },
        )
      }
      result.value = value
    } else if (op.value !== undefined || op.valueBase64 !== undefined) {
      throw malformed('a delete takes no value', index)
    }
    if (op.ifVersion !== undefined) {
      if (
        typeof op.ifVersion !== 'number' ||
        !Number.isSafeInteger(op.ifVersion) ||
        op.ifVersion < 1
      ) {
        throw malformed('"ifVersion" must be a positive whole number', index)
      }
      result.ifVersion = op.ifVersion
    }
    for (const flag of ['ifAbsent', 'ifExists'] as const) {
      if (op[flag] !== undefined) {
        if (typeof op[flag] !== 'boolean') throw malformed(`"${flag}" must be true or false`, index)
        result[flag] = op[flag]
      }
    }
    const conditions = [
      result.ifVersion !== undefined,
      result.ifAbsent === true,
      result.ifExists === true,
    ]
    if (conditions.filter(Boolean).length > 1) {
      throw malformed('use at most one of "ifVersion", "ifAbsent" and "ifExists"', index)
    }
    return result
  })
}

export function registerBatchRoutes(app: FastifyInstance, ctx: AppContext): void {
  const { config, metrics } = ctx
  app.post(
    '/v1/batch',
    {
      bodyLimit: config.requestBodyBytesMax,
      config: {
        bodyTooLargeCode: 'KV_ERR_BODY_TOO_LARGE',
        access: 'batch',
      } satisfies RouteErrorConfig & RouteSecurityConfig,
      schema: {
        summary: 'Apply puts and deletes atomically, in order, as one write',
        tags: ['keys'],
        querystring: query(writeParameters),
        headers: headers(writeHeaders),
        body: jsonBody(batchRequestSchema),
        response: {
          200: batchResponseSchema,
          202: { description: 'Queued (ack=queued)', ...queuedResponseSchema },
        },
      },
    },
    async (request, reply) => {
      const ops = parseBatch(request.body as Buffer | undefined, config)
      // One op outside the caller's grants refuses the whole batch, before anything is written.
      authorizeBatch(
        ctx.security.auth,
        request,
        ops.map((op) => ({ key: op.key.toString('utf8'), write: true })),
      )
      // ?lease=, ?ttlMs=, If-Fence (leases/write.ts): decided at the leader with the write.
      const extras = leaseExtrasOf(request)
      if (extras !== null) checkLeasesSupported(ctx, isQueued(request))
      if (isQueued(request)) return acceptQueued(ctx, request, reply, { kind: 'batch', ops })
      const plain = { kind: 'batch' as const, ops }
      const leased = extras === null ? null : withLeaseExtras(ctx, reply, extras, plain)
      const result = await completeWrite(ctx, request, reply, leased?.write ?? plain).finally(() =>
        leased?.settled(),
      )
      metrics.writes.batch++
      return {
        lsn: result.lsn,
        session: result.session,
        ...(result.deduplicated ? { deduplicated: true as const } : {}),
        // Only the client's own ops: a lease's or fence's reserved records are never shown.
        results: result.results.slice(0, ops.length).map((r) => ({
          key: r.key.toString('utf8'),
          version: r.version,
          ...(r.previousVersion !== undefined ? { previousVersion: r.previousVersion } : {}),
          ...stampFields(r),
        })),
      } satisfies BatchResponse
    },
  )
  methodNotAllowed(app, '/v1/batch', ['POST'])
}
