/**
 *   GET    /admin/v1/members               the configuration as this node knows it
 *   POST   /admin/v1/members               add a member {id, clientUrl, peerUrl}
 *   POST   /admin/v1/members/:id/promote   single-leader: a caught-up learner becomes a voter
 *   DELETE /admin/v1/members/:id           remove a member
 *   POST   /admin/v1/members/:id/replace   replace a member by a new one {id, clientUrl, peerUrl}
 *
 * Admin only. The cluster mode does the work (see membership/service.ts); this file checks
 * the request and nothing else.
 */
import {
  addMemberRequestSchema,
  membershipChangeResponseSchema,
  membershipSchema,
  replaceMemberRequestSchema,
} from '@kvstore/protocol'
import { jsonBody, nameParams } from '../schemas/index.js'

const id = nameParams('id', 'A member id')
import type { FastifyInstance } from 'fastify'
import { KvError, type AddMemberRequest } from '@kvstore/protocol'
import type { AppContext } from '../context.js'
import { methodNotAllowed } from '../errors.js'
import { checkMember } from '../../config/members.js'
import { ConfigError } from '../../config/types.js'
import type { MembershipService } from '../../membership/service.js'

const memberFields = ['id', 'clientUrl', 'peerUrl'] as const

/** Parses and checks a new member's body: exactly id, clientUrl and peerUrl, all valid. */
export function parseMemberBody(body: unknown): AddMemberRequest {
  let parsed: unknown = body
  if (Buffer.isBuffer(body)) {
    try {
      parsed = JSON.parse(body.toString('utf8'))
    } catch {
      parsed = undefined
    }
  }
  const example =
    '{"id":"n4","clientUrl":"https://10.0.0.4:7001","peerUrl":"https://10.0.0.4:7101"}'
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new KvError('KV_ERR_MALFORMED_BODY', `the body must be JSON such as ${example}`)
  }
  const fields = parsed as Record<string, unknown>
  const extra = Object.keys(fields).filter((k) => !(memberFields as readonly string[]).includes(k))
  if (extra.length > 0) {
    throw new KvError(
      'KV_ERR_MALFORMED_BODY',
      `unknown field ${JSON.stringify(extra[0])}; only id, clientUrl and peerUrl are allowed`,
    )
  }
  for (const field of memberFields) {
    if (typeof fields[field] !== 'string') {
      throw new KvError('KV_ERR_MALFORMED_BODY', `"${field}" must be a string, as in ${example}`)
    }
  }
  try {
    return checkMember({
      id: fields.id as string,
      clientUrl: fields.clientUrl as string,
      peerUrl: fields.peerUrl as string,
    })
  } catch (err) {
    if (err instanceof ConfigError) throw new KvError('KV_ERR_INVALID_ARGUMENT', err.message)
    throw err
  }
}

export function registerMemberRoutes(app: FastifyInstance, ctx: AppContext): void {
  const service = (): MembershipService => {
    if (ctx.membership === null) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        'a standalone node has no members; start it in a cluster mode',
      )
    }
    return ctx.membership
  }
  const idOf = (params: unknown): string => (params as { id: string }).id

  app.get(
    '/admin/v1/members',
    {
      config: { access: 'admin' },
      schema: {
        summary: 'The membership: voters, learners and changes in progress',
        tags: ['cluster'],
        response: { 200: membershipSchema },
      },
    },
    async () => service().view(),
  )
  app.post(
    '/admin/v1/members',
    {
      config: { access: 'admin', audit: 'member-add' },
      schema: {
        summary: 'Add a member (as a learner that catches up)',
        tags: ['cluster'],
        body: jsonBody(addMemberRequestSchema),
        response: { 200: membershipChangeResponseSchema },
      },
    },
    async (request) => service().add(parseMemberBody(request.body)),
  )
  app.post(
    '/admin/v1/members/:id/promote',
    {
      config: { access: 'admin', audit: 'member-promote' },
      schema: {
        summary: 'Promote a caught-up learner to voter',
        tags: ['cluster'],
        params: id,
        response: { 200: membershipChangeResponseSchema },
      },
    },
    async (request) => service().promote(idOf(request.params)),
  )
  app.delete(
    '/admin/v1/members/:id',
    {
      config: { access: 'admin', audit: 'member-remove' },
      schema: {
        summary: 'Remove a member',
        tags: ['cluster'],
        params: id,
        response: { 200: membershipChangeResponseSchema },
      },
    },
    async (request) => service().remove(idOf(request.params)),
  )
  app.post(
    '/admin/v1/members/:id/replace',
    {
      config: { access: 'admin', audit: 'member-replace' },
      schema: {
        summary: 'Replace a member with a new one',
        tags: ['cluster'],
        params: id,
        body: jsonBody(replaceMemberRequestSchema),
        response: { 200: membershipChangeResponseSchema },
      },
    },
    async (request) => service().replace(idOf(request.params), parseMemberBody(request.body)),
  )
  methodNotAllowed(app, '/admin/v1/members', ['GET', 'POST'])
  methodNotAllowed(app, '/admin/v1/members/:id', ['DELETE'])
  methodNotAllowed(app, '/admin/v1/members/:id/promote', ['POST'])
  methodNotAllowed(app, '/admin/v1/members/:id/replace', ['POST'])
}
