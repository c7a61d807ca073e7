/**
 * Who may see the router's own endpoints (/v1/cluster, /v1/shards, /metrics). The router holds
 * no users or roles; the groups do. So it asks a group who the caller is (GET /v1/auth/whoami,
 * with the caller's token, or on behalf of the user its certificate names) and keeps the answer
 * for --auth-cache-ms, in a bounded map.
 */
import { createHash } from 'node:crypto'
import type { FastifyRequest } from 'fastify'
import { KvError, type WhoAmI } from '@kvstore/protocol'
import type { Caller, Proxy } from './proxy.js'

export type LocalAccess = 'authenticated' | 'monitor'

interface Entry {
  atMs: number
  who: WhoAmI | null
  error: KvError | null
}

export class AccessCheck {
  private readonly cache = new Map<string, Entry>()

  constructor(
    private readonly proxy: Proxy,
    private readonly caller: (request: FastifyRequest) => Caller,
    private readonly cacheMs: number,
    private readonly entriesMax: number,
  ) {}

  /** Null when the caller may; else the error to answer with. */
  async check(request: FastifyRequest, need: LocalAccess): Promise<KvError | null> {
    const caller = this.caller(request)
    const key =
      caller.authorization !== undefined
        ? `t:${createHash('sha256').update(caller.authorization).digest('base64url')}`
        : caller.certUser !== null
          ? `u:${caller.certUser}`
          : 'anonymous'
    const now = performance.now()
    let entry = this.cache.get(key)
    if (entry === undefined || now - entry.atMs > this.cacheMs) {
      entry = await this.ask(request, now)
      // Errors of the group itself (unreachable) are not kept: the next call asks again.
      if (entry.error === null || entry.error.code === 'KV_ERR_UNAUTHENTICATED') {
        this.cache.delete(key)
        if (this.cache.size >= this.entriesMax) {
          const oldest = this.cache.keys().next().value
          if (oldest !== undefined) this.cache.delete(oldest)
        }
        this.cache.set(key, entry)
      }
    }
    if (entry.error !== null) return entry.error
    const who = entry.who as WhoAmI
    if (!who.authEnabled) return null
    if (who.user === null)
      return new KvError('KV_ERR_UNAUTHENTICATED', 'authentication is on: send a credential')
    if (need === 'monitor' && !(who.permissions?.monitor || who.permissions?.admin))
      return new KvError(
        'KV_ERR_PERMISSION_DENIED',
        `permission denied: ${who.user} has no monitor or admin role`,
      )
    return null
  }

  private async ask(request: FastifyRequest, now: number): Promise<Entry> {
    const res = await this.proxy.askGroup(request, 0, '/v1/auth/whoami')
    if (res instanceof KvError) return { atMs: now, who: null, error: res }
    if (res.status === 401)
      return {
        atMs: now,
        who: null,
        error: new KvError('KV_ERR_UNAUTHENTICATED', 'the credential was refused by the cluster'),
      }
    if (res.status !== 200)
      return {
        atMs: now,
        who: null,
        error: new KvError(
          'KV_ERR_PERMISSION_DENIED',
          `the cluster did not say who the caller is (HTTP ${res.status})`,
        ),
      }
    try {
      return { atMs: now, who: JSON.parse(res.body.toString('utf8')) as WhoAmI, error: null }
    } catch {
      return {
        atMs: now,
        who: null,
        error: new KvError(
          'KV_ERR_INTERNAL',
          'the cluster answered whoami with something else than JSON',
        ),
      }
    }
  }
}
