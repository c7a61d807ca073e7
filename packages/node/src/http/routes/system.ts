/**
 *   GET /v1/status   this node's identity, role, epoch, LSNs, write queue and limits
 *   GET /v1/digest   hash of the whole applied state at one LSN (to compare replicas)
 *   GET /health      liveness: 200 while the process can serve, 503 once storage failed
 *   GET /ready       readiness: 200 once storage is open, 503 while starting or stopping
 *   GET /metrics     Prometheus text format
 *   POST /admin/v1/compact            compact the log now, within the retention policy
 *   POST /admin/v1/backups            a backup of this node, streamed or into its archive
 *   GET /admin/v1/rollbacks?after=&limit=   writes a truncation removed (never confirmed)
 *   DELETE /admin/v1/rollbacks?through=     forget rollback records once reconciled
 */
import type { FastifyInstance } from 'fastify'
import { KvError } from '@kvstore/protocol/errors'
import {
  OpType,
  isReservedKey,
  parseAuthKey,
  type ClusterView,
  type CompactResponse,
  type DigestResponse,
  type HealthResponse,
  type ReadyResponse,
  type RollbackDiscardResponse,
  type RollbackOp,
  type RollbackPage,
  type StatusResponse,
  type TransferResponse,
} from '@kvstore/protocol'

function authRecordName(key: Uint8Array): string {
  const what = parseAuthKey(key)
  return what === null
    ? 'reserved'
    : what.kind === 'settings'
      ? 'settings'
      : `${what.kind}/${what.name}`
}
import { parsePositiveInteger, type AppContext } from '../context.js'
import { methodNotAllowed } from '../errors.js'
import { registerBackupRoutes } from './backups.js'
import {
  clusterViewSchema,
  compactResponseSchema,
  digestResponseSchema,
  healthResponseSchema,
  leaderlessClusterViewSchema,
  readyResponseSchema,
  rollbackDiscardResponseSchema,
  rollbackPageSchema,
  statusResponseSchema,
  transferRequestSchema,
  transferResponseSchema,
} from '@kvstore/protocol'
import { jsonBody, query, rawBody } from '../schemas/index.js'

export function registerSystemRoutes(app: FastifyInstance, ctx: AppContext): void {
  const { store, config, lifecycle, metrics } = ctx

  app.get(
    '/v1/status',
    {
      config: { access: 'monitor' },
      schema: {
        summary: "This node's identity, role, epoch, LSNs, write queue and limits",
        tags: ['system'],
        response: { 200: statusResponseSchema },
      },
    },
    async () => {
      const meta = store.meta
      const { replicator } = ctx
      const lag = replicator?.lag() ?? { entries: 0, ms: 0 }
      return {
        nodeId: meta.nodeId,
        clusterId: meta.clusterId,
        mode: config.mode,
        role: replicator ? replicator.role : ctx.leaderless ? 'replica' : 'leader',
        leaderId: replicator
          ? (replicator.leaderMember?.id ?? null)
          : ctx.leaderless
            ? null
            : meta.nodeId,
        leaderUrl: replicator ? (replicator.leaderMember?.clientUrl ?? null) : null,
        lagEntries: lag.entries,
        lagMs: lag.ms,
        epoch: replicator?.epoch ?? meta.epoch,
        appliedLsn: meta.appliedLsn,
        commitLsn: meta.commitLsn,
        logStartLsn: meta.logStartLsn,
        lastEpoch: meta.lastEpoch,
        ready:
          lifecycle.ready &&
          !lifecycle.shuttingDown &&
          store.failed === null &&
          ctx.replicator?.removedFromCluster !== true,
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
        archive: ctx.backups.archiver?.state() ?? null,
      } satisfies StatusResponse
    },
  )
  methodNotAllowed(app, '/v1/status', ['GET'])

  // Any user: the SDK finds the leader and the replicas here.
  app.get(
    '/v1/cluster',
    {
      config: { access: 'authenticated' },
      schema: {
        summary: 'The cluster: mode, leader, members and their lag (the SDK finds nodes here)',
        tags: ['cluster'],
        response: { 200: { anyOf: [clusterViewSchema, leaderlessClusterViewSchema] } },
      },
    },
    async (request) => {
      const archive = ctx.backups.archiver?.state()
      const archiveField = archive ? { archive } : {}
      const regionsField = ctx.regions ? { regions: ctx.regions.view() } : {}
      if (ctx.replicator)
        return { ...ctx.replicator.clusterView(), ...archiveField, ...regionsField }
      if (ctx.leaderless)
        return { ...ctx.leaderless.clusterView(store.meta.clusterId), ...archiveField }
      // A standalone node is a cluster of one, reached at the address this client used.
      const meta = store.meta
      const url = `${ctx.tls === null ? 'http' : 'https'}://${request.host}`
      const view = standaloneClusterView(meta, url)
      if (archive)
        Object.assign(view.members[0] as object, {
          archivedLsn: archive.archivedLsn,
          archiveLagEntries: Math.max(0, meta.commitLsn - archive.archivedLsn),
        })
      return { ...view, ...archiveField } satisfies ClusterView
    },
  )
  methodNotAllowed(app, '/v1/cluster', ['GET'])

  // Compacts the log now, within the retention policy (it also runs every few seconds).
  app.post(
    '/admin/v1/compact',
    {
      config: { access: 'admin', audit: 'compact' },
      schema: {
        summary: 'Compact the log now, within the retention policy',
        tags: ['system'],
        response: { 200: compactResponseSchema },
      },
    },
    async () => {
      if (ctx.replicator) {
        await ctx.replicator.compactNow()
      } else {
        const wanted = Math.max(
          store.meta.logStartLsn,
          store.commitLsn + 1 - config.logRetentionEntries,
        )
        // The log archive (--archive-dir) keeps what it has not taken yet, within its limit.
        const hold = ctx.backups.archiver
        await store.compactLog(hold ? Math.max(store.meta.logStartLsn, hold.hold(wanted)) : wanted)
      }
      return {
        logStartLsn: store.meta.logStartLsn,
        appliedLsn: store.appliedLsn,
      } satisfies CompactResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/compact', ['POST'])

  registerBackupRoutes(app, ctx)

  // Hands leadership to a named member ({"to": "n2"}) or to the most up-to-date follower ({}).
  app.post(
    '/admin/v1/transfer-leadership',
    {
      config: { access: 'admin', audit: 'transfer-leadership' },
      schema: {
        summary: 'Hand leadership to a member ({"to": "n2"}) or the most up-to-date follower ({})',
        tags: ['cluster'],
        body: jsonBody(transferRequestSchema),
        response: { 200: transferResponseSchema },
      },
    },
    async (request) => {
      const replicator = ctx.replicator
      if (!replicator)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'a standalone node has no leadership to hand over',
        )
      let to: string | null = null
      const body = request.body
      if (body !== undefined && body !== null && !(Buffer.isBuffer(body) && body.length === 0)) {
        let parsed: unknown
        try {
          parsed = Buffer.isBuffer(body) ? JSON.parse(body.toString('utf8')) : body
        } catch {
          throw new KvError(
            'KV_ERR_MALFORMED_BODY',
            'the body must be JSON such as {"to":"n2"} or {}',
          )
        }
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
          throw new KvError(
            'KV_ERR_MALFORMED_BODY',
            'the body must be a JSON object such as {"to":"n2"}',
          )
        const extra = Object.keys(parsed).filter((k) => k !== 'to')
        if (extra.length > 0)
          throw new KvError(
            'KV_ERR_MALFORMED_BODY',
            `unknown field ${JSON.stringify(extra[0])}; only "to" is allowed`,
          )
        const value = (parsed as { to?: unknown }).to
        if (value !== undefined && value !== null && typeof value !== 'string')
          throw new KvError('KV_ERR_MALFORMED_BODY', '"to" must be a member id')
        to = typeof value === 'string' ? value : null
      }
      if (!replicator.isLeader) throw replicator.notLeader()
      const from = store.meta.nodeId
      const leader = await replicator.transferLeadership(to)
      const member = replicator.cluster.members.find((m) => m.id === leader)
      return {
        from,
        leaderId: leader,
        leaderUrl: member?.clientUrl ?? null,
        epoch: replicator.epoch,
      } satisfies TransferResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/transfer-leadership', ['POST'])

  // Writes this node removed from its log when a new leader did not have them: unconfirmed
  // (async) writes of a deposed leader. Kept so that an operator can reconcile them.
  const rollbackLimitMax = 1000
  const wholeNumber = (
    query: unknown,
    name: string,
    allowed: string[],
    fallback: number,
    max: number,
  ): number => {
    const params = (query ?? {}) as Record<string, unknown>
    for (const key of Object.keys(params)) {
      if (!allowed.includes(key))
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `unknown query parameter ${JSON.stringify(key)}; use ${allowed.join(' or ')}`,
        )
    }
    const text = params[name]
    if (text === undefined) return fallback
    const value = typeof text === 'string' ? (text === '0' ? 0 : parsePositiveInteger(text)) : null
    if (value === null || value > max) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `${name} must be a whole number from 0 to ${max}; got ${JSON.stringify(text)}`,
      )
    }
    return value
  }
  app.get(
    '/admin/v1/rollbacks',
    {
      config: { access: 'admin', audit: 'rollbacks.read' },
      schema: {
        summary: 'Writes a truncation removed (never confirmed), to reconcile',
        tags: ['cluster'],
        querystring: query({
          after: { description: 'Records after this sequence number.' },
          limit: { description: 'Records per page, 1 to 1000 (default 100).' },
        }),
        response: { 200: rollbackPageSchema },
      },
    },
    async (request) => {
      const after = wholeNumber(
        request.query,
        'after',
        ['after', 'limit'],
        0,
        Number.MAX_SAFE_INTEGER,
      )
      const limit = Math.max(
        1,
        wholeNumber(request.query, 'limit', ['after', 'limit'], 100, rollbackLimitMax),
      )
      const records = await store.rollbacks(after, limit)
      const last = records[records.length - 1]
      return {
        count: store.rollbackCount,
        rollbacks: records.map((r) => ({
          seq: r.seq,
          removedAt: new Date(r.atMs).toISOString(),
          epoch: r.epoch,
          lsn: r.entry.lsn,
          entryEpoch: r.entry.epoch,
          writtenAt: new Date(r.entry.timestampMs).toISOString(),
          requestId: r.entry.requestId === '' ? null : r.entry.requestId,
          ops: r.entry.ops.map((op): RollbackOp =>
            // A change of the auth store is named, never shown: it holds password hashes and keys.
            isReservedKey(op.key)
              ? { op: 'auth', record: authRecordName(op.key) }
              : op.type === OpType.Put
                ? {
                    op: 'put',
                    key: op.key.toString('utf8'),
                    valueBase64: op.value.toString('base64'),
                  }
                : { op: 'delete', key: op.key.toString('utf8') },
          ),
        })),
        next: records.length === limit && last ? last.seq : null,
      } satisfies RollbackPage
    },
  )
  app.delete(
    '/admin/v1/rollbacks',
    {
      config: { access: 'admin', audit: 'rollbacks.discard' },
      schema: {
        summary: 'Forget rollback records once reconciled',
        tags: ['cluster'],
        querystring: query({
          through: { description: 'Delete the records up to and including this sequence number.' },
        }),
        response: { 200: rollbackDiscardResponseSchema },
      },
    },
    async (request) => {
      const params = (request.query ?? {}) as Record<string, unknown>
      if (params.through === undefined)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          'give through=SEQ: the records up to and including SEQ are deleted',
        )
      const through = wholeNumber(request.query, 'through', ['through'], 0, Number.MAX_SAFE_INTEGER)
      const deleted = await store.discardRollbacks(through)
      return { deleted, count: store.rollbackCount } satisfies RollbackDiscardResponse
    },
  )
  methodNotAllowed(app, '/admin/v1/rollbacks', ['GET', 'DELETE'])

  app.get(
    '/v1/digest',
    {
      config: { access: 'monitor' },
      schema: {
        summary: 'A hash of the whole applied state at one LSN (to compare replicas)',
        tags: ['system'],
        response: { 200: digestResponseSchema },
      },
    },
    async (): Promise<DigestResponse> => store.digest(),
  )
  methodNotAllowed(app, '/v1/digest', ['GET'])

  app.get(
    '/health',
    {
      config: { access: 'public' },
      schema: {
        summary: 'Liveness: 200 while the process can serve, 503 once storage failed',
        tags: ['system'],
        security: [],
        response: { 200: healthResponseSchema },
      },
    },
    async () => {
      if (store.failed) {
        throw new KvError('KV_ERR_STORAGE', `storage failed: ${store.failed.message}`)
      }
      return { status: 'ok' } satisfies HealthResponse
    },
  )
  methodNotAllowed(app, '/health', ['GET'])

  app.get(
    '/ready',
    {
      config: { access: 'public' },
      schema: {
        summary: 'Readiness: 200 once storage is open, 503 while starting or stopping',
        tags: ['system'],
        security: [],
        response: { 200: readyResponseSchema },
      },
    },
    async () => {
      if (store.failed)
        throw new KvError('KV_ERR_STORAGE', `storage failed: ${store.failed.message}`)
      if (lifecycle.shuttingDown)
        throw new KvError('KV_ERR_SHUTTING_DOWN', 'the node is shutting down')
      if (!lifecycle.ready) throw new KvError('KV_ERR_NOT_READY', 'the node is starting')
      const notReady = ctx.leaderless?.notReadyReason ?? null
      if (notReady !== null) throw new KvError('KV_ERR_NOT_READY', notReady)
      // A removed member serves no data: load balancers must take it out of rotation.
      if (ctx.replicator?.removedFromCluster === true) {
        throw new KvError(
          'KV_ERR_NOT_A_MEMBER',
          'this node was removed from the cluster and serves no data; stop it',
        )
      }
      return { ready: true } satisfies ReadyResponse
    },
  )
  methodNotAllowed(app, '/ready', ['GET'])

  app.get(
    '/metrics',
    {
      config: { access: 'monitor' },
      schema: {
        summary: 'Metrics in the Prometheus text format',
        tags: ['system'],
        response: { 200: rawBody('text/plain', 'Prometheus text exposition format 0.0.4') },
      },
    },
    async (_request, reply) => {
      void reply.type(metrics.registry.contentType)
      return metrics.registry.metrics()
    },
  )
  methodNotAllowed(app, '/metrics', ['GET'])
}

/** A standalone node as a cluster of one: itself, leading, reached at `url`. */
export function standaloneClusterView(
  meta: { clusterId: string; nodeId: string; epoch: number; commitLsn: number; appliedLsn: number },
  url: string | null,
): ClusterView {
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
        clientUrl: url ?? '',
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
}
