/**
 * A kv-request-id is bound to its request: a retry of the same request is deduplicated, and
 * the id on any other request (another key, value, kind or condition) is refused with
 * 409 KV_ERR_REQUEST_ID_REUSED, writing nothing. Standalone (the single-leader write path)
 * and leaderless nodes, in process, through fastify's inject.
 */
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import { HashRing } from '@kvstore/core'
import { freePort } from '@kvstore/testkit'
import { errorOf, startTestNode, type TestNode } from './helpers.js'

const nodes: TestNode[] = []
afterEach(async () => {
  await Promise.all(nodes.splice(0).map((n) => n.stop()))
})

async function start(args: string[] = []): Promise<TestNode> {
  const node = await startTestNode(args)
  nodes.push(node)
  return node
}

const withId = (id: string, options: InjectOptions): InjectOptions => ({
  ...options,
  headers: { ...options.headers, 'kv-request-id': id },
})

function expectReused(res: LightMyRequestResponse, requestId: string): void {
  expect(res.statusCode, res.body).toBe(409)
  expect(res.headers['kv-deduplicated']).toBeUndefined()
  const error = errorOf(res.body)
  expect(error).toMatchObject({ code: 'KV_ERR_REQUEST_ID_REUSED', requestId })
  // The answer does not name the other request's key.
  expect(res.body).not.toContain('"key"')
}

describe('a standalone node', () => {
  it('deduplicates a retry and refuses the id on another key, value, kind or condition', async () => {
    const t = await start()
    const inject = (options: InjectOptions) => t.node.app.inject(options)
    const putA = withId('X', { method: 'PUT', url: '/v1/kv/a', payload: 'first' })

    const first = await inject(putA)
    expect(first.statusCode).toBe(200)
    expect(first.headers['kv-deduplicated']).toBeUndefined()

    const otherKey = await inject(withId('X', { method: 'PUT', url: '/v1/kv/b', payload: 'first' }))
    expectReused(otherKey, 'X')
    expect(errorOf(otherKey.body)).toMatchObject({ lsn: 1 })
    expect((await inject({ method: 'GET', url: '/v1/kv/b' })).statusCode).toBe(404)

    for (const other of [
      withId('X', { method: 'PUT', url: '/v1/kv/a', payload: 'second' }),
      withId('X', { method: 'DELETE', url: '/v1/kv/a' }),
      withId('X', {
        method: 'PUT',
        url: '/v1/kv/a',
        payload: 'first',
        headers: { 'if-none-match': '*' },
      }),
      withId('X', {
        method: 'PUT',
        url: '/v1/kv/a',
        payload: 'first',
        headers: { 'if-match': '*' },
      }),
    ]) {
      expectReused(await inject(other), 'X')
    }
    expect(t.node.store.appliedLsn).toBe(1)
    expect((await inject({ method: 'GET', url: '/v1/kv/a' })).body).toBe('first')

    const retry = await inject(putA)
    expect(retry.statusCode).toBe(200)
    expect(retry.headers['kv-deduplicated']).toBe('true')
    expect(retry.json()).toMatchObject({ key: 'a', version: 1, lsn: 1 })
    expect(t.node.store.appliedLsn).toBe(1)
  })

  it('a batch and a put are different requests, even with the same op', async () => {
    const t = await start()
    const inject = (options: InjectOptions) => t.node.app.inject(options)
    const batch = withId('Y', {
      method: 'POST',
      url: '/v1/batch',
      payload: { ops: [{ op: 'put', key: 'a', value: '1' }] },
    })
    expect((await inject(batch)).statusCode).toBe(200)
    expectReused(await inject(withId('Y', { method: 'PUT', url: '/v1/kv/a', payload: '1' })), 'Y')
    const again = await inject(batch)
    expect(again.statusCode).toBe(200)
    expect(again.headers['kv-deduplicated']).toBe('true')

    expect(
      (await inject(withId('Z', { method: 'PUT', url: '/v1/kv/c', payload: '1' }))).statusCode,
    ).toBe(200)
    const batchC = withId('Z', {
      method: 'POST',
      url: '/v1/batch',
      payload: { ops: [{ op: 'put', key: 'c', value: '1' }] },
    })
    expectReused(await inject(batchC), 'Z')
    expect(t.node.store.appliedLsn).toBe(2)
  })

  it('of two concurrent requests with one id, one is written and the other refused', async () => {
    const t = await start()
    const inject = (options: InjectOptions) => t.node.app.inject(options)
    const [c, d] = await Promise.all([
      inject(withId('W', { method: 'PUT', url: '/v1/kv/c', payload: '1' })),
      inject(withId('W', { method: 'PUT', url: '/v1/kv/d', payload: '1' })),
    ])
    expect([c.statusCode, d.statusCode].sort()).toEqual([200, 409])
    const exists = await Promise.all(
      ['c', 'd'].map(async (k) => (await inject({ method: 'GET', url: `/v1/kv/${k}` })).statusCode),
    )
    expect(exists.sort()).toEqual([200, 404])
    expect(t.node.store.appliedLsn).toBe(1)
  })
})

/** Leaderless members in this process, N = 1, one data directory each. */
async function leaderless(size: number): Promise<TestNode[]> {
  const members: string[] = []
  for (let i = 1; i <= size; i++) {
    members.push(`n${i}@http://127.0.0.1:${await freePort()}@http://127.0.0.1:${await freePort()}`)
  }
  // One after another, the last first: a member that starts before a peer listens finds its
  // first connection to it refused, and a call racing that refusal fails (a member's start-up
  // transient, outside what these tests are about).
  const started: TestNode[] = []
  for (let i = members.length - 1; i >= 0; i--) {
    started[i] = await start([
      '--mode',
      'leaderless',
      '--id',
      `n${i + 1}`,
      '--members',
      members.join(','),
      '--replicas',
      '1',
      '--vnodes',
      '64',
      // These tests are about request ids, not peer security: plaintext peers on loopback.
      '--unsafe-plaintext-peers',
    ])
  }
  // A member with a fresh data directory refuses reads until anti-entropy has refilled it.
  for (const t of started) {
    const deadline = Date.now() + 10_000
    while ((await t.node.app.inject({ method: 'GET', url: '/ready' })).statusCode !== 200) {
      if (Date.now() > deadline) throw new Error(`${t.node.config.nodeId} is not ready`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  return started
}

describe('a leaderless coordinator', () => {
  it('finds the id whatever the key, and refuses it on another key, value, delete or context', async () => {
    const [t] = (await leaderless(1)) as [TestNode]
    const inject = (options: InjectOptions) => t.node.app.inject(options)
    const putA = withId('X', { method: 'PUT', url: '/v1/kv/a', payload: 'first' })

    const first = await inject(putA)
    expect(first.statusCode).toBe(200)
    expect(first.headers['kv-deduplicated']).toBeUndefined()
    const context = first.headers['kv-context'] as string

    expectReused(
      await inject(withId('X', { method: 'PUT', url: '/v1/kv/b', payload: 'first' })),
      'X',
    )
    expect((await inject({ method: 'GET', url: '/v1/kv/b' })).statusCode).toBe(404)
    for (const other of [
      withId('X', { method: 'PUT', url: '/v1/kv/a', payload: 'second' }),
      withId('X', { method: 'DELETE', url: '/v1/kv/a' }),
      withId('X', {
        method: 'PUT',
        url: '/v1/kv/a',
        payload: 'first',
        headers: { 'kv-context': context },
      }),
    ]) {
      expectReused(await inject(other), 'X')
    }
    const read = await inject({ method: 'GET', url: '/v1/kv/a' })
    expect(read.body).toBe('first')
    expect(read.headers['kv-siblings']).toBe('1')

    const retry = await inject(putA)
    expect(retry.statusCode).toBe(200)
    expect(retry.headers['kv-deduplicated']).toBe('true')
    expect(retry.headers['kv-context']).toBe(context)

    // A retry of a delete with its context is deduplicated too.
    const del = withId('D', {
      method: 'DELETE',
      url: '/v1/kv/a',
      headers: { 'kv-context': context },
    })
    expect((await inject(del)).statusCode).toBe(200)
    const delAgain = await inject(del)
    expect(delAgain.statusCode).toBe(200)
    expect(delAgain.headers['kv-deduplicated']).toBe('true')
  })

  it('refuses one of two concurrent requests with one id on different keys', async () => {
    const [t] = (await leaderless(1)) as [TestNode]
    const inject = (options: InjectOptions) => t.node.app.inject(options)
    const [c, d] = await Promise.all([
      inject(withId('W', { method: 'PUT', url: '/v1/kv/c', payload: '1' })),
      inject(withId('W', { method: 'PUT', url: '/v1/kv/d', payload: '1' })),
    ])
    expect([c.statusCode, d.statusCode].sort()).toEqual([200, 409])
    const exists = await Promise.all(
      ['c', 'd'].map(async (k) => (await inject({ method: 'GET', url: `/v1/kv/${k}` })).statusCode),
    )
    expect(exists.sort()).toEqual([200, 404])
  })

  it('binds the id at the coordinator when the write is forwarded to it', async () => {
    const members = await leaderless(2)
    const ring = new HashRing(['n1', 'n2'], 64)
    const ownerOf = (key: string) => ring.preferenceList(key, 1)[0]
    // Two keys n2 coordinates, written through n1.
    const keys = Array.from({ length: 200 }, (_, i) => `fwd/${i}`).filter(
      (k) => ownerOf(k) === 'n2',
    )
    const [k1, k2] = keys as [string, string]
    const inject = (options: InjectOptions) => (members[0] as TestNode).node.app.inject(options)
    const put = withId('F', { method: 'PUT', url: `/v1/kv/${k1}`, payload: 'v' })
    const first = await inject(put)
    expect(first.statusCode, first.body).toBe(200)
    expect(first.json()).toMatchObject({ coordinator: 'n2' })
    const retry = await inject(put)
    expect(retry.statusCode).toBe(200)
    expect(retry.headers['kv-deduplicated']).toBe('true')
    expectReused(
      await inject(withId('F', { method: 'PUT', url: `/v1/kv/${k2}`, payload: 'v' })),
      'F',
    )
    expectReused(
      await inject(withId('F', { method: 'PUT', url: `/v1/kv/${k1}`, payload: 'w' })),
      'F',
    )
    const getK2 = await inject({ method: 'GET', url: `/v1/kv/${k2}` })
    expect(getK2.statusCode, getK2.body).toBe(404)
    expect((await inject({ method: 'GET', url: `/v1/kv/${k1}` })).body).toBe('v')
  })
})
