import type { InjectOptions } from 'fastify'
import { H2CClient, Pool, request } from 'undici'
import { keyPath } from '@kvstore/testkit'
import { errorOf, startTestNode, type TestNode } from './helpers.js'

let t: TestNode

beforeEach(async () => {
  t = await startTestNode()
})
afterEach(async () => {
  await t.stop()
})

const inject = (options: InjectOptions) => t.node.app.inject(options)

describe('single keys', () => {
  it('stores any bytes exactly and reports versions, ETags and LSNs', async () => {
    const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
    const created = await inject({ method: 'PUT', url: '/v1/kv/bin', payload: every })
    expect(created.statusCode).toBe(200)
    expect(created.headers.etag).toBe('"1"')
    expect(created.headers['kv-lsn']).toBe('1')
    expect(created.json()).toEqual({ key: 'bin', version: 1, lsn: 1, session: 's1.1.1' })
    expect(created.headers['kv-session']).toBe('s1.1.1')

    const got = await inject({ method: 'GET', url: '/v1/kv/bin' })
    expect(got.statusCode).toBe(200)
    expect(got.rawPayload.equals(every)).toBe(true)
    expect(got.headers['content-type']).toBe('application/octet-stream')
    expect(got.headers.etag).toBe('"1"')
    expect(got.headers['kv-applied-lsn']).toBe('1')

    const updated = await inject({ method: 'PUT', url: '/v1/kv/bin', payload: 'text' })
    expect(updated.statusCode).toBe(200)
    expect(updated.json()).toEqual({ key: 'bin', version: 2, lsn: 2, session: 's1.1.2' })
  })

  it('accepts an empty value, whatever the Content-Type', async () => {
    expect((await inject({ method: 'PUT', url: '/v1/kv/empty' })).statusCode).toBe(200)
    const res = await inject({
      method: 'PUT',
      url: '/v1/kv/json',
      headers: { 'content-type': 'application/json' },
      payload: '{not even json',
    })
    expect(res.statusCode).toBe(200)
    expect((await inject({ method: 'GET', url: '/v1/kv/json' })).body).toBe('{not even json')
    const empty = await inject({ method: 'GET', url: '/v1/kv/empty' })
    expect(empty.statusCode).toBe(200)
    expect(empty.rawPayload).toHaveLength(0)
  })

  it('keys may hold slashes, spaces, unicode and reserved characters', async () => {
    const keys = ['a/b/c', 'with space', 'ключ/🎉', 'q?x=1&y#z', '100%', 'trailing/', '//double']
    for (const key of keys) {
      const path = keyPath(key)
      const put = await inject({ method: 'PUT', url: `/v1/kv/${path}`, payload: key })
      expect(put.statusCode, key).toBe(200)
      expect(put.json().key).toBe(key)
      const get = await inject({ method: 'GET', url: `/v1/kv/${path}` })
      expect(get.body, key).toBe(key)
    }
    // An encoded slash names the same key as a plain one.
    expect((await inject({ method: 'GET', url: '/v1/kv/a%2Fb%2Fc' })).body).toBe('a/b/c')
    const list = await inject({ method: 'GET', url: '/v1/kv?limit=100' })
    expect(
      list
        .json()
        .items.map((i: { key: string }) => i.key)
        .sort(),
    ).toEqual([...keys].sort())
  })

  it('HEAD gives the headers without the body, and If-None-Match gives 304', async () => {
    await inject({ method: 'PUT', url: '/v1/kv/h', payload: 'hello' })
    const head = await inject({ method: 'HEAD', url: '/v1/kv/h' })
    expect(head.statusCode).toBe(200)
    expect(head.headers.etag).toBe('"1"')
    expect(head.body).toBe('')
    const cached = await inject({
      method: 'GET',
      url: '/v1/kv/h',
      headers: { 'if-none-match': '"1"' },
    })
    expect(cached.statusCode).toBe(304)
    for (const tag of ['W/"1"', '"7", "1"', '*']) {
      const res = await inject({
        method: 'GET',
        url: '/v1/kv/h',
        headers: { 'if-none-match': tag },
      })
      expect(res.statusCode, tag).toBe(304)
    }
    const changed = await inject({
      method: 'GET',
      url: '/v1/kv/h',
      headers: { 'if-none-match': '"0"' },
    })
    expect(changed.statusCode).toBe(200)
    expect((await inject({ method: 'HEAD', url: '/v1/kv/none' })).statusCode).toBe(404)
  })

  it('compare-and-set, create-only and update-only', async () => {
    const put = (headers: Record<string, string>, payload = 'v') =>
      inject({ method: 'PUT', url: '/v1/kv/c', headers, payload })
    expect((await put({ 'if-match': '*' })).statusCode).toBe(412)
    const created = await put({ 'if-none-match': '*' })
    expect(created.statusCode).toBe(201)
    expect(created.json()).toMatchObject({ key: 'c', version: 1, lsn: 1 })
    expect((await put({ 'if-none-match': '*' })).statusCode).toBe(412)
    expect((await put({ 'if-match': '*' })).statusCode).toBe(200)
    expect((await put({ 'if-match': '"2"' })).statusCode).toBe(200)
    expect((await put({ 'if-match': '2' })).statusCode).toBe(412)
    expect((await put({ 'if-match': '3' }, 'final')).statusCode).toBe(200)
    expect((await inject({ method: 'GET', url: '/v1/kv/c' })).body).toBe('final')
    expect(
      (await inject({ method: 'DELETE', url: '/v1/kv/c', headers: { 'if-match': '"3"' } }))
        .statusCode,
    ).toBe(412)
    const del = await inject({ method: 'DELETE', url: '/v1/kv/c', headers: { 'if-match': '"4"' } })
    expect(del.statusCode).toBe(200)
    expect(del.json()).toMatchObject({ key: 'c', deleted: true, lsn: 5, previousVersion: 4 })
    expect((await inject({ method: 'GET', url: '/v1/kv/c' })).statusCode).toBe(404)
  })
})

describe('a standalone node', () => {
  it('serves linearizable reads itself, and has an empty rollback record', async () => {
    await inject({ method: 'PUT', url: '/v1/kv/k', payload: 'v' })
    const read = await inject({ method: 'GET', url: '/v1/kv/k?consistency=linearizable' })
    expect(read.statusCode).toBe(200)
    expect(read.body).toBe('v')
    const missing = await inject({ method: 'GET', url: '/v1/kv/nope?consistency=linearizable' })
    expect(errorOf(missing.body).code).toBe('KV_ERR_KEY_NOT_FOUND')
    const rollbacks = await inject({ method: 'GET', url: '/admin/v1/rollbacks?after=0&limit=10' })
    expect(rollbacks.json()).toEqual({ count: 0, rollbacks: [], next: null })
    const cleared = await inject({ method: 'DELETE', url: '/admin/v1/rollbacks?through=5' })
    expect(cleared.json()).toEqual({ deleted: 0, count: 0 })
  })
})

describe('batches', () => {
  it('apply atomically and in order', async () => {
    await inject({ method: 'PUT', url: '/v1/kv/old', payload: 'x' })
    const res = await inject({
      method: 'POST',
      url: '/v1/batch',
      payload: {
        ops: [
          { op: 'put', key: 'a', value: 'text' },
          { op: 'put', key: 'b', valueBase64: Buffer.from([0, 255]).toString('base64') },
          { op: 'put', key: 'a', value: 'second', ifVersion: 2 },
          { op: 'delete', key: 'old', ifExists: true },
          { op: 'delete', key: 'never-existed' },
        ],
      },
    })
    expect(res.statusCode).toBe(200)
    expect(res.json()).toEqual({
      lsn: 2,
      session: 's1.1.2',
      results: [
        // Unconditional ops are blind writes: only conditional ops report the prior version.
        { key: 'a', version: 2 },
        { key: 'b', version: 2 },
        { key: 'a', version: 2, previousVersion: 2 },
        { key: 'old', version: null, previousVersion: 1 },
        { key: 'never-existed', version: null },
      ],
    })
    expect((await inject({ method: 'GET', url: '/v1/kv/a' })).body).toBe('second')
    expect((await inject({ method: 'GET', url: '/v1/kv/b' })).rawPayload).toEqual(
      Buffer.from([0, 255]),
    )
    expect((await inject({ method: 'GET', url: '/v1/kv/old' })).statusCode).toBe(404)
  })

  it('write nothing when one condition fails', async () => {
    const res = await inject({
      method: 'POST',
      url: '/v1/batch',
      payload: {
        ops: [
          { op: 'put', key: 'x', value: '1' },
          { op: 'put', key: 'y', value: '1', ifExists: true },
        ],
      },
    })
    expect(res.statusCode).toBe(412)
    expect(errorOf(res.body)).toMatchObject({ opIndex: 1, key: 'y', currentVersion: null })
    expect((await inject({ method: 'GET', url: '/v1/kv/x' })).statusCode).toBe(404)
    expect(t.node.store.appliedLsn).toBe(0)
  })
})

describe('listing', () => {
  it('pages through every key with a cursor, by prefix, with values on request', async () => {
    const ops = Array.from({ length: 250 }, (_, i) => ({
      op: 'put',
      key: `user/${String(i).padStart(3, '0')}`,
      value: `v${i}`,
    }))
    await inject({ method: 'POST', url: '/v1/batch', payload: { ops: ops.slice(0, 200) } })
    await inject({ method: 'POST', url: '/v1/batch', payload: { ops: ops.slice(200) } })
    await inject({ method: 'PUT', url: '/v1/kv/zzz', payload: 'other' })
    const seen: string[] = []
    let cursor: string | null = null
    let pages = 0
    do {
      const url: string = `/v1/kv?prefix=user/&limit=100${cursor ? `&cursor=${cursor}` : ''}`
      const page = (await inject({ method: 'GET', url })).json() as {
        items: { key: string }[]
        nextCursor: string | null
      }
      seen.push(...page.items.map((i) => i.key))
      cursor = page.nextCursor
      pages++
    } while (cursor !== null)
    expect(pages).toBe(3)
    expect(seen).toEqual(ops.map((o) => o.key))
    const withValues = (
      await inject({ method: 'GET', url: '/v1/kv?start=user/248&values=true' })
    ).json()
    expect(withValues.items).toEqual([
      {
        key: 'user/248',
        version: 2,
        valueBytes: 4,
        valueBase64: Buffer.from('v248').toString('base64'),
      },
      {
        key: 'user/249',
        version: 2,
        valueBytes: 4,
        valueBase64: Buffer.from('v249').toString('base64'),
      },
      {
        key: 'zzz',
        version: 3,
        valueBytes: 5,
        valueBase64: Buffer.from('other').toString('base64'),
      },
    ])
    expect(withValues.nextCursor).toBeNull()
    expect(withValues.appliedLsn).toBe(3)
  })
})

describe('listing large values', () => {
  it('stops a page at listBytesMax and continues with the cursor', async () => {
    await t.stop()
    t = await startTestNode(['--list-bytes-max', '1MiB'])
    const value = Buffer.alloc(300 * 1024, 1)
    for (let i = 0; i < 10; i++)
      await inject({ method: 'PUT', url: `/v1/kv/big/${i}`, payload: value })
    const seen: string[] = []
    let cursor: string | null = null
    let pages = 0
    do {
      const url: string = `/v1/kv?prefix=big/&values=true${cursor ? `&cursor=${cursor}` : ''}`
      const page = (await inject({ method: 'GET', url })).json() as {
        items: { key: string; valueBase64: string }[]
        nextCursor: string | null
      }
      expect(page.items.length).toBeLessThanOrEqual(4)
      for (const item of page.items)
        expect(Buffer.from(item.valueBase64, 'base64').equals(value)).toBe(true)
      seen.push(...page.items.map((i) => i.key))
      cursor = page.nextCursor
      pages++
    } while (cursor !== null)
    expect(seen).toEqual(Array.from({ length: 10 }, (_, i) => `big/${i}`))
    expect(pages).toBeGreaterThanOrEqual(3)
  })

  it('a cursor after the longest key allowed still works', async () => {
    await t.stop()
    t = await startTestNode(['--key-bytes-max', '8KiB'])
    const nasty = '"\\'.repeat(4096) // 8 KiB of characters JSON must escape
    for (const key of [nasty, `${nasty.slice(0, -1)}z`]) {
      const res = await inject({
        method: 'PUT',
        url: `/v1/kv/${encodeURIComponent(key)}`,
        payload: 'v',
      })
      expect(res.statusCode).toBe(200)
    }
    const first = (await inject({ method: 'GET', url: '/v1/kv?limit=1' })).json() as {
      nextCursor: string
    }
    const second = await inject({ method: 'GET', url: `/v1/kv?limit=1&cursor=${first.nextCursor}` })
    expect(second.statusCode).toBe(200)
    expect((second.json() as { items: unknown[] }).items).toHaveLength(1)
  })
})

describe('protocols and operations', () => {
  it('serves HTTP/1.1 and h2c on the same port', async () => {
    const h1 = await request(`${t.url}/v1/kv/p`, { method: 'PUT', body: 'one' })
    expect(h1.statusCode).toBe(200)
    await h1.body.text()
    const h2 = new H2CClient(t.url)
    try {
      const res = await h2.request({ method: 'GET', path: '/v1/kv/p' })
      expect(res.statusCode).toBe(200)
      expect(await res.body.text()).toBe('one')
      const puts = await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          const r = await h2.request({ method: 'PUT', path: `/v1/kv/h2/${i}`, body: `v${i}` })
          await r.body.text()
          return r.statusCode
        }),
      )
      expect(puts.every((s) => s === 200)).toBe(true)
    } finally {
      await h2.close()
    }
    expect(t.node.store.appliedLsn).toBe(51)
  })

  it('refuses writes with 503 KV_ERR_OVERLOADED when the write queue is full', async () => {
    await t.stop()
    t = await startTestNode(['--write-queue-writes-max', '4'])
    const pool = new Pool(t.url, { connections: 64 })
    try {
      // 64 writes at once fill a queue of 4 unless they happen to arrive spread out (a loaded
      // machine, as CI's, can do that to one burst): up to 5 bursts, every one accounted for.
      let ok = 0
      let refused = 0
      for (let burst = 0; burst < 5 && refused === 0; burst++) {
        const statuses = await Promise.all(
          Array.from({ length: 64 }, async (_, i) => {
            const res = await pool.request({
              method: 'PUT',
              path: `/v1/kv/b${burst}/k${i}`,
              body: 'v',
            })
            const body = await res.body.text()
            if (res.statusCode === 503) {
              expect(errorOf(body).code).toBe('KV_ERR_OVERLOADED')
              expect(res.headers['retry-after']).toBe('1')
            }
            return res.statusCode
          }),
        )
        expect(statuses.every((s) => s === 200 || s === 503)).toBe(true)
        refused += statuses.filter((s) => s === 503).length
        ok += statuses.filter((s) => s === 200).length
      }
      expect(refused).toBeGreaterThan(0)
      expect(ok).toBeGreaterThan(0)
      // Every write that was refused took no LSN: the log holds exactly the accepted ones.
      expect(t.node.store.appliedLsn).toBe(ok)
      expect((await t.node.store.verify()).entries).toBe(ok)
    } finally {
      await pool.close()
    }
  })

  it('reports status, health, readiness, digest and metrics', async () => {
    await inject({ method: 'PUT', url: '/v1/kv/a', payload: '1' })
    const status = (await inject({ method: 'GET', url: '/v1/status' })).json()
    expect(status).toMatchObject({
      nodeId: 'n1',
      mode: 'standalone',
      role: 'leader',
      epoch: 1,
      appliedLsn: 1,
      commitLsn: 1,
      ready: true,
    })
    expect((await inject({ method: 'GET', url: '/health' })).json()).toEqual({ status: 'ok' })
    expect((await inject({ method: 'GET', url: '/ready' })).json()).toEqual({ ready: true })
    const digest = (await inject({ method: 'GET', url: '/v1/digest' })).json()
    expect(digest).toMatchObject({ appliedLsn: 1, keys: 1 })
    expect(digest.digest).toMatch(/^[0-9a-f]{64}$/)
    const metrics = await inject({ method: 'GET', url: '/metrics' })
    expect(metrics.headers['content-type']).toMatch(/^text\/plain/)
    expect(metrics.body).toMatch(
      /kv_http_requests_total\{route="\/v1\/kv\/\*",method="PUT",status="200"\} 1/,
    )
    expect(metrics.body).toMatch(
      /kv_http_request_duration_seconds_count\{route="\/v1\/kv\/\*",method="PUT"\} 1/,
    )
    expect(metrics.body).toMatch(
      /kv_http_request_duration_seconds_bucket\{route="\/v1\/kv\/\*",method="PUT",le="\+Inf"\} 1/,
    )
    expect(metrics.body).toMatch(/kv_writes_total\{kind="put"\} 1/)
    expect(metrics.body).toMatch(/kv_applied_lsn 1/)
    expect(metrics.body).toMatch(/kv_storage_batch_entries_count [1-9]/)
    expect(metrics.body).toMatch(/kv_process_cpu_seconds_total/)
  })

  it('refuses new requests with KV_ERR_SHUTTING_DOWN while stopping, and finishes the writes in flight', async () => {
    const pool = new Pool(t.url, { connections: 8 })
    try {
      const inFlight = Array.from({ length: 8 }, (_, i) =>
        pool.request({ method: 'PUT', path: `/v1/kv/f${i}`, body: 'v' }),
      )
      const responses = await Promise.all(inFlight)
      for (const r of responses) await r.body.text()
      const stopping = t.node.stop('test')
      const late = await inject({ method: 'PUT', url: '/v1/kv/late', payload: 'v' })
      expect(late.statusCode).toBe(503)
      expect(errorOf(late.body).code).toBe('KV_ERR_SHUTTING_DOWN')
      await stopping
      expect(responses.map((r) => r.statusCode)).toEqual(Array(8).fill(200))
    } finally {
      await pool.destroy()
    }
  })
})
