/**
 * Authentication, authorization and the body budget on one in-process node (standalone, on
 * loopback): the rules every route follows before its body is read.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { errorOf, startTestNode, type TestNode } from './helpers.js'

let t: TestNode
let rootToken: string

async function login(user: string, password: string): Promise<string> {
  const res = await fetch(`${t.url}/v1/auth/token`, {
    method: 'POST',
    body: JSON.stringify({ user, password }),
  })
  expect(res.status).toBe(200)
  return ((await res.json()) as { token: string }).token
}

const as = (token: string) => ({ authorization: `Bearer ${token}` })

beforeAll(async () => {
  const file = join(tmpdir(), `kv-root-${process.pid}.password`)
  await writeFile(file, 'root-password-1\n', { mode: 0o600 })
  t = await startTestNode([
    '--auth',
    'true',
    '--root-password-file',
    file,
    '--inflight-body-bytes-max',
    '4MiB',
  ])
  rootToken = await login('root', 'root-password-1')
})
afterAll(async () => {
  await t.stop()
})

describe('a standalone node with auth on', () => {
  it('bootstraps its auth store in its first entry, which no listing shows', async () => {
    const put = await fetch(`${t.url}/v1/kv/a`, {
      method: 'PUT',
      body: '1',
      headers: as(rootToken),
    })
    expect(put.status).toBe(200)
    const list = (await (await fetch(`${t.url}/v1/kv`, { headers: as(rootToken) })).json()) as {
      items: { key: string }[]
    }
    expect(list.items.map((i) => i.key)).toEqual(['a'])
    const digest = (await (
      await fetch(`${t.url}/v1/digest`, { headers: as(rootToken) })
    ).json()) as {
      keys: number
      reservedKeys: number
    }
    expect(digest).toMatchObject({ keys: 1, reservedKeys: 4 })
  })

  it('refuses a request without a credential before reading its body', async () => {
    const res = await fetch(`${t.url}/v1/kv/a`, { method: 'PUT', body: 'x'.repeat(100_000) })
    expect(res.status).toBe(401)
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/)
    expect(errorOf(await res.text()).code).toBe('KV_ERR_UNAUTHENTICATED')
  })

  it('holds users to their grants, and lets them change their own password only', async () => {
    const admin = { ...as(rootToken), 'content-type': 'application/json' }
    for (const [path, body] of [
      ['/admin/v1/roles', { name: 'ro' }],
      ['/admin/v1/roles/ro/grant', { access: 'read', prefix: 'a' }],
      ['/admin/v1/users', { name: 'ann', password: 'ann-password', roles: ['ro'] }],
      ['/admin/v1/users', { name: 'bob', password: 'bob-password' }],
    ] as const) {
      const res = await fetch(`${t.url}${path}`, {
        method: 'POST',
        headers: admin,
        body: JSON.stringify(body),
      })
      expect(res.status, await res.text()).toBeLessThan(300)
    }
    const ann = await login('ann', 'ann-password')
    expect((await fetch(`${t.url}/v1/kv/a`, { headers: as(ann) })).status).toBe(200)
    expect(
      (await fetch(`${t.url}/v1/kv/a`, { method: 'PUT', body: '2', headers: as(ann) })).status,
    ).toBe(403)
    expect((await fetch(`${t.url}/admin/v1/users`, { headers: as(ann) })).status).toBe(403)
    const own = await fetch(`${t.url}/admin/v1/users/ann/password`, {
      method: 'PUT',
      headers: { ...as(ann), 'content-type': 'application/json' },
      body: JSON.stringify({ password: 'ann-password-2' }),
    })
    expect(own.status).toBe(200)
    // The new password ends the old token.
    expect((await fetch(`${t.url}/v1/kv/a`, { headers: as(ann) })).status).toBe(401)
    const annAgain = await login('ann', 'ann-password-2')
    const other = await fetch(`${t.url}/admin/v1/users/bob/password`, {
      method: 'PUT',
      headers: { ...as(annAgain), 'content-type': 'application/json' },
      body: JSON.stringify({ password: 'stolen-password' }),
    })
    expect(other.status).toBe(403)
    // A path no route matches is admin-only, as a route that declares nothing: nobody learns
    // which paths exist without a credential, nor without the admin role.
    const missing = async (headers: Record<string, string>) => {
      const res = await fetch(`${t.url}/v1/nowhere`, { headers })
      return { status: res.status, code: errorOf(await res.text()).code }
    }
    expect(await missing({})).toEqual({ status: 401, code: 'KV_ERR_UNAUTHENTICATED' })
    expect(await missing(as(annAgain))).toEqual({ status: 403, code: 'KV_ERR_PERMISSION_DENIED' })
    expect(await missing(as(rootToken))).toEqual({ status: 404, code: 'KV_ERR_ROUTE_NOT_FOUND' })
  })

  it('answers 503 KV_ERR_OVERLOADED with Retry-After past the in-flight body budget', async () => {
    const big = Buffer.alloc(1024 * 1024, 0x61)
    const answers = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        fetch(`${t.url}/v1/kv/big/${i}`, { method: 'PUT', body: big, headers: as(rootToken) }).then(
          async (r) => ({
            status: r.status,
            retry: r.headers.get('retry-after'),
            body: await r.text(),
          }),
        ),
      ),
    )
    const refused = answers.filter((a) => a.status === 503)
    expect(refused.length).toBeGreaterThan(0)
    expect(answers.filter((a) => a.status === 200).length).toBeGreaterThan(0)
    for (const r of refused) {
      expect(r.retry).toBe('1')
      expect(errorOf(r.body).code).toBe('KV_ERR_OVERLOADED')
    }
  })

  it('refuses a batch body no batch can be before parsing it', async () => {
    const nested = '['.repeat(100_000) + ']'.repeat(100_000)
    const res = await fetch(`${t.url}/v1/batch`, {
      method: 'POST',
      body: nested,
      headers: as(rootToken),
    })
    expect(res.status).toBe(400)
    expect(errorOf(await res.text()).message).toMatch(/nests deeper than 3 levels/)
  })
})
