import { describe, expect, expectTypeOf, it } from 'vitest'
import * as api from '../src/api.js'
import { KvError, type ErrorBody } from '../src/errors.js'

const schemas = Object.entries(api).filter(([name]) => name.endsWith('Schema')) as [
  string,
  api.Schema,
][]

describe('the API contract', () => {
  it('derives its TypeScript types from the schemas', () => {
    expectTypeOf<api.ApiErrorBody>().toEqualTypeOf<ErrorBody>()
    expectTypeOf<api.AckMode>().toEqualTypeOf<'async' | 'quorum' | 'all'>()
    expectTypeOf<api.ClusterMember['peerUrl']>().toEqualTypeOf<string | null>()
    expectTypeOf<api.PutResponse>().toEqualTypeOf<{
      key: string
      version: number
      lsn: number
      session: string
      stamp?: string
      previousStamp?: string | null
    }>()
    expectTypeOf<api.DeleteResponse['deduplicated']>().toEqualTypeOf<true | undefined>()
    expectTypeOf<api.Quorum>().toEqualTypeOf<number | 'quorum' | 'all'>()
  })

  it('closes every object, so a renamed or added field fails validation', () => {
    const open: string[] = []
    const visit = (name: string, schema: unknown): void => {
      if (schema === null || typeof schema !== 'object') return
      const s = schema as Record<string, unknown>
      if (s.type === 'object' && s.properties !== undefined && s.additionalProperties !== false)
        if (name !== 'errorBodySchema') open.push(name)
      for (const child of Object.values(s)) visit(name, child)
    }
    for (const [name, schema] of schemas) visit(name, schema)
    expect(open).toEqual([])
    expect(schemas.length).toBeGreaterThan(40)
  })

  it('accepts conforming bodies and names what is wrong in the others', () => {
    const put = { key: 'a', version: 2, lsn: 2, session: 's' }
    expect(api.validateApi(api.putResponseSchema, put)).toEqual([])
    expect(api.validateApi(api.putResponseSchema, { ...put, lsn: -1 })).toEqual([
      '$.lsn: -1 is below 0',
    ])
    const { version: _v, ...renamed } = { ...put, ver: 2 }
    expect(api.validateApi(api.putResponseSchema, renamed)).toEqual([
      '$: missing field "version"',
      '$: unknown field "ver"',
    ])
    expect(api.validateApi(api.putResponseSchema, { ...put, key: 1 })).toEqual([
      '$.key: expected string, got integer',
    ])
    const member = {
      id: 'n1',
      role: 'leader',
      clientUrl: 'https://127.0.0.1:7001',
      epoch: 1,
      ackedLsn: 1,
      appliedLsn: 1,
      lagEntries: 0,
      lagMs: 0,
      lastContactMs: 0,
      connected: true,
    }
    expect(api.validateApi(api.clusterMemberSchema, member)).toEqual(['$: missing field "peerUrl"'])
    expect(api.validateApi(api.clusterMemberSchema, { ...member, peerUrl: null })).toEqual([])
    expect(api.validateApi(api.quorumSchema, 'most')[0]).toMatch(/matches none of 2/)
    expect(api.validateApi(api.quorumSchema, 2)).toEqual([])
    expect(
      api.validateApi(api.listResponseSchema, { items: [{}], nextCursor: null, appliedLsn: 0 }),
    ).toEqual([
      '$.items[0]: missing field "key"',
      '$.items[0]: missing field "version"',
      '$.items[0]: missing field "valueBytes"',
    ])
  })

  it('describes the error body every KvError makes', () => {
    const body = new KvError('KV_ERR_NOT_LEADER', 'not the leader', { leaderUrl: null }).toBody()
    expect(api.validateApi(api.errorBodySchema, body)).toEqual([])
    expect(
      api.validateApi(api.errorBodySchema, { error: { code: 'NOPE', message: '' } }),
    ).toHaveLength(1)
    expect(
      api.validateApi(api.errorBodySchema, {
        error: { code: 'KV_ERR_INTERNAL', message: 'x', n: {} },
      }),
    ).toEqual([
      '$.error.n: matches none of 2 alternatives ($.error.n: expected string or number or boolean or null, got object; $.error.n: expected array, got object)',
    ])
    // Lists of scalars are details too: the slots and groups a batch spans.
    const crossShard = new KvError('KV_ERR_CROSS_SHARD', 'x', {
      slots: [1, 2],
      groups: ['g1', 'g2'],
    }).toBody()
    expect(api.validateApi(api.errorBodySchema, crossShard)).toEqual([])
    expect(
      api.validateApi(api.errorBodySchema, {
        error: { code: 'KV_ERR_INTERNAL', message: 'x', n: [{}] },
      }),
    ).toHaveLength(1)
  })

  it('refuses a keyword it does not check', () => {
    expect(() => api.validateApi({ type: 'string', maxLength: 3 }, 'abcd')).toThrow(/maxLength/)
  })
})
