/**
 * Authentication and authorization on a real 3-node cluster, one row per case: what a caller
 * without a credential, with the wrong role or prefix, with an expired or revoked token gets,
 * on every kind of endpoint and on every node.
 */
import { Agent, request } from 'undici'
import { KvClient } from '@kvstore/client'
import { LeaderlessCluster, TestCluster } from '@kvstore/testkit'
import { caPem, rootTls } from './support/certs.js'

let cluster: TestCluster
let admin: KvClient
const anonymous = new Agent({ connect: { ca: caPem() } })

interface Answer {
  status: number
  code: string | null
  body: string
}

/** One request with an optional token and no client certificate. */
async function call(
  method: 'GET' | 'PUT' | 'DELETE' | 'POST',
  url: string,
  options: { token?: string; body?: string } = {},
): Promise<Answer> {
  const res = await request(url, {
    method,
    dispatcher: anonymous,
    headers: {
      ...(options.token !== undefined ? { authorization: `Bearer ${options.token}` } : {}),
      ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(options.body !== undefined ? { body: options.body } : {}),
  })
  const body = await res.body.text()
  let code: string | null = null
  try {
    code = (JSON.parse(body) as { error?: { code?: string } }).error?.code ?? null
  } catch {
    code = null
  }
  return { status: res.statusCode, code, body }
}

async function login(user: string, password: string): Promise<string> {
  const res = await call('POST', `${cluster.leader.url}/v1/auth/token`, {
    body: JSON.stringify({ user, password }),
  })
  expect(res.status, res.body).toBe(200)
  return (JSON.parse(res.body) as { token: string }).token
}

beforeAll(async () => {
  cluster = await TestCluster.start(3, ['--token-ttl-ms', '10000'])
  admin = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
  await admin.put('app/1', 'one')
  await admin.put('secret/1', 'hidden')
  await admin.addRole('app')
  await admin.grantPermission('app', 'readwrite', 'app/')
  await admin.addUser('alice', { password: 'alice-password', roles: ['app'] })
  await admin.addRole('scraper', { monitor: true })
  await admin.addUser('prom', { password: 'prom-password', roles: ['scraper'] })
})
afterAll(async () => {
  await admin.close()
  await anonymous.close()
  await cluster.stop()
})

describe('without a credential', () => {
  const rows: [string, 'GET' | 'PUT' | 'DELETE' | 'POST', string, string?][] = [
    ['get', 'GET', '/v1/kv/app/1'],
    ['put', 'PUT', '/v1/kv/app/1', 'x'],
    ['delete', 'DELETE', '/v1/kv/app/1'],
    ['list', 'GET', '/v1/kv?prefix=app/'],
    ['batch', 'POST', '/v1/batch', '{"ops":[{"op":"put","key":"app/2","value":"x"}]}'],
    ['status', 'GET', '/v1/status'],
    ['metrics', 'GET', '/metrics'],
    ['cluster', 'GET', '/v1/cluster'],
    ['admin: compact', 'POST', '/admin/v1/compact'],
    ['admin: users', 'GET', '/admin/v1/users'],
    ['admin: rollbacks', 'GET', '/admin/v1/rollbacks'],
  ]
  it.each(rows)('%s → 401 KV_ERR_UNAUTHENTICATED', async (_name, method, path, body) => {
    for (const m of cluster.members) {
      const res = await call(method, `${m.url}${path}`, body === undefined ? {} : { body })
      expect(res.status, `${m.id} ${res.body}`).toBe(401)
      expect(res.code).toBe('KV_ERR_UNAUTHENTICATED')
    }
  })

  it('health and readiness stay open, for probes', async () => {
    expect((await call('GET', `${cluster.leader.url}/health`)).status).toBe(200)
    expect((await call('GET', `${cluster.leader.url}/ready`)).status).toBe(200)
  })

  it('a malformed Authorization header → 401', async () => {
    const res = await request(`${cluster.leader.url}/v1/kv/app/1`, {
      dispatcher: anonymous,
      headers: { authorization: 'Basic cm9vdDpyb290' },
    })
    expect(res.statusCode).toBe(401)
    await res.body.text()
    expect(
      (await call('GET', `${cluster.leader.url}/v1/kv/app/1`, { token: 'not.a.token' })).code,
    ).toBe('KV_ERR_UNAUTHENTICATED')
  })

  it('a wrong password → 401, the same answer as an unknown user', async () => {
    for (const user of ['alice', 'nobody']) {
      const res = await call('POST', `${cluster.leader.url}/v1/auth/token`, {
        body: JSON.stringify({ user, password: 'wrong-password' }),
      })
      expect(res.status).toBe(401)
      expect(res.body).toMatch(/wrong user name or password/)
    }
  })
})

describe('with the wrong role or prefix', () => {
  let token: string
  beforeAll(async () => {
    token = await login('alice', 'alice-password')
  })

  const rows: [string, 'GET' | 'PUT' | 'DELETE' | 'POST', string, string?][] = [
    ['get', 'GET', '/v1/kv/secret/1'],
    ['put', 'PUT', '/v1/kv/secret/2', 'x'],
    ['delete', 'DELETE', '/v1/kv/secret/1'],
    ['list of another prefix', 'GET', '/v1/kv?prefix=secret/'],
    ['list of every key', 'GET', '/v1/kv'],
    [
      'batch with one op outside the grants',
      'POST',
      '/v1/batch',
      '{"ops":[{"op":"put","key":"app/3","value":"x"},{"op":"put","key":"secret/3","value":"x"}]}',
    ],
    ['status (monitor)', 'GET', '/v1/status'],
    ['metrics (monitor)', 'GET', '/metrics'],
    ['admin: compact', 'POST', '/admin/v1/compact'],
    ['admin: transfer leadership', 'POST', '/admin/v1/transfer-leadership', '{}'],
    ['admin: rollbacks', 'GET', '/admin/v1/rollbacks'],
    ['admin: users', 'GET', '/admin/v1/users'],
    ['admin: add a user', 'POST', '/admin/v1/users', '{"name":"mallory","password":"mallory-pw"}'],
    ['admin: grant', 'POST', '/admin/v1/roles/app/grant', '{"access":"readwrite","prefix":""}'],
    ['admin: turn auth off', 'POST', '/admin/v1/auth/disable'],
  ]
  it.each(rows)('%s → 403 KV_ERR_PERMISSION_DENIED', async (_name, method, path, body) => {
    const res = await call(method, `${cluster.leader.url}${path}`, {
      token,
      ...(body !== undefined ? { body } : {}),
    })
    expect(res.status, res.body).toBe(403)
    expect(res.code).toBe('KV_ERR_PERMISSION_DENIED')
  })

  it('a refused batch writes nothing, and an allowed one works', async () => {
    expect((await admin.get('app/3'))?.value).toBeUndefined()
    const ok = await call('POST', `${cluster.leader.url}/v1/batch`, {
      token,
      body: '{"ops":[{"op":"put","key":"app/4","value":"x"}]}',
    })
    expect(ok.status, ok.body).toBe(200)
  })

  it('within the grants: get, put, delete and list of the prefix', async () => {
    const url = cluster.leader.url
    expect((await call('PUT', `${url}/v1/kv/app/5`, { token, body: 'five' })).status).toBe(200)
    expect((await call('GET', `${url}/v1/kv/app/5`, { token })).body).toBe('five')
    const list = await call('GET', `${url}/v1/kv?prefix=app/`, { token })
    expect(list.status).toBe(200)
    const keys = (JSON.parse(list.body) as { items: { key: string }[] }).items.map((i) => i.key)
    expect(keys.every((k) => k.startsWith('app/'))).toBe(true)
    expect((await call('DELETE', `${url}/v1/kv/app/5`, { token })).status).toBe(200)
  })

  it('a monitoring role scrapes /metrics and /v1/status but reads no data', async () => {
    const prom = await login('prom', 'prom-password')
    expect((await call('GET', `${cluster.leader.url}/metrics`, { token: prom })).status).toBe(200)
    expect((await call('GET', `${cluster.leader.url}/v1/status`, { token: prom })).status).toBe(200)
    expect((await call('GET', `${cluster.leader.url}/v1/kv/app/1`, { token: prom })).code).toBe(
      'KV_ERR_PERMISSION_DENIED',
    )
  })
})

describe('tokens', () => {
  it('an expired token is refused', async () => {
    const token = await login('alice', 'alice-password')
    expect((await call('GET', `${cluster.leader.url}/v1/kv/app/1`, { token })).status).toBe(200)
    await new Promise((r) => setTimeout(r, 11_000))
    const res = await call('GET', `${cluster.leader.url}/v1/kv/app/1`, { token })
    expect(res.status).toBe(401)
    expect(res.code).toBe('KV_ERR_UNAUTHENTICATED')
  }, 30_000)

  it("a revoked user's token is refused on every node within a second", async () => {
    const token = await login('alice', 'alice-password')
    for (const m of cluster.members)
      expect((await call('GET', `${m.url}/v1/kv/app/1`, { token })).status).toBe(200)
    await admin.revokeTokens('alice')
    const revokedAt = Date.now()
    for (const m of cluster.members) {
      for (;;) {
        const res = await call('GET', `${m.url}/v1/kv/app/1`, { token })
        if (res.status === 401) break
        expect(Date.now() - revokedAt, `${m.id} still takes the token`).toBeLessThan(1000)
        await new Promise((r) => setTimeout(r, 20))
      }
    }
    // A deleted user's token, likewise; a new user of the same name gets nothing from it.
    const again = await login('alice', 'alice-password')
    await admin.deleteUser('alice')
    for (const m of cluster.members) {
      await vi.waitFor(
        async () =>
          expect((await call('GET', `${m.url}/v1/kv/app/1`, { token: again })).status).toBe(401),
        { timeout: 1000, interval: 20 },
      )
    }
    await admin.addUser('alice', { password: 'alice-password', roles: ['app'] })
    expect((await call('GET', `${cluster.leader.url}/v1/kv/app/1`, { token: again })).status).toBe(
      401,
    )
  })

  it('revoking a grant takes effect on every node without a new login', async () => {
    await admin.addRole('temp')
    await admin.grantPermission('temp', 'read', 'secret/')
    await admin.addUser('bob', { password: 'bob-password', roles: ['temp'] })
    const token = await login('bob', 'bob-password')
    expect((await call('GET', `${cluster.leader.url}/v1/kv/secret/1`, { token })).status).toBe(200)
    await admin.revokePermission('temp', 'read', 'secret/')
    for (const m of cluster.members) {
      await vi.waitFor(
        async () =>
          expect((await call('GET', `${m.url}/v1/kv/secret/1`, { token })).status).toBe(403),
        { timeout: 1000, interval: 20 },
      )
    }
  })
})

describe('followers', () => {
  it('refuse writes from every account, admin included: 421 with the leader', async () => {
    for (const follower of cluster.followers) {
      const put = await fetch(`${follower.url}/v1/kv/app/9`, { method: 'PUT', body: 'x' })
      expect(put.status).toBe(421)
      const addUser = await fetch(`${follower.url}/admin/v1/users`, {
        method: 'POST',
        body: JSON.stringify({ name: 'carol', password: 'carol-password' }),
      })
      expect(addUser.status).toBe(421)
      expect(((await addUser.json()) as { error: { code: string } }).error.code).toBe(
        'KV_ERR_NOT_LEADER',
      )
    }
  })

  it('enforce the same users and roles as the leader (they replicate)', async () => {
    await admin.addRole('ro')
    await admin.grantPermission('ro', 'read', 'app/')
    await admin.addUser('dave', { password: 'dave-password', roles: ['ro'] })
    // A quorum acknowledged the user; this follower may not be in that quorum, so it enforces
    // the user once it has applied the entry (replication, not a race, is what is tested).
    await cluster.waitForApplied()
    const res = await call('POST', `${cluster.followers[0]!.url}/v1/auth/token`, {
      body: JSON.stringify({ user: 'dave', password: 'dave-password' }),
    })
    expect(res.status, res.body).toBe(200)
    const token = (JSON.parse(res.body) as { token: string }).token
    for (const m of cluster.members)
      expect((await call('GET', `${m.url}/v1/kv/app/1`, { token })).status).toBe(200)
  })
})

describe('rate limits', () => {
  it('a role with a rate limit gets 429 KV_ERR_RATE_LIMITED with Retry-After past it', async () => {
    await admin.addRole('slow', { rateLimitPerSecond: 5 })
    await admin.grantPermission('slow', 'read', 'app/')
    await admin.addUser('eve', { password: 'eve-password', roles: ['slow'] })
    const token = await login('eve', 'eve-password')
    const answers: number[] = []
    for (let i = 0; i < 30; i++)
      answers.push((await call('GET', `${cluster.leader.url}/v1/kv/app/1`, { token })).status)
    expect(answers.filter((s) => s === 200).length).toBeGreaterThanOrEqual(5)
    expect(answers.filter((s) => s === 200).length).toBeLessThan(20)
    const limited = await request(`${cluster.leader.url}/v1/kv/app/1`, {
      dispatcher: anonymous,
      headers: { authorization: `Bearer ${token}` },
    })
    expect(limited.statusCode).toBe(429)
    expect(Number(limited.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    await limited.body.text()
  })
})

describe('turning auth off and on', () => {
  it('off lets anyone in; on again needs new tokens', async () => {
    const old = await login('dave', 'dave-password')
    await admin.setAuthEnabled(false)
    await vi.waitFor(async () =>
      expect((await call('GET', `${cluster.followers[0]!.url}/v1/kv/secret/1`)).status).toBe(200),
    )
    await admin.setAuthEnabled(true)
    for (const m of cluster.members) {
      await vi.waitFor(async () =>
        expect((await call('GET', `${m.url}/v1/kv/app/1`)).status).toBe(401),
      )
      expect((await call('GET', `${m.url}/v1/kv/app/1`, { token: old })).status).toBe(401)
    }
  })
})

describe('leaderless mode: users live on every member', () => {
  let ll: LeaderlessCluster
  let llAdmin: KvClient
  beforeAll(async () => {
    ll = await LeaderlessCluster.start(3, ['--replicas', '3'])
    llAdmin = new KvClient({ ...rootTls(), url: ll.urls })
  })
  afterAll(async () => {
    await llAdmin.close()
    await ll.close()
  })

  it('a user added through one member logs in at another; revoking reaches every member within a second', async () => {
    await llAdmin.addRole('app')
    await llAdmin.grantPermission('app', 'readwrite', 'app/')
    await llAdmin.addUser('zoe', { password: 'zoe-password', roles: ['app'] })
    const third = ll.member('n3').url
    const res = await call('POST', `${third}/v1/auth/token`, {
      body: JSON.stringify({ user: 'zoe', password: 'zoe-password' }),
    })
    expect(res.status, res.body).toBe(200)
    const token = (JSON.parse(res.body) as { token: string }).token
    for (const m of ll.members) {
      expect((await call('PUT', `${m.url}/v1/kv/app/${m.id}`, { token, body: 'x' })).status).toBe(
        200,
      )
      expect((await call('GET', `${m.url}/v1/kv/other`, { token })).status).toBe(403)
    }
    await llAdmin.revokeTokens('zoe')
    const revokedAt = Date.now()
    for (const m of ll.members) {
      await vi.waitFor(
        async () =>
          expect((await call('GET', `${m.url}/v1/kv/app/n1`, { token })).status).toBe(401),
        { timeout: 1000, interval: 20 },
      )
    }
    expect(Date.now() - revokedAt).toBeLessThan(1000)
  })

  it('a member that was down when a user was deleted refuses the user once it is back', async () => {
    await llAdmin.addUser('yan', { password: 'yan-password', roles: ['app'] })
    const token = JSON.parse(
      (
        await call('POST', `${ll.member('n2').url}/v1/auth/token`, {
          body: JSON.stringify({ user: 'yan', password: 'yan-password' }),
        })
      ).body,
    ) as { token: string }
    await ll.stop('n3')
    await llAdmin.deleteUser('yan')
    await ll.restart('n3')
    // It takes the cluster's users before it serves.
    expect(
      (await call('GET', `${ll.member('n3').url}/v1/kv/app/n1`, { token: token.token })).status,
    ).toBe(401)
  })
})
