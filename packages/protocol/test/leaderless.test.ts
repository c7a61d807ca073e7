import { describe, expect, it } from 'vitest'
import {
  DecodeError,
  counterMax,
  decodeContext,
  decodeHint,
  decodePeerReply,
  decodePeerRequest,
  decodeVersionedRecord,
  encodeContext,
  encodeHint,
  encodePeerReply,
  encodePeerRequest,
  encodeVersionedRecord,
  leaderlessSchemaRoot,
  type PeerReply,
  type PeerRequest,
  type VersionedRecord,
  leaderlessLimits,
  versionsOnlyRecord,
} from '../src/index.js'

const record: VersionedRecord = {
  vector: { 'n2.bb': 3, 'n1.aa': 2 },
  siblings: [
    {
      dot: { node: 'n2.bb', counter: 3 },
      value: { value: Buffer.from('x'), hlc: { wallMs: 10, logical: 1, node: 'n2' } },
    },
    {
      dot: { node: 'n1.aa', counter: 2 },
      value: { value: null, hlc: { wallMs: 9, logical: 0, node: 'n1' } },
    },
  ],
}

describe('leaderless formats', () => {
  it('round-trips records canonically: equal states encode to equal bytes whatever their order', () => {
    const reordered: VersionedRecord = {
      vector: { 'n1.aa': 2, 'n2.bb': 3 },
      siblings: [...record.siblings].reverse(),
    }
    const bytes = encodeVersionedRecord(record)
    expect(Buffer.from(encodeVersionedRecord(reordered)).equals(Buffer.from(bytes))).toBe(true)
    const back = decodeVersionedRecord(bytes)
    expect(back.vector).toEqual({ 'n1.aa': 2, 'n2.bb': 3 })
    expect(back.siblings.map((s) => [s.dot.node, s.value.value === null])).toEqual([
      ['n1.aa', true],
      ['n2.bb', false],
    ])
    expect(decodeHint(encodeHint({ storedAtMs: 42, record })).storedAtMs).toBe(42)
  })

  it('refuses records that break their invariants', () => {
    const bad = (r: Record<string, unknown>) => {
      const type = leaderlessSchemaRoot.lookupType('kv.v1.VersionedRecord')
      return () => decodeVersionedRecord(type.encode(type.fromObject(r)).finish())
    }
    const sibling = { actor: 'a', counter: 1, wallMs: 1, clockNode: 'a' }
    expect(bad({ format: 2, vector: [{ actor: 'a', counter: 1 }] })).toThrow(DecodeError)
    expect(bad({ format: 1, vector: [], siblings: [sibling] })).toThrow(/not covered by the vector/)
    expect(
      bad({
        format: 1,
        vector: [
          { actor: 'a', counter: 1 },
          { actor: 'a', counter: 2 },
        ],
      }),
    ).toThrow(/repeats/)
    expect(
      bad({ format: 1, vector: [{ actor: 'a', counter: 1 }], siblings: [sibling, sibling] }),
    ).toThrow(/twice/)
    expect(
      bad({
        format: 1,
        vector: [{ actor: 'a', counter: 1 }],
        siblings: [{ ...sibling, tombstone: true, value: Buffer.from('v') }],
      }),
    ).toThrow(/tombstone/)
    expect(bad({ format: 1, vector: [{ actor: '', counter: 1 }] })).toThrow(/empty/)
    expect(() => decodeVersionedRecord(Buffer.from([0xff, 0xff, 0xff]))).toThrow(DecodeError)
  })

  it('round-trips peer requests and replies, and refuses malformed ones', () => {
    const request = encodePeerRequest({
      clusterId: 'c',
      from: 'n1',
      to: 'n2',
      body: {
        kind: 'coordinate',
        key: Buffer.from('k'),
        value: null,
        context: { vector: { 'n1.aa': 4 }, hlc: { wallMs: 5, logical: 2, node: 'n1' } },
        w: 2,
        sloppy: true,
        requestId: 'r-1',
      },
    })
    expect(decodePeerRequest(request)).toMatchObject({
      from: 'n1',
      body: {
        kind: 'coordinate',
        value: null,
        w: 2,
        sloppy: true,
        context: { vector: { 'n1.aa': 4 }, hlc: { wallMs: 5 } },
      },
    })
    const keys = encodePeerRequest({
      clusterId: 'c',
      from: 'n1',
      to: 'n2',
      body: {
        kind: 'rangeKeys',
        set: 'n1,n2,n3',
        leaves: [0, 1023],
        records: [{ key: Buffer.from('k'), record }],
      },
    })
    const decoded = decodePeerRequest(keys)
    expect(
      decoded.body.kind === 'rangeKeys' && decoded.body.records[0]?.record.siblings,
    ).toHaveLength(2)
    expect(() =>
      decodePeerRequest(
        encodePeerRequest({ clusterId: 'c', from: '', to: 'n2', body: { kind: 'ping' } }),
      ),
    ).toThrow(/sender/)
    const type = leaderlessSchemaRoot.lookupType('kv.v1.PeerRequest')
    expect(() =>
      decodePeerRequest(type.encode(type.fromObject({ format: 1, from: 'a', to: 'b' })).finish()),
    ).toThrow(/no body/)
    for (const reply of [
      { kind: 'pong', clockMs: 7 },
      { kind: 'storeAck', changed: true },
      { kind: 'fetchReply', record: null },
      { kind: 'rootsReply', roots: [1, 4294967295] },
      { kind: 'refusal', code: 'KV_ERR_BAD_FRAME', message: 'no' },
    ] satisfies PeerReply[]) {
      expect(decodePeerReply(encodePeerReply(reply))).toEqual(reply)
    }
  })

  it('anti-entropy by key digest: digests out, differing records and wanted keys back; too many refused', () => {
    const request: PeerRequest = {
      clusterId: 'c',
      from: 'n1',
      to: 'n2',
      body: {
        kind: 'rangeDigests',
        set: 'n1,n2,n3',
        leaves: [3, 9],
        digests: [
          { key: Buffer.from('a'), digest: 0 },
          { key: Buffer.from('b'), digest: 4294967295 },
        ],
      },
    }
    expect(decodePeerRequest(encodePeerRequest(request))).toEqual({ ...request, ringVersion: 0 })
    const reply = decodePeerReply(
      encodePeerReply({
        kind: 'digestsReply',
        records: [{ key: Buffer.from('a'), record }],
        wanted: [Buffer.from('b')],
      }),
    )
    expect(reply.kind === 'digestsReply' && reply.wanted).toEqual([Buffer.from('b')])
    expect(reply.kind === 'digestsReply' && reply.records[0]?.record.siblings).toHaveLength(2)
    // More digests than a message may carry are refused before anything is looked at.
    const tooMany = {
      ...request,
      body: {
        kind: 'rangeDigests' as const,
        set: 's',
        leaves: [1],
        digests: Array.from({ length: leaderlessLimits.digestsPerMessageMax + 1 }, () => ({
          key: Buffer.from('k'),
          digest: 1,
        })),
      },
    }
    expect(() => decodePeerRequest(encodePeerRequest(tooMany))).toThrow(/digests has/)
  })

  it('a versions-only fetch is answered with the versions, and a value in one is refused', () => {
    const request = decodePeerRequest(
      encodePeerRequest({
        clusterId: 'c',
        from: 'n1',
        to: 'n2',
        body: { kind: 'fetch', key: Buffer.from('k'), versionsOnly: true },
      }),
    )
    expect(request.body).toEqual({ kind: 'fetch', key: Buffer.from('k'), versionsOnly: true })
    const versions = versionsOnlyRecord(record)
    const reply = decodePeerReply(
      encodePeerReply({ kind: 'fetchReply', record: versions, versionsOnly: true }),
    )
    expect(reply).toMatchObject({ kind: 'fetchReply', versionsOnly: true })
    const siblings = reply.kind === 'fetchReply' ? (reply.record?.siblings ?? []) : []
    const whole = decodePeerReply(encodePeerReply({ kind: 'fetchReply', record }))
    const wholeSiblings = whole.kind === 'fetchReply' ? (whole.record?.siblings ?? []) : []
    // The dots, timestamps and deletes are all there; the values are not.
    expect(siblings.map((s) => s.dot)).toEqual(wholeSiblings.map((s) => s.dot))
    expect(siblings.map((s) => s.value.hlc)).toEqual(wholeSiblings.map((s) => s.value.hlc))
    expect(siblings.map((s) => s.value.value === null)).toEqual(
      wholeSiblings.map((s) => s.value.value === null),
    )
    expect(siblings.every((s) => s.value.value === null || s.value.value.length === 0)).toBe(true)
    // A full answer is still a full answer.
    expect(decodePeerReply(encodePeerReply({ kind: 'fetchReply', record }))).not.toHaveProperty(
      'versionsOnly',
    )
    expect(() =>
      decodePeerReply(encodePeerReply({ kind: 'fetchReply', record, versionsOnly: true })),
    ).toThrow(/versions-only reply carries a value/)
  })

  it('context tokens carry the vector and the newest timestamp, and refuse anything else', () => {
    const token = encodeContext(record)
    expect(decodeContext(token)).toEqual({
      vector: { 'n1.aa': 2, 'n2.bb': 3 },
      hlc: { wallMs: 10, logical: 1, node: 'n2' },
    })
    expect(decodeContext(encodeContext({ vector: {}, siblings: [] }))).toEqual({
      vector: {},
      hlc: null,
    })
    expect(() => decodeContext('***')).toThrow(DecodeError)
    expect(() => decodeContext(Buffer.from('garbage!').toString('base64url'))).toThrow(DecodeError)
  })

  it('refuses a counter above counterMax in a vector, a dot or a context', () => {
    expect(counterMax).toBe(2 ** 48)
    const withCounter = (counter: number): VersionedRecord => ({
      vector: { 'n1.aa': counter },
      siblings: [
        {
          dot: { node: 'n1.aa', counter },
          value: { value: Buffer.from('x'), hlc: { wallMs: 1, logical: 0, node: 'n1' } },
        },
      ],
    })
    const store = (r: VersionedRecord): PeerRequest => ({
      clusterId: 'c',
      from: 'n2',
      to: 'n1',
      body: { kind: 'store', key: Buffer.from('k'), record: r, hintFor: '' },
    })
    const coordinate = (counter: number): PeerRequest => ({
      clusterId: 'c',
      from: 'n2',
      to: 'n1',
      body: {
        kind: 'coordinate',
        key: Buffer.from('k'),
        value: Buffer.from('v'),
        context: { vector: { 'n1.aa': counter }, hlc: { wallMs: 1, logical: 0, node: 'n1' } },
        w: 0,
        sloppy: false,
        requestId: '',
      },
    })
    const rangeKeys = (r: VersionedRecord): PeerRequest => ({
      clusterId: 'c',
      from: 'n2',
      to: 'n1',
      body: {
        kind: 'rangeKeys',
        set: 'n1,n2',
        leaves: [0],
        records: [{ key: Buffer.from('k'), record: r }],
      },
    })
    for (const huge of [counterMax + 1, 2 ** 53 - 1]) {
      expect(() => decodeVersionedRecord(encodeVersionedRecord(withCounter(huge)))).toThrow(
        /counter .* is above/,
      )
      expect(() => decodeHint(encodeHint({ storedAtMs: 1, record: withCounter(huge) }))).toThrow(
        /is above/,
      )
      expect(() => decodePeerRequest(encodePeerRequest(store(withCounter(huge))))).toThrow(
        /is above/,
      )
      expect(() => decodePeerRequest(encodePeerRequest(rangeKeys(withCounter(huge))))).toThrow(
        /is above/,
      )
      expect(() => decodePeerRequest(encodePeerRequest(coordinate(huge)))).toThrow(/is above/)
      expect(() => decodeContext(encodeContext(withCounter(huge)))).toThrow(/is above/)
      expect(() =>
        decodePeerReply(encodePeerReply({ kind: 'fetchReply', record: withCounter(huge) })),
      ).toThrow(/is above/)
    }
    // A sibling's dot is bounded on its own, not only through the vector that covers it.
    const type = leaderlessSchemaRoot.lookupType('kv.v1.VersionedRecord')
    const dotOnly = type
      .encode(
        type.fromObject({
          format: 1,
          vector: [{ actor: 'n1.aa', counter: counterMax }],
          siblings: [{ actor: 'n1.aa', counter: counterMax + 1, wallMs: 1, clockNode: 'n1' }],
        }),
      )
      .finish()
    expect(() => decodeVersionedRecord(dotOnly)).toThrow(/sibling counter .* is above/)
    // counterMax itself is a valid counter.
    expect(decodeVersionedRecord(encodeVersionedRecord(withCounter(counterMax)))).toMatchObject({
      vector: { 'n1.aa': counterMax },
    })
    expect(decodeContext(encodeContext(withCounter(counterMax))).vector).toEqual({
      'n1.aa': counterMax,
    })
  })
})
