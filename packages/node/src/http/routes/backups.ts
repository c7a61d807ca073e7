/**
 *   POST /admin/v1/backups   a backup of this node's state at a committed LSN
 *
 * Body (optional JSON): `{ "target": "stream" | "archive", "maxBytesPerS": N }`, "stream" by
 * default; `maxBytesPerS` (stream only, at least 65536) paces the stream to at most that many
 * bytes a second, as pg_basebackup's --max-rate does, so a backup's CPU and disk reads stay
 * within a budget beside the foreground load.
 * - stream: 200, content-type application/vnd.kvstore.backup, headers kv-backup-lsn,
 *   kv-backup-node and kv-backup-role; the body is the backup's files as frames (see the
 *   protocol package's backup.ts), manifest.json last. A failure once the body has started is
 *   an Error frame, and the stream ends.
 * - archive: a base backup into this node's log archive (--archive-dir) now; JSON
 *   `{ lsn, dir, keys, bytes, files, digest, durationMs }`.
 * At most `backupsInFlightMax` backups at once per node: past it 429 KV_ERR_BACKUP_BUSY.
 */
import { Readable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { archiveBackupResponseSchema } from '@kvstore/protocol'
import { jsonBody } from '../schemas/index.js'
import {
  BackupFrameType,
  KvError,
  backupFrameDataBytesMax,
  encodeBackupFrame,
  type ArchiveBackupResponse,
} from '@kvstore/protocol'
import { backupPieces, type StateSnapshot, type BackupOrigin } from '@kvstore/storage'
import type { AppContext } from '../context.js'
import { methodNotAllowed } from '../errors.js'
import { openCommittedSnapshot } from '../../backup/source.js'

export const backupContentType = 'application/vnd.kvstore.backup'

type Target = 'stream' | 'archive'

/** Slowest pace a backup stream may be given (bytes a second). */
export const backupBytesPerSMin = 64 * 1024

function parseBody(body: unknown): { target: Target; maxBytesPerS: number | null } {
  if (body === undefined || body === null || (Buffer.isBuffer(body) && body.length === 0)) {
    return { target: 'stream', maxBytesPerS: null }
  }
  let parsed: unknown
  try {
    parsed = Buffer.isBuffer(body) ? JSON.parse(body.toString('utf8')) : body
  } catch {
    throw new KvError(
      'KV_ERR_MALFORMED_BODY',
      'the body must be JSON such as {"target":"stream"} or {"target":"archive"}, or empty',
    )
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new KvError('KV_ERR_MALFORMED_BODY', 'the body must be a JSON object such as {}')
  }
  const extra = Object.keys(parsed).filter((k) => k !== 'target' && k !== 'maxBytesPerS')
  if (extra.length > 0) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `unknown field ${JSON.stringify(extra[0])}; only "target" and "maxBytesPerS" are allowed`,
    )
  }
  const { target = 'stream', maxBytesPerS } = parsed as { target?: unknown; maxBytesPerS?: unknown }
  if (target !== 'stream' && target !== 'archive') {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `target must be "stream" or "archive"; got ${JSON.stringify(target)}`,
    )
  }
  if (maxBytesPerS === undefined) return { target, maxBytesPerS: null }
  if (
    typeof maxBytesPerS !== 'number' ||
    !Number.isSafeInteger(maxBytesPerS) ||
    maxBytesPerS < backupBytesPerSMin
  ) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `maxBytesPerS must be a whole number of bytes a second, at least ${backupBytesPerSMin}; got ${JSON.stringify(maxBytesPerS)}`,
    )
  }
  if (target !== 'stream') {
    throw new KvError('KV_ERR_INVALID_ARGUMENT', 'maxBytesPerS paces a streamed backup only')
  }
  return { target, maxBytesPerS }
}

export function registerBackupRoutes(app: FastifyInstance, ctx: AppContext): void {
  const { metrics } = ctx
  const { gate } = ctx.backups

  app.post(
    '/admin/v1/backups',
    {
      config: { access: 'admin', audit: 'backup' },
      schema: {
        summary:
          'A backup of this node: streamed ({"target":"stream"}) or into its log archive ({"target":"archive"})',
        tags: ['backups'],
        body: jsonBody({
          type: 'object',
          properties: {
            target: { enum: ['stream', 'archive'] },
            maxBytesPerS: { type: 'integer', minimum: 65536 },
          },
          additionalProperties: false,
        }),
        response: {
          200: {
            description: "The backup frames (stream) or the archive's base backup (archive)",
            content: {
              [backupContentType]: {
                schema: { type: 'string', description: 'Backup frames (see docs/backups.md)' },
              },
              'application/json': { schema: archiveBackupResponseSchema },
            },
          },
        },
      },
    },
    async (request, reply) => {
      const { target, maxBytesPerS } = parseBody(request.body)
      if (target === 'archive') {
        const archiver = ctx.backups.archiver
        if (archiver === null) {
          throw new KvError(
            'KV_ERR_INVALID_ARGUMENT',
            'this node keeps no log archive (start it with --archive-dir DIR); use {"target":"stream"}',
          )
        }
        const result = await archiver.baseBackupNow()
        metrics.backups.archive++
        metrics.backups.bytes += result.bytes
        return result satisfies ArchiveBackupResponse
      }
      const release = gate.acquire()
      let taken: { snapshot: StateSnapshot; origin: BackupOrigin }
      try {
        taken = await openCommittedSnapshot({
          store: ctx.store,
          config: ctx.config,
          replicator: ctx.replicator,
        })
      } catch (err) {
        release()
        throw err
      }
      const { snapshot, origin } = taken
      const lsn = snapshot.appliedLsn
      const log = request.log
      const started = Date.now()
      let closed = false
      const close = async () => {
        if (closed) return
        closed = true
        await snapshot.close().catch(() => {})
        release()
      }
      let generatorStarted = false
      async function* frames(): AsyncGenerator<Buffer> {
        generatorStarted = true
        let bytes = 0
        let finished = false
        try {
          for await (const piece of backupPieces(snapshot, origin)) {
            const data = piece.data
            if (data !== undefined) {
              for (let at = 0; at < data.length; at += backupFrameDataBytesMax) {
                const part = data.subarray(at, at + backupFrameDataBytesMax)
                bytes += part.length
                yield encodeBackupFrame(BackupFrameType.Data, piece.name, part)
                if (maxBytesPerS !== null) {
                  // Ahead of the pace: wait until the bytes sent are due.
                  const aheadMs = (bytes / maxBytesPerS) * 1000 - (Date.now() - started)
                  if (aheadMs > 0) await new Promise((r) => setTimeout(r, aheadMs))
                }
              }
            }
            if (piece.end) yield encodeBackupFrame(BackupFrameType.End, piece.name)
          }
          finished = true
          metrics.backups.stream++
          metrics.backups.bytes += bytes
          log.info({ lsn, bytes, durationMs: Date.now() - started }, 'backup streamed')
        } catch (err) {
          const error =
            err instanceof KvError
              ? err
              : new KvError('KV_ERR_STORAGE', `the backup failed: ${(err as Error).message}`)
          log.error({ err, lsn }, 'backup failed while streaming')
          yield encodeBackupFrame(
            BackupFrameType.Error,
            'error',
            Buffer.from(JSON.stringify(error.toBody()), 'utf8'),
          )
        } finally {
          // Also when the client went away: the stream's destruction ends the generator here.
          if (!finished) log.warn({ lsn, bytes }, 'backup stream ended before its end')
          await close()
        }
      }
      const body = Readable.from(frames(), { objectMode: false })
      // A stream destroyed before its first read never runs the generator's finally.
      body.once('close', () => {
        if (!generatorStarted) void close()
      })
      void reply
        .code(200)
        .header('content-type', backupContentType)
        .header('kv-backup-lsn', String(lsn))
        .header('kv-backup-node', origin.nodeId)
        .header('kv-backup-role', origin.role)
        .header('cache-control', 'no-store')
      return reply.send(body)
    },
  )
  methodNotAllowed(app, '/admin/v1/backups', ['POST'])
}
