/**
 * GET /openapi.json, the OpenAPI 3.1 description generated from the routes' schemas
 * (packages/node/src/http/openapi.ts):
 * - it is valid OpenAPI 3.1 (@seriousme/openapi-schema-validator), from a single-leader node
 *   and a leaderless one;
 * - every route the node registered is in it (fastify's onRoute list, not the document's own),
 *   and the ones left out are exactly the 405 answers of methods a path lacks (each called);
 * - on a real 3-node cluster (TLS, auth on) real answers, success and error, match the response
 *   schema of their operation and status (ajv, JSON Schema 2020-12, as OpenAPI 3.1 uses), and so
 *   do the SDK's results: the SDK's response types are the protocol schemas' types (checked at
 *   type level below), and the document's schemas are those same protocol schemas (checked at
 *   run time), so the SDK, the node and the document cannot drift apart.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Validator } from '@seriousme/openapi-schema-validator'
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import { Agent, request, type Dispatcher } from 'undici'
import { KvClient, type Lease, type LeaseInfo } from '@kvstore/client'
import { KvNode, parseConfig, registeredRoutes } from '@kvstore/node'
import {
  authStatusSchema,
  batchResponseSchema,
  clusterViewSchema,
  deleteResponseSchema,
  digestResponseSchema,
  listResponseSchema,
  membershipSchema,
  putResponseSchema,
  rollbackPageSchema,
  statusResponseSchema,
  whoAmISchema,
  type Schema,
  type Static,
} from '@kvstore/protocol'
import { TestCluster } from '@kvstore/testkit'
import { caPem, rootPassword, rootTls } from './support/certs.js'
import { freePorts } from './support/ports.js'

type OpenApi = {
  openapi: string
  paths: Record<string, Record<string, Operation>>
  components: { schemas: Record<string, unknown> }
}
type Operation = {
  summary?: string
  tags?: string[]
  responses: Record<
    string,
    { description: string; content?: Record<string, { schema: unknown }> } | undefined
  >
}

const methods = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options']

/** The document's path of a fastify route: `/v1/kv/*` is `/v1/kv/{key}`, `:id` is `{id}`. */
function documentedPath(url: string): string {
  return url.replace(/\*$/, '{key}').replace(/:([A-Za-z0-9_]+)/g, '{$1}')
}

/** A concrete URL for a route template. */
function concrete(url: string): string {
  return url.replace(/\*$/, 'some/key').replace(/:([A-Za-z0-9_]+)/g, 'x1')
}

async function validOpenApi(doc: unknown): Promise<void> {
  const validator = new Validator()
  const result = await validator.validate(doc as Record<string, unknown>)
  expect(result.errors ?? [], JSON.stringify(result.errors ?? []).slice(0, 2000)).toEqual([])
  expect(result.valid).toBe(true)
  expect(validator.version).toBe('3.1')
}

/**
 * Checks the document covers `app`'s routes, and that the hidden ones answer 405 on `url`.
 * Returns how many operations were documented and how many routes were hidden.
 */
async function coversRoutes(
  node: KvNode,
  doc: OpenApi,
  call: (method: string, url: string) => Promise<{ status: number; code: string | null }>,
): Promise<{ documented: number; hidden: number }> {
  const routes = registeredRoutes(node.app)
  expect(routes.length).toBeGreaterThan(20)
  const missing: string[] = []
  let documented = 0
  let hidden = 0
  for (const route of routes) {
    const path = documentedPath(route.url)
    const method = route.method.toLowerCase()
    if (route.hidden) {
      hidden++
      // Left out on purpose only when the method is one the path does not have.
      const answer = await call(route.method, concrete(route.url))
      expect(answer, `${route.method} ${route.url}`).toEqual({
        status: 405,
        code: route.method === 'HEAD' ? null : 'KV_ERR_METHOD_NOT_ALLOWED',
      })
      continue
    }
    // fastify adds HEAD beside every GET; the GET is its description.
    const operation = doc.paths[path]?.[method === 'head' ? 'get' : method]
    if (operation === undefined) {
      missing.push(`${route.method} ${route.url}`)
      continue
    }
    if (method !== 'head') documented++
    expect(operation.summary, `${route.method} ${route.url}`).toBeTruthy()
    expect(operation.tags?.length, `${route.method} ${route.url}`).toBeGreaterThan(0)
    // Every operation says what its errors look like: the shared KvError body.
    for (const range of ['4XX', '5XX']) {
      expect(operation.responses[range]?.content?.['application/json']?.schema).toEqual({
        $ref: '#/components/schemas/KvError',
      })
    }
  }
  expect(missing, 'routes missing from /openapi.json').toEqual([])
  // And nothing documented that the node does not serve.
  const served = new Set(
    routes
      .filter((r) => !r.hidden)
      .map((r) => `${r.method.toLowerCase()} ${documentedPath(r.url)}`),
  )
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of Object.keys(item).filter((m) => methods.includes(m)))
      expect(served.has(`${method} ${path}`), `${method} ${path} is documented, not served`).toBe(
        true,
      )
  }
  return { documented, hidden }
}

describe('the description of a standalone and a leaderless node', () => {
  const started: { node: KvNode; dir: string }[] = []
  afterAll(async () => {
    for (const { node, dir } of started.splice(0)) {
      await node.stop('test done')
      await rm(dir, { recursive: true, force: true })
    }
  })

  async function start(args: string[]): Promise<KvNode> {
    const dir = await mkdtemp(join(tmpdir(), 'kv-openapi-'))
    const { config } = parseConfig(
      [
        '--data-dir',
        join(dir, 'data'),
        '--log-level',
        'silent',
        '--audit-log',
        'off',
        '--auth',
        'false',
        ...args,
      ],
      {},
    )
    const node = await KvNode.start(config, {
      onFatal: (err) => {
        throw err
      },
    })
    started.push({ node, dir })
    return node
  }

  const plain = new Agent()
  afterAll(() => plain.close())
  const callOn = (base: string) => async (method: string, url: string) => {
    const res = await request(`${base}${url}`, {
      method: method as Dispatcher.HttpMethod,
      dispatcher: plain,
    })
    const text = await res.body.text()
    let code: string | null = null
    try {
      code = (JSON.parse(text) as { error: { code: string } }).error.code
    } catch {
      code = null
    }
    return { status: res.statusCode, code }
  }

  async function documentOf(node: KvNode): Promise<OpenApi> {
    const res = await request(`${node.url}/openapi.json`, { dispatcher: plain })
    expect(res.statusCode).toBe(200)
    expect(res.headers['content-type']).toMatch(/^application\/json/)
    return (await res.body.json()) as OpenApi
  }

  it('single-leader (standalone): valid OpenAPI 3.1 covering every route', async () => {
    const node = await start(['--port', '0'])
    const doc = await documentOf(node)
    expect(doc.openapi).toBe('3.1.0')
    await validOpenApi(doc)
    const counts = await coversRoutes(node, doc, callOn(node.url))
    expect(counts.documented).toBeGreaterThan(50)
    expect(counts.hidden).toBeGreaterThan(20)
    // The hot key routes are described, with the key as a path parameter.
    expect(Object.keys(doc.paths['/v1/kv/{key}'] ?? {}).sort()).toEqual(['delete', 'get', 'put'])
  })

  it('leaderless: valid OpenAPI 3.1 covering every route', async () => {
    const client = await freePorts(2)
    const peer = client + 1
    const node = await start([
      '--port',
      String(client),
      '--mode',
      'leaderless',
      '--id',
      'n1',
      '--members',
      `n1@http://127.0.0.1:${client}@http://127.0.0.1:${peer}`,
      '--replicas',
      '1',
      '--unsafe-plaintext-peers',
    ])
    const doc = await documentOf(node)
    await validOpenApi(doc)
    const counts = await coversRoutes(node, doc, callOn(node.url))
    expect(counts.documented).toBeGreaterThan(40)
    expect(doc.paths['/admin/v1/hints']?.get).toBeDefined()
    expect(doc.paths['/admin/v1/local/{key}']?.get).toBeDefined()
  })
})

// ------------------------------------------------------------------ a real cluster's answers

/** Validates bodies against the document's response schemas. */
class ResponseChecker {
  private readonly ajv = new Ajv2020({ strict: false, allErrors: true })
  private readonly compiled = new Map<string, ValidateFunction>()
  /** `METHOD path status` of every answer checked. */
  readonly checked = new Set<string>()

  constructor(readonly doc: OpenApi) {
    this.ajv.addSchema(doc as object, 'openapi')
  }

  /** The documented response of `method path` for `status` (exact, else its range). */
  response(method: string, path: string, status: number): string {
    const operation = this.doc.paths[path]?.[method.toLowerCase()]
    expect(operation, `${method} ${path} is not documented`).toBeDefined()
    const responses = (operation as Operation).responses
    const key = [String(status), `${String(status)[0]}XX`, 'default'].find(
      (k) => responses[k] !== undefined,
    )
    expect(key, `${method} ${path}: status ${status} is not documented`).toBeDefined()
    return key as string
  }

  /** The schema of `method path`'s answer with `status` and `mediaType`: a JSON pointer. */
  pointer(method: string, path: string, status: number, mediaType: string): string {
    const key = this.response(method, path, status)
    const responses = (this.doc.paths[path]?.[method.toLowerCase()] as Operation).responses
    const content = (responses[key as string] as { content?: Record<string, unknown> }).content
    expect(
      content?.[mediaType],
      `${method} ${path} ${status}: ${mediaType} is not documented (${Object.keys(content ?? {}).join(', ')})`,
    ).toBeDefined()
    const escape = (s: string) => encodeURIComponent(s.replaceAll('~', '~0').replaceAll('/', '~1'))
    return `openapi#/paths/${escape(path)}/${method.toLowerCase()}/responses/${key}/content/${escape(mediaType)}/schema`
  }

  /** Checks a JSON value against the schema of that answer. */
  value(method: string, path: string, status: number, value: unknown): void {
    const ref = this.pointer(method, path, status, 'application/json')
    let validate = this.compiled.get(ref)
    if (validate === undefined) {
      validate = this.ajv.compile({ $ref: ref })
      this.compiled.set(ref, validate)
    }
    const ok = validate(value)
    expect(
      ok ? [] : validate.errors,
      `${method} ${path} ${status}: ${ok ? '' : this.ajv.errorsText(validate.errors)} in ${JSON.stringify(value).slice(0, 800)}`,
    ).toEqual([])
    this.checked.add(`${method} ${path} ${status}`)
  }
}

const root = new Agent({ connect: rootTls().tls })
const anonymous = new Agent({ connect: { ca: caPem() } })
let cluster: TestCluster
let checker: ResponseChecker
let sdk: KvClient
let served: { status: number; doc: OpenApi }

beforeAll(async () => {
  cluster = await TestCluster.start(3)
  sdk = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
  // Anyone may read it: no credentials.
  const res = await request(`${cluster.members[1]!.url}/openapi.json`, { dispatcher: anonymous })
  served = { status: res.statusCode, doc: (await res.body.json()) as OpenApi }
  checker = new ResponseChecker(served.doc)
}, 90_000)
afterAll(async () => {
  await sdk?.close()
  await root.close()
  await anonymous.close()
  await cluster?.stop()
})

/** Calls a member and checks the answer against the document (`path` is the template). */
async function call(
  method: Dispatcher.HttpMethod,
  base: string,
  path: string,
  url: string,
  options: { body?: string | Buffer; headers?: Record<string, string>; as?: Agent } = {},
): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer; json: unknown }> {
  const res = await request(`${base}${url}`, {
    method,
    dispatcher: options.as ?? root,
    headers: {
      ...(typeof options.body === 'string' ? { 'content-type': 'application/json' } : {}),
      ...options.headers,
    },
    ...(options.body !== undefined ? { body: options.body } : {}),
  })
  const body = Buffer.from(await res.body.arrayBuffer())
  const type = String(res.headers['content-type'] ?? '').split(';')[0] as string
  let json: unknown = undefined
  if (method === 'HEAD' || res.statusCode === 304) {
    // No body: the status must still be documented.
    checker.response(method === 'HEAD' ? 'GET' : method, path, res.statusCode)
    checker.checked.add(`${method} ${path} ${res.statusCode}`)
  } else if (type === 'application/json') {
    json = JSON.parse(body.toString('utf8'))
    checker.value(method, path, res.statusCode, json)
  } else {
    // A raw body: its media type must be the documented one.
    checker.pointer(method, path, res.statusCode, type)
    checker.checked.add(`${method} ${path} ${res.statusCode}`)
  }
  return { status: res.statusCode, headers: res.headers, body, json }
}

describe('a 3-node cluster (TLS, auth on)', () => {
  it('serves a valid /openapi.json to anyone, as a standalone node describes it', async () => {
    expect(served.status).toBe(200)
    const doc = served.doc
    await validOpenApi(doc)
    // The document's schemas are the protocol's (the SDK's types come from those).
    // (A response's description is an annotation beside the schema's own keywords.)
    const documented = (path: string, method: string, status: string) => {
      const schema = doc.paths[path]?.[method]?.responses[status]?.content?.['application/json']
        ?.schema as Record<string, unknown> | undefined
      expect(schema, `${method} ${path} ${status}`).toBeDefined()
      const { description: _description, ...rest } = schema ?? {}
      return rest
    }
    const same = (path: string, method: string, status: string, schema: Schema) =>
      expect(documented(path, method, status), `${method} ${path} ${status}`).toEqual(
        JSON.parse(JSON.stringify(schema)),
      )
    same('/v1/status', 'get', '200', statusResponseSchema)
    same('/v1/digest', 'get', '200', digestResponseSchema)
    same('/v1/kv', 'get', '200', listResponseSchema)
    same('/v1/batch', 'post', '200', batchResponseSchema)
    same('/v1/auth/whoami', 'get', '200', whoAmISchema)
    same('/admin/v1/auth', 'get', '200', authStatusSchema)
    same('/admin/v1/members', 'get', '200', membershipSchema)
    same('/admin/v1/rollbacks', 'get', '200', rollbackPageSchema)
    same('/v1/kv/{key}', 'put', '200', putResponseSchema)
    same('/v1/kv/{key}', 'put', '201', putResponseSchema)
    same('/v1/kv/{key}', 'delete', '200', deleteResponseSchema)
    expect((documented('/v1/cluster', 'get', '200').anyOf as unknown[])[0]).toEqual(
      JSON.parse(JSON.stringify(clusterViewSchema)),
    )
  })

  it('answers every call as its operation says: keys, batch, leases, auth, admin', async () => {
    const leader = cluster.leader.url
    const follower = cluster.followers[0]!.url
    const k = '/v1/kv/{key}'
    await call('PUT', leader, k, '/v1/kv/oa/a', { body: Buffer.from('one') })
    await call('PUT', leader, k, '/v1/kv/oa/b?ack=all', {
      body: Buffer.from('two'),
      headers: { 'if-none-match': '*' },
    })
    const failed = await call('PUT', leader, k, '/v1/kv/oa/b', {
      body: Buffer.from('x'),
      headers: { 'if-none-match': '*' },
    })
    expect(failed.status).toBe(412)
    const queued = await call('PUT', leader, k, '/v1/kv/oa/q?ack=queued', {
      body: Buffer.from('q'),
    })
    expect(queued.status).toBe(202)
    const ticket = (queued.json as { ticket: string }).ticket
    await call('GET', leader, '/v1/tickets/{id}', `/v1/tickets/${ticket}`)
    const read = await call('GET', follower, k, '/v1/kv/oa/a')
    expect(read.body.toString()).toBe('one')
    const etag = String(read.headers.etag)
    expect(
      (await call('GET', follower, k, '/v1/kv/oa/a', { headers: { 'if-none-match': etag } }))
        .status,
    ).toBe(304)
    await call('HEAD', follower, k, '/v1/kv/oa/a')
    expect((await call('GET', follower, k, '/v1/kv/oa/none')).status).toBe(404)
    await call('GET', leader, k, '/v1/kv/oa/a?consistency=linearizable')
    await call('GET', leader, k, '/v1/kv/oa/a?consistency=committed')
    expect(
      (await call('PUT', follower, k, '/v1/kv/oa/c', { body: Buffer.from('c') })).status,
    ).toBeGreaterThanOrEqual(400)
    await call('GET', follower, '/v1/kv', '/v1/kv?prefix=oa/&values=true&limit=1')
    await call('GET', leader, '/v1/kv', '/v1/kv?prefix=oa/&consistency=committed')
    expect((await call('GET', leader, '/v1/kv', '/v1/kv?bogus=1')).status).toBe(400)
    await call('POST', leader, '/v1/batch', '/v1/batch', {
      body: JSON.stringify({
        ops: [
          { op: 'put', key: 'oa/d', value: 'd' },
          { op: 'delete', key: 'oa/b' },
        ],
      }),
    })
    expect((await call('POST', leader, '/v1/batch', '/v1/batch', { body: '{' })).status).toBe(400)
    await call('DELETE', leader, k, '/v1/kv/oa/d')

    const lease = await call('POST', leader, '/v1/leases', '/v1/leases', {
      body: '{"ttlMs":60000}',
    })
    expect(lease.status).toBe(201)
    const id = (lease.json as { id: string }).id
    await call('PUT', leader, k, `/v1/kv/oa/leased?lease=${id}`, { body: Buffer.from('l') })
    await call('GET', leader, '/v1/leases/{id}', `/v1/leases/${id}`)
    await call('GET', leader, '/v1/leases', '/v1/leases')
    await call('POST', leader, '/v1/leases/{id}/keepalive', `/v1/leases/${id}/keepalive`)
    await call('DELETE', leader, '/v1/leases/{id}', `/v1/leases/${id}`)
    expect((await call('GET', leader, '/v1/leases/{id}', `/v1/leases/${id}`)).status).toBe(404)

    const token = await call('POST', follower, '/v1/auth/token', '/v1/auth/token', {
      body: JSON.stringify({ user: 'root', password: rootPassword() }),
      as: anonymous,
    })
    expect(token.status).toBe(200)
    expect(
      (await call('GET', follower, '/v1/auth/whoami', '/v1/auth/whoami', { as: anonymous })).status,
    ).toBe(401)
    await call('GET', follower, '/v1/auth/whoami', '/v1/auth/whoami')
    await call('GET', leader, '/admin/v1/auth', '/admin/v1/auth')
    await call('POST', leader, '/admin/v1/roles', '/admin/v1/roles', { body: '{"name":"oa-role"}' })
    await call('POST', leader, '/admin/v1/roles/{name}/grant', '/admin/v1/roles/oa-role/grant', {
      body: '{"access":"read","prefix":"oa/"}',
    })
    await call('GET', leader, '/admin/v1/roles/{name}', '/admin/v1/roles/oa-role')
    await call('GET', leader, '/admin/v1/roles', '/admin/v1/roles')
    await call('POST', leader, '/admin/v1/users', '/admin/v1/users', {
      body: '{"name":"oa-user","password":"a long enough password","roles":["oa-role"]}',
    })
    await call('GET', leader, '/admin/v1/users/{name}', '/admin/v1/users/oa-user')
    await call('GET', leader, '/admin/v1/users', '/admin/v1/users')
    await call(
      'PUT',
      leader,
      '/admin/v1/users/{name}/password',
      '/admin/v1/users/oa-user/password',
      {
        body: '{"password":"another long password"}',
      },
    )
    await call(
      'POST',
      leader,
      '/admin/v1/users/{name}/revoke-tokens',
      '/admin/v1/users/oa-user/revoke-tokens',
    )
    await call('DELETE', leader, '/admin/v1/users/{name}', '/admin/v1/users/oa-user')
    await call('DELETE', leader, '/admin/v1/roles/{name}', '/admin/v1/roles/oa-role')
    expect(
      (await call('GET', leader, '/admin/v1/users/{name}', '/admin/v1/users/oa-user')).status,
    ).toBe(404)

    for (const base of [leader, follower]) {
      await call('GET', base, '/v1/status', '/v1/status')
      await call('GET', base, '/v1/cluster', '/v1/cluster')
      await call('GET', base, '/v1/digest', '/v1/digest')
      await call('GET', base, '/health', '/health')
      await call('GET', base, '/ready', '/ready')
      await call('GET', base, '/metrics', '/metrics')
    }
    await call('GET', leader, '/admin/v1/members', '/admin/v1/members')
    await call('GET', leader, '/admin/v1/rollbacks', '/admin/v1/rollbacks?limit=10')
    await call('DELETE', leader, '/admin/v1/rollbacks', '/admin/v1/rollbacks?through=0')
    await call('POST', leader, '/admin/v1/compact', '/admin/v1/compact')
    expect((await call('GET', leader, '/v1/shards', '/v1/shards')).status).toBeGreaterThanOrEqual(
      400,
    )
    expect((await call('GET', leader, '/v1/regions', '/v1/regions')).status).toBeGreaterThanOrEqual(
      400,
    )
    expect(
      (
        await call('POST', leader, '/admin/v1/backups', '/admin/v1/backups', {
          body: '{"target":"archive"}',
        })
      ).status,
    ).toBe(400)
    // A watch is a stream: its media type is checked on the first bytes, then it is closed.
    const controller = new AbortController()
    const watch = await request(`${follower}/v1/watch?prefix=oa/&fromLsn=0`, {
      dispatcher: root,
      signal: controller.signal,
    })
    expect(watch.statusCode).toBe(200)
    checker.pointer('GET', '/v1/watch', 200, String(watch.headers['content-type']).split(';')[0]!)
    controller.abort()
    await watch.body.text().catch(() => '')
    // Leadership moves last: every earlier call found the leader where it was.
    await call('POST', leader, '/admin/v1/transfer-leadership', '/admin/v1/transfer-leadership', {
      body: '{}',
    })
    expect(checker.checked.size).toBeGreaterThan(45)
  })

  it("the SDK's results match the document's response schemas", async () => {
    await cluster.waitForLeader()
    const check = (method: string, path: string, status: number, value: unknown) =>
      checker.value(method, path, status, value)
    check('PUT', '/v1/kv/{key}', 200, await sdk.put('oa/sdk', 'v'))
    check('GET', '/v1/kv', 200, await sdk.list({ prefix: 'oa/' }))
    check('POST', '/v1/batch', 200, await sdk.batch([{ op: 'put', key: 'oa/sdk2', value: 'w' }]))
    check('DELETE', '/v1/kv/{key}', 200, await sdk.delete('oa/sdk2'))
    const status = await sdk.status()
    check('GET', '/v1/status', 200, status)
    // The schemas are closed: a field the node or the SDK added would fail, as would a wrong type.
    expect(() => check('GET', '/v1/status', 200, { ...status, renamed: 1 })).toThrow(
      /must NOT have additional properties/,
    )
    expect(() => check('GET', '/v1/status', 200, { ...status, epoch: 'one' })).toThrow(
      /epoch must be integer/,
    )
    check('GET', '/v1/digest', 200, await sdk.digest())
    check('GET', '/v1/cluster', 200, await sdk.cluster())
    check('GET', '/v1/auth/whoami', 200, await sdk.whoami())
    check('GET', '/admin/v1/auth', 200, await sdk.authStatus())
    check('GET', '/admin/v1/members', 200, await sdk.members())
    check('GET', '/admin/v1/rollbacks', 200, await sdk.rollbacks())
    const lease: Lease = await sdk.grantLease(30_000)
    check('POST', '/v1/leases', 201, lease)
    const info: LeaseInfo = await sdk.leaseInfo(lease.id)
    check('GET', '/v1/leases/{id}', 200, info)
    check('POST', '/v1/leases/{id}/keepalive', 200, await sdk.keepAliveLease(lease.id))
    check('DELETE', '/v1/leases/{id}', 200, await sdk.revokeLease(lease.id))
  })
})

// Type level: the SDK's results are the protocol schemas' types, the schemas the document
// carries (checked at run time above). `pnpm typecheck` fails if one drifts.
type Result<M extends keyof KvClient> = KvClient[M] extends (...args: never[]) => Promise<infer R>
  ? R
  : never
expectTypeOf<Result<'status'>>().toEqualTypeOf<Static<typeof statusResponseSchema>>()
expectTypeOf<Result<'digest'>>().toEqualTypeOf<Static<typeof digestResponseSchema>>()
expectTypeOf<Result<'list'>>().toEqualTypeOf<Static<typeof listResponseSchema>>()
expectTypeOf<Result<'batch'>>().toEqualTypeOf<Static<typeof batchResponseSchema>>()
expectTypeOf<Result<'whoami'>>().toEqualTypeOf<Static<typeof whoAmISchema>>()
expectTypeOf<Result<'authStatus'>>().toEqualTypeOf<Static<typeof authStatusSchema>>()
expectTypeOf<Result<'members'>>().toEqualTypeOf<Static<typeof membershipSchema>>()
expectTypeOf<Result<'rollbacks'>>().toEqualTypeOf<Static<typeof rollbackPageSchema>>()
expectTypeOf<Result<'put'>>().toMatchTypeOf<Static<typeof putResponseSchema>>()
expectTypeOf<Result<'delete'>>().toMatchTypeOf<Static<typeof deleteResponseSchema>>()
expectTypeOf<Result<'cluster'>>().toMatchTypeOf<Static<typeof clusterViewSchema>>()
