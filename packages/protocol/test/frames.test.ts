import {
  DecodeError,
  EntryKind,
  FrameDecoder,
  decodeFrame,
  decodeLogEntry,
  decodeSession,
  encodeFrame,
  encodeLogEntry,
  encodeSession,
  epochMax,
  laterSession,
  lsnMax,
  replicationSchemaRoot,
  schemaRoot,
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

describe('epoch and LSN bounds on the wire', () => {
  const decoded = (frame: Frame) => decodeFrame(encodeFrame(frame).subarray(4))
  const heartbeat = (epoch: number, memberEpoch = 1): Frame => ({
    from: 'n1',
    epoch,
    body: {
      kind: 'heartbeat',
      commitLsn: 1,
      leaderLastLsn: 1,
      leaderClockMs: 1,
      members: [
        {
          id: 'n2',
          role: 'follower',
          matchLsn: 1,
          lagEntries: 0,
          lagMs: 0,
          lastContactMs: 0,
          appliedLsn: 1,
          epoch: memberEpoch,
          connected: true,
        },
      ],
    },
  })
  const append = (
    epoch: number,
    fields: Partial<Record<string, number>> = {},
    entries: Uint8Array[] = [],
  ): Frame => ({
    from: 'n1',
    epoch,
    body: {
      kind: 'append',
      prevLsn: 1,
      prevEpoch: 1,
      entries,
      commitLsn: 1,
      leaderLastLsn: 1,
      leaderClockMs: 1,
      ...fields,
    },
  })

  it('sets epochMax at 2^48 and keeps the next LSN exact', () => {
    expect(epochMax).toBe(2 ** 48)
    expect(lsnMax).toBe(Number.MAX_SAFE_INTEGER)
    // 2^53 - 2^48 elections remain above the bound; the arithmetic never leaves safe integers.
    expect(Number.isSafeInteger(epochMax + 1)).toBe(true)
  })

  it('refuses the epoch bomb (2^53 - 1) and anything above epochMax, in every epoch field', () => {
    for (const bomb of [2 ** 53 - 1, 2 ** 48 + 1]) {
      expect(() => decoded(heartbeat(bomb))).toThrow(/epoch .* is not a valid epoch/)
      expect(() => decoded(heartbeat(1, bomb))).toThrow(/member epoch/)
      expect(() => decoded(append(bomb))).toThrow(/epoch .* is not a valid epoch/)
      expect(() => decoded(append(5, { prevEpoch: bomb }))).toThrow(/prev epoch/)
      expect(() =>
        decoded({
          from: 'n3',
          epoch: 5,
          body: { kind: 'vote', lastLsn: 1, lastEpoch: bomb, preVote: true, transfer: false },
        }),
      ).toThrow(/last epoch/)
      expect(() =>
        decoded({
          from: 'n1',
          epoch: 5,
          body: {
            kind: 'snapshotChunk',
            snapshotLsn: 1,
            snapshotEpoch: bomb,
            sequence: 0,
            records: [],
            last: false,
            digest: '',
            requests: [],
          },
        }),
      ).toThrow(/snapshot epoch/)
    }
    // The raw wire form too, not only what encodeFrame writes.
    const FrameType = replicationSchemaRoot.lookupType('kv.v1.Frame')
    const raw = FrameType.encode({
      format: 1,
      from: 'n1',
      epoch: 2 ** 53 - 1,
      heartbeat: { commitLsn: 0, leaderLastLsn: 0, leaderClockMs: 0, members: [] },
    }).finish()
    expect(() => decodeFrame(raw)).toThrow(DecodeError)
  })

  it('accepts epochMax itself', () => {
    expect(decoded(heartbeat(epochMax, epochMax)).epoch).toBe(epochMax)
    expect(decoded(append(epochMax, { prevEpoch: epochMax })).epoch).toBe(epochMax)
  })

  it('refuses an epoch of the sender log or snapshot above the sender epoch', () => {
    expect(() => decoded(append(3, { prevEpoch: 4 }))).toThrow(/above the sender's epoch 3/)
    expect(() =>
      decoded({
        from: 'n3',
        epoch: 3,
        body: { kind: 'vote', lastLsn: 1, lastEpoch: 4, preVote: false, transfer: false },
      }),
    ).toThrow(/above the sender's epoch/)
  })

  it('refuses an LSN of lsnMax (its successor would not be exact), and takes lsnMax - 1', () => {
    for (const field of ['prevLsn', 'commitLsn', 'leaderLastLsn']) {
      expect(() => decoded(append(2, { [field]: lsnMax }))).toThrow(/not a valid lsn/)
      expect(decoded(append(2, { [field]: lsnMax - 1 })).body).toMatchObject({
        [field]: lsnMax - 1,
      })
    }
    expect(() =>
      decoded({
        from: 'n2',
        epoch: 2,
        body: { kind: 'appendAck', matchLsn: lsnMax, reject: false, hintLsn: 1, appliedLsn: 1 },
      }),
    ).toThrow(/match lsn/)
    expect(() =>
      decoded({
        from: 'n3',
        epoch: 5,
        body: { kind: 'vote', lastLsn: lsnMax, lastEpoch: 1, preVote: true, transfer: false },
      }),
    ).toThrow(/last lsn/)
  })

  it('refuses entries of an Append whose epoch or LSN is out of range', () => {
    const LogEntryType = schemaRoot.lookupType('kv.v1.LogEntry')
    const rawEntry = (epoch: number, lsn: number) =>
      LogEntryType.encode({ format: 1, epoch, lsn, kind: EntryKind.Noop, ops: [] }).finish()
    const frameOf = (entry: Uint8Array) =>
      decoded(append(epochMax, { prevLsn: 0, prevEpoch: 0 }, [entry]))
    // The entries travel as the leader's bytes; the receiver decodes each before appending.
    const entriesOf = (frame: Frame) =>
      frame.body.kind === 'append' ? frame.body.entries.map((e) => decodeLogEntry(e)) : []
    for (const [epoch, lsn] of [
      [2 ** 53 - 1, 1],
      [2 ** 48 + 1, 1],
      [1, lsnMax],
    ] as const) {
      expect(() => entriesOf(frameOf(rawEntry(epoch, lsn)))).toThrow(DecodeError)
      expect(() =>
        encodeLogEntry({
          epoch,
          lsn,
          kind: EntryKind.Noop,
          ops: [],
          timestampMs: 0,
          requestId: '',
        }),
      ).toThrow(/refusing to encode/)
    }
    expect(entriesOf(frameOf(rawEntry(epochMax, lsnMax - 1)))[0]).toMatchObject({
      epoch: epochMax,
      lsn: lsnMax - 1,
    })
  })
})

describe('session tokens', () => {
  it('round-trip and compare', () => {
    const token = encodeSession({ epoch: 3, lsn: 2 ** 45 })
    expect(decodeSession(token)).toEqual({ epoch: 3, lsn: 2 ** 45 })
    expect(laterSession({ epoch: 1, lsn: 5 }, { epoch: 2, lsn: 4 })).toEqual({ epoch: 1, lsn: 5 })
    expect(laterSession(null, { epoch: 2, lsn: 4 })).toEqual({ epoch: 2, lsn: 4 })
  })
  it('refuses an epoch above epochMax or an LSN of lsnMax', () => {
    expect(decodeSession(encodeSession({ epoch: epochMax, lsn: lsnMax - 1 }))).toEqual({
      epoch: epochMax,
      lsn: lsnMax - 1,
    })
    expect(() => decodeSession(encodeSession({ epoch: epochMax + 1, lsn: 1 }))).toThrow(/malformed/)
    expect(() => decodeSession(encodeSession({ epoch: 1, lsn: lsnMax }))).toThrow(/malformed/)
  })
  it.each(['', 'garbage', 's1.1', 's2.1.1', 's1.-1.2', 's1.zzzzzzzzzzzz.1'])(
    'refuses %j',
    (token) => {
      expect(() => decodeSession(token)).toThrow(/session token is malformed/)
    },
  )
})
