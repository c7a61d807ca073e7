/**
 * The node's real answers against the API contract in @kvstore/protocol (src/api.ts): a
 * 3-node single-leader cluster and a 3-node leaderless one (TLS, auth on), every route called,
 * and every JSON body (success and error) validated against the schema the SDK's types come
 * from. The schemas are closed, so a field a route renames, adds or drops fails here.
 */
import { Agent, request, type Dispatcher } from 'undici'
import {
  antiEntropyResponseSchema,
  authEnabledResponseSchema,
  authStatusSchema,
  batchResponseSchema,
  clusterViewSchema,
  compactResponseSchema,
  deletedResponseSchema,
  deleteResponseSchema,
  digestResponseSchema,
  errorBodySchema,
  healthResponseSchema,
  hintsResponseSchema,
  leaderlessClusterViewSchema,
  leaderlessWriteResponseSchema,
  listResponseSchema,
  localCopySchema,
  membershipChangeResponseSchema,
  membershipSchema,
  passwordChangedResponseSchema,
  putResponseSchema,
  queuedResponseSchema,
  rangesResponseSchema,
  ticketResponseSchema,
  readyResponseSchema,
  roleInfoSchema,
  roleListSchema,
  rollbackDiscardResponseSchema,
  rollbackPageSchema,
  siblingsResponseSchema,
  statusResponseSchema,
  tlsReloadResponseSchema,
  tokenResponseSchema,
  tokensRevokedResponseSchema,
  transferResponseSchema,
  userDetailSchema,
  userInfoSchema,
  userListSchema,
  validateApi,
  whoAmISchema,
  type ErrorCode,
  type Schema,
} from '@kvstore/protocol'
import { caPem, rootPassword, rootTls } from './support/certs.js'
import { LeaderlessCluster, TestCluster } from '@kvstore/testkit'

const root = new Agent({ connect: rootTls().tls })
const anonymous = new Agent({ connect: { ca: caPem() } })

interface Answer {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

/** Routes whose answers were checked against the contract: `METHOD /template status`. */
const checked = new Set<string>()

async function call(
  method: Dispatcher.HttpMethod,
  url: string,
  options: {
    body?: string | Buffer
    headers?: Record<string, string>
    as?: 'root' | 'anonymous'
    token?: string
  } = {},
): Promise<Answer> {
  const res = await request(url, {
    method,
    dispatcher: options.as === 'anonymous' || options.token !== undefined ? anonymous : root,
    headers: {
      ...(typeof options.body === 'string' ? { 'content-type': 'application/json' } : {}),
      ...(options.body instanceof Buffer ? { 'content-type': 'application/octet-stream' } : {}),
      ...(options.token !== undefined ? { authorization: `Bearer ${options.token}` } : {}),
      ...options.headers,
    },
    ...(options.body !== undefined ? { body: options.body } : {}),
  })
  return {
    status: res.statusCode,
    headers: res.headers,
    body: Buffer.from(await res.body.arrayBuffer()),
  }
}

function json(answer: Answer): unknown {
  const type = String(answer.headers['content-type'] ?? '')
  expect(type, answer.body.toString()).toMatch(/^application\/json/)
  return JSON.parse(answer.body.toString('utf8')) as unknown
}

/** Checks a success body against its schema and records the route as covered. */
function conforms<T>(route: string, answer: Answer, schema: Schema<T>, status = 200): T {
  expect(answer.status, `${route}: ${answer.body.toString().slice(0, 500)}`).toBe(status)
  const body = json(answer)
  expect(validateApi(schema, body), `${route}: ${JSON.stringify(body)}`).toEqual([])
  checked.add(`${route} ${status}`)
  return body as T
}

/** Checks an error body against the contract and its code. */
function fails(route: string, answer: Answer, code: ErrorCode): void {
  expect(answer.status, `${route}: ${answer.body.toString().slice(0, 500)}`).toBeGreaterThanOrEqual(
    400,
  )
  const body = json(answer)
  expect(validateApi(errorBodySchema, body), `${route}: ${JSON.stringify(body)}`).toEqual([])
  expect((body as { error: { code: string } }).error.code).toBe(code)
  checked.add(`${route} ${code}`)
}

describe('single-leader: every route answers as the contract says', () => {
  let cluster: TestCluster
  let leader: string
  let follower: string
  beforeAll(async () => {
    cluster = await TestCluster.start(3, ['--value-bytes-max', '1024'])
    leader = cluster.leader.url
    follower = (cluster.followers[0] as { url: string }).url
  })
  afterAll(async () => {
    await cluster?.stop()
  })

  it('keys: put, get, delete, list and batch', async () => {
    const put = conforms(
      'PUT /v1/kv/*',
      await call('PUT', `${leader}/v1/kv/app/a`, { body: Buffer.from('one') }),
      putResponseSchema,
    )
    const created = conforms(
      'PUT /v1/kv/*',
      await call('PUT', `${leader}/v1/kv/app/b`, {
        body: Buffer.from('two'),
        headers: { 'if-none-match': '*' },
      }),
      putResponseSchema,
      201,
    )
    fails(
      'PUT /v1/kv/*',
      await call('PUT', `${leader}/v1/kv/app/b`, {
        body: Buffer.from('two'),
        headers: { 'if-none-match': '*' },
      }),
      'KV_ERR_PRECONDITION_FAILED',
    )
    fails(
      'PUT /v1/kv/*',
      await call('PUT', `${leader}/v1/kv/app/big`, { body: Buffer.alloc(2048) }),
      'KV_ERR_VALUE_TOO_LARGE',
    )
    fails(
      'PUT /v1/kv/*',
      await call('PUT', `${follower}/v1/kv/app/a`, { body: Buffer.from('x') }),
      'KV_ERR_NOT_LEADER',
    )
    fails(
      'PUT /v1/kv/*',
      await call('PUT', `${leader}/v1/kv/app/a`, { body: Buffer.from('x'), as: 'anonymous' }),
      'KV_ERR_UNAUTHENTICATED',
    )

    // A value is raw bytes, not JSON; its version is in the ETag.
    const raw = await call('GET', `${leader}/v1/kv/app/a`)
    expect(raw.status).toBe(200)
    expect(raw.headers['content-type']).toBe('application/octet-stream')
    expect(raw.body.toString()).toBe('one')
    expect(raw.headers.etag).toBe(`"${put.version}"`)
    checked.add('GET /v1/kv/* 200')
    fails('GET /v1/kv/*', await call('GET', `${leader}/v1/kv/app/none`), 'KV_ERR_KEY_NOT_FOUND')
    fails(
      'GET /v1/kv/*',
      await call('GET', `${follower}/v1/kv/app/a?consistency=linearizable`),
      'KV_ERR_NOT_LEADER',
    )
    fails(
      'GET /v1/kv/*',
      await call('GET', `${leader}/v1/kv/app/a?consistency=strong`),
      'KV_ERR_INVALID_ARGUMENT',
    )

    const page = conforms(
      'GET /v1/kv',
      await call('GET', `${leader}/v1/kv?prefix=app/&limit=1&values=true`),
      listResponseSchema,
    )
    expect(page.nextCursor).not.toBeNull()
    const last = conforms(
      'GET /v1/kv',
      await call(
        'GET',
        `${leader}/v1/kv?prefix=app/&cursor=${encodeURIComponent(page.nextCursor as string)}`,
      ),
      listResponseSchema,
    )
    expect(last.nextCursor).toBeNull()
    fails('GET /v1/kv', await call('GET', `${leader}/v1/kv?colour=red`), 'KV_ERR_INVALID_ARGUMENT')
    fails('GET /v1/kv', await call('GET', `${leader}/v1/kv?cursor=zzz`), 'KV_ERR_INVALID_CURSOR')

    const batch = conforms(
      'POST /v1/batch',
      await call('POST', `${leader}/v1/batch`, {
        body: JSON.stringify({
          ops: [
            { op: 'put', key: 'app/c', value: 'three' },
            { op: 'put', key: 'app/d', valueBase64: 'AAE=', ifAbsent: true },
            { op: 'delete', key: 'app/b', ifVersion: created.version },
          ],
        }),
      }),
      batchResponseSchema,
    ).lsn
    expect(batch).toBeGreaterThan(0)
    fails(
      'POST /v1/batch',
      await call('POST', `${leader}/v1/batch`, {
        body: JSON.stringify({ ops: [{ op: 'put', key: 'app/e', value: 'x' }] }).replace(
          '"ops"',
          '"opz"',
        ),
      }),
      'KV_ERR_MALFORMED_BODY',
    )
    const ok = conforms(
      'POST /v1/batch',
      await call('POST', `${leader}/v1/batch`, {
        body: JSON.stringify({ ops: [{ op: 'delete', key: 'app/c', ifExists: true }] }),
      }),
      batchResponseSchema,
    )
    expect(ok.results[0]?.version).toBeNull()

    conforms('DELETE /v1/kv/*', await call('DELETE', `${leader}/v1/kv/app/a`), deleteResponseSchema)
    fails('DELETE /v1/kv/*', await call('DELETE', `${leader}/v1/kv/app/a`), 'KV_ERR_KEY_NOT_FOUND')
    fails(
      'PATCH /v1/kv/*',
      await call('PATCH', `${leader}/v1/kv/app/a`),
      'KV_ERR_METHOD_NOT_ALLOWED',
    )
    fails('GET /nowhere', await call('GET', `${leader}/nowhere`), 'KV_ERR_ROUTE_NOT_FOUND')
  })

  it('queued writes: 202 with a ticket on a follower, and the ticket', async () => {
    const queued = conforms(
      'PUT /v1/kv/*',
      await call('PUT', `${follower}/v1/kv/app/queued?ack=queued`, { body: Buffer.from('q') }),
      queuedResponseSchema,
      202,
    )
    conforms(
      'DELETE /v1/kv/*',
      await call('DELETE', `${follower}/v1/kv/app/none?ack=queued`),
      queuedResponseSchema,
      202,
    )
    conforms(
      'POST /v1/batch',
      await call('POST', `${follower}/v1/batch?ack=queued`, {
        body: JSON.stringify({ ops: [{ op: 'put', key: 'app/q2', value: 'x' }] }),
      }),
      queuedResponseSchema,
      202,
    )
    let ticket = conforms(
      'GET /v1/tickets/:id',
      await call('GET', `${follower}/v1/tickets/${queued.ticket}`),
      ticketResponseSchema,
    )
    for (let i = 0; ticket.status === 'pending' && i < 200; i++) {
      await new Promise((resolve) => setTimeout(resolve, 25))
      ticket = conforms(
        'GET /v1/tickets/:id',
        await call('GET', `${follower}/v1/tickets/${queued.ticket}`),
        ticketResponseSchema,
      )
    }
    expect(ticket.status).toBe('applied')
    fails(
      'GET /v1/tickets/:id',
      await call('GET', `${leader}/v1/tickets/${queued.ticket}`),
      'KV_ERR_TICKET_NOT_FOUND',
    )
    fails(
      'GET /v1/tickets/:id',
      await call('GET', `${follower}/v1/tickets/nonsense`),
      'KV_ERR_INVALID_ARGUMENT',
    )
    // Only members may call the leader's side of the forward; root's certificate is a user's.
    fails(
      'POST /internal/v1/outbox/apply',
      await call('POST', `${leader}/internal/v1/outbox/apply`, { body: Buffer.from('x') }),
      'KV_ERR_UNAUTHENTICATED',
    )
  })

  it('status, cluster, digest, health and readiness on every member', async () => {
    for (const m of cluster.members) {
      const status = conforms(
        'GET /v1/status',
        await call('GET', `${m.url}/v1/status`),
        statusResponseSchema,
      )
      expect(status.nodeId).toBe(m.id)
      const view = conforms(
        'GET /v1/cluster',
        await call('GET', `${m.url}/v1/cluster`),
        clusterViewSchema,
      )
      expect(view.members.map((member) => member.peerUrl)).toEqual(
        cluster.members.map((member) => member.peerUrl),
      )
      conforms('GET /v1/digest', await call('GET', `${m.url}/v1/digest`), digestResponseSchema)
      conforms(
        'GET /health',
        await call('GET', `${m.url}/health`, { as: 'anonymous' }),
        healthResponseSchema,
      )
      conforms(
        'GET /ready',
        await call('GET', `${m.url}/ready`, { as: 'anonymous' }),
        readyResponseSchema,
      )
    }
    fails(
      'GET /v1/status',
      await call('GET', `${leader}/v1/status`, { as: 'anonymous' }),
      'KV_ERR_UNAUTHENTICATED',
    )
  })

  it('log administration: compact, rollbacks and leadership transfer', async () => {
    conforms(
      'POST /admin/v1/compact',
      await call('POST', `${leader}/admin/v1/compact`),
      compactResponseSchema,
    )
    conforms(
      'GET /admin/v1/rollbacks',
      await call('GET', `${follower}/admin/v1/rollbacks?limit=5`),
      rollbackPageSchema,
    )
    fails(
      'GET /admin/v1/rollbacks',
      await call('GET', `${follower}/admin/v1/rollbacks?limit=-1`),
      'KV_ERR_INVALID_ARGUMENT',
    )
    conforms(
      'DELETE /admin/v1/rollbacks',
      await call('DELETE', `${follower}/admin/v1/rollbacks?through=0`),
      rollbackDiscardResponseSchema,
    )
    fails(
      'POST /admin/v1/transfer-leadership',
      await call('POST', `${follower}/admin/v1/transfer-leadership`, { body: '{}' }),
      'KV_ERR_NOT_LEADER',
    )
    fails(
      'POST /admin/v1/transfer-leadership',
      await call('POST', `${leader}/admin/v1/transfer-leadership`, { body: '{"too":"n2"}' }),
      'KV_ERR_MALFORMED_BODY',
    )
    const target = cluster.followers[0]?.id as string
    const moved = conforms(
      'POST /admin/v1/transfer-leadership',
      await call('POST', `${leader}/admin/v1/transfer-leadership`, {
        body: JSON.stringify({ to: target }),
      }),
      transferResponseSchema,
    )
    expect(moved.leaderId).toBe(target)
    leader = (await cluster.waitForLeader()).url
    follower = (cluster.followers[0] as { url: string }).url
  })

  it('membership: list, add, promote, remove, replace', async () => {
    conforms(
      'GET /admin/v1/members',
      await call('GET', `${leader}/admin/v1/members`),
      membershipSchema,
    )
    conforms(
      'GET /admin/v1/members',
      await call('GET', `${follower}/admin/v1/members`),
      membershipSchema,
    )
    fails(
      'POST /admin/v1/members',
      await call('POST', `${follower}/admin/v1/members`, {
        body: JSON.stringify({
          id: 'n8',
          clientUrl: 'https://127.0.0.1:1',
          peerUrl: 'https://127.0.0.1:2',
        }),
      }),
      'KV_ERR_NOT_LEADER',
    )
    fails(
      'POST /admin/v1/members',
      await call('POST', `${leader}/admin/v1/members`, { body: '{"id":"n8"}' }),
      'KV_ERR_MALFORMED_BODY',
    )
    // A learner whose node never starts: added, never promoted, removed.
    const added = conforms(
      'POST /admin/v1/members',
      await call('POST', `${leader}/admin/v1/members`, {
        body: JSON.stringify({
          id: 'n8',
          clientUrl: 'https://127.0.0.1:1',
          peerUrl: 'https://127.0.0.1:2',
        }),
      }),
      membershipChangeResponseSchema,
    )
    expect(added.membership.members.find((m) => m.id === 'n8')?.role).toBe('learner')
    fails(
      'POST /admin/v1/members/:id/promote',
      await call('POST', `${leader}/admin/v1/members/n8/promote`),
      'KV_ERR_LEARNER_BEHIND',
    )
    fails(
      'POST /admin/v1/members/:id/replace',
      await call('POST', `${leader}/admin/v1/members/n8/replace`, { body: '[]' }),
      'KV_ERR_MALFORMED_BODY',
    )
    conforms(
      'DELETE /admin/v1/members/:id',
      await call('DELETE', `${leader}/admin/v1/members/n8`),
      membershipChangeResponseSchema,
    )
    fails(
      'DELETE /admin/v1/members/:id',
      await call('DELETE', `${leader}/admin/v1/members/nobody`),
      'KV_ERR_NOT_A_MEMBER',
    )
    // A voter promoted again changes nothing; replacing a member by itself is refused.
    const voter = cluster.followers[0]?.id as string
    conforms(
      'POST /admin/v1/members/:id/promote',
      await call('POST', `${leader}/admin/v1/members/${voter}/promote`),
      membershipChangeResponseSchema,
    )
    fails(
      'POST /admin/v1/members/:id/replace',
      await call('POST', `${leader}/admin/v1/members/${voter}/replace`, {
        body: JSON.stringify({
          id: voter,
          clientUrl: 'https://127.0.0.1:3',
          peerUrl: 'https://127.0.0.1:4',
        }),
      }),
      'KV_ERR_INVALID_ARGUMENT',
    )
  })

  it('auth: tokens, whoami, users and roles', async () => {
    const token = conforms(
      'POST /v1/auth/token',
      await call('POST', `${follower}/v1/auth/token`, {
        as: 'anonymous',
        body: JSON.stringify({ user: 'root', password: rootPassword() }),
      }),
      tokenResponseSchema,
    ).token as string
    fails(
      'POST /v1/auth/token',
      await call('POST', `${leader}/v1/auth/token`, {
        as: 'anonymous',
        body: JSON.stringify({ user: 'root', password: 'wrong' }),
      }),
      'KV_ERR_UNAUTHENTICATED',
    )
    fails(
      'POST /v1/auth/token',
      await call('POST', `${leader}/v1/auth/token`, { as: 'anonymous', body: '{"user":1}' }),
      'KV_ERR_MALFORMED_BODY',
    )
    expect(
      conforms(
        'GET /v1/auth/whoami',
        await call('GET', `${leader}/v1/auth/whoami`, { token }),
        whoAmISchema,
      ).via,
    ).toBe('token')
    conforms('GET /v1/auth/whoami', await call('GET', `${follower}/v1/auth/whoami`), whoAmISchema)

    const admin = (path: string) => `${leader}/admin/v1${path}`
    conforms('GET /admin/v1/auth', await call('GET', admin('/auth')), authStatusSchema)
    conforms(
      'POST /admin/v1/auth/enable',
      await call('POST', admin('/auth/enable')),
      authEnabledResponseSchema,
    )
    conforms(
      'POST /admin/v1/roles',
      await call('POST', admin('/roles'), { body: JSON.stringify({ name: 'app', monitor: true }) }),
      roleInfoSchema,
      201,
    )
    fails(
      'POST /admin/v1/roles',
      await call('POST', admin('/roles'), { body: JSON.stringify({ name: 'app' }) }),
      'KV_ERR_ROLE_EXISTS',
    )
    conforms(
      'POST /admin/v1/roles/:name/grant',
      await call('POST', admin('/roles/app/grant'), {
        body: JSON.stringify({ access: 'readwrite', prefix: 'app/' }),
      }),
      roleInfoSchema,
    )
    conforms(
      'POST /admin/v1/roles/:name/revoke',
      await call('POST', admin('/roles/app/revoke'), {
        body: JSON.stringify({ access: 'monitor' }),
      }),
      roleInfoSchema,
    )
    conforms('GET /admin/v1/roles', await call('GET', admin('/roles')), roleListSchema)
    conforms('GET /admin/v1/roles/:name', await call('GET', admin('/roles/app')), roleInfoSchema)
    fails(
      'GET /admin/v1/roles/:name',
      await call('GET', admin('/roles/none')),
      'KV_ERR_ROLE_NOT_FOUND',
    )

    conforms(
      'POST /admin/v1/users',
      await call('POST', admin('/users'), {
        body: JSON.stringify({ name: 'ann', password: 'ann-password', roles: [] }),
      }),
      userInfoSchema,
      201,
    )
    fails(
      'POST /admin/v1/users',
      await call('POST', admin('/users'), { body: JSON.stringify({ name: 'bob', colour: 'red' }) }),
      'KV_ERR_MALFORMED_BODY',
    )
    conforms(
      'POST /admin/v1/users/:name/grant',
      await call('POST', admin('/users/ann/grant'), { body: JSON.stringify({ role: 'app' }) }),
      userInfoSchema,
    )
    conforms('GET /admin/v1/users', await call('GET', admin('/users')), userListSchema)
    conforms('GET /admin/v1/users/:name', await call('GET', admin('/users/ann')), userDetailSchema)
    fails(
      'GET /admin/v1/users/:name',
      await call('GET', admin('/users/none')),
      'KV_ERR_USER_NOT_FOUND',
    )
    conforms(
      'PUT /admin/v1/users/:name/password',
      await call('PUT', admin('/users/ann/password'), {
        body: JSON.stringify({ password: 'ann-password-2' }),
      }),
      passwordChangedResponseSchema,
    )
    const annToken = conforms(
      'POST /v1/auth/token',
      await call('POST', `${leader}/v1/auth/token`, {
        as: 'anonymous',
        body: JSON.stringify({ user: 'ann', password: 'ann-password-2' }),
      }),
      tokenResponseSchema,
    ).token as string
    fails(
      'GET /admin/v1/users',
      await call('GET', admin('/users'), { token: annToken }),
      'KV_ERR_PERMISSION_DENIED',
    )
    conforms(
      'POST /admin/v1/users/:name/revoke-tokens',
      await call('POST', admin('/users/ann/revoke-tokens')),
      tokensRevokedResponseSchema,
    )
    conforms(
      'POST /admin/v1/users/:name/revoke',
      await call('POST', admin('/users/ann/revoke'), { body: JSON.stringify({ role: 'app' }) }),
      userInfoSchema,
    )
    conforms(
      'DELETE /admin/v1/users/:name',
      await call('DELETE', admin('/users/ann')),
      deletedResponseSchema,
    )
    conforms(
      'DELETE /admin/v1/roles/:name',
      await call('DELETE', admin('/roles/app')),
      deletedResponseSchema,
    )
    conforms(
      'POST /admin/v1/tls/reload',
      await call('POST', admin('/tls/reload')),
      tlsReloadResponseSchema,
    )
  })
})

describe('leaderless: every route answers as the contract says', () => {
  let ll: LeaderlessCluster
  beforeAll(async () => {
    // W as a count (the default of 'quorum' is 2 here too): /v1/cluster shows it as a number.
    ll = await LeaderlessCluster.start(3, ['--replicas', '3', '--default-w', '2'])
  })
  afterAll(async () => {
    await ll?.close()
  })

  it('keys, siblings, cluster and the admin routes', async () => {
    const [a, b] = ll.urls as [string, string]
    const first = conforms(
      'PUT /v1/kv/* (leaderless)',
      await call('PUT', `${a}/v1/kv/k`, { body: Buffer.from('one') }),
      leaderlessWriteResponseSchema,
    )
    // A second write without the first's context is concurrent: two siblings.
    conforms(
      'PUT /v1/kv/* (leaderless)',
      await call('PUT', `${b}/v1/kv/k`, { body: Buffer.from('two') }),
      leaderlessWriteResponseSchema,
    )
    const siblings = conforms(
      'GET /v1/kv/* (leaderless)',
      await call('GET', `${a}/v1/kv/k?r=all`),
      siblingsResponseSchema,
      300,
    )
    expect(siblings.siblings).toHaveLength(2)
    conforms(
      'GET /v1/kv/* (leaderless)',
      await call('GET', `${a}/v1/kv/k?format=json`),
      siblingsResponseSchema,
    )
    conforms(
      'PUT /v1/kv/* (leaderless)',
      await call('PUT', `${a}/v1/kv/k`, {
        body: Buffer.from('three'),
        headers: { 'kv-context': siblings.context },
      }),
      leaderlessWriteResponseSchema,
    )
    const raw = await call('GET', `${b}/v1/kv/k?r=all`)
    expect(raw.status).toBe(200)
    expect(raw.body.toString()).toBe('three')
    fails(
      'PUT /v1/kv/* (leaderless)',
      await call('PUT', `${a}/v1/kv/k`, { body: Buffer.from('x'), headers: { 'kv-context': '!' } }),
      'KV_ERR_INVALID_CONTEXT',
    )
    fails(
      'PUT /v1/kv/* (leaderless)',
      await call('PUT', `${a}/v1/kv/k`, { body: Buffer.from('x'), headers: { 'if-match': '"1"' } }),
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )
    expect(first.hinted).toEqual([])

    conforms('GET /admin/v1/local/*', await call('GET', `${a}/admin/v1/local/k`), localCopySchema)
    fails(
      'GET /admin/v1/local/*',
      await call('GET', `${a}/admin/v1/local/none`),
      'KV_ERR_KEY_NOT_FOUND',
    )
    conforms(
      'DELETE /v1/kv/* (leaderless)',
      await call('DELETE', `${a}/v1/kv/k`),
      leaderlessWriteResponseSchema,
    )
    fails(
      'GET /v1/kv/* (leaderless)',
      await call('GET', `${a}/v1/kv/k?r=all`),
      'KV_ERR_KEY_NOT_FOUND',
    )
    fails(
      'GET /v1/kv/* (leaderless)',
      await call('GET', `${a}/v1/kv/k?r=9`),
      'KV_ERR_INVALID_ARGUMENT',
    )
    fails('GET /v1/kv (leaderless)', await call('GET', `${a}/v1/kv`), 'KV_ERR_UNSUPPORTED_IN_MODE')
    fails(
      'POST /v1/batch (leaderless)',
      await call('POST', `${a}/v1/batch`, { body: '{"ops":[]}' }),
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )

    for (const url of ll.urls) {
      const view = conforms(
        'GET /v1/cluster (leaderless)',
        await call('GET', `${url}/v1/cluster`),
        leaderlessClusterViewSchema,
      )
      expect(view.members.map((m) => m.peerUrl)).toEqual(ll.members.map((m) => m.peerUrl))
      conforms(
        'GET /v1/status (leaderless)',
        await call('GET', `${url}/v1/status`),
        statusResponseSchema,
      )
    }
    conforms(
      'GET /admin/v1/ranges',
      await call('GET', `${a}/admin/v1/ranges`),
      rangesResponseSchema,
    )
    conforms('GET /admin/v1/hints', await call('GET', `${a}/admin/v1/hints`), hintsResponseSchema)
    conforms(
      'POST /admin/v1/anti-entropy',
      await call('POST', `${a}/admin/v1/anti-entropy`),
      antiEntropyResponseSchema,
    )
    conforms(
      'GET /admin/v1/users (leaderless)',
      await call('GET', `${b}/admin/v1/users`),
      userListSchema,
    )
    const membership = conforms(
      'GET /admin/v1/members (leaderless)',
      await call('GET', `${a}/admin/v1/members`),
      membershipSchema,
    )
    expect(membership).toMatchObject({ mode: 'leaderless', version: 1, changeInProgress: false })
    fails(
      'DELETE /admin/v1/members/:id (leaderless)',
      await call('DELETE', `${a}/admin/v1/members/n9`),
      'KV_ERR_NOT_A_MEMBER',
    )
    fails(
      'POST /admin/v1/members/:id/promote (leaderless)',
      await call('POST', `${a}/admin/v1/members/n2/promote`),
      'KV_ERR_INVALID_ARGUMENT',
    )
  })
})

afterAll(() => {
  // Every route of the API answered at least once, in success and in error.
  const routes = [...checked].map((c) => c.replace(/ (\d{3}|KV_ERR_\w+)$/, ''))
  expect(new Set(routes).size).toBeGreaterThanOrEqual(40)
})
