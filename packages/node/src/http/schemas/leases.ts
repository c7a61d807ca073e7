/**
 * Bodies of the lease routes (leases/routes.ts) and the watch stream (watch/route.ts), which
 * @kvstore/protocol does not define as schemas. Closed objects, as in protocol's api.ts: the
 * SDK's Lease and LeaseInfo (packages/client/src/leases.ts) are checked against them in
 * test/openapi.test.ts.
 */
const integer = { type: 'integer', minimum: 0 } as const
const leaseId = { type: 'string', pattern: '^[0-9]+-[0-9]+$' } as const

function closed(required: Record<string, unknown>) {
  return {
    type: 'object',
    properties: required,
    required: Object.keys(required),
    additionalProperties: false,
  }
}

export const leaseGrantRequestSchema = closed({ ttlMs: { type: 'integer', minimum: 1 } })

/** POST /v1/leases (201). */
export const leaseSchema = closed({ id: leaseId, ttlMs: integer, lsn: integer })

/** GET /v1/leases/<id>. */
export const leaseInfoSchema = closed({
  id: leaseId,
  ttlMs: integer,
  grantedLsn: integer,
  remainingMs: { anyOf: [integer, { type: 'null' }] },
  keys: { type: 'array', items: { type: 'string' } },
})

/** GET /v1/leases (admin). */
export const leaseListSchema = closed({
  items: {
    type: 'array',
    items: closed({
      id: leaseId,
      ttlMs: integer,
      remainingMs: { anyOf: [integer, { type: 'null' }] },
    }),
  },
  total: integer,
  leader: { type: 'boolean' },
})

/** DELETE /v1/leases/<id>. */
export const leaseRevokedSchema = closed({
  id: leaseId,
  revoked: { enum: [true] },
  lsn: integer,
  deletedKeys: integer,
})

/** POST /v1/leases/<id>/keepalive. */
export const leaseKeepAliveSchema = closed({ id: leaseId, ttlMs: integer })
