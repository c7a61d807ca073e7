/**
 * Bad input, one case per row: each asserts the HTTP status and the stable error code, and
 * that nothing was written.
 */
import type { InjectOptions } from 'fastify'
import { errorCatalog, isErrorCode } from '@kvstore/protocol/errors'
import { errorOf, startTestNode, type TestNode } from './helpers.js'

let t: TestNode

beforeAll(async () => {
  t = await startTestNode(['--batch-ops-max', '10', '--request-body-bytes-max', '2MiB'])
  // One known key, version 1, for condition and cursor cases.
  const res = await t.node.app.inject({ method: 'PUT', url: '/v1/kv/existing', payload: 'v1' })
  expect(res.statusCode).toBe(200)
})
afterAll(async () => {
  await t.stop()
})

const json = (value: unknown): InjectOptions['payload'] => JSON.stringify(value)
const batch = (payload: InjectOptions['payload']): InjectOptions => ({
  method: 'POST',
  url: '/v1/batch',
  headers: { 'content-type': 'application/json' },
  payload,
})
const oneMiB = 1024 * 1024
const foreignCursor = Buffer.from(JSON.stringify({ v: 1, after: 'x', prefix: 'other/' })).toString(
  'base64url',
)

const rows: [name: string, request: InjectOptions, status: number, code: string][] = [
  [
    'oversized key on PUT',
    { method: 'PUT', url: `/v1/kv/${'k'.repeat(1025)}`, payload: 'v' },
    400,
    'KV_ERR_KEY_TOO_LARGE',
  ],
  [
    'oversized key on GET',
    { method: 'GET', url: `/v1/kv/${'k'.repeat(1025)}` },
    400,
    'KV_ERR_KEY_TOO_LARGE',
  ],
  [
    'key far beyond the URL parameter limit',
    { method: 'GET', url: `/v1/kv/${'%C3%A9'.repeat(2000)}` },
    400,
    'KV_ERR_KEY_TOO_LARGE',
  ],
  [
    'oversized multi-byte key',
    { method: 'PUT', url: `/v1/kv/${'%C3%A9'.repeat(513)}`, payload: 'v' },
    400,
    'KV_ERR_KEY_TOO_LARGE',
  ],
  ['empty key', { method: 'PUT', url: '/v1/kv/', payload: 'v' }, 400, 'KV_ERR_INVALID_KEY'],
  [
    'key with a NUL byte',
    { method: 'PUT', url: '/v1/kv/a%00b', payload: 'v' },
    400,
    'KV_ERR_INVALID_KEY',
  ],
  [
    'batch key with a "." segment',
    batch(json({ ops: [{ op: 'put', key: 'a/./b', value: '1' }] })),
    400,
    'KV_ERR_INVALID_KEY',
  ],
  ['key with a newline', { method: 'GET', url: '/v1/kv/a%0Ab' }, 400, 'KV_ERR_INVALID_KEY'],
  [
    'malformed percent-encoding',
    { method: 'GET', url: '/v1/kv/%E0%A4%A' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'oversized value',
    { method: 'PUT', url: '/v1/kv/big', payload: Buffer.alloc(oneMiB + 1) },
    413,
    'KV_ERR_VALUE_TOO_LARGE',
  ],
  ['oversized batch body', batch(Buffer.alloc(2 * oneMiB + 1, 0x20)), 413, 'KV_ERR_BODY_TOO_LARGE'],
  ['malformed batch JSON', batch('{"ops": [ {"op": "put",'), 400, 'KV_ERR_MALFORMED_BODY'],
  ['empty batch body', batch(''), 400, 'KV_ERR_MALFORMED_BODY'],
  [
    'batch body is an array',
    batch(json([{ op: 'put', key: 'a', value: '1' }])),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  ['batch without ops', batch(json({ operations: [] })), 400, 'KV_ERR_MALFORMED_BODY'],
  ['batch with empty ops', batch(json({ ops: [] })), 400, 'KV_ERR_MALFORMED_BODY'],
  [
    'batch op with unknown field',
    batch(json({ ops: [{ op: 'put', key: 'a', value: '1', ifversion: 1 }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch op with unknown type',
    batch(json({ ops: [{ op: 'upsert', key: 'a', value: '1' }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch put with no value',
    batch(json({ ops: [{ op: 'put', key: 'a' }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch put with two values',
    batch(json({ ops: [{ op: 'put', key: 'a', value: '1', valueBase64: 'AA==' }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch put with bad base64',
    batch(json({ ops: [{ op: 'put', key: 'a', valueBase64: 'not base64!' }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch delete with a value',
    batch(json({ ops: [{ op: 'delete', key: 'a', value: '1' }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch with fractional ifVersion',
    batch(json({ ops: [{ op: 'put', key: 'a', value: '1', ifVersion: 1.5 }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch op with two conditions',
    batch(json({ ops: [{ op: 'put', key: 'a', value: '1', ifVersion: 1, ifAbsent: true }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch with a non-string key',
    batch(json({ ops: [{ op: 'put', key: 42, value: '1' }] })),
    400,
    'KV_ERR_MALFORMED_BODY',
  ],
  [
    'batch op with an invalid key',
    batch(json({ ops: [{ op: 'put', key: '', value: '1' }] })),
    400,
    'KV_ERR_INVALID_KEY',
  ],
  [
    'batch op with an oversized key',
    batch(json({ ops: [{ op: 'put', key: 'k'.repeat(1025), value: '1' }] })),
    400,
    'KV_ERR_KEY_TOO_LARGE',
  ],
  [
    'batch op with an oversized value',
    batch(
      json({
        ops: [{ op: 'put', key: 'a', valueBase64: Buffer.alloc(oneMiB + 1).toString('base64') }],
      }),
    ),
    413,
    'KV_ERR_VALUE_TOO_LARGE',
  ],
  [
    'batch with too many ops',
    batch(json({ ops: Array.from({ length: 11 }, (_, i) => ({ op: 'delete', key: `k${i}` })) })),
    400,
    'KV_ERR_BATCH_TOO_LARGE',
  ],
  [
    'bad cursor',
    { method: 'GET', url: '/v1/kv?cursor=not-a-cursor' },
    400,
    'KV_ERR_INVALID_CURSOR',
  ],
  [
    'cursor with bad characters',
    { method: 'GET', url: '/v1/kv?cursor=%7B%7D' },
    400,
    'KV_ERR_INVALID_CURSOR',
  ],
  [
    'cursor of another prefix',
    { method: 'GET', url: `/v1/kv?prefix=mine/&cursor=${foreignCursor}` },
    400,
    'KV_ERR_INVALID_CURSOR',
  ],
  ['list limit of zero', { method: 'GET', url: '/v1/kv?limit=0' }, 400, 'KV_ERR_INVALID_ARGUMENT'],
  [
    'list limit not a number',
    { method: 'GET', url: '/v1/kv?limit=ten' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'list limit above the maximum',
    { method: 'GET', url: '/v1/kv?limit=1001' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'list with unknown parameter',
    { method: 'GET', url: '/v1/kv?perfix=a' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'list with a repeated parameter',
    { method: 'GET', url: '/v1/kv?prefix=a&prefix=b' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'list with bad values flag',
    { method: 'GET', url: '/v1/kv?values=maybe' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'bad If-Match',
    { method: 'PUT', url: '/v1/kv/existing', headers: { 'if-match': 'abc' }, payload: 'v' },
    400,
    'KV_ERR_INVALID_PRECONDITION',
  ],
  [
    'weak If-Match',
    { method: 'PUT', url: '/v1/kv/existing', headers: { 'if-match': 'W/"1"' }, payload: 'v' },
    400,
    'KV_ERR_INVALID_PRECONDITION',
  ],
  [
    'If-Match of version 0',
    { method: 'PUT', url: '/v1/kv/existing', headers: { 'if-match': '"0"' }, payload: 'v' },
    400,
    'KV_ERR_INVALID_PRECONDITION',
  ],
  [
    'If-Match with a list',
    { method: 'DELETE', url: '/v1/kv/existing', headers: { 'if-match': '"1", "2"' } },
    400,
    'KV_ERR_INVALID_PRECONDITION',
  ],
  [
    'If-None-Match with a version on PUT',
    { method: 'PUT', url: '/v1/kv/existing', headers: { 'if-none-match': '"1"' }, payload: 'v' },
    400,
    'KV_ERR_INVALID_PRECONDITION',
  ],
  [
    'If-None-Match on DELETE',
    { method: 'DELETE', url: '/v1/kv/existing', headers: { 'if-none-match': '*' } },
    400,
    'KV_ERR_INVALID_PRECONDITION',
  ],
  [
    'both If-Match and If-None-Match',
    {
      method: 'PUT',
      url: '/v1/kv/existing',
      headers: { 'if-match': '"1"', 'if-none-match': '*' },
      payload: 'v',
    },
    400,
    'KV_ERR_INVALID_PRECONDITION',
  ],
  [
    'failed If-Match',
    { method: 'PUT', url: '/v1/kv/existing', headers: { 'if-match': '"999"' }, payload: 'v' },
    412,
    'KV_ERR_PRECONDITION_FAILED',
  ],
  [
    'failed If-None-Match: *',
    { method: 'PUT', url: '/v1/kv/existing', headers: { 'if-none-match': '*' }, payload: 'v' },
    412,
    'KV_ERR_PRECONDITION_FAILED',
  ],
  [
    'failed batch condition',
    batch(
      json({
        ops: [
          { op: 'put', key: 'n', value: '1' },
          { op: 'delete', key: 'existing', ifVersion: 999 },
        ],
      }),
    ),
    412,
    'KV_ERR_PRECONDITION_FAILED',
  ],
  ['GET of a missing key', { method: 'GET', url: '/v1/kv/missing' }, 404, 'KV_ERR_KEY_NOT_FOUND'],
  [
    'DELETE of a missing key',
    { method: 'DELETE', url: '/v1/kv/missing' },
    404,
    'KV_ERR_KEY_NOT_FOUND',
  ],
  ['unknown route', { method: 'GET', url: '/v2/kv/a' }, 404, 'KV_ERR_ROUTE_NOT_FOUND'],
  ['unknown route under v1', { method: 'GET', url: '/v1/keys' }, 404, 'KV_ERR_ROUTE_NOT_FOUND'],
  [
    'wrong method on a key',
    { method: 'POST', url: '/v1/kv/a', payload: 'v' },
    405,
    'KV_ERR_METHOD_NOT_ALLOWED',
  ],
  ['wrong method on batch', { method: 'GET', url: '/v1/batch' }, 405, 'KV_ERR_METHOD_NOT_ALLOWED'],
  [
    'wrong method on status',
    { method: 'DELETE', url: '/v1/status' },
    405,
    'KV_ERR_METHOD_NOT_ALLOWED',
  ],
  [
    'an unknown read consistency',
    { method: 'GET', url: '/v1/kv/a?consistency=strong' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'a rollback page limit past the maximum',
    { method: 'GET', url: '/admin/v1/rollbacks?limit=1001' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'a rollback cursor that is not a number',
    { method: 'GET', url: '/admin/v1/rollbacks?after=x' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'an unknown rollback parameter',
    { method: 'GET', url: '/admin/v1/rollbacks?since=1' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'deleting rollbacks without saying through which',
    { method: 'DELETE', url: '/admin/v1/rollbacks' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'wrong method on rollbacks',
    { method: 'PUT', url: '/admin/v1/rollbacks' },
    405,
    'KV_ERR_METHOD_NOT_ALLOWED',
  ],
  [
    'a leadership transfer on a standalone node',
    { method: 'POST', url: '/admin/v1/transfer-leadership' },
    400,
    'KV_ERR_INVALID_ARGUMENT',
  ],
  [
    'wrong method on transfer-leadership',
    { method: 'GET', url: '/admin/v1/transfer-leadership' },
    405,
    'KV_ERR_METHOD_NOT_ALLOWED',
  ],
]

describe('bad input gets a stable code and writes nothing', () => {
  it.each(rows)('%s -> %i %s', async (_name, request, status, code) => {
    const before = t.node.store.appliedLsn
    const res = await t.node.app.inject(request)
    expect(res.statusCode).toBe(status)
    const error = errorOf(res.body)
    expect(error.code).toBe(code)
    expect(isErrorCode(error.code)).toBe(true)
    expect(errorCatalog[error.code as keyof typeof errorCatalog].status).toBe(status)
    expect(res.headers['content-type']).toMatch(/^application\/json/)
    expect(t.node.store.appliedLsn).toBe(before)
  })

  it('names the offending op of a batch', async () => {
    const res = await t.node.app.inject(
      batch(
        json({
          ops: [
            { op: 'put', key: 'a', value: '1' },
            { op: 'put', key: 'b', valueBase64: '!!' },
          ],
        }),
      ),
    )
    expect(errorOf(res.body)).toMatchObject({ code: 'KV_ERR_MALFORMED_BODY', opIndex: 1 })
    expect(errorOf(res.body).message).toMatch(/^ops\[1\]/)
  })

  it('reports the current version when a condition fails', async () => {
    const res = await t.node.app.inject({
      method: 'PUT',
      url: '/v1/kv/existing',
      headers: { 'if-match': '"7"' },
      payload: 'v',
    })
    expect(errorOf(res.body)).toMatchObject({ key: 'existing', currentVersion: 1 })
  })

  it('sends Allow with 405', async () => {
    const res = await t.node.app.inject({ method: 'PATCH', url: '/v1/kv/a' })
    expect(res.headers.allow).toBe('GET, PUT, DELETE')
  })

  it('the key and the data survived every bad request', async () => {
    const res = await t.node.app.inject({ method: 'GET', url: '/v1/kv/existing' })
    expect(res.statusCode).toBe(200)
    expect(res.body).toBe('v1')
    expect(res.headers.etag).toBe('"1"')
    const list = await t.node.app.inject({ method: 'GET', url: '/v1/kv' })
    expect(JSON.parse(list.body).items.map((i: { key: string }) => i.key)).toEqual(['existing'])
  })
})
