/**
 * Forwarding: which group and member a request goes to, what it carries there, how it is
 * retried, and what goes back to the client.
 *
 * - Writes go to the leader of the key's group. A NOT_LEADER answer's hint is followed at once;
 *   an unreachable leader, an election (no leader, STALE_EPOCH, NOT_READY, SHUTTING_DOWN) is
 *   waited out for up to --retry-for-ms, probing the group for its new leader. Every attempt
 *   carries the same kv-request-id (one is made for a write that has none), so a write whose
 *   answer was lost is applied once.
 * - Reads go round-robin to the group's read pool (healthy followers, and the leader with
 *   --read-from-leader). A follower that fails, or is behind the session, hands the read to the
 *   leader. `consistency=linearizable` goes to the leader.
 * - KV_ERR_WRONG_SHARD refreshes the shard map and goes to the owner it names (at most
 *   --wrong-shard-retries-max times); KV_ERR_SLOT_MOVING is retried after short pauses for up
 *   to --slot-moving-retry-ms.
 *
 * Bodies pass through as bytes both ways; only a batch's keys are read (to find its group) when
 * there are several groups, and only a listing across groups is re-encoded (it is merged).
 */
import { randomUUID } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Logger } from 'pino'
import type { Dispatcher } from 'undici'
import {
  KvError,
  encodeRouterSession,
  encodeSession,
  isErrorCode,
  parseClientSession,
  parseSlotRanges,
  slotOfKey,
  type ClientSession,
  type ErrorCode,
  type ErrorDetails,
  type ListItem,
  type RouterSession,
  type SessionPosition,
} from '@kvstore/protocol'
import type { RouterConfig } from './config.js'
import type { GroupState, Member } from './groups.js'
import { encodeListCursor, mergeListPages, type GroupPage } from './list-merge.js'
import type { RouterMetrics } from './metrics.js'
import type { RegionRouting } from './regions.js'
import { advanceRouterSession, laterPosition, positionOfNodeToken } from './session.js'
import type { ShardMapCache } from './shard-map.js'
import { UpstreamError, type UpstreamResponse } from './upstream.js'

/** Who is calling, as the router's port saw it. */
export interface Caller {
  /** The user a verified client certificate names in this cluster, or null. */
  certUser: string | null
  /** The Authorization header as sent, or undefined. */
  authorization: string | undefined
}

/** What the forwarding needs of the running router. */
export interface ProxyCore {
  readonly config: RouterConfig
  readonly cache: ShardMapCache
  /** In the directory's (and the map's) group order. */
  readonly groups: GroupState[]
  readonly metrics: RouterMetrics
  readonly logger: Logger
  /** Several groups: the router gives out its own session tokens (r1.). */
  readonly routerTokens: boolean
  /** Regions mode: each key's home region (the groups are the regions); else null. */
  readonly regions: RegionRouting | null
  /** Refreshes the shard map from the groups now (one refresh at a time). */
  refreshMap(trigger: 'wrong_shard' | 'session'): Promise<void>
  caller(request: FastifyRequest): Caller
}

/**
 * `admin`: a shard admin call, sent to the leader like a write and following NOT_LEADER and
 * WRONG_SHARD (refusals: nothing was done), but not sent again once it may have reached a node.
 */
type PlanKind = 'read' | 'linearizable' | 'write' | 'admin'

interface Plan {
  kind: PlanKind
  method: Dispatcher.HttpMethod
  path: string
  headers: Record<string, string | string[]>
  body: Buffer | null
  group: GroupState
  /** The key's slot, to find its group again after a WRONG_SHARD; -1 when none. */
  slot: number
  /** The client's session (for reads), to forward each group's position. */
  session: ClientSession | null
  /** Label of the upstream latency metric. */
  metricKind: string
}

interface Answer {
  res: UpstreamResponse
  member: Member
  group: GroupState
}

/** Request headers passed to the nodes unchanged. kv-session is rewritten; others dropped. */
const passHeaders = [
  'authorization',
  'content-type',
  'if-match',
  'if-none-match',
  'kv-ack',
  'kv-request-id',
  'kv-read-wait-ms',
  'accept',
] as const

/** Answer headers not passed back: hop-by-hop, recomputed, or naming a node. */
const dropResponseHeaders = new Set([
  'connection',
  'keep-alive',
  'transfer-encoding',
  'content-length',
  'date',
  'kv-leader',
  'upgrade',
  'proxy-connection',
  'te',
  'trailer',
])

/** Statuses whose body may hold a code the router acts on. */
const actionableStatuses = new Set([404, 409, 421, 503])

const sessionField = Buffer.from('"session":"', 'utf8')

function pause(attempt: number): Promise<void> {
  const ms = Math.min(200, 25 * 2 ** Math.min(attempt, 8)) * (0.5 + Math.random() / 2)
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** The code and details of a node's error body, or null when it has none. */
function errorOf(res: UpstreamResponse): { code: ErrorCode; details: ErrorDetails } | null {
  let parsed: unknown
  try {
    parsed = JSON.parse(res.body.toString('utf8'))
  } catch {
    return null
  }
  const error = (parsed as { error?: ErrorDetails } | null)?.error
  if (error === undefined || error === null || typeof error !== 'object') return null
  return isErrorCode(error.code) ? { code: error.code, details: error } : null
}

function header(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name]
  return Array.isArray(value) ? value[0] : value
}

/** Has the client gone (its connection or stream closed)? */
function clientGone(request: FastifyRequest): boolean {
  const raw = request.raw as {
    stream?: { destroyed: boolean }
    socket?: { destroyed: boolean } | null
  }
  return raw.stream !== undefined ? raw.stream.destroyed : raw.socket?.destroyed === true
}

/** The URL without its `session` query parameter (a router token goes as a header instead). */
export function withoutSessionParam(url: string): string {
  const q = url.indexOf('?')
  if (q === -1 || !url.includes('session=', q)) return url
  const kept = url
    .slice(q + 1)
    .split('&')
    .filter((p) => !p.startsWith('session=') && p !== 'session')
  return kept.length === 0 ? url.slice(0, q) : `${url.slice(0, q)}?${kept.join('&')}`
}

/** A depth and size check before JSON.parse of a batch (as the node does before its own). */
function batchKeys(body: Buffer | undefined, opsMax: number): string[] | null {
  if (body === undefined || body.length === 0) return null
  let depth = 0
  let inString = false
  let commas = 0
  for (let i = 0; i < body.length; i++) {
    const c = body[i] as number
    if (inString) {
      if (c === 0x5c) i++
      else if (c === 0x22) inString = false
      continue
    }
    if (c === 0x22) inString = true
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > 3) return null
    } else if (c === 0x7d || c === 0x5d) depth--
    else if (c === 0x2c && ++commas > (opsMax + 1) * 8) return null
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(body.toString('utf8'))
  } catch {
    return null
  }
  const ops = (parsed as { ops?: unknown } | null)?.ops
  if (!Array.isArray(ops)) return null
  const keys: string[] = []
  for (const op of ops) {
    const key = (op as { key?: unknown } | null)?.key
    if (typeof key !== 'string') return null
    keys.push(key)
  }
  return keys
}

export class Proxy {
  constructor(private readonly core: ProxyCore) {}

  private routerError(
    reply: FastifyReply,
    code: ErrorCode,
    message: string,
    details: ErrorDetails = {},
  ): FastifyReply {
    const err = new KvError(code, message, details)
    this.core.metrics.errors.inc([code])
    if (err.status === 503 || err.status === 429) void reply.header('retry-after', '1')
    return reply.code(err.status).type('application/json; charset=utf-8').send(err.toBody())
  }

  /** The client's session token (header or `session` query parameter), parsed. */
  private sessionOf(request: FastifyRequest): ClientSession | null {
    const query = request.query as Record<string, unknown>
    const raw =
      (typeof query.session === 'string' ? query.session : undefined) ??
      header(request, 'kv-session')
    if (raw === undefined || raw === '') return null
    const session = parseClientSession(raw)
    if (session.kind === 'node' && this.core.routerTokens)
      throw new KvError(
        'KV_ERR_INVALID_SESSION',
        `this router fronts several ${this.core.regions !== null ? 'regions' : 'groups'}: send the router's own session token (r1.…, from its kv-session header), not a node's`,
      )
    return session
  }

  /** Refreshes the map first when the client's token has seen a newer one. */
  private async catchUpMap(session: ClientSession | null): Promise<void> {
    if (session?.kind !== 'router') return
    if (session.session.mapVersion > this.core.cache.version) await this.core.refreshMap('session')
  }

  /** The position a read in `group` of a key in `slot` must see, if any. */
  private requiredPosition(
    session: ClientSession | null,
    group: GroupState,
    slot: number,
  ): SessionPosition | undefined {
    let position: SessionPosition | undefined
    if (session?.kind === 'node') position = session.position
    else if (session?.kind === 'router') position = session.session.groups.get(group.id)
    // Writes made to a slot before it moved are in its new group from sinceLsn on.
    if (slot >= 0) {
      const since = this.core.cache.table.sinceLsn[slot] as number
      if (since > 0) position = laterPosition(position, { epoch: 0, lsn: since })
    }
    return position
  }

  /** Headers for the node: the client's own that matter, and who the caller is. */
  forwardHeaders(request: FastifyRequest): Record<string, string | string[]> {
    const out: Record<string, string | string[]> = {}
    const src = request.headers
    for (const name of passHeaders) {
      const value = src[name]
      if (value !== undefined) out[name] = value
    }
    // A client's own kv-on-behalf-of is never passed on (it is not in passHeaders): only the
    // router says whom it acts for, and only for a caller its port authenticated.
    if (out.authorization === undefined) {
      const caller = this.core.caller(request)
      if (caller.certUser !== null) out['kv-on-behalf-of'] = caller.certUser
    }
    return out
  }

  private groupOfSlot(slot: number): GroupState {
    const table = this.core.cache.table
    return this.core.groups[table.owner[slot < 0 ? 0 : slot] as number] as GroupState
  }

  /** The group of a region (in regions mode the directory's groups are the regions). */
  private groupOfRegion(region: string): GroupState {
    const group = this.core.groups.find((g) => g.id === region)
    if (group === undefined) throw new Error(`region ${region} is not in the router's directory`)
    return group
  }

  /**
   * Where a key goes: in regions mode its home region's group (no slot); else its slot's
   * owner (slot -1 when one group owns them all).
   */
  private routeKey(key: string): { group: GroupState; slot: number } {
    const regions = this.core.regions
    if (regions !== null) return { group: this.groupOfRegion(regions.regionOfKey(key)), slot: -1 }
    const slot = this.core.cache.table.single ? -1 : slotOfKey(key)
    return { group: this.groupOfSlot(slot), slot }
  }

  /** Sends `plan` until it gets an answer to pass on, or its retries run out. */
  private async run(plan: Plan, request: FastifyRequest): Promise<Answer | KvError> {
    const { config, metrics } = this.core
    const started = performance.now()
    const within = () => performance.now() - started < config.retryForMs && !clientGone(request)
    let attempt = 0
    let notLeaderHops = 0
    let wrongShards = 0
    let movingSince = -1
    let followerFailed = false
    let last: KvError | null = null
    let candidate = 0
    for (; ; attempt++) {
      const group = plan.group
      let member: Member | null
      if (plan.kind === 'read') {
        member = followerFailed ? (group.leader ?? group.pickReader()) : group.pickReader()
      } else {
        if (group.leader === null) await group.probe(50)
        member = group.leader
        if (member === null) {
          // No leader known: ask the members in turn; a follower names the leader.
          const candidates = group.writeCandidates()
          member = candidates[candidate++ % candidates.length] ?? null
        }
      }
      if (member === null) {
        last = new KvError(
          'KV_ERR_GROUP_UNAVAILABLE',
          `no member of group ${group.id} is reachable`,
          {
            group: group.id,
          },
        )
        if (!within()) return last
        void group.probe(50)
        await pause(attempt)
        continue
      }
      const headers = plan.headers
      let sessionSent = false
      if (plan.kind === 'read' || plan.kind === 'linearizable') {
        const required = this.requiredPosition(plan.session, group, plan.slot)
        if (required !== undefined) {
          headers['kv-session'] =
            plan.session?.kind === 'node' && plan.session.position === required
              ? plan.session.token
              : encodeSession(required)
          sessionSent = true
        } else delete headers['kv-session']
      }
      const toFollower = plan.kind === 'read' && member !== group.leader
      if (toFollower && sessionSent) {
        // A follower waits for the session at most --max-lag-ms: it is timed out soon after.
        const asked = Number(headers['kv-read-wait-ms'])
        if (!(asked >= 0 && asked <= config.maxLagMs))
          headers['kv-read-wait-ms'] = String(config.maxLagMs)
      }
      const timeoutMs = toFollower
        ? config.followerReadTimeoutMs + (sessionSent ? config.maxLagMs : 0)
        : config.upstreamTimeoutMs
      const t0 = performance.now()
      let res: UpstreamResponse
      try {
        res = await member.upstream.request(plan.method, plan.path, headers, plan.body, timeoutMs)
      } catch (err) {
        if (!(err instanceof UpstreamError)) throw err
        metrics.upstreamFailures.inc([group.id, member.id, err.reason])
        if (err.reason === 'too_large')
          return new KvError(
            'KV_ERR_INTERNAL',
            `the answer of ${member.id} is too large to pass on`,
          )
        group.requestFailed(member, err.message)
        last = new KvError(
          'KV_ERR_GROUP_UNAVAILABLE',
          `no member of group ${group.id} answered (last: ${member.id}: ${err.reason})`,
          { group: group.id },
        )
        if (!within() || plan.kind === 'admin') return last
        metrics.retries.inc([toFollower ? 'follower_failed' : 'unreachable'])
        if (toFollower) followerFailed = true
        else {
          void group.probe(50)
          await pause(attempt)
        }
        continue
      }
      metrics.observeUpstream(group.id, plan.metricKind, (performance.now() - t0) / 1000)
      if (actionableStatuses.has(res.status)) {
        const error = errorOf(res)
        switch (error?.code) {
          case 'KV_ERR_NOT_LEADER': {
            last = new KvError(
              'KV_ERR_GROUP_UNAVAILABLE',
              `group ${group.id} has no leader that takes writes now`,
              { group: group.id },
            )
            if (!within()) return last
            metrics.retries.inc(['not_leader'])
            const hinted = group.leaderHint(
              error.details.leaderUrl ?? error.details.leaderId,
              error.details.epoch,
            )
            if (hinted !== null && hinted !== member && notLeaderHops++ < 3) continue
            if (group.leader === member) group.leader = null
            void group.probe(50)
            await pause(attempt)
            continue
          }
          case 'KV_ERR_NOT_READY':
          case 'KV_ERR_SHUTTING_DOWN':
          case 'KV_ERR_NOT_A_MEMBER':
          case 'KV_ERR_STALE_EPOCH': {
            if (error.code === 'KV_ERR_STALE_EPOCH' && plan.kind !== 'write') break
            if (error.code === 'KV_ERR_NOT_A_MEMBER' && res.status !== 404) break
            if (error.code !== 'KV_ERR_STALE_EPOCH') group.requestFailed(member, error.code)
            else if (group.leader === member) group.leader = null
            last = new KvError(
              'KV_ERR_GROUP_UNAVAILABLE',
              `group ${group.id} cannot serve this now (last: ${member.id}: ${error.code})`,
              { group: group.id },
            )
            if (!within())
              return error.code === 'KV_ERR_STALE_EPOCH' ? { res, member, group } : last
            metrics.retries.inc(['election'])
            if (toFollower) followerFailed = true
            else {
              void group.probe(50)
              await pause(attempt)
            }
            continue
          }
          case 'KV_ERR_REPLICA_BEHIND': {
            if (!toFollower || !within()) break
            metrics.retries.inc(['replica_behind'])
            followerFailed = true
            continue
          }
          case 'KV_ERR_WRONG_SHARD': {
            if (plan.slot < 0 || wrongShards++ >= config.wrongShardRetriesMax) break
            metrics.retries.inc(['wrong_shard'])
            await this.core.refreshMap('wrong_shard')
            let next = this.groupOfSlot(plan.slot)
            if (next === group) {
              // The map did not move (a group did not answer): follow the node's word.
              const named = this.core.groups.find((g) => g.id === error.details.group)
              if (named !== undefined) next = named
            }
            plan.group = next
            followerFailed = false
            continue
          }
          case 'KV_ERR_SLOT_MOVING': {
            if (plan.kind === 'read' || plan.kind === 'admin') break
            const now = performance.now()
            if (movingSince < 0) movingSince = now
            const left = config.slotMovingRetryMs - (now - movingSince)
            if (left <= 0 || clientGone(request)) break
            metrics.retries.inc(['slot_moving'])
            const retryAfterS = Number(res.headers['retry-after'] ?? 0)
            const waitMs = Math.min(
              left,
              Math.max(10, Math.min(retryAfterS > 0 ? retryAfterS * 1000 : 50, 25 * 2 ** attempt)),
            )
            await sleep(waitMs)
            continue
          }
          default:
            break
        }
      }
      if (member.health.failuresInARow > 0) group.requestSucceeded(member)
      if (toFollower) {
        const lag = res.headers['kv-lag-ms']
        if (typeof lag === 'string' && lag.length > 0) {
          const lagMs = Number(lag)
          if (lagMs > config.maxLagMs) group.lagReported(member, lagMs)
        }
      }
      return { res, member, group }
    }
  }

  /** Sends an answer from a node back to the client. */
  private answer(
    request: FastifyRequest,
    reply: FastifyReply,
    outcome: Answer,
    session: ClientSession | null,
  ): FastifyReply {
    const { res, member, group } = outcome
    ;(request as { kvGroup?: string }).kvGroup = group.id
    void reply.code(res.status)
    const headers = res.headers
    for (const name in headers) {
      if (dropResponseHeaders.has(name)) continue
      const value = headers[name]
      if (value !== undefined) void reply.header(name, value)
    }
    if (request.method === 'HEAD' && headers['content-length'] !== undefined)
      void reply.header('content-length', headers['content-length'])
    void reply.header('kv-served-by', member.id).header('kv-group', group.id)
    if (this.core.regions !== null) void reply.header('kv-region', group.id)
    let body = res.body
    if (this.core.routerTokens) {
      const nodeToken = headers['kv-session']
      const position = positionOfNodeToken(typeof nodeToken === 'string' ? nodeToken : undefined)
      if (position !== undefined) {
        const base: RouterSession | null = session?.kind === 'router' ? session.session : null
        const token = encodeRouterSession(
          advanceRouterSession(base, this.core.cache.version, group.id, position),
        )
        void reply.header('kv-session', token)
        // A write's body repeats its token (`"session":"s1..."`): the router's goes there too.
        if (res.status < 300) body = replaceSessionField(body, token)
      }
    }
    return reply.send(body)
  }

  private fail(reply: FastifyReply, err: KvError): FastifyReply {
    return this.routerError(reply, err.code, err.message, err.details)
  }

  // ---------------------------------------------------------------- routes

  /** GET and HEAD /v1/kv/<key>. */
  async readKey(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const session = this.sessionOf(request)
    await this.catchUpMap(session)
    const key = (request.params as { '*': string })['*']
    const { group, slot } = this.routeKey(key)
    const consistency = (request.query as { consistency?: unknown }).consistency
    const linearizable = consistency === 'linearizable'
    const plan: Plan = {
      kind: linearizable ? 'linearizable' : 'read',
      method: request.method as Dispatcher.HttpMethod,
      path: session?.kind === 'router' ? withoutSessionParam(request.url) : request.url,
      headers: this.forwardHeaders(request),
      body: null,
      group,
      slot,
      session,
      metricKind: linearizable ? 'linearizable' : 'read',
    }
    const outcome = await this.run(plan, request)
    if (outcome instanceof KvError) return this.fail(reply, outcome)
    return this.answer(request, reply, outcome, session)
  }

  /** PUT and DELETE /v1/kv/<key>. */
  async writeKey(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const session = this.core.routerTokens ? this.sessionOfWrite(request) : null
    await this.catchUpMap(session)
    const key = (request.params as { '*': string })['*']
    const { group, slot } = this.routeKey(key)
    const headers = this.forwardHeaders(request)
    headers['kv-request-id'] ??= randomUUID()
    const plan: Plan = {
      kind: 'write',
      method: request.method as Dispatcher.HttpMethod,
      path: request.url,
      headers,
      body: (request.body as Buffer | undefined) ?? null,
      group,
      slot,
      session: null,
      metricKind: 'write',
    }
    const outcome = await this.run(plan, request)
    if (outcome instanceof KvError) return this.fail(reply, outcome)
    return this.answer(request, reply, outcome, session)
  }

  /** A write may carry the client's router token, to answer with it advanced; never refused. */
  private sessionOfWrite(request: FastifyRequest): ClientSession | null {
    try {
      const session = this.sessionOf(request)
      return session?.kind === 'router' ? session : null
    } catch {
      return null
    }
  }

  /**
   * POST /v1/batch: every key's slot must belong to one group; in regions mode every key's home
   * must be one region.
   */
  async batch(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const session = this.core.routerTokens ? this.sessionOfWrite(request) : null
    await this.catchUpMap(session)
    const body = request.body as Buffer | undefined
    const table = this.core.cache.table
    const regions = this.core.regions
    let slot = -1
    let group: GroupState | null = null
    if (regions !== null) {
      // Keys the router cannot read go to the home region, whose node explains what is wrong.
      const homes = regions.regionsOfKeys(batchKeys(body, 100_000) ?? [])
      if (homes.regions.length > 1)
        return this.routerError(
          reply,
          'KV_ERR_CROSS_REGION',
          `the batch names keys of different home regions (${homes.regions.join(', ')}: ${homes.keys.map((k) => JSON.stringify(k)).join(', ')}); a batch is applied by one region's leader: split it per region, or give related keys one prefix (--home-region-prefix)`,
          { regions: homes.regions, keys: homes.keys },
        )
      group = this.groupOfRegion(homes.regions[0] ?? regions.home)
    } else if (!table.single) {
      // Keys the router cannot read go to any group, whose node explains what is wrong.
      const keys = batchKeys(body, 100_000) ?? []
      const bySlotGroup = new Map<number, string>()
      for (const key of keys) {
        const s = slotOfKey(key)
        if (slot < 0) slot = s
        if (!bySlotGroup.has(s))
          bySlotGroup.set(s, (this.core.groups[table.owner[s] as number] as GroupState).id)
      }
      const groups = [...new Set(bySlotGroup.values())].sort()
      if (groups.length > 1) {
        const slots = [...bySlotGroup.keys()].sort((a, b) => a - b)
        return this.routerError(
          reply,
          'KV_ERR_CROSS_SHARD',
          `the batch names keys of slots owned by different groups (${groups.join(', ')}); there are no cross-shard transactions: put related keys in one slot with a hash tag ({user42}/a, {user42}/b)`,
          { slots, groups },
        )
      }
    }
    const headers = this.forwardHeaders(request)
    headers['kv-request-id'] ??= randomUUID()
    const plan: Plan = {
      kind: 'write',
      method: 'POST',
      path: request.url,
      headers,
      body: body ?? null,
      group: group ?? this.groupOfSlot(slot),
      slot,
      session: null,
      metricKind: 'batch',
    }
    const outcome = await this.run(plan, request)
    if (outcome instanceof KvError) return this.fail(reply, outcome)
    return this.answer(request, reply, outcome, session)
  }

  /** GET /v1/kv?prefix=...: one group's page as it is, or every group's merged. */
  async list(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const session = this.sessionOf(request)
    await this.catchUpMap(session)
    const table = this.core.cache.table
    const owning = new Set<number>()
    if (this.core.regions !== null) {
      // Regions mode: the home region of the prefix, as for a key with that prefix. Every
      // region holds every key once shipped; that one has its own writes first.
      const prefix = (request.query as Record<string, unknown>).prefix
      owning.add(this.routeKey(typeof prefix === 'string' ? prefix : '').group.index)
    } else
      for (let s = 0; s < table.owner.length && owning.size < this.core.groups.length; s++)
        owning.add(table.owner[s] as number)
    const path = session?.kind === 'router' ? withoutSessionParam(request.url) : request.url
    const headers = this.forwardHeaders(request)
    if (owning.size === 1) {
      const [only] = owning
      const outcome = await this.run(
        {
          kind: 'read',
          method: 'GET',
          path,
          headers,
          body: null,
          group: this.core.groups[only as number] as GroupState,
          slot: -1,
          session,
          metricKind: 'list',
        },
        request,
      )
      if (outcome instanceof KvError) return this.fail(reply, outcome)
      return this.answer(request, reply, outcome, session)
    }
    const query = request.query as Record<string, unknown>
    const config = this.core.config
    let limit = config.listLimitDefault
    if (query.limit !== undefined) {
      const text = String(query.limit)
      const parsed = /^[0-9]{1,9}$/.test(text) ? Number(text) : NaN
      if (!(parsed >= 1 && parsed <= config.listLimitMax))
        return this.routerError(
          reply,
          'KV_ERR_INVALID_ARGUMENT',
          `limit must be a whole number from 1 to ${config.listLimitMax}; got ${JSON.stringify(query.limit)}`,
        )
      limit = parsed
    }
    const prefix = typeof query.prefix === 'string' ? query.prefix : ''
    const groups = [...owning].map((i) => this.core.groups[i] as GroupState)
    const outcomes = await Promise.all(
      groups.map((group) =>
        this.run(
          {
            kind: 'read',
            method: 'GET',
            path,
            headers: { ...headers },
            body: null,
            group,
            slot: -1,
            session,
            metricKind: 'list',
          },
          request,
        ),
      ),
    )
    const pages: GroupPage[] = []
    let routerSession: RouterSession | null = session?.kind === 'router' ? session.session : null
    for (const outcome of outcomes) {
      if (outcome instanceof KvError) return this.fail(reply, outcome)
      if (outcome.res.status !== 200) return this.answer(request, reply, outcome, session)
      let page: { items: ListItem[]; nextCursor: string | null }
      try {
        page = JSON.parse(outcome.res.body.toString('utf8')) as typeof page
      } catch {
        return this.routerError(
          reply,
          'KV_ERR_INTERNAL',
          `group ${outcome.group.id} answered a listing that is not JSON`,
        )
      }
      pages.push({ items: page.items, more: page.nextCursor !== null })
      const nodeToken = outcome.res.headers['kv-session']
      routerSession = advanceRouterSession(
        routerSession,
        this.core.cache.version,
        outcome.group.id,
        positionOfNodeToken(typeof nodeToken === 'string' ? nodeToken : undefined),
      )
    }
    const merged = mergeListPages(pages, limit)
    ;(request as { kvGroup?: string }).kvGroup = '*'
    void reply
      .header('kv-served-by', outcomes.map((o) => (o as Answer).member.id).join(','))
      .header('kv-group', groups.map((g) => g.id).join(','))
    if (routerSession !== null) void reply.header('kv-session', encodeRouterSession(routerSession))
    return reply.type('application/json; charset=utf-8').send(
      JSON.stringify({
        items: merged.items,
        nextCursor: merged.after === null ? null : encodeListCursor(merged.after, prefix),
        // Each group has its own log: no one LSN describes a page of several.
        appliedLsn: 0,
      }),
    )
  }

  /** Auth calls (log in, who am I): any member of the first group (one auth store for all). */
  async anyMember(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const outcome = await this.run(
      {
        kind: 'read',
        method: request.method as Dispatcher.HttpMethod,
        path: request.url,
        headers: this.forwardHeaders(request),
        body: (request.body as Buffer | undefined) ?? null,
        group: this.core.groups[0] as GroupState,
        slot: -1,
        session: null,
        metricKind: 'auth',
      },
      request,
    )
    if (outcome instanceof KvError) return this.fail(reply, outcome)
    return this.answer(request, reply, outcome, null)
  }

  /**
   * GET /ui/v1/state?group=ID: the dashboard's state from a member of that group (the first
   * group without one), as the caller: the node checks the monitor role.
   */
  async uiState(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const group = this.groupOfQuery(request)
    if (group instanceof KvError) return this.fail(reply, group)
    const outcome = await this.run(
      {
        kind: 'read',
        method: 'GET',
        path: '/ui/v1/state',
        headers: this.forwardHeaders(request),
        body: null,
        group,
        slot: -1,
        session: null,
        metricKind: 'dashboard',
      },
      request,
    )
    if (outcome instanceof KvError) return this.fail(reply, outcome)
    return this.answer(request, reply, outcome, null)
  }

  /** The group a dashboard request names (?group=ID), the first one when it names none. */
  groupOfQuery(request: FastifyRequest): GroupState | KvError {
    const named = (request.query as { group?: unknown }).group
    const groups = this.core.groups
    if (named === undefined) return groups[0] as GroupState
    const group = typeof named === 'string' ? groups.find((g) => g.id === named) : undefined
    return (
      group ??
      new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `group ${JSON.stringify(named)} is not behind this router (groups: ${groups.map((g) => g.id).join(', ')})`,
        { groups: groups.map((g) => g.id) },
      )
    )
  }

  /** Slot moves mean nothing to a router in regions mode: refused before any node sees them. */
  private refuseInRegionsMode(reply: FastifyReply): FastifyReply | null {
    if (this.core.regions === null) return null
    return this.routerError(
      reply,
      'KV_ERR_UNSUPPORTED_IN_MODE',
      'this router routes keys to regions (--regions), not to shard groups: it has no slots to move',
    )
  }

  /**
   * GET /v1/regions: the home region's view (its id, the others, shipping lag, conflicts), from
   * its leader, which alone knows what it ships. Without --regions: the first group's answer.
   */
  async regionsView(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const outcome = await this.run(
      {
        kind: 'linearizable',
        method: request.method as Dispatcher.HttpMethod,
        path: request.url,
        headers: this.forwardHeaders(request),
        body: null,
        group: this.core.groups[0] as GroupState,
        slot: -1,
        session: null,
        metricKind: 'regions',
      },
      request,
    )
    if (outcome instanceof KvError) return this.fail(reply, outcome)
    return this.answer(request, reply, outcome, null)
  }

  /** POST /admin/v1/shards/moves {slots, to}: to the leader of the group owning the slots. */
  async shardMove(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const refused = this.refuseInRegionsMode(reply)
    if (refused !== null) return refused
    const body = (request.body as Buffer | undefined) ?? null
    let slot = -1
    try {
      const parsed = JSON.parse(body?.toString('utf8') ?? '') as { slots?: unknown }
      if (typeof parsed.slots === 'string') slot = parseSlotRanges(parsed.slots)[0]?.first ?? -1
    } catch {
      // the group it reaches explains what is wrong with the body
    }
    return this.admin(request, reply, this.groupOfSlot(slot), slot, body)
  }

  /** POST /admin/v1/shards/moves/abort {group}: to that group's leader. */
  async shardAbort(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const refused = this.refuseInRegionsMode(reply)
    if (refused !== null) return refused
    const body = (request.body as Buffer | undefined) ?? null
    let named: unknown
    try {
      named = (JSON.parse(body?.toString('utf8') ?? '') as { group?: unknown }).group
    } catch {
      named = undefined
    }
    const groups = this.core.groups
    const group =
      typeof named === 'string'
        ? groups.find((g) => g.id === named)
        : groups.length === 1
          ? groups[0]
          : undefined
    if (group === undefined)
      return this.routerError(
        reply,
        'KV_ERR_INVALID_ARGUMENT',
        typeof named === 'string'
          ? `group ${JSON.stringify(named)} is not in the router's shard map (groups: ${groups.map((g) => g.id).join(', ')})`
          : `name the group whose move to abort, as {"group": "${groups[0]?.id ?? 'g1'}"}`,
      )
    return this.admin(request, reply, group, -1, body)
  }

  private async admin(
    request: FastifyRequest,
    reply: FastifyReply,
    group: GroupState,
    slot: number,
    body: Buffer | null,
  ): Promise<FastifyReply> {
    const outcome = await this.run(
      {
        kind: 'admin',
        method: 'POST',
        path: request.url,
        headers: this.forwardHeaders(request),
        body,
        group,
        slot,
        session: null,
        metricKind: 'admin',
      },
      request,
    )
    if (outcome instanceof KvError) return this.fail(reply, outcome)
    return this.answer(request, reply, outcome, null)
  }

  /** A GET of `path` on any member of group `index`, as the caller: for the router's own checks. */
  async askGroup(
    request: FastifyRequest,
    index: number,
    path: string,
  ): Promise<UpstreamResponse | KvError> {
    const outcome = await this.run(
      {
        kind: 'read',
        method: 'GET',
        path,
        headers: this.forwardHeaders(request),
        body: null,
        group: this.core.groups[index] as GroupState,
        slot: -1,
        session: null,
        metricKind: 'auth',
      },
      request,
    )
    return outcome instanceof KvError ? outcome : outcome.res
  }
}

/** `body` with the value of its first `"session":"..."` field replaced by `token`. */
export function replaceSessionField(body: Buffer, token: string): Buffer {
  const at = body.indexOf(sessionField)
  if (at === -1) return body
  const start = at + sessionField.length
  const end = body.indexOf(0x22, start)
  if (end === -1) return body
  return Buffer.concat([body.subarray(0, start), Buffer.from(token, 'utf8'), body.subarray(end)])
}
