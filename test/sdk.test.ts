/**
 * The SDK against a real node (in-process, real LevelDB, real sockets), over h2c and HTTP/1.1.
 */
import { KvClient, KvError } from '@kvstore/client'
import { rejection } from '@kvstore/testkit'
import { rootTls } from './support/certs.js'
import { useStandaloneNode } from './support/temp.js'

const node = useStandaloneNode('kv-sdk-')

const failure = (promise: Promise<unknown>): Promise<KvError> => rejection(promise, KvError)

describe.each(['h2c', 'http1'] as const)('KvClient over %s', (protocol) => {
  let client: KvClient
  beforeAll(() => {
    client = new KvClient({ ...rootTls(), url: node().url, protocol })
  })
  afterAll(async () => {
    await client.close()
  })
  const k = (key: string) => `${protocol}/${key}`

  it('round-trips text and binary values, and keys with any character', async () => {
    const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i))
    const put = await client.put(k('bin'), binary)
    expect(put).toMatchObject({ key: k('bin'), version: put.lsn })
    const got = await client.get(k('bin'))
    expect(got?.value.equals(binary)).toBe(true)
    expect(got?.version).toBe(put.version)
    expect(got?.appliedLsn).toBeGreaterThanOrEqual(put.lsn)
    const odd = k('spaces and ?#%&/ünïcödé/')
    await client.put(odd, 'odd')
    expect((await client.get(odd))?.value.toString()).toBe('odd')
    expect(await client.get(k('missing'))).toBeNull()
  })

  it('conditions give typed errors with the current version', async () => {
    const first = await client.put(k('cas'), 'a', { ifAbsent: true })
    const again = await failure(client.put(k('cas'), 'b', { ifAbsent: true }))
    expect(again.code).toBe('KV_ERR_PRECONDITION_FAILED')
    expect(again.status).toBe(412)
    expect(again.details.currentVersion).toBe(first.version)
    const second = await client.put(k('cas'), 'b', { ifVersion: first.version })
    expect((await failure(client.put(k('cas'), 'c', { ifVersion: first.version }))).code).toBe(
      'KV_ERR_PRECONDITION_FAILED',
    )
    const deleted = await client.delete(k('cas'), { ifVersion: second.version })
    expect(deleted).toMatchObject({ deleted: true, previousVersion: second.version })
    expect((await failure(client.delete(k('cas')))).code).toBe('KV_ERR_KEY_NOT_FOUND')
    expect((await failure(client.put(k('x'), 'v', { ifAbsent: true, ifExists: true }))).code).toBe(
      'KV_ERR_INVALID_PRECONDITION',
    )
  })

  it('maps every server error to its code', async () => {
    expect((await failure(client.put('', 'v'))).code).toBe('KV_ERR_INVALID_KEY')
    expect((await failure(client.put('x'.repeat(2000), 'v'))).code).toBe('KV_ERR_KEY_TOO_LARGE')
    expect((await failure(client.put(k('big'), Buffer.alloc(1024 * 1024 + 1)))).code).toBe(
      'KV_ERR_VALUE_TOO_LARGE',
    )
    expect((await failure(client.list({ limit: 0 }))).code).toBe('KV_ERR_INVALID_ARGUMENT')
  })

  it('applies batches atomically and lists everything page by page', async () => {
    const ops = Array.from({ length: 30 }, (_, i) => ({
      op: 'put' as const,
      key: k(`page/${String(i).padStart(2, '0')}`),
      value: `v${i}`,
    }))
    const result = await client.batch([
      ...ops,
      { op: 'put', key: k('page-bin'), value: Buffer.from([1, 2, 3]) },
    ])
    expect(result.results).toHaveLength(31)
    const keys: string[] = []
    for await (const item of client.listAll({ prefix: k('page/'), limit: 7 })) keys.push(item.key)
    expect(keys).toEqual(ops.map((o) => o.key))
    expect((await client.get(k('page-bin')))?.value).toEqual(Buffer.from([1, 2, 3]))
    const failed = await failure(
      client.batch([{ op: 'put', key: k('page/00'), value: 'x', ifAbsent: true }]),
    )
    expect(failed.details.opIndex).toBe(0)
  })

  it('reports status, digest and readiness', async () => {
    expect(await client.status()).toMatchObject({ nodeId: 'n1', mode: 'standalone', ready: true })
    expect((await client.digest()).digest).toMatch(/^[0-9a-f]{64}$/)
    expect(await client.ready()).toBe(true)
  })
})

describe('KvClient when no node answers', () => {
  it('fails with KV_ERR_UNAVAILABLE', async () => {
    for (const protocol of ['h2c', 'http1'] as const) {
      const client = new KvClient({
        ...rootTls(),
        url: 'http://127.0.0.1:1',
        protocol,
        timeoutMs: 2000,
      })
      const err = await failure(client.get('x'))
      expect(err.code).toBe('KV_ERR_UNAVAILABLE')
      expect(err.message).toMatch(/cannot reach http:\/\/127\.0\.0\.1:1/)
      await client.close()
    }
  })

  it('refuses URLs other than https and http', () => {
    expect(() => new KvClient({ ...rootTls(), url: 'ftp://example.com' })).toThrow(
      /only https:\/\/ and http:\/\//,
    )
  })
})
