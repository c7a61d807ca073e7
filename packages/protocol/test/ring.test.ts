import { describe, expect, it } from 'vitest'
import {
  DecodeError,
  decodeAcceptorState,
  decodeHandoffState,
  decodePeerReplyEnvelope,
  decodePeerRequest,
  decodeRing,
  encodeAcceptorState,
  encodeHandoffState,
  encodePeerReply,
  encodePeerRequest,
  encodeRing,
  leaderlessLimits,
  leaderlessSchemaRoot,
  type PeerReply,
  type PeerRequestBody,
  type WireRing,
} from '../src/index.js'

const ring: WireRing = {
  version: 7,
  members: [
    {
      id: 'n1',
      clientUrl: 'https://127.0.0.1:1',
      peerUrl: 'https://127.0.0.1:2',
      state: 'owner',
      tokens: 'n1',
    },
    {
      id: 'n6',
      clientUrl: 'https://127.0.0.1:3',
      peerUrl: 'https://127.0.0.1:4',
      state: 'joining',
      tokens: 'n3',
    },
  ],
  removed: ['n3'],
  change: { kind: 'replace', member: 'n6', replacing: 'n3', phase: 'switched', startedAtMs: 12 },
}
const record = {
  vector: { 'n1.aa': 1 },
  siblings: [
    {
      dot: { node: 'n1.aa', counter: 1 },
      value: { value: Buffer.from('v'), hlc: { wallMs: 1, logical: 0, node: 'n1' } },
    },
  ],
}

describe('ring formats', () => {
  it('round-trips rings, acceptor and handoff states', () => {
    expect(decodeRing(encodeRing(ring))).toEqual(ring)
    const noChange = { ...ring, change: null }
    expect(decodeRing(encodeRing(noChange))).toEqual(noChange)
    const acceptor = {
      version: 8,
      promised: { round: 3, proposer: 'n2' },
      accepted: { ballot: { round: 2, proposer: 'n1' }, ring },
    }
    expect(decodeAcceptorState(encodeAcceptorState(acceptor))).toEqual(acceptor)
    const empty = { version: 8, promised: null, accepted: null }
    expect(decodeAcceptorState(encodeAcceptorState(empty))).toEqual(empty)
    const handoff = {
      member: 'n6',
      startedAtMs: 12,
      cursors: [{ displaced: 'n3', source: 'n2', after: Buffer.from('k9'), done: false }],
      keys: 10,
      bytes: 1000,
      rangesDone: 3,
    }
    expect(decodeHandoffState(encodeHandoffState(handoff))).toMatchObject({
      ...handoff,
      cursors: [{ displaced: 'n3', source: 'n2', done: false }],
    })
  })

  it('carries the ring version on every request and reply', () => {
    const bodies: PeerRequestBody[] = [
      { kind: 'ping' },
      { kind: 'ringFetch' },
      { kind: 'ringPrepare', version: 8, ballot: { round: 1, proposer: 'n1' } },
      { kind: 'ringAccept', ballot: { round: 1, proposer: 'n1' }, ring },
      { kind: 'ringCommit', ring },
      {
        kind: 'handoffPull',
        target: 'n6',
        displaced: 'n3',
        after: Buffer.from('a'),
        bytesMax: 1 << 20,
      },
      { kind: 'handoffPush', records: [{ key: Buffer.from('k'), record }] },
      {
        kind: 'handoffProgress',
        progress: {
          member: 'n6',
          startedAtMs: 1,
          rangesTotal: 9,
          rangesDone: 2,
          keys: 3,
          bytes: 4,
        },
      },
    ]
    for (const body of bodies) {
      const decoded = decodePeerRequest(
        encodePeerRequest({ clusterId: 'c', from: 'n1', to: 'n2', ringVersion: 7, body }),
      )
      expect(decoded.ringVersion).toBe(7)
      expect(decoded.body).toMatchObject({ kind: body.kind })
    }
    const replies: PeerReply[] = [
      { kind: 'ringReply', ring },
      { kind: 'ringReply', ring: null },
      { kind: 'acceptorReply', reply: { kind: 'promise', accepted: null } },
      {
        kind: 'acceptorReply',
        reply: { kind: 'promise', accepted: { ballot: { round: 2, proposer: 'n4' }, ring } },
      },
      {
        kind: 'acceptorReply',
        reply: { kind: 'rejected', promised: { round: 9, proposer: 'n2' } },
      },
      { kind: 'acceptorReply', reply: { kind: 'stale' } },
      {
        kind: 'handoffBatch',
        records: [{ key: Buffer.from('k'), record }],
        next: Buffer.from('k'),
        done: true,
      },
      { kind: 'handoffAck', merged: 3 },
      { kind: 'refusal', code: 'KV_ERR_STALE_RING', message: 'older' },
    ]
    for (const reply of replies) {
      const decoded = decodePeerReplyEnvelope(encodePeerReply(reply, 9))
      expect(decoded.ringVersion).toBe(9)
      expect(JSON.parse(JSON.stringify(decoded.reply))).toEqual(JSON.parse(JSON.stringify(reply)))
    }
  })

  it('refuses malformed rings', () => {
    const type = leaderlessSchemaRoot.lookupType('kv.v1.Ring')
    const raw = (fields: Record<string, unknown>) =>
      type.encode(type.fromObject({ format: 1, version: 1, ...fields })).finish()
    expect(() => decodeRing(raw({ members: [{ id: 'n1', state: 'boss', tokens: 'n1' }] }))).toThrow(
      /member state/,
    )
    expect(() => decodeRing(raw({ version: 0 }))).toThrow(DecodeError)
    expect(() => decodeRing(raw({ members: [{ id: '', state: 'owner', tokens: 'x' }] }))).toThrow(
      /id/,
    )
    const many = Array.from({ length: leaderlessLimits.ringMembersMax + 1 }, (_, i) => ({
      id: `m${i}`,
      state: 'owner',
      tokens: `m${i}`,
    }))
    expect(() => decodeRing(raw({ members: many }))).toThrow(/more than/)
    expect(() =>
      decodeRing(raw({ change: { kind: 'merge', member: 'n1', phase: 'streaming' } })),
    ).toThrow(/change kind/)
  })
})
