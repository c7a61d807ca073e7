/**
 * Authentication and authorization of every client request, before its body is read.
 *
 * Each route declares what it needs in its config (`access`); a route that declares nothing is
 * admin-only, so a new endpoint can never be open by mistake. Then, in an `onRequest` hook that
 * each route gets when it is registered (and a request that matches no route, as admin-only):
 * 1. who is asking: a `Authorization: Bearer` token (checked tokens are cached), else a client
 *    certificate the cluster's CA signed that names a user (`kv://<cluster>/user/<name>`),
 *    else nobody;
 * 2. with auth on, nobody gets 401 KV_ERR_UNAUTHENTICATED on everything but public routes;
 * 3. the user's rate limit (a token bucket), then 429 KV_ERR_RATE_LIMITED;
 * 4. the permission the route needs, else 403 KV_ERR_PERMISSION_DENIED. A batch checks every
 *    op in its handler (`authorizeBatch`), before anything is written.
 * With auth off every request is allowed (as etcd does), and tokens are not needed.
 */
import type {
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  onRequestHookHandler,
  onResponseHookHandler,
} from 'fastify'
import type { TLSSocket } from 'node:tls'
import { KvError } from '@kvstore/protocol/errors'
import { certificateIdentity } from '@kvstore/protocol/identity'
import { mayList, mayRead, mayWrite, type Permissions } from '@kvstore/core'
import { tlsSocketOf } from '../http/dual-protocol.js'
import { withRouteHook } from '../http/route-hooks.js'
import { stopUnreadBody } from '../http/unread-body.js'
import type { AuditLog } from './audit.js'
import type { AuthStore } from './auth-store.js'
import type { TokenService } from './tokens.js'

/** What a route needs. */
export type RouteAccess =
  /** Anyone, even with auth on: liveness, readiness, logging in. */
  | 'public'
  /** Any user. */
  | 'authenticated'
  /** Read of the key in the URL. */
  | 'read-key'
  /** Put or delete of the key in the URL. */
  | 'write-key'
  /** Listing: read of the whole `prefix` query parameter. */
  | 'list'
  /** A batch: the handler checks every op. */
  | 'batch'
  /** /metrics, /v1/status, /v1/digest. */
  | 'monitor'
  | 'admin'
  /** The user named in the URL (`:name`), or an admin. */
  | 'self-or-admin'
  /**
   * Another shard group's member (slot moves): a client certificate naming a member of the
   * shard map's directory. Users, admins included, may not call it.
   */
  | 'shard-peer'
  /**
   * Another region's member (regions shipping their writes): a client certificate naming a
   * member of the regions file's other regions. Users, admins included, may not call it.
   */
  | 'region-peer'
  /**
   * A member of this cluster (queued writes forwarded to the leader): a client certificate
   * naming a member of the current configuration. Users, admins included, may not call it.
   */
  | 'cluster-peer'

export interface RouteSecurityConfig {
  access?: RouteAccess
  /** Logged to the audit log whatever the result (auth and admin calls). */
  audit?: string
}

export interface Principal {
  user: string
  /** `router`: a kv-router (its certificate) acting for `user` (`kv-on-behalf-of`). */
  via: 'token' | 'certificate' | 'router'
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The user this request acts as; null with no credential (auth off, or public routes). */
    principal: Principal | null
    /** The client's address, read when the request arrived (an HTTP/2 stream forgets it). */
    remote: string
    /** The member a `*-peer` route's caller is, by its certificate (null: none, or plaintext). */
    peerMember: string | null
  }
}

export interface HttpAuthOptions {
  auth: AuthStore
  tokens: TokenService
  audit: AuditLog
  clusterId: string
  /** Requests per second per user (or per address without a credential); 0 = no limit. */
  rateLimitPerSecond: number
  rateLimitBurst: number
  onDenied?: (code: string) => void
  /** Sharding: the members of every group of the shard map (who may call `shard-peer` routes). */
  shardPeers?: ReadonlySet<string>
  /** Regions: the members of the other regions (who may call `region-peer` routes). */
  regionPeers?: () => ReadonlySet<string>
  /** Single-leader mode: whether an id is a member of this cluster now (`cluster-peer` routes). */
  isClusterMember?: (id: string) => boolean
}

const certPrincipal = Symbol('kv.certPrincipal')
type CertTagged = { [certPrincipal]?: string | null }

/** Token buckets per user (or address), bounded: the least recently seen go first. */
class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; atMs: number }>()
  private static readonly bucketsMax = 100_000

  /** Seconds to wait before the next request is allowed; 0 when it is allowed now. */
  take(key: string, perSecond: number, burst: number): number {
    const now = performance.now()
    let bucket = this.buckets.get(key)
    if (bucket === undefined) {
      if (this.buckets.size >= RateLimiter.bucketsMax) {
        const oldest = this.buckets.keys().next().value
        if (oldest !== undefined) this.buckets.delete(oldest)
      }
      bucket = { tokens: burst, atMs: now }
    } else {
      this.buckets.delete(key) // re-inserted below: the map stays in recency order
      bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.atMs) / 1000) * perSecond)
      bucket.atMs = now
    }
    this.buckets.set(key, bucket)
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1
      return 0
    }
    return Math.max(1, Math.ceil((1 - bucket.tokens) / perSecond))
  }
}

function unauthenticated(message: string): KvError {
  return new KvError('KV_ERR_UNAUTHENTICATED', message)
}

export function denied(what: string): KvError {
  return new KvError('KV_ERR_PERMISSION_DENIED', `permission denied: ${what}`)
}

/** The principal's permissions; everything when auth is off. */
export function permissionsOf(auth: AuthStore, principal: Principal | null): Permissions | null {
  if (!auth.enabled) return null
  return principal === null ? null : auth.permissions(principal.user)
}

/** Refuses a batch with one op outside the caller's grants, whole. */
export function authorizeBatch(
  auth: AuthStore,
  request: FastifyRequest,
  keys: readonly { key: string; write: boolean }[],
): void {
  if (!auth.enabled) return
  const permissions = permissionsOf(auth, request.principal)
  if (permissions === null) throw unauthenticated('this request needs a credential')
  for (const [index, op] of keys.entries()) {
    if (op.write ? !mayWrite(permissions, op.key) : !mayRead(permissions, op.key)) {
      throw new KvError(
        'KV_ERR_PERMISSION_DENIED',
        `permission denied: ops[${index}] ${op.write ? 'writes' : 'reads'} ${JSON.stringify(op.key)}, outside the grants of ${request.principal?.user}; nothing was written`,
        { opIndex: index },
      )
    }
  }
}

/** Set on the options of every route that got the authentication hook (see `assertGuarded`). */
const guardedRoute = Symbol('kv.guardedRoute')

/**
 * Throws unless every route in `routes` (options objects as `onRoute` hooks see them) got the
 * authentication hook: a route registered before `registerHttpAuth` would have none, and be
 * open. The app checks this when it is ready, so such a build never serves a request.
 */
export function assertGuarded(routes: readonly object[]): void {
  const open = routes.filter((r) => (r as { [guardedRoute]?: true })[guardedRoute] !== true)
  if (open.length > 0) {
    const names = open.map((r) => {
      const route = r as { method?: string | string[]; url?: string }
      return `${String(route.method)} ${route.url}`
    })
    throw new Error(
      `routes registered before authentication have no check: ${names.join(', ')}; register them after registerHttpAuth`,
    )
  }
}

/**
 * Refuses to let `app` become ready while any route lacks the authentication hook. Call it
 * before any other onRoute hook and any route, so that it sees every route.
 */
export function guardEveryRoute(app: FastifyInstance): void {
  const routes: object[] = []
  app.addHook('onRoute', (route) => {
    routes.push(route)
  })
  app.addHook('onReady', (done) => {
    try {
      assertGuarded(routes)
      done()
    } catch (err) {
      done(err as Error)
    }
  })
}

export function registerHttpAuth(app: FastifyInstance, options: HttpAuthOptions): void {
  const { auth, tokens, audit, clusterId } = options
  const limiter = new RateLimiter()
  app.decorateRequest('principal', null)
  app.decorateRequest('remote', '')
  app.decorateRequest('peerMember', null)

  /** The user a verified client certificate names (cached on the connection). */
  const fromCertificate = (request: FastifyRequest): string | null => {
    const socket = tlsSocketOf(request.raw) as (TLSSocket & CertTagged) | null
    if (socket === null) return null
    let user = socket[certPrincipal]
    if (user === undefined) {
      user = socket.authorized
        ? certificateIdentity(socket.getPeerCertificate()?.subjectaltname, clusterId, 'user')
        : null
      socket[certPrincipal] = user
    }
    return user
  }

  const identify = (request: FastifyRequest): Principal | null | Promise<Principal | null> => {
    const header = request.headers.authorization
    if (header !== undefined) {
      const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
      if (match === null) throw unauthenticated('the Authorization header must be "Bearer <token>"')
      const token = match[1] as string
      const settings = auth.settings
      if (settings === null || !settings.enabled) return null
      const check = (claims: { user: string; userId: string; generation: number } | null) => {
        if (claims === null)
          throw unauthenticated(
            'the token is malformed, expired, or not from this cluster; log in again',
          )
        const user = auth.user(claims.user)
        if (user === null || user.id !== claims.userId)
          throw unauthenticated(`user ${claims.user} no longer exists; log in again`)
        if (user.generation !== claims.generation)
          throw unauthenticated(
            `the token of ${claims.user} was revoked (new password, new roles or revoked tokens); log in again`,
          )
        return { user: user.name, via: 'token' as const }
      }
      const cached = tokens.cached(token, settings)
      if (cached !== undefined) return check(cached)
      return tokens.verify(token, settings).then(check)
    }
    const user = fromCertificate(request)
    if (user !== null && auth.user(user) !== null) return { user, via: 'certificate' }
    const onBehalfOf = request.headers['kv-on-behalf-of']
    if (typeof onBehalfOf === 'string' && certificateOf(request, 'router') !== null) {
      // A router acts for the user it authenticated; that user's grants apply.
      if (auth.user(onBehalfOf) === null)
        throw unauthenticated(
          `kv-on-behalf-of names ${JSON.stringify(onBehalfOf)}, who is not a user`,
        )
      return { user: onBehalfOf, via: 'router' }
    }
    return null
  }

  /** The identity of `kind` that the connection's verified client certificate names. */
  const certificateOf = (request: FastifyRequest, kind: 'router' | 'member'): string | null => {
    const socket = tlsSocketOf(request.raw)
    if (socket === null || !socket.authorized) return null
    return certificateIdentity(socket.getPeerCertificate()?.subjectaltname, clusterId, kind)
  }

  /** Why a `shard-peer` or `region-peer` call is refused, or null. */
  const peerProblem = (request: FastifyRequest, access: RouteAccess): KvError | null => {
    const shard = access === 'shard-peer'
    if (tlsSocketOf(request.raw) === null) {
      // A plaintext client port: only a node with auth off (a development setup) lets it in.
      return auth.enabled
        ? unauthenticated(
            `${shard ? 'slot moves between groups' : 'shipping between regions'} needs TLS with member certificates`,
          )
        : null
    }
    const member = certificateOf(request, 'member')
    if (member === null)
      return unauthenticated(
        `only a member of another ${shard ? 'shard group' : 'region'} may call this (its member certificate)`,
      )
    if (
      shard
        ? options.shardPeers?.has(member) !== true
        : options.regionPeers?.().has(member) !== true
    )
      return denied(
        `member ${member} is not in the ${shard ? 'shard map' : "regions file's other regions"}`,
      )
    request.peerMember = member
    return null
  }

  /** Why a `cluster-peer` call is refused, or null. */
  const clusterPeerProblem = (request: FastifyRequest): KvError | null => {
    if (tlsSocketOf(request.raw) === null) {
      // A plaintext client port: only a node with auth off (a development setup) lets it in.
      return auth.enabled
        ? unauthenticated('calls between members need TLS with member certificates')
        : null
    }
    const member = certificateOf(request, 'member')
    if (member === null)
      return unauthenticated('only a member of this cluster may call this (its member certificate)')
    if (options.isClusterMember?.(member) !== true)
      return denied(`${member} is not a member of this cluster`)
    request.peerMember = member
    return null
  }

  const refuse = (request: FastifyRequest, reply: FastifyReply, err: KvError): void => {
    options.onDenied?.(err.code)
    audit.refusal({
      user: request.principal?.user ?? null,
      via: request.principal?.via ?? 'anonymous',
      remote: request.remote,
      method: request.method,
      url: request.url,
      status: err.status,
      code: err.code,
    })
    if (err.code === 'KV_ERR_RATE_LIMITED')
      void reply.header('retry-after', String(err.details.retryAfterSeconds ?? 1))
    if (err.code === 'KV_ERR_UNAUTHENTICATED')
      void reply.header('www-authenticate', 'Bearer realm="kvstore"')
    stopUnreadBody(request, reply)
    reply.send(err)
  }

  const authorize = (request: FastifyRequest, access: RouteAccess): KvError | null => {
    if (!auth.enabled) {
      // Nobody needs a credential; a configured limit then applies per address.
      if (options.rateLimitPerSecond > 0) {
        const wait = limiter.take(
          `ip:${request.ip}`,
          options.rateLimitPerSecond,
          options.rateLimitBurst,
        )
        if (wait > 0)
          return new KvError(
            'KV_ERR_RATE_LIMITED',
            `${request.ip} may make ${options.rateLimitPerSecond} requests a second on this node; retry in ${wait} s`,
            { retryAfterSeconds: wait },
          )
      }
      return null
    }
    const principal = request.principal
    if (principal === null) {
      return unauthenticated(
        'authentication is on: send "Authorization: Bearer <token>" (POST /v1/auth/token, or kv login) or a client certificate',
      )
    }
    const permissions = auth.permissions(principal.user)
    if (permissions === null) return unauthenticated(`user ${principal.user} no longer exists`)
    const limit = permissions.rateLimitPerSecond || options.rateLimitPerSecond
    if (limit > 0) {
      const burst =
        permissions.rateLimitPerSecond > 0
          ? Math.max(1, 2 * permissions.rateLimitPerSecond)
          : options.rateLimitBurst
      const wait = limiter.take(`u:${principal.user}`, limit, burst)
      if (wait > 0)
        return new KvError(
          'KV_ERR_RATE_LIMITED',
          `user ${principal.user} may make ${limit} requests a second on this node; retry in ${wait} s`,
          { retryAfterSeconds: wait },
        )
    }
    const user = principal.user
    switch (access) {
      case 'public':
      case 'authenticated':
      case 'batch':
        return null
      case 'shard-peer':
        return denied('only members of other shard groups may call this')
      case 'region-peer':
        return denied('only members of other regions may call this')
      case 'cluster-peer':
        return denied('only members of this cluster may call this')
      case 'read-key': {
        const key = (request.params as { '*'?: string })['*'] ?? ''
        return mayRead(permissions, key)
          ? null
          : denied(`${user} may not read ${JSON.stringify(key)}`)
      }
      case 'write-key': {
        const key = (request.params as { '*'?: string })['*'] ?? ''
        return mayWrite(permissions, key)
          ? null
          : denied(`${user} may not write ${JSON.stringify(key)}`)
      }
      case 'list': {
        const prefix = (request.query as { prefix?: unknown }).prefix
        const text = typeof prefix === 'string' ? prefix : ''
        return mayList(permissions, text)
          ? null
          : denied(
              `${user} may not list ${text === '' ? 'every key' : `prefix ${JSON.stringify(text)}`}: a list needs read on the whole prefix`,
            )
      }
      case 'monitor':
        return permissions.monitor ? null : denied(`${user} has no monitor or admin role`)
      case 'admin':
        return permissions.admin ? null : denied(`${user} has no admin role`)
      case 'self-or-admin': {
        const name = (request.params as { name?: string }).name
        return permissions.admin || name === user
          ? null
          : denied(`${user} may only change their own password`)
      }
    }
  }

  /** Lets the request on once its principal is known, or refuses it. */
  const admit = (
    request: FastifyRequest,
    reply: FastifyReply,
    done: () => void,
    access: RouteAccess,
    principal: Principal | null,
  ): void => {
    request.principal = principal
    if (access === 'public') {
      done()
      return
    }
    const problem = authorize(request, access)
    if (problem !== null) {
      refuse(request, reply, problem)
      return
    }
    done()
  }

  /** The onRequest hook of a route that needs `access`. */
  const checker =
    (access: RouteAccess): onRequestHookHandler =>
    (request, reply, done) => {
      request.remote = request.ip
      if (access === 'shard-peer' || access === 'region-peer' || access === 'cluster-peer') {
        const problem =
          access === 'cluster-peer' ? clusterPeerProblem(request) : peerProblem(request, access)
        if (problem !== null) refuse(request, reply, problem)
        else done()
        return
      }
      if (access === 'public' && request.headers.authorization === undefined) {
        done()
        return
      }
      let identified: Principal | null | Promise<Principal | null>
      try {
        identified = identify(request)
      } catch (err) {
        if (access === 'public') {
          done()
          return
        }
        refuse(request, reply, err as KvError)
        return
      }
      if (identified instanceof Promise) {
        identified.then(
          (principal) => admit(request, reply, done, access, principal),
          (err: unknown) => {
            if (access === 'public') done()
            else if (err instanceof KvError) refuse(request, reply, err)
            else reply.send(err)
          },
        )
      } else {
        admit(request, reply, done, access, identified)
      }
    }

  /** Auth and admin calls go to the audit log whatever their result. */
  const auditor =
    (action: string): onResponseHookHandler =>
    (request, reply, done) => {
      if (reply.statusCode !== 401 && reply.statusCode !== 403) {
        audit.record({
          user: request.principal?.user ?? null,
          via: request.principal?.via ?? 'anonymous',
          remote: request.remote,
          method: request.method,
          url: request.url,
          status: reply.statusCode,
          action,
        })
      }
      done()
    }

  // Each route gets its own check (and audit), with its access read from its config once.
  app.addHook('onRoute', (route) => {
    const config = route.config as RouteSecurityConfig | undefined
    route.onRequest = withRouteHook(route.onRequest, checker(config?.access ?? 'admin'))
    ;(route as { [guardedRoute]?: true })[guardedRoute] = true
    if (config?.audit !== undefined)
      route.onResponse = withRouteHook(route.onResponse, auditor(config.audit))
  })
  // A request that matches no route is checked as a route that declares nothing: admin only.
  const checkUnmatched = checker('admin')
  app.addHook('onRequest', (request, reply, done) => {
    if (request.is404) checkUnmatched.call(app, request, reply, done)
    else done()
  })
}
