/**
 * A running storage node: storage, sequencer, HTTP server, metrics and logs, with a clean
 * start and a graceful stop.
 */
import { readFileSync } from 'node:fs'
import type { FastifyInstance } from 'fastify'
import type { DestinationStream, Logger } from 'pino'
import { Sequencer, Store } from '@kvstore/storage'
import { createHash } from 'node:crypto'
import { clusterOf, peerTlsOn, type ClusterConfig, type NodeConfig } from './config.js'
import type { PeerRefusal, PeerSecurity } from './cluster/peer-server.js'
import { TlsSource } from './security/tls.js'
import { KvError, OpType } from '@kvstore/protocol'
import type { WriteOp } from '@kvstore/storage'
import { AuditLog } from './security/audit.js'
import { AuthAdmin, logAuthWriter } from './security/auth-admin.js'
import { AuthSync } from './leaderless/auth-sync.js'
import { AuthStore } from './security/auth-store.js'
import { prepareBootstrap, saveGeneratedPassword, type Bootstrap } from './security/bootstrap.js'
import { HashLimiter } from './security/passwords.js'
import { TokenService } from './security/tokens.js'
import { Replicator } from './cluster/replicator.js'
import { LeaderlessEngine } from './leaderless/engine.js'
import { buildApp } from './http/app.js'
import { RespStats, startRespServer } from './resp/server.js'
import { PeerRoster } from './membership/roster.js'
import { ShardState, loadShardSetup, startShards, type Shards } from './shards/index.js'
import { RegionClock } from '@kvstore/core'
import { Regions, loadRegionsSetup, regionStamper } from './regions/index.js'
import { SingleLeaderMembership } from './cluster/membership.js'
import { loadMemberships, seedMembership } from './cluster/membership-config.js'
import type { AppContext, Lifecycle, Security } from './http/context.js'
import type { DualProtocolServer } from './http/dual-protocol.js'
import { createLogger } from './logger.js'
import { assertConfigLimits } from './limits.js'
import { NodeMetrics } from './metrics.js'
import { Archiver } from './backup/archiver.js'
import { BackupGate } from './backup/source.js'
import { startOutbox, type OutboxService } from './outbox/index.js'
import { Lessor } from './leases/lessor.js'

export interface StartOptions {
  /** Where logs go; stdout by default. */
  logDestination?: DestinationStream
  /**
   * Called when storage fails and the node can no longer promise durability. The default
   * (used by kv-node) stops the node and exits the process with status 1.
   */
  onFatal?: (err: Error) => void
}

export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version?: string
    }
    return pkg.version ?? 'unknown'
  } catch {
    return 'unknown'
  }
}

export class KvNode {
  readonly config: NodeConfig
  readonly logger: Logger
  readonly store: Store
  readonly app: FastifyInstance
  readonly metrics: NodeMetrics
  private readonly lifecycle: Lifecycle
  /** The replication driver in a cluster mode; null for a standalone node. */
  readonly replicator: Replicator | null
  /** The leaderless coordinator in leaderless mode; null otherwise. */
  readonly leaderless: LeaderlessEngine | null
  private stopping: Promise<void> | null = null
  /** What the HTTP layer uses: auth, tokens, TLS reload. */
  readonly context: AppContext

  private constructor(
    config: NodeConfig,
    logger: Logger,
    store: Store,
    app: FastifyInstance,
    metrics: NodeMetrics,
    lifecycle: Lifecycle,
    replicator: Replicator | null,
    leaderless: LeaderlessEngine | null,
    context: AppContext,
  ) {
    this.context = context
    this.config = config
    this.logger = logger
    this.store = store
    this.app = app
    this.metrics = metrics
    this.lifecycle = lifecycle
    this.replicator = replicator
    this.leaderless = leaderless
  }

  /** Opens storage, recovers it, and starts serving. */
  static async start(config: NodeConfig, options: StartOptions = {}): Promise<KvNode> {
    // parseConfig checks these too; a configuration built in code gets the same refusal.
    assertConfigLimits(config)
    const metrics = new NodeMetrics()
    let store: Store | null = null
    let replicator: Replicator | null = null
    let leaderless: LeaderlessEngine | null = null
    const cluster = config.mode === 'standalone' ? null : clusterOf(config)
    const shardSetup =
      config.shardMap !== undefined && config.shardGroup !== undefined && cluster !== null
        ? loadShardSetup(config.shardMap, config.shardGroup, config.nodeId, cluster.members)
        : null
    let shards: Shards | null = null
    let regions: Regions | null = null
    const regionsSetup =
      config.region !== undefined && config.regions !== undefined && cluster !== null
        ? loadRegionsSetup(
            config.regions,
            config.region,
            config.nodeId,
            cluster.members.map((m) => m.id),
          )
        : null
    const logger = createLogger(
      config.nodeId,
      config.logLevel,
      {
        role: () =>
          replicator
            ? replicator.role
            : config.mode === 'leaderless'
              ? 'replica'
              : cluster
                ? 'starting'
                : 'leader',
        epoch: () => replicator?.epoch ?? store?.meta.epoch ?? 0,
      },
      options.logDestination,
    )
    let node: KvNode | null = null
    const onFatal =
      options.onFatal ??
      ((err: Error) => {
        // A storage failure or a broken invariant: serving on could spread what a bug made.
        logger.fatal({ err }, 'fatal error; stopping the node')
        const exit = () => process.exit(1)
        if (node) void node.stop(err.name).finally(exit)
        else exit()
      })
    const tls =
      config.certFile !== undefined && config.keyFile !== undefined
        ? new TlsSource(
            { certFile: config.certFile, keyFile: config.keyFile, caFile: config.caFile },
            config.nodeId,
            peerTlsOn(config),
          )
        : null
    if (tls) metrics.tlsNotAfterSeconds = Math.floor(tls.current.notAfter.getTime() / 1000)
    const clusterId = resolveClusterId(config, cluster, tls)
    store = await Store.open({
      dir: config.dataDir,
      nodeId: config.nodeId,
      ...(clusterId !== undefined ? { clusterId } : {}),
      fsync: config.fsync,
      groupCommitWritesMax: config.groupCommitWritesMax,
      groupCommitBytesMax: config.groupCommitBytesMax,
      writeQueueWritesMax: config.writeQueueWritesMax,
      writeQueueBytesMax: config.writeQueueBytesMax,
      cacheBytes: config.leveldbCacheBytes,
      writeBufferBytes: config.leveldbWriteBufferBytes,
      readCacheBytes: config.readCacheBytes,
      rollbackEntriesMax: config.rollbackEntriesMax,
      logger,
      onBatch: (stats) => metrics.recordBatch(stats),
      onFatal: (err) => onFatal(err),
    })
    let audit: AuditLog | null = null
    let authSyncStarted: AuthSync | null = null
    let archiver: Archiver | null = null
    let outbox: OutboxService | null = null
    let lessor: Lessor | null = null
    try {
      const openStore = store
      metrics.watchStore(() => openStore)
      const auth = new AuthStore(store, logger)
      await auth.start()
      const hashLimiter = new HashLimiter(
        config.loginsInFlightMax,
        16 * config.loginsInFlightMax,
        2000,
      )
      // A brand-new data directory: this node may create the cluster, and secures it then.
      const fresh = store.meta.appliedLsn === 0 && store.meta.logStartLsn === 1
      // A member joining a running cluster never writes the first entry: it gets the cluster's.
      const bootstrap =
        fresh && config.auth && !config.join
          ? await prepareBootstrap({
              rootPasswordFile: config.rootPasswordFile,
              nodeId: config.nodeId,
              limiter: hashLimiter,
              stampWallMs: config.mode === 'leaderless' || shardSetup !== null ? 0 : Date.now(),
              log: logger,
              // Shard groups start alike too (with one --auth-secret-file), so a token any
              // group issues holds on every group, and a router can pass it on.
              ...(config.mode === 'leaderless' || shardSetup !== null
                ? {
                    sameOnEveryMember: {
                      clusterId: store.meta.clusterId,
                      secretFile: config.authSecretFile,
                    },
                  }
                : {}),
            })
          : null
      auth.awaitingBootstrap = bootstrap !== null
      let sequencer: Sequencer
      if (cluster && config.mode === 'leaderless') {
        // Every member takes writes on its own authority; the log is local.
        if (store.meta.epoch < 1) await store.setHardState({ epoch: 1 })
        sequencer = new Sequencer(store, { now: Date.now })
        leaderless = new LeaderlessEngine({
          config,
          cluster,
          store,
          sequencer,
          logger,
          clusterId: store.meta.clusterId,
          security: peerSecurity(config, cluster, store.meta.clusterId, tls, metrics, logger),
        })
        await leaderless.start()
        metrics.watchLeaderless(leaderless)
      } else if (cluster) {
        replicator = new Replicator({
          config,
          cluster,
          store,
          logger,
          onFatal,
          memberships: await loadMemberships(store, seedMembership(cluster, config.join)),
          security: peerSecurity(config, cluster, store.meta.clusterId, tls, metrics, logger),
          bootstrapOps: bootstrap?.ops ?? null,
          // Test-only (the chaos suite's teeth); an UNSAFE row of the config table.
          unsafeNoFencing: config.unsafeNoFencing,
        })
        await replicator.start()
        metrics.watchReplicator(replicator)
        const shardState = shardSetup === null ? null : new ShardState(store, shardSetup, logger)
        const regionClock =
          regionsSetup === null
            ? null
            : new RegionClock(regionsSetup.region, config.regionClockSkewMaxMs)
        sequencer = new Sequencer(store, {
          now: Date.now,
          writer: replicator.writer(),
          ...(shardState !== null ? { admit: (request) => shardState.admitWrite(request) } : {}),
          ...(regionClock !== null ? { stamper: regionStamper(regionClock) } : {}),
        })
        if (regionsSetup !== null && regionClock !== null) {
          regions = new Regions(
            regionsSetup,
            store,
            replicator,
            config,
            tls,
            logger,
            regionClock,
            sequencer,
          )
          await regions.start()
          metrics.watchRegions(regions)
        }
        if (shardSetup !== null && shardState !== null) {
          shards = startShards({
            setup: shardSetup,
            state: shardState,
            store,
            sequencer,
            replicator,
            config,
            tls,
            logger,
          })
          metrics.watchShards(shards)
        }
      } else {
        // A standalone node is the only member of its cluster, so it leads from epoch 1 on.
        if (store.meta.epoch < 1) await store.setHardState({ epoch: 1 })
        sequencer = new Sequencer(store, { now: Date.now })
        if (bootstrap) await sequencer.write({ kind: 'batch', ops: bootstrapWriteOps(bootstrap) })
      }
      let authSync: AuthSync | null = null
      if (leaderless && cluster) {
        if (bootstrap) {
          // Every member starts the auth store alike; members then exchange records, and the
          // same records from several members converge (last writer wins, by member id).
          await sequencer.write({ kind: 'batch', ops: bootstrapWriteOps(bootstrap) })
        }
        const engine = leaderless
        authSync = new AuthSync({
          auth,
          sequencer,
          self: cluster.self.id,
          members: engine.memberIds,
          call: (peer, body, timeoutMs) => engine.callPeer(peer, body, timeoutMs),
          timeoutMs: config.quorumTimeoutMs,
          intervalMs: 1000,
          log: logger,
        })
        const sync = authSync
        engine.setAuthHandler((body) => sync.serve(body))
        // Users and roles go to the members the ring names now.
        engine.onRingChange(() => sync.setMembers(engine.memberIds))
        // Before serving: take the cluster's users and roles from whoever answers, so a member
        // back from a long absence (or on a new disk) enforces today's grants, not old ones.
        await sync.syncAll()
        sync.start()
        authSyncStarted = sync
      }
      if (bootstrap && config.mode !== 'leaderless') {
        saveGeneratedPassword({ bootstrap, auth, store, dataDir: config.dataDir, log: logger })
      } else if (bootstrap !== null && bootstrap.generatedPassword !== null) {
        logger.warn(
          'new leaderless cluster without --root-password-file: root has no password (each member would draw its own); log in with the root client certificate from kv certs init, and set one with kv user passwd root',
        )
      }
      const gate = new BackupGate(config.backupsInFlightMax)
      if (config.archiveDir !== undefined) {
        archiver = new Archiver({
          dir: config.archiveDir,
          store,
          config,
          source: { store, config, replicator },
          gate,
          figures: metrics.archive,
          logger,
        })
        await archiver.start()
        const hold = archiver
        const compactionHold = (retainFrom: number) => hold.hold(retainFrom)
        if (replicator) replicator.compactionHold = compactionHold
        if (leaderless) leaderless.compactionHold = compactionHold
        replicator?.reportArchive(() => hold.reportedLsn)
      }
      if (replicator !== null) {
        // Queued writes (ack=queued): this member's outbox, drained to the leader.
        outbox = await startOutbox({
          config,
          store,
          sequencer,
          replicator,
          auth,
          tls,
          logger,
          onFatal,
        })
        metrics.watchOutbox(outbox.outbox)
      }
      if (leaderless === null) {
        // Leases (single-leader and standalone): deadlines kept by the leader, ends in the log.
        lessor = new Lessor({
          store,
          sequencer,
          replicator,
          leasesMax: config.leasesMax,
          leaseKeysMax: config.leaseKeysMax,
          promoteExtendMs: replicator !== null ? config.electionTimeoutMs : 0,
          logger,
        })
        await lessor.start()
        metrics.watchLeases(lessor)
      }
      audit = new AuditLog(config.auditLog, config.nodeId)
      const securityClusterId = store.meta.clusterId
      const security: Security = {
        auth,
        admin: new AuthAdmin(
          auth,
          authSync !== null
            ? authSync.writer()
            : logAuthWriter({
                sequencer,
                replicator,
                nodeId: config.nodeId,
                ackTimeoutMs: config.ackTimeoutMs,
                now: Date.now,
              }),
          config,
          hashLimiter,
        ),
        tokens: new TokenService(securityClusterId, config.tokenTtlMs),
        hashLimiter,
        audit,
        clusterId: securityClusterId,
        sync: authSync,
      }
      const lifecycle: Lifecycle = { ready: false, shuttingDown: false }
      const ctx: AppContext = {
        onFatal,
        config,
        store,
        sequencer,
        replicator,
        leaderless,
        shards,
        regions,
        outbox,
        lessor,
        membership:
          replicator !== null
            ? new SingleLeaderMembership(replicator, config)
            : leaderless !== null
              ? leaderless.membership
              : null,
        metrics,
        tls,
        security,
        backups: { gate, archiver },
        reloadTls:
          tls === null
            ? null
            : () => {
                try {
                  const material = tls.reload()
                  metrics.tlsReloads.inc({ result: 'ok' })
                  metrics.tlsNotAfterSeconds = Math.floor(material.notAfter.getTime() / 1000)
                  logger.info(
                    {
                      notAfter: material.notAfter.toISOString(),
                      fingerprint256: material.fingerprint256,
                    },
                    'certificates reloaded',
                  )
                  return {
                    notAfter: material.notAfter.toISOString(),
                    fingerprint256: material.fingerprint256,
                  }
                } catch (err) {
                  metrics.tlsReloads.inc({ result: 'failed' })
                  logger.error(
                    { err },
                    'certificate reload failed; the old certificate stays in use',
                  )
                  throw new KvError(
                    'KV_ERR_INVALID_ARGUMENT',
                    `certificate reload failed: ${(err as Error).message}`,
                  )
                }
              },
        version: packageVersion(),
        startedAtMs: Date.now(),
        lifecycle,
      }
      const app = buildApp(ctx, logger)
      // The RESP front (--resp-port, node/src/resp): closed with the app, before storage.
      const respStats = new RespStats()
      if (leaderless === null) metrics.watchResp(respStats)
      const resp = await startRespServer(ctx, logger, respStats)
      if (resp !== null) app.addHook('onClose', () => resp.close())
      const port = cluster ? Number(new URL(cluster.self.clientUrl).port) : config.port
      await app.listen({ host: config.host, port })
      node = new KvNode(config, logger, store, app, metrics, lifecycle, replicator, leaderless, ctx)
      lifecycle.ready = true
      logger.info(
        {
          url: node.url,
          dataDir: config.dataDir,
          appliedLsn: store.appliedLsn,
          fsync: config.fsync,
          mode: config.mode,
          ...(cluster ? { peerUrl: cluster.self.peerUrl, leader: cluster.leaderId } : {}),
        },
        'node started',
      )
      return node
    } catch (err) {
      lessor?.stop()
      await archiver?.stop().catch(() => {})
      await outbox?.stop().catch(() => {})
      await shards?.stop().catch(() => {})
      await regions?.stop().catch(() => {})
      await replicator?.stop().catch(() => {})
      await authSyncStarted?.stop().catch(() => {})
      await leaderless?.stop().catch(() => {})
      await store.close().catch(() => {})
      audit?.flush()
      throw err
    }
  }

  /** The client URL, with the port actually bound (useful with port 0). */
  get url(): string {
    const address = this.app.server.address()
    const port = typeof address === 'object' && address !== null ? address.port : this.config.port
    const host =
      this.config.host === '0.0.0.0' || this.config.host === '::' ? '127.0.0.1' : this.config.host
    const scheme = (this.app.server as DualProtocolServer).secure ? 'https' : 'http'
    return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`
  }

  /**
   * SIGHUP: reads the certificate files again (new connections use them; open ones finish
   * undisturbed) and reopens the audit log file (for log rotation). A certificate that fails
   * its checks is refused and the old one stays.
   */
  reload(): void {
    this.context.security.audit.reopen()
    try {
      this.context.shards?.reloadDirectory()
    } catch (err) {
      this.logger.error({ err }, 'shard map reload failed; the directory in use stays')
    }
    this.context.regions?.reload().catch((err: unknown) => {
      this.logger.error({ err }, 'regions file reload failed; the regions in use stay')
    })
    if (this.context.reloadTls === null) return
    try {
      this.context.reloadTls()
    } catch {
      // Logged and counted by reloadTls.
    }
  }

  /**
   * Stops taking requests, lets in-flight requests finish (up to shutdownTimeoutMs, then
   * closes what is left), waits for every queued write to reach the disk, and closes storage.
   */
  stop(reason = 'requested'): Promise<void> {
    this.stopping ??= this.runStop(reason)
    return this.stopping
  }

  private async runStop(reason: string): Promise<void> {
    this.logger.info({ reason }, 'node stopping')
    this.lifecycle.shuttingDown = true
    const server = this.app.server as DualProtocolServer
    const force = setTimeout(() => {
      this.logger.warn(
        { timeoutMs: this.config.shutdownTimeoutMs },
        'closing connections still open',
      )
      server.closeAllConnections()
      server.destroyHttp2Sessions()
    }, this.config.shutdownTimeoutMs)
    force.unref()
    // Node closes idle keep-alive connections once, when the server starts closing. A request
    // in flight at that moment leaves its connection open and idle after its response, so
    // keep closing connections as they fall idle until the server is closed.
    const sweep = setInterval(() => server.closeIdleConnections(), 50)
    sweep.unref()
    try {
      await this.app.close()
    } finally {
      clearInterval(sweep)
      clearTimeout(force)
      // Writes whose clients left may still wait for replicas: give them a moment, then stop
      // replicating (and wait for its store writes) before storage closes.
      await this.context.backups.archiver?.stop()
      await this.context.shards?.stop()
      await this.context.regions?.stop()
      await this.context.outbox?.stop()
      this.context.lessor?.stop()
      await this.replicator?.settle(Math.min(2000, this.config.shutdownTimeoutMs))
      await this.replicator?.stop()
      await this.context.security.sync?.stop()
      await this.leaderless?.stop()
      await this.store.close()
      this.context.security.audit.flush()
      this.logger.info({ appliedLsn: this.store.appliedLsn }, 'node stopped')
      this.logger.flush()
    }
  }
}

/**
 * The cluster id: the one the member certificate names (made at random by `kv certs init`),
 * else --cluster-id, else (plaintext peers, tests only) one derived from the member ids, else
 * (a standalone node) a random one made by storage on first start. Storage then refuses a data
 * directory of another cluster.
 */
function resolveClusterId(
  config: NodeConfig,
  cluster: ClusterConfig | null,
  tls: TlsSource | null,
): string | undefined {
  const fromCert = tls?.current.clusterId ?? null
  if (fromCert !== null) {
    if (config.clusterId !== undefined && config.clusterId !== fromCert) {
      throw new Error(
        `--cluster-id ${config.clusterId} is not the cluster this node's certificate names (${fromCert})`,
      )
    }
    return fromCert
  }
  return config.clusterId ?? (cluster ? derivedClusterId(cluster) : undefined)
}

/** What the peer port needs to authenticate members, and where refusals are reported. */
function peerSecurity(
  config: NodeConfig,
  cluster: ClusterConfig,
  clusterId: string,
  tls: TlsSource | null,
  metrics: NodeMetrics,
  logger: Logger,
): PeerSecurity {
  if (peerTlsOn(config) && tls === null) throw new Error('mutual TLS needs a member certificate')
  if (!peerTlsOn(config)) {
    logger.warn(
      '--unsafe-plaintext-peers: members talk cleartext without certificates; anyone who reaches the peer port can rewrite data (tests and benchmarks only)',
    )
  }
  const throttle = new Map<string, number>()
  return {
    tls: peerTlsOn(config) ? tls : null,
    clusterId,
    selfId: cluster.self.id,
    roster: new PeerRoster(
      cluster.self.id,
      cluster.members.map((m) => m.id),
    ),
    handshakeTimeoutMs: config.tlsHandshakeTimeoutMs,
    onRefused(reason: PeerRefusal, detail: Record<string, unknown>) {
      metrics.peerRefused.inc({ reason })
      // At most one log line per reason a second: a flood of refusals must not flood the log.
      const now = Date.now()
      if ((throttle.get(reason) ?? 0) > now - 1000) return
      throttle.set(reason, now)
      logger.warn({ ...detail, reason }, 'refused a peer connection or message')
    },
  }
}

/** A cluster id every member computes alike from the member ids. */
export function derivedClusterId(cluster: ClusterConfig): string {
  const ids = cluster.members.map((m) => m.id).sort()
  return `kv-${createHash('sha256').update(ids.join('\n')).digest('hex').slice(0, 16)}`
}

/** The bootstrap records as a batch a sequencer takes (create-only: never over existing ones). */
function bootstrapWriteOps(bootstrap: Bootstrap): WriteOp[] {
  return bootstrap.ops.map((op) => {
    if (op.type !== OpType.Put) throw new Error('bootstrap ops are puts')
    return { type: 'put' as const, key: op.key, value: op.value, ifAbsent: true }
  })
}
