/**
 * Queued writes over HTTP:
 *
 *   PUT/DELETE /v1/kv/<key>, POST /v1/batch with ?ack=queued (or kv-ack: queued)
 *       checked like any write, made durable in this member's outbox, answered
 *       202 { ticket, node, status: "pending", acceptedAtMs } with Location: /v1/tickets/<id>
 *       (the write routes call `acceptQueued`)
 *   GET  /v1/tickets/<id>              what became of it (the user who wrote it, or an admin)
 *   POST /internal/v1/outbox/apply     the leader's side: members of this cluster only (protobuf)
 */
import { ticketResponseSchema } from '@kvstore/protocol'
import { nameParams, rawBody } from '../http/schemas/index.js'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import {
  KvError,
  decodeOutboxApplyRequest,
  encodeOutboxApplyReply,
  encodeSession,
  type DecodeError,
  type QueuedResponse,
  type TicketResponse,
} from '@kvstore/protocol'
import type { WriteRequest } from '@kvstore/storage'
import type { AppContext } from '../http/context.js'
import { requestIdOf } from '../http/replication.js'
import { methodNotAllowed } from '../http/errors.js'
import { permissionsOf } from '../security/http-auth.js'
import { forwardBytesMax, forwardEntriesMax, outboxApplyPath } from './forwarder.js'

/** True when the write asks for `ack=queued` (query parameter, else the kv-ack header). */
export function isQueued(request: FastifyRequest): boolean {
  const ack = (request.query as Record<string, unknown> | undefined)?.ack
  if (typeof ack === 'string') return ack === 'queued'
  return request.headers['kv-ack'] === 'queued'
}

/**
 * Accepts a checked write (syntax, sizes, grants) into this member's outbox and answers 202.
 * Refused in standalone and leaderless mode, and with KV_ERR_OUTBOX_FULL at a limit.
 */
export async function acceptQueued(
  ctx: AppContext,
  request: FastifyRequest,
  reply: FastifyReply,
  write: WriteRequest & { kind: 'put' | 'delete' | 'batch' },
): Promise<QueuedResponse> {
  if (ctx.outbox === null)
    throw new KvError(
      'KV_ERR_UNSUPPORTED_IN_MODE',
      `ack=queued needs single-leader mode; this node's mode is ${ctx.config.mode}: write with ack=async, quorum or all`,
    )
  const requestId = requestIdOf(request, ctx)
  const { entry } = await ctx.outbox.outbox.accept({
    kind: write.kind,
    ops: write.ops,
    ...(requestId !== undefined ? { requestId } : {}),
    user: request.principal?.user ?? '',
  })
  const ticket = `${ctx.config.nodeId}.${entry.seq}`
  void reply
    .code(202)
    .header('location', `/v1/tickets/${ticket}`)
    .header('kv-request-id', entry.requestId)
  return { ticket, node: ctx.config.nodeId, status: 'pending', acceptedAtMs: entry.acceptedAtMs }
}

/** `<nodeId>.<seq>` → its parts, or null. */
function parseTicket(id: string): { node: string; seq: number } | null {
  const dot = id.lastIndexOf('.')
  if (dot < 1) return null
  const digits = id.slice(dot + 1)
  if (!/^[1-9][0-9]{0,15}$/.test(digits)) return null
  const seq = Number(digits)
  return Number.isSafeInteger(seq) ? { node: id.slice(0, dot), seq } : null
}

export function registerOutboxRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.get(
    '/v1/tickets/:id',
    {
      config: { access: 'authenticated' },
      schema: {
        summary:
          'A queued write (ack=queued): pending, applied (with its LSN and session) or failed',
        tags: ['keys'],
        params: nameParams('id', 'The ticket of a 202 answer: <nodeId>.<seq>'),
        response: { 200: ticketResponseSchema },
      },
    },
    async (request): Promise<TicketResponse> => {
      const id = (request.params as { id: string }).id
      const service = ctx.outbox
      if (service === null)
        throw new KvError(
          'KV_ERR_UNSUPPORTED_IN_MODE',
          `queued writes and their tickets need single-leader mode; this node's mode is ${ctx.config.mode}`,
        )
      const parsed = parseTicket(id)
      if (parsed === null)
        throw new KvError(
          'KV_ERR_INVALID_ARGUMENT',
          `a ticket id is <nodeId>.<seq>, as a 202 answer gave it; got ${JSON.stringify(id)}`,
        )
      if (parsed.node !== ctx.config.nodeId) {
        const holder = ctx.replicator?.cluster.members.find((m) => m.id === parsed.node)
        throw new KvError(
          'KV_ERR_TICKET_NOT_FOUND',
          `ticket ${id} was accepted by ${parsed.node}, not by this member (${ctx.config.nodeId}); ask ${holder?.clientUrl ?? parsed.node}`,
          { node: parsed.node, url: holder?.clientUrl ?? null },
        )
      }
      const ticket = service.outbox.ticket(parsed.seq)
      const permissions = permissionsOf(ctx.security.auth, request.principal)
      if (
        ticket === null ||
        (permissions !== null && !permissions.admin && ticket.user !== request.principal?.user)
      ) {
        // Another user's ticket is as unknown as a missing one: its existence is not told.
        throw new KvError(
          'KV_ERR_TICKET_NOT_FOUND',
          `no ticket ${id} on ${ctx.config.nodeId}: never accepted here, accepted for another user, or expired (kept ${ctx.config.ticketRetentionMs} ms after it finished)`,
          { node: ctx.config.nodeId, url: ctx.replicator?.cluster.self.clientUrl ?? null },
        )
      }
      return {
        ticket: id,
        status: ticket.status,
        acceptedAtMs: ticket.acceptedAtMs,
        ...(ticket.status === 'applied'
          ? {
              lsn: ticket.lsn,
              session: encodeSession({ epoch: ticket.epoch, lsn: ticket.lsn }),
              appliedAtMs: ticket.finishedAtMs,
            }
          : {}),
        ...(ticket.status === 'failed' && ticket.error !== null
          ? { appliedAtMs: ticket.finishedAtMs, error: ticket.error }
          : {}),
      }
    },
  )
  methodNotAllowed(app, '/v1/tickets/:id', ['GET'])

  // One forward call: at most forwardEntriesMax entries of forwardBytesMax, and at least one
  // entry, which can be a batch of requestBodyBytesMax (plus a little framing per op).
  const bodyLimit =
    2 * Math.max(ctx.config.requestBodyBytesMax, ctx.config.valueBytesMax) +
    forwardBytesMax +
    forwardEntriesMax * 256
  app.post(
    outboxApplyPath,
    {
      bodyLimit,
      config: { access: 'cluster-peer' },
      schema: {
        summary:
          "Queued writes forwarded to the leader by another member (members' certificates only)",
        tags: ['peers'],
        body: {
          content: {
            'application/x-protobuf': {
              schema: { type: 'string', description: 'An OutboxApplyRequest (protobuf)' },
            },
          },
        },
        response: {
          200: rawBody(
            'application/x-protobuf',
            'An OutboxApplyReply (protobuf): one outcome per entry',
          ),
        },
      },
    },
    async (request, reply) => {
      const service = ctx.outbox
      const replicator = ctx.replicator
      if (service === null || replicator === null)
        throw new KvError('KV_ERR_UNSUPPORTED_IN_MODE', 'queued writes need single-leader mode')
      if (!replicator.isLeader) throw replicator.notLeader()
      let forwarded: ReturnType<typeof decodeOutboxApplyRequest>
      try {
        forwarded = decodeOutboxApplyRequest(
          (request.body as Buffer | undefined) ?? Buffer.alloc(0),
        )
      } catch (err) {
        throw new KvError('KV_ERR_MALFORMED_BODY', (err as DecodeError).message)
      }
      if (!replicator.cluster.members.some((m) => m.id === forwarded.from))
        throw new KvError(
          'KV_ERR_PERMISSION_DENIED',
          `${forwarded.from} is not a member of this cluster`,
        )
      // The sender must be who its certificate says (with TLS; a plaintext development port
      // with auth off has no certificate to compare).
      if (request.peerMember !== null && request.peerMember !== forwarded.from)
        throw new KvError(
          'KV_ERR_PERMISSION_DENIED',
          `the forward claims to come from ${forwarded.from}, but the certificate names ${request.peerMember}`,
        )
      const outcomes = await service.apply(forwarded.entries)
      void reply.type('application/x-protobuf')
      return Buffer.from(encodeOutboxApplyReply(outcomes))
    },
  )
  methodNotAllowed(app, outboxApplyPath, ['POST'])
}
