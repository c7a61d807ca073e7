/**
 * Logging in, and managing users, roles and auth:
 *
 *   POST   /v1/auth/token                      {"user","password"} -> {"token","expiresAt"}
 *   GET    /v1/auth/whoami                     the caller, their roles and permissions
 *
 *   GET    /admin/v1/auth                      whether auth is on; users and roles
 *   POST   /admin/v1/auth/enable | /disable
 *   GET    /admin/v1/users                     POST {"name","password"?,"roles"?}
 *   GET    /admin/v1/users/:name               DELETE
 *   PUT    /admin/v1/users/:name/password      {"password"} (the user themself, or an admin)
 *   POST   /admin/v1/users/:name/grant         {"role"}
 *   POST   /admin/v1/users/:name/revoke        {"role"}
 *   POST   /admin/v1/users/:name/revoke-tokens every token of the user stops working
 *   GET    /admin/v1/roles                     POST {"name","admin"?,"monitor"?,"rateLimitPerSecond"?}
 *   GET    /admin/v1/roles/:name               DELETE
 *   POST   /admin/v1/roles/:name/grant         {"access": read|write|readwrite, "prefix"} or {"access": admin|monitor}
 *   POST   /admin/v1/roles/:name/revoke        the same
 *   POST   /admin/v1/tls/reload                read the certificate files again (as SIGHUP does)
 *
 * Changes go to the leader in single-leader mode (a follower answers KV_ERR_NOT_LEADER) and
 * count once a majority holds them. Every call is written to the audit log.
 */
import type { FastifyInstance, FastifyRequest, FastifySchema } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import type {
  AuthEnabledResponse,
  AuthRole,
  AuthStatus,
  AuthUser,
  DeletedResponse,
  PasswordChangedResponse,
  RoleInfo,
  RoleList,
  TlsReloadResponse,
  TokenResponse,
  TokensRevokedResponse,
  UserDetail,
  UserInfo,
  UserList,
  WhoAmI,
} from '@kvstore/protocol'
import type { AppContext } from '../context.js'
import {
  addRoleRequestSchema,
  addUserRequestSchema,
  authEnabledResponseSchema,
  authStatusSchema,
  deletedResponseSchema,
  grantRequestSchema,
  passwordChangedResponseSchema,
  roleInfoSchema,
  roleListSchema,
  tlsReloadResponseSchema,
  tokenRequestSchema,
  tokenResponseSchema,
  tokensRevokedResponseSchema,
  userDetailSchema,
  userInfoSchema,
  userListSchema,
  whoAmISchema,
} from '@kvstore/protocol'
import { jsonBody as jsonRequest, nameParams } from '../schemas/index.js'
import { methodNotAllowed } from '../errors.js'
import type { RouteSecurityConfig } from '../../security/http-auth.js'
import { verifyPassword } from '../../security/passwords.js'

type NameRequest = FastifyRequest<{ Params: { name: string } }>

const bodyBytesMax = 64 * 1024

/** A JSON object body with only the given fields. */
function jsonBody(request: FastifyRequest, fields: readonly string[]): Record<string, unknown> {
  const raw = request.body
  if (raw === undefined || (Buffer.isBuffer(raw) && raw.length === 0)) return {}
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.isBuffer(raw) ? raw.toString('utf8') : String(raw))
  } catch (err) {
    throw new KvError(
      'KV_ERR_MALFORMED_BODY',
      `the body is not valid JSON: ${(err as Error).message}`,
    )
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new KvError('KV_ERR_MALFORMED_BODY', 'the body must be a JSON object')
  for (const field of Object.keys(parsed)) {
    if (!fields.includes(field))
      throw new KvError(
        'KV_ERR_MALFORMED_BODY',
        `unknown field ${JSON.stringify(field)}; use ${fields.join(', ')}`,
      )
  }
  return parsed as Record<string, unknown>
}

function userView(user: AuthUser): UserInfo {
  return { name: user.name, roles: user.roles, password: user.passwordHash !== '' }
}

function roleView(role: AuthRole): RoleInfo {
  return {
    name: role.name,
    admin: role.admin,
    monitor: role.monitor,
    grants: role.grants,
    rateLimitPerSecond: role.rateLimitPerSecond,
  }
}

/** A hash that never matches, checked when the user is unknown, so timing tells nothing. */
const decoyHash = `scrypt$15$8$1$${Buffer.alloc(16).toString('base64url')}$${Buffer.alloc(32).toString('base64url')}`

export function registerAuthRoutes(app: FastifyInstance, ctx: AppContext): void {
  const { security, metrics } = ctx
  const { auth, admin, tokens } = security
  const cfg = (access: RouteSecurityConfig['access'], audit?: string): RouteSecurityConfig =>
    audit === undefined ? { access } : { access, audit }
  const opts = (
    access: RouteSecurityConfig['access'],
    audit: string | undefined,
    schema: FastifySchema,
  ) => ({
    bodyLimit: bodyBytesMax,
    config: cfg(access, audit),
    schema: { tags: ['auth'], ...schema },
  })
  const name = { params: nameParams('name', 'A user or role name') }

  app.post(
    '/v1/auth/token',
    opts('public', undefined, {
      summary: 'Log in with a user name and password: a bearer token',
      security: [],
      body: jsonRequest(tokenRequestSchema),
      response: { 200: tokenResponseSchema },
    }),
    async (request, reply) => {
      const body = jsonBody(request, ['user', 'password'])
      if (typeof body.user !== 'string' || typeof body.password !== 'string')
        throw new KvError('KV_ERR_MALFORMED_BODY', 'send {"user": "...", "password": "..."}')
      const settings = auth.settings
      const user = auth.user(body.user)
      const ok = await verifyPassword(
        body.password,
        user?.passwordHash || decoyHash,
        security.hashLimiter,
      )
      const audit = {
        user: body.user,
        via: 'password' as const,
        remote: request.remote,
        method: request.method,
        url: request.url,
      }
      if (!ok || user === null || user.passwordHash === '') {
        metrics.logins.inc({ method: 'password', result: 'failed' })
        security.audit.record(
          { ...audit, status: 401, code: 'KV_ERR_UNAUTHENTICATED' },
          'login failed',
        )
        throw new KvError('KV_ERR_UNAUTHENTICATED', 'wrong user name or password')
      }
      metrics.logins.inc({ method: 'password', result: 'ok' })
      if (settings === null || settings.tokenKey.length === 0) {
        security.audit.record({ ...audit, status: 200 }, 'login: auth is off')
        return {
          user: user.name,
          token: null,
          expiresAt: null,
          authEnabled: false,
        } satisfies TokenResponse
      }
      const issued = await tokens.issue(user, settings)
      security.audit.record({ ...audit, status: 200 }, 'login')
      void reply.header('cache-control', 'no-store')
      return {
        user: user.name,
        token: issued.token,
        expiresAt: new Date(issued.expiresAtMs).toISOString(),
        authEnabled: settings.enabled,
      } satisfies TokenResponse
    },
  )
  methodNotAllowed(app, '/v1/auth/token', ['POST'])

  app.get(
    '/v1/auth/whoami',
    opts('authenticated', undefined, {
      summary: 'Who the caller is, its roles and permissions',
      response: { 200: whoAmISchema },
    }),
    async (request) => {
      const principal = request.principal
      const user = principal ? auth.user(principal.user) : null
      const permissions = principal ? auth.permissions(principal.user) : null
      return {
        user: principal?.user ?? null,
        via: principal?.via ?? 'anonymous',
        roles: user?.roles ?? [],
        permissions,
        authEnabled: auth.enabled,
      } satisfies WhoAmI
    },
  )
  methodNotAllowed(app, '/v1/auth/whoami', ['GET'])

  app.get(
    '/admin/v1/auth',
    opts('admin', undefined, {
      summary: 'Whether auth is on, the users and the roles',
      response: { 200: authStatusSchema },
    }),
    async (): Promise<AuthStatus> => ({
      enabled: auth.enabled,
      users: auth.liveUsers().map(userView),
      roles: auth.liveRoles().map(roleView),
    }),
  )
  methodNotAllowed(app, '/admin/v1/auth', ['GET'])
  for (const [path, enabled] of [
    ['/admin/v1/auth/enable', true],
    ['/admin/v1/auth/disable', false],
  ] as const) {
    app.post(
      path,
      opts('admin', enabled ? 'auth.enable' : 'auth.disable', {
        summary: enabled ? 'Turn authentication on' : 'Turn authentication off',
        response: { 200: authEnabledResponseSchema },
      }),
      async () => {
        await admin.setEnabled(enabled)
        return { enabled: auth.enabled } satisfies AuthEnabledResponse
      },
    )
    methodNotAllowed(app, path, ['POST'])
  }

  app.get(
    '/admin/v1/users',
    opts('admin', undefined, { summary: 'The users', response: { 200: userListSchema } }),
    async (): Promise<UserList> => ({
      users: auth.liveUsers().map(userView),
    }),
  )
  app.post(
    '/admin/v1/users',
    opts('admin', 'user.add', {
      summary: 'Add a user',
      body: jsonRequest(addUserRequestSchema),
      response: { 201: userInfoSchema },
    }),
    async (request, reply) => {
      const body = jsonBody(request, ['name', 'password', 'roles'])
      const user = await admin.addUser(body.name, body.password, body.roles ?? [])
      void reply.code(201)
      return userView(user)
    },
  )
  methodNotAllowed(app, '/admin/v1/users', ['GET', 'POST'])

  app.get(
    '/admin/v1/users/:name',
    opts('admin', undefined, {
      summary: 'A user, with its permissions',
      ...name,
      response: { 200: userDetailSchema },
    }),
    async (request: NameRequest) => {
      const user = auth.user(request.params.name)
      if (user === null)
        throw new KvError(
          'KV_ERR_USER_NOT_FOUND',
          `user ${JSON.stringify(request.params.name)} does not exist`,
        )
      return { ...userView(user), permissions: auth.permissions(user.name) } satisfies UserDetail
    },
  )
  app.delete(
    '/admin/v1/users/:name',
    opts('admin', 'user.delete', {
      summary: 'Delete a user',
      ...name,
      response: { 200: deletedResponseSchema },
    }),
    async (request: NameRequest) => {
      await admin.deleteUser(request.params.name)
      return { deleted: request.params.name } satisfies DeletedResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/users/:name', ['GET', 'DELETE'])

  app.put(
    '/admin/v1/users/:name/password',
    opts('self-or-admin', 'user.passwd', {
      summary: "Set a user's password (the user itself or an admin)",
      ...name,
      body: jsonRequest({
        type: 'object',
        properties: { password: { type: 'string' } },
        required: ['password'],
        additionalProperties: false,
      }),
      response: { 200: passwordChangedResponseSchema },
    }),
    async (request: NameRequest) => {
      const body = jsonBody(request, ['password'])
      await admin.setPassword(request.params.name, body.password)
      return { user: request.params.name, changed: true } satisfies PasswordChangedResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/users/:name/password', ['PUT'])
  for (const action of ['grant', 'revoke'] as const) {
    const path = `/admin/v1/users/:name/${action}`
    app.post(
      path,
      opts('admin', `user.${action}`, {
        summary: action === 'grant' ? 'Give a user a role' : 'Take a role from a user',
        ...name,
        body: jsonRequest({
          type: 'object',
          properties: { role: { type: 'string' } },
          required: ['role'],
          additionalProperties: false,
        }),
        response: { 200: userInfoSchema },
      }),
      async (request: NameRequest) => {
        const body = jsonBody(request, ['role'])
        const user =
          action === 'grant'
            ? await admin.grantRole(request.params.name, body.role)
            : await admin.revokeRole(request.params.name, body.role)
        return userView(user)
      },
    )
    methodNotAllowed(app, path, ['POST'])
  }
  app.post(
    '/admin/v1/users/:name/revoke-tokens',
    opts('admin', 'user.revoke-tokens', {
      summary: 'Revoke every token a user holds',
      ...name,
      response: { 200: tokensRevokedResponseSchema },
    }),
    async (request: NameRequest) => {
      await admin.revokeTokens(request.params.name)
      return { user: request.params.name, tokensRevoked: true } satisfies TokensRevokedResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/users/:name/revoke-tokens', ['POST'])

  app.get(
    '/admin/v1/roles',
    opts('admin', undefined, { summary: 'The roles', response: { 200: roleListSchema } }),
    async (): Promise<RoleList> => ({
      roles: auth.liveRoles().map(roleView),
    }),
  )
  app.post(
    '/admin/v1/roles',
    opts('admin', 'role.add', {
      summary: 'Add a role',
      body: jsonRequest(addRoleRequestSchema),
      response: { 201: roleInfoSchema },
    }),
    async (request, reply) => {
      const body = jsonBody(request, ['name', 'admin', 'monitor', 'rateLimitPerSecond'])
      const role = await admin.addRole(body.name, body)
      void reply.code(201)
      return roleView(role)
    },
  )
  methodNotAllowed(app, '/admin/v1/roles', ['GET', 'POST'])
  app.get(
    '/admin/v1/roles/:name',
    opts('admin', undefined, { summary: 'A role', ...name, response: { 200: roleInfoSchema } }),
    async (request: NameRequest) => {
      const role = auth.role(request.params.name)
      if (role === null)
        throw new KvError(
          'KV_ERR_ROLE_NOT_FOUND',
          `role ${JSON.stringify(request.params.name)} does not exist`,
        )
      return roleView(role)
    },
  )
  app.delete(
    '/admin/v1/roles/:name',
    opts('admin', 'role.delete', {
      summary: 'Delete a role',
      ...name,
      response: { 200: deletedResponseSchema },
    }),
    async (request: NameRequest) => {
      await admin.deleteRole(request.params.name)
      return { deleted: request.params.name } satisfies DeletedResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/roles/:name', ['GET', 'DELETE'])
  for (const action of ['grant', 'revoke'] as const) {
    const path = `/admin/v1/roles/:name/${action}`
    app.post(
      path,
      opts('admin', `role.${action}`, {
        summary: action === 'grant' ? 'Grant a role access' : "Revoke a role's access",
        ...name,
        body: jsonRequest(grantRequestSchema),
        response: { 200: roleInfoSchema },
      }),
      async (request: NameRequest) => {
        const body = jsonBody(request, ['access', 'prefix'])
        const role =
          action === 'grant'
            ? await admin.grant(request.params.name, body.access, body.prefix)
            : await admin.revoke(request.params.name, body.access, body.prefix)
        return roleView(role)
      },
    )
    methodNotAllowed(app, path, ['POST'])
  }

  app.post(
    '/admin/v1/tls/reload',
    opts('admin', 'tls.reload', {
      summary: "Reload this node's certificate and key from disk",
      response: { 200: tlsReloadResponseSchema },
    }),
    async (): Promise<TlsReloadResponse> => {
      if (ctx.reloadTls === null)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'this node serves no TLS; there is nothing to reload',
        )
      return ctx.reloadTls()
    },
  )
  methodNotAllowed(app, '/admin/v1/tls/reload', ['POST'])
}
