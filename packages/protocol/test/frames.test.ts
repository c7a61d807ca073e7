import {
  DecodeError,
  FrameDecoder,
  decodeFrame,
  decodeSession,
  encodeFrame,
  encodeSession,
  laterSession,
  replicationSchemaRoot,
  type Frame,
} from '../src/index.js'

const samples: Frame[] = [
  { from: 'n1', epoch: 3, body: { kind: 'hello', clusterId: 'c1', to: 'n2', leader: 'n1' } },
  {
    from: 'n1',
    epoch: 3,
    body: {
      kind: 'append',
      prevLsn: 2 ** 40,
      prevEpoch: 2,
      entries: [Buffer.from('entry-1'), Buffer.from([0, 1, 2])],
      commitLsn: 2 ** 40 - 5,
      leaderLastLsn: 2 ** 40 + 2,
      leaderClockMs: 1_767_225_600_000,
    },
  },
  {
    from: 'n2',
    epoch: 3,
    body: { kind: 'appendAck', matchLsn: 10, reject: true, hintLsn: 7, appliedLsn: 10 },
  },
  {
    from: 'n1',
    epoch: 3,
    body: {
      kind: 'heartbeat',
      commitLsn: 9,
      leaderLastLsn: 12,
      leaderClockMs: 5,
      members: [
        {
          id: 'n2',
          role: 'follower',
          matchLsn: 9,
          lagEntries: 3,
          lagMs: 40,
          lastContactMs: 10,
          appliedLsn: 7,
          epoch: 2,
          connected: true,
        },
      ],
    },
  },
  { from: 'n2', epoch: 3, body: { kind: 'heartbeatAck', matchLsn: 9, appliedLsn: 9, lagMs: 0 } },
  {
    from: 'n1',
    epoch: 3,
    body: {
      kind: 'snapshotChunk',
      snapshotLsn: 100,
      snapshotEpoch: 2,
      sequence: 4,
      records: [{ key: Buffer.from('k'), record: Buffer.from([8, 1]) }],
      last: true,
      digest: 'ab'.repeat(32),
      requests: [{ id: 'req-1', record: Buffer.from([8, 7]) }],
    },
  },
  {
    from: 'n2',
    epoch: 4,
    body: { kind: 'refusal', code: 'KV_ERR_STALE_EPOCH', message: 'epoch 3 < 4' },
  },
  {
    from: 'n3',
    epoch: 5,
    body: { kind: 'vote', lastLsn: 2 ** 40, lastEpoch: 4, preVote: true, transfer: false },
  },
  { from: 'n1', epoch: 5, body: { kind: 'voteAck', granted: true, preVote: false } },
  { from: 'n1', epoch: 5, body: { kind: 'timeoutNow' } },
]

const plain = (frame: Frame) =>
  JSON.parse(JSON.stringify(frame, (_k, v: unknown) => (v instanceof Uint8Array ? [...v] : v)))

describe('frames', () => {
  it.each(samples.map((s) => [s.body.kind, s]))('round-trips %s', (_kind, frame) => {
    const wire = encodeFrame(frame)
    expect(wire.readUInt32BE(0)).toBe(wire.length - 4)
    expect(plain(decodeFrame(wire.subarray(4)))).toEqual(plain(frame))
  })

  it('reassembles frames split across chunks at any byte', () => {
    const wire = Buffer.concat(samples.map(encodeFrame))
    for (const step of [1, 3, 7, 64]) {
      const decoder = new FrameDecoder()
      const got: Frame[] = []
      for (let i = 0; i < wire.length; i += step)
        got.push(...decoder.push(wire.subarray(i, i + step)))
      expect(got.map((f) => f.body.kind)).toEqual(samples.map((s) => s.body.kind))
      expect(decoder.pendingBytes).toBe(0)
    }
  })

  it('refuses an oversized length prefix before buffering the frame', () => {
    const decoder = new FrameDecoder(1024)
    const head = Buffer.alloc(4)
    head.writeUInt32BE(2048)
    expect(() => decoder.push(head)).toThrow(/exceeds 1024/)
  })

  it('refuses frames that fail validation', () => {
    const Frame = replicationSchemaRoot.lookupType('kv.v1.Frame')
    const bad = (fields: Record<string, unknown>) =>
      Frame.encode({ format: 1, from: 'n1', epoch: 1, ...fields }).finish()
    expect(() => decodeFrame(Buffer.from([0xff, 0xff, 0xff]))).toThrow(DecodeError)
    expect(() => decodeFrame(bad({}))).toThrow(/no body/)
    expect(() =>
      decodeFrame(Frame.encode({ format: 9, from: 'n1', epoch: 1, hello: {} }).finish()),
    ).toThrow(/unknown format 9/)
    expect(() =>
      decodeFrame(Frame.encode({ format: 1, from: '', epoch: 1, hello: {} }).finish()),
    ).toThrow(/sender id is empty/)
    expect(() => decodeFrame(bad({ append: { prevLsn: 2 ** 60 } }))).toThrow(/prev lsn/)
    expect(() => decodeFrame(bad({ append: { entries: [Buffer.alloc(0)] } }))).toThrow(
      /empty entry/,
    )
    expect(() => decodeFrame(bad({ hello: { to: 'x'.repeat(100) } }))).toThrow(/too long/)
    expect(() => decodeFrame(bad({ vote: { lastLsn: 2 ** 60 } }))).toThrow(/last lsn/)
  })
})

describe('session tokens', () => {
  it('round-trip and compare', () => {
    const token = encodeSession({ epoch: 3, lsn: 2 ** 45 })
    expect(decodeSession(token)).toEqual({ epoch: 3, lsn: 2 ** 45 })
    expect(laterSession({ epoch: 1, lsn: 5 }, { epoch: 2, lsn: 4 })).toEqual({ epoch: 1, lsn: 5 })
    expect(laterSession(null, { epoch: 2, lsn: 4 })).toEqual({ epoch: 2, lsn: 4 })
  })
  it.each(['', 'garbage', 's1.1', 's2.1.1', 's1.-1.2', 's1.zzzzzzzzzzzz.1'])(
    'refuses %j',
    (token) => {
      expect(() => decodeSession(token)).toThrow(/session token is malformed/)
    },
  )
})
