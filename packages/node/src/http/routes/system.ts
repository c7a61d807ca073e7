/**
 *   GET /v1/status   this node's identity, role, epoch, LSNs, write queue and limits
 *   GET /v1/digest   hash of the whole applied state at one LSN (to compare replicas)
 *   GET /health      liveness: 200 while the process can serve, 503 once storage failed
 *   GET /ready       readiness: 200 once storage is open, 503 while starting or stopping
 *   GET /metrics     Prometheus text format
 */
import type { FastifyInstance } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import type { AppContext } from '../context.js'
import { methodNotAllowed } from '../errors.js'

export function registerSystemRoutes(app: FastifyInstance, ctx: AppContext): void {
  const { store, config, lifecycle, metrics } = ctx

  app.get('/v1/status', async () => {
    const meta = store.meta
    const { replicator } = ctx
    const lag = replicator?.lag() ?? { entries: 0, ms: 0 }
    return {
      nodeId: meta.nodeId,
      clusterId: meta.clusterId,
      mode: config.mode,
      role: replicator ? replicator.core.roleName : 'leader',
      leaderId: replicator ? (replicator.leaderMember?.id ?? null) : meta.nodeId,
      leaderUrl: replicator ? (replicator.leaderMember?.clientUrl ?? null) : null,
      lagEntries: lag.entries,
      lagMs: lag.ms,
      epoch: replicator?.epoch ?? meta.epoch,
      appliedLsn: meta.appliedLsn,
      commitLsn: meta.commitLsn,
      logStartLsn: meta.logStartLsn,
      lastEpoch: meta.lastEpoch,
      ready: lifecycle.ready && !lifecycle.shuttingDown && store.failed === null,
      version: ctx.version,
      startedAt: new Date(ctx.startedAtMs).toISOString(),
      uptimeMs: Date.now() - ctx.startedAtMs,
      writeQueue: store.queueDepth,
      storage: {
        dataDir: config.dataDir,
        fsync: config.fsync,
        groupCommitWritesMax: config.groupCommitWritesMax,
        failed: store.failed?.message ?? null,
      },
      limits: {
        keyBytesMax: config.keyBytesMax,
        valueBytesMax: config.valueBytesMax,
        batchOpsMax: config.batchOpsMax,
        requestBodyBytesMax: config.requestBodyBytesMax,
        listLimitMax: config.listLimitMax,
      },
    }
  })
  methodNotAllowed(app, '/v1/status', ['GET'])

  app.get('/v1/cluster', async (request) => {
    if (ctx.replicator) return ctx.replicator.clusterView()
    // A standalone node is a cluster of one, reached at the address this client used.
    const meta = store.meta
    const url = `http://${request.host}`
    return {
      mode: 'standalone',
      clusterId: meta.clusterId,
      leaderId: meta.nodeId,
      leaderUrl: url,
      epoch: meta.epoch,
      commitLsn: meta.commitLsn,
      self: meta.nodeId,
      members: [
        {
          id: meta.nodeId,
          role: 'leader',
          clientUrl: url,
          peerUrl: null,
          epoch: meta.epoch,
          ackedLsn: meta.appliedLsn,
          appliedLsn: meta.appliedLsn,
          lagEntries: 0,
          lagMs: 0,
          lastContactMs: 0,
          connected: true,
        },
      ],
    }
  })
  methodNotAllowed(app, '/v1/cluster', ['GET'])

  // Compacts the log now, within the retention policy (it also runs every few seconds).
  app.post('/admin/v1/compact', async () => {
    if (ctx.replicator) {
      await ctx.replicator.compactNow()
    } else {
      await store.compactLog(
        Math.max(store.meta.logStartLsn, store.commitLsn + 1 - config.logRetentionEntries),
      )
    }
    return { logStartLsn: store.meta.logStartLsn, appliedLsn: store.appliedLsn }
  })
  methodNotAllowed(app, '/admin/v1/compact', ['POST'])

  app.get('/v1/digest', async () => store.digest())
  methodNotAllowed(app, '/v1/digest', ['GET'])

  app.get('/health', async () => {
    if (store.failed) {
      throw new KvError('KV_ERR_STORAGE', `storage failed: ${store.failed.message}`)
    }
    return { status: 'ok' }
  })
  methodNotAllowed(app, '/health', ['GET'])

  app.get('/ready', async () => {
    if (store.failed) throw new KvError('KV_ERR_STORAGE', `storage failed: ${store.failed.message}`)
    if (lifecycle.shuttingDown)
      throw new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down')
    if (!lifecycle.ready) throw new KvError('KV_ERR_NOT_READY', 'the node is starting')
    return { ready: true }
  })
  methodNotAllowed(app, '/ready', ['GET'])

  app.get('/metrics', async (_request, reply) => {
    void reply.type(metrics.registry.contentType)
    return metrics.registry.metrics()
  })
  methodNotAllowed(app, '/metrics', ['GET'])
}
