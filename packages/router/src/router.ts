/**
 * A running kv-router: the directory and the shard map, a GroupState per group (connections,
 * health, leader), the probes and map refreshes on timers, and the HTTP server, with a clean
 * start (groups probed before the port opens) and a graceful stop.
 */
import { readFileSync } from 'node:fs'
import type { TLSSocket } from 'node:tls'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import pino, { type DestinationStream, type Logger } from 'pino'
import {
  KvError,
  certificateIdentity,
  shardMapOfFile,
  shardLimits,
  type GroupShardView,
  type ShardGroup,
  type ShardMap,
} from '@kvstore/protocol'
import { AccessCheck } from './access.js'
import { buildApp } from './app.js'
import type { RouterConfig } from './config.js'
import { GroupState } from './groups.js'
import { RouterMetrics } from './metrics.js'
import { Proxy, type Caller, type ProxyCore } from './proxy.js'
import { RouterDashboard } from './dashboard.js'
import { tlsSocketOf, type DualProtocolServer } from './server.js'
import {
  RegionRouting,
  parseHomeRegionPrefix,
  readRegionsFile,
  regionsDirectory,
} from './regions.js'
import { ShardMapCache, singleGroupMap } from './shard-map.js'
import { loadRouterTls, type RouterTls } from './tls.js'
import type { UpstreamTls } from './upstream.js'

export interface RouterStartOptions {
  /** Where logs go; stdout by default. */
  logDestination?: DestinationStream
}

/**
 * The starting map: the shard map file, the one group of --group, or in regions mode one group
 * per region (the home region first, owning every slot: slots mean nothing there).
 */
export function startingMap(config: RouterConfig): ShardMap {
  if (config.group !== undefined) return singleGroupMap(config.group)
  if (config.regions !== undefined)
    return regionsDirectory(readRegionsFile(config.regions), config.homeRegion as string)
  const file = config.shardMap as string
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new Error(`cannot read the shard map ${file}: ${(err as Error).message}`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw new Error(`the shard map ${file} is not JSON: ${(err as Error).message}`)
  }
  try {
    return shardMapOfFile(parsed)
  } catch (err) {
    throw new Error(`the shard map ${file}: ${(err as Error).message}`)
  }
}

const certUser = Symbol('kv.router.certUser')

/** Shortest time between two map refreshes that requests ask for. */
const refreshGapMs = 100
type CertTagged = { [certUser]?: string | null }

export class KvRouter implements ProxyCore {
  readonly config: RouterConfig
  readonly logger: Logger
  readonly metrics = new RouterMetrics()
  readonly cache: ShardMapCache
  readonly groups: GroupState[]
  readonly tls: RouterTls
  /** Regions mode: each key's home region; null when the router routes to shard groups. */
  readonly regions: RegionRouting | null
  readonly app: FastifyInstance
  private readonly proxy: Proxy
  private readonly lifecycle = { shuttingDown: false, ready: false }
  private readonly inflight = { requests: 0, bodyBytes: 0 }
  private readonly timers: NodeJS.Timeout[] = []
  private refreshing: Promise<void> | null = null
  private lastRefreshEndMs = -Infinity
  private deferredRefresh: NodeJS.Timeout | null = null
  private stopping: Promise<void> | null = null
  private listeningUrl = ''
  private readonly upstreamTls: UpstreamTls | null
  /** Headers of the router's own calls (probes, map refreshes): whom they act for. */
  private readonly ownHeaders: Record<string, string>

  private constructor(config: RouterConfig, logger: Logger, tls: RouterTls, map: ShardMap) {
    this.config = config
    this.logger = logger
    this.tls = tls
    this.cache = new ShardMapCache(map)
    this.ownHeaders =
      config.probeUser !== undefined && tls.identityKind === 'router'
        ? { 'kv-on-behalf-of': config.probeUser }
        : {}
    const upstreamTls =
      tls.identity === null && tls.ca === undefined
        ? null
        : { ca: tls.ca, cert: tls.identity?.cert, key: tls.identity?.key }
    this.upstreamTls = upstreamTls
    this.groups = []
    for (const group of map.groups) this.addGroup(group)
    this.regions =
      config.regions === undefined
        ? null
        : new RegionRouting(
            map.groups.map((g) => g.id),
            config.homeRegion as string,
            config.homeRegionPrefixes.map((spec) =>
              parseHomeRegionPrefix(spec, config.keyBytesMax),
            ),
          )
    this.proxy = new Proxy(this)
    const access = new AccessCheck(
      this.proxy,
      (request) => this.caller(request),
      config.authCacheMs,
      config.authCacheEntriesMax,
    )
    this.app = buildApp({
      config,
      logger,
      metrics: this.metrics,
      tls,
      cache: this.cache,
      groups: this.groups,
      regions: this.regions,
      proxy: this.proxy,
      dashboard: new RouterDashboard({ config, groups: this.groups, proxy: this.proxy }),
      access,
      caller: (request) => this.caller(request),
      lifecycle: this.lifecycle,
      inflight: this.inflight,
      startedAtMs: Date.now(),
    })
  }

  /** A group of the directory: its state, and (once running) its probe timer. */
  private addGroup(group: ShardGroup): GroupState {
    const { config, logger } = this
    const state = new GroupState(group, this.groups.length, {
      upstream: {
        protocol: config.upstreamProtocol,
        connections: config.upstreamConnections,
        tls: this.upstreamTls,
        responseBytesMax: config.responseBytesMax,
      },
      health: {
        maxLagMs: config.maxLagMs,
        ejectFailures: config.ejectFailures,
        ejectMs: config.ejectMs,
        ejectMsMax: config.ejectMsMax,
      },
      readFromLeader: config.readFromLeader,
      probeTimeoutMs: config.probeTimeoutMs,
      probeHeaders: this.ownHeaders,
      logger,
      now: () => performance.now(),
      onEjected: (member) => this.metrics.ejections.inc([group.id, member.id]),
      onStateChange: (member, from, to) => {
        if (from === 'unknown' && to === 'healthy') return
        logger.info(
          { group: group.id, member: member.id, from, to, lagMs: member.health.lagMs },
          'member health changed',
        )
      },
    })
    this.groups.push(state)
    if (this.lifecycle.ready) this.probeEvery(state)
    return state
  }

  private probeEvery(group: GroupState): void {
    const timer = setInterval(() => {
      void group
        .probe()
        .catch((err: unknown) => this.logger.error({ err, group: group.id }, 'probe round failed'))
    }, this.config.probeIntervalMs)
    timer.unref()
    this.timers.push(timer)
  }

  /**
   * SIGHUP: reads the shard map file again and takes the groups it adds (a new group joins
   * without a restart, as on the nodes) and the members it adds to known groups. Groups are
   * never removed while running; ownership still comes from the groups' claims.
   *
   * In regions mode it reads the regions file again and takes the members it adds to known
   * regions; a region new to the file is not routed to until a restart (no key's home is
   * there: the home region and the prefixes are fixed at start).
   */
  async reload(): Promise<void> {
    if (this.config.shardMap === undefined && this.regions === null) return
    const what = this.regions === null ? 'shard map file' : 'regions file'
    let map: ShardMap
    try {
      map = startingMap(this.config)
    } catch (err) {
      this.logger.error({ err }, `cannot reload the ${what}; keeping the directory in use`)
      return
    }
    const added: string[] = []
    for (const group of map.groups) {
      const known = this.groups.find((g) => g.id === group.id)
      if (known === undefined) {
        if (this.regions !== null) continue
        if (this.groups.length >= shardLimits.groupsMax) break
        this.addGroup(group)
        this.cache.addGroup({ id: group.id, members: group.members })
        added.push(group.id)
      } else for (const m of group.members) known.adopt(m.id, m.url)
    }
    const gone = this.groups.filter((g) => !map.groups.some((x) => x.id === g.id)).map((g) => g.id)
    this.logger.info({ added, notInFile: gone }, `${what} reloaded`)
    await Promise.all(this.groups.map((g) => g.probe()))
    await this.refreshMap('reload')
  }

  /** Reads the configuration's files, probes the groups, and starts serving. */
  static async start(config: RouterConfig, options: RouterStartOptions = {}): Promise<KvRouter> {
    const map = startingMap(config)
    const tls = loadRouterTls(config)
    let router: KvRouter | null = null
    const logger = pino(
      {
        level: config.logLevel,
        base: {
          routerId: config.routerId,
          ...(config.homeRegion !== undefined ? { homeRegion: config.homeRegion } : {}),
        },
        mixin: () => ({ mapVersion: router?.cache.version ?? map.version }),
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label }) },
      },
      options.logDestination ?? pino.destination({ sync: false }),
    )
    router = new KvRouter(config, logger, tls, map)
    if (tls.identityKind === 'router' && config.probeUser === undefined)
      logger.warn(
        "no --probe-user: with auth on, the groups refuse the router's probes and map refreshes (a router certificate alone is no user), so it learns leaders from NOT_LEADER answers only and lags from reads only",
      )
    if (tls.identityKind === 'user')
      logger.warn(
        { user: tls.identityUser },
        'the identity certificate names a user, not a router: the router acts as that user upstream (development only); callers must bring a token, or be that user',
      )
    try {
      await router.begin()
    } catch (err) {
      await router.stop().catch(() => {})
      throw err
    }
    return router
  }

  private async begin(): Promise<void> {
    const { config } = this
    // Know the leaders (and the map) before the first request, as far as the groups answer.
    await Promise.all(this.groups.map((g) => g.probe()))
    if (config.shardMap !== undefined) await this.refreshMap('start')
    for (const group of this.groups) this.probeEvery(group)
    if (config.shardMap !== undefined) {
      const timer = setInterval(() => {
        void this.refreshMap('periodic')
      }, config.mapRefreshIntervalMs)
      timer.unref()
      this.timers.push(timer)
    }
    const address = await this.app.listen({ host: config.host, port: config.port })
    this.listeningUrl = address.replace(/^http:/, this.tls.listener === null ? 'http:' : 'https:')
    this.lifecycle.ready = true
    this.logger.info(
      {
        url: this.listeningUrl,
        groups: this.groups.map((g) => ({
          id: g.id,
          leader: g.leader?.id ?? null,
          members: g.members.map((m) => `${m.id}=${m.health.state}`),
        })),
        identity: this.tls.identityKind,
        ...(this.regions !== null
          ? { homeRegion: this.regions.home, homeRegionPrefixes: this.regions.prefixes }
          : {}),
      },
      'router started',
    )
  }

  /** Several groups (or regions): the router gives out its own session tokens (r1.). */
  get routerTokens(): boolean {
    return this.groups.length > 1
  }

  /** The URL the router serves. */
  get url(): string {
    return this.listeningUrl
  }

  /** Who the caller is: their Authorization header, and the user their certificate names. */
  caller(request: FastifyRequest): Caller {
    const authorization = request.headers.authorization
    let user: string | null = null
    const socket = tlsSocketOf(request.raw) as (TLSSocket & CertTagged) | null
    if (socket !== null) {
      const known = socket[certUser]
      if (known !== undefined) user = known
      else {
        const clusterId = this.tls.clusterId
        user =
          socket.authorized && clusterId !== null
            ? certificateIdentity(socket.getPeerCertificate()?.subjectaltname, clusterId, 'user')
            : null
        socket[certUser] = user
      }
    }
    return { certUser: user, authorization }
  }

  /**
   * Asks every group for its claims (GET /v1/shards, from the first member that answers) and
   * merges them into the map. One refresh at a time; callers during one wait for it.
   */
  refreshMap(trigger: 'wrong_shard' | 'session' | 'periodic' | 'start' | 'reload'): Promise<void> {
    if (this.config.shardMap === undefined) return Promise.resolve()
    if (this.refreshing !== null) return this.refreshing
    // Asked by requests (a stale map, a newer token): at most one refresh per gap, so a burst
    // of them (or a forged token naming a future map) cannot keep every group busy.
    const sinceLastMs = performance.now() - this.lastRefreshEndMs
    if ((trigger === 'wrong_shard' || trigger === 'session') && sinceLastMs < refreshGapMs) {
      // The request goes on with what it has (a WRONG_SHARD names the owner); the map follows.
      if (this.deferredRefresh === null) {
        this.deferredRefresh = setTimeout(() => {
          this.deferredRefresh = null
          void this.refreshMap(trigger)
        }, refreshGapMs - sinceLastMs)
        this.deferredRefresh.unref()
      }
      return Promise.resolve()
    }
    this.refreshing = this.refreshOnce(trigger).finally(() => {
      this.refreshing = null
      this.lastRefreshEndMs = performance.now()
    })
    return this.refreshing
  }

  private async refreshOnce(trigger: string): Promise<void> {
    const views = await Promise.all(this.groups.map((g) => this.shardsOf(g)))
    const answered = views.filter((v): v is GroupShardView => v !== null)
    if (answered.length === 0) {
      this.metrics.mapRefreshes.inc([trigger, 'failed'])
      return
    }
    const before = this.cache.version
    let changed: boolean
    try {
      changed = this.cache.merge(answered)
    } catch (err) {
      this.metrics.mapRefreshes.inc([trigger, 'failed'])
      this.logger.error({ err }, 'the groups gave claims that make no map; keeping the one in use')
      return
    }
    this.metrics.mapRefreshes.inc([trigger, changed ? 'changed' : 'unchanged'])
    if (changed)
      this.logger.info(
        { trigger, from: before, to: this.cache.version, answered: answered.map((v) => v.group) },
        'shard map changed',
      )
  }

  /** One group's view of the shards; null when no member gives it. */
  private async shardsOf(group: GroupState): Promise<GroupShardView | null> {
    const order = [
      ...(group.leader !== null ? [group.leader] : []),
      ...group.members.filter((m) => m !== group.leader && m.health.reachable),
      ...group.members.filter((m) => m !== group.leader && !m.health.reachable),
    ]
    for (const member of order) {
      const t0 = performance.now()
      try {
        const res = await member.upstream.request(
          'GET',
          '/v1/shards',
          this.ownHeaders,
          null,
          this.config.probeTimeoutMs * 2,
        )
        this.metrics.observeUpstream(group.id, 'shards', (performance.now() - t0) / 1000)
        if (res.status === 200) {
          const view = JSON.parse(res.body.toString('utf8')) as GroupShardView
          if (view.group !== group.id) {
            this.logger.warn(
              { group: group.id, member: member.id, says: view.group },
              'a member says it belongs to another group; check the shard map file',
            )
            continue
          }
          return view
        }
        // An unsharded group: it owns what the file gives it.
        if (res.status === 400 && res.body.includes('KV_ERR_UNSUPPORTED_IN_MODE')) return null
      } catch {
        // the next member
      }
    }
    return null
  }

  /** Stops taking requests, lets those in flight finish (up to the shutdown timeout), closes. */
  stop(signal?: string): Promise<void> {
    this.stopping ??= (async () => {
      this.logger.info({ signal }, 'router stopping')
      this.lifecycle.shuttingDown = true
      for (const timer of this.timers) clearInterval(timer)
      if (this.deferredRefresh !== null) clearTimeout(this.deferredRefresh)
      const force = setTimeout(() => {
        ;(this.app.server as DualProtocolServer).destroyHttp2Sessions?.()
        this.app.server.closeAllConnections?.()
      }, this.config.shutdownTimeoutMs)
      force.unref()
      await this.app.close().catch(() => {})
      clearTimeout(force)
      await Promise.all(this.groups.map((g) => g.close()))
      this.logger.info('router stopped')
      this.logger.flush()
    })()
    return this.stopping
  }
}

export { KvError }
