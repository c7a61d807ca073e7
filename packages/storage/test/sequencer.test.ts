import { KvError } from '@kvstore/protocol'
import { Sequencer, requestFingerprint, type Store, type WriteRequest } from '../src/index.js'
import { openStore, useTempDir } from './helpers.js'

const tmp = useTempDir()
let store: Store
let seq: Sequencer

const b = (s: string) => Buffer.from(s)

beforeEach(async () => {
  store = await openStore(tmp.dir)
  seq = new Sequencer(store, { now: () => 42, commitOnAppend: true })
})
afterEach(async () => {
  await store.close()
})

async function failure(promise: Promise<unknown>): Promise<KvError> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(KvError)
  return err as KvError
}

describe('Sequencer', () => {
  it('gives each write the next LSN and commits it on append', async () => {
    const r1 = await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('a'), value: b('1') }] })
    const r2 = await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('a'), value: b('2') }] })
    // Unconditional puts are blind: they do not read, so they do not know the prior version.
    expect(r1).toMatchObject({
      lsn: 1,
      epoch: 1,
      results: [{ version: 1, previousVersion: undefined }],
    })
    const r3 = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('a'), value: b('3'), ifExists: true }],
    })
    expect(r2).toMatchObject({ lsn: 2, results: [{ version: 2 }] })
    expect(r3.results[0]).toMatchObject({ version: 3, previousVersion: 2 })
    expect(store.meta).toMatchObject({ appliedLsn: 3, commitLsn: 3 })
    const [logged] = await store.readLog(1, { entriesMax: 1, bytesMax: 1e6 })
    expect(logged?.timestampMs).toBe(42)
  })

  it('checks If-Match, If-None-Match and If-Match: * style conditions', async () => {
    await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('a'), value: b('1') }] })
    const exists = await failure(
      seq.write({
        kind: 'put',
        ops: [{ type: 'put', key: b('a'), value: b('x'), ifAbsent: true }],
      }),
    )
    expect(exists).toMatchObject({
      code: 'KV_ERR_PRECONDITION_FAILED',
      details: { currentVersion: 1 },
    })
    const stale = await failure(
      seq.write({ kind: 'put', ops: [{ type: 'put', key: b('a'), value: b('x'), ifVersion: 7 }] }),
    )
    expect(stale.details).toMatchObject({ key: 'a', currentVersion: 1 })
    const missing = await failure(
      seq.write({
        kind: 'put',
        ops: [{ type: 'put', key: b('zz'), value: b('x'), ifExists: true }],
      }),
    )
    expect(missing.code).toBe('KV_ERR_PRECONDITION_FAILED')
    const ok = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('a'), value: b('2'), ifVersion: 1 }],
    })
    expect(ok.lsn).toBe(2)
    // Refused writes took no LSN.
    expect(store.appliedLsn).toBe(2)
  })

  it('refuses to delete a missing key with KV_ERR_KEY_NOT_FOUND, but a batch delete is a no-op', async () => {
    const err = await failure(
      seq.write({ kind: 'delete', ops: [{ type: 'delete', key: b('nope') }] }),
    )
    expect(err.code).toBe('KV_ERR_KEY_NOT_FOUND')
    const batch = await seq.write({
      kind: 'batch',
      ops: [
        { type: 'delete', key: b('nope') },
        { type: 'put', key: b('x'), value: b('1') },
      ],
    })
    expect(batch.results.map((r) => r.version)).toEqual([null, 1])
  })

  it('evaluates batch ops in order, and a failed condition writes nothing', async () => {
    const r = await seq.write({
      kind: 'batch',
      ops: [
        { type: 'put', key: b('k'), value: b('1'), ifAbsent: true },
        { type: 'put', key: b('k'), value: b('2'), ifVersion: 1 },
      ],
    })
    expect(r.results.map((x) => x.version)).toEqual([1, 1])
    expect(store.getSync(b('k'))?.value.toString()).toBe('2')
    const err = await failure(
      seq.write({
        kind: 'batch',
        ops: [
          { type: 'put', key: b('new'), value: b('1') },
          { type: 'delete', key: b('k'), ifVersion: 99 },
        ],
      }),
    )
    expect(err.details).toMatchObject({ opIndex: 1, key: 'k', currentVersion: 1 })
    expect(store.getSync(b('new'))).toBeNull()
    expect(store.appliedLsn).toBe(1)
  })

  it('sees writes that are accepted but not yet durable (create-only race)', async () => {
    const attempts = Array.from({ length: 10 }, (_, i) =>
      seq.write({
        kind: 'put',
        ops: [{ type: 'put', key: b('lock'), value: b(`owner${i}`), ifAbsent: true }],
      }),
    )
    const settled = await Promise.allSettled(attempts)
    expect(settled.filter((s) => s.status === 'fulfilled')).toHaveLength(1)
    expect(settled.filter((s) => s.status === 'rejected')).toHaveLength(9)
    // Compare-and-set chains issued concurrently: each sees the previous pending version.
    const first = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('ctr'), value: b('0') }],
    })
    const v = first.lsn
    const [a, c] = await Promise.allSettled([
      seq.write({
        kind: 'put',
        ops: [{ type: 'put', key: b('ctr'), value: b('1'), ifVersion: v }],
      }),
      seq.write({
        kind: 'put',
        ops: [{ type: 'put', key: b('ctr'), value: b('1'), ifVersion: v }],
      }),
    ])
    expect(a?.status).toBe('fulfilled')
    expect(c?.status).toBe('rejected')
  })

  it('refuses a write when the queue is full without leaving a gap in the log', async () => {
    await store.close()
    store = await openStore(tmp.dir, { writeQueueWritesMax: 3 })
    seq = new Sequencer(store, { now: () => 0, commitOnAppend: true })
    const settled = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) =>
        seq.write({ kind: 'put', ops: [{ type: 'put', key: b(`k${i}`), value: b('v') }] }),
      ),
    )
    expect(settled.filter((s) => s.status === 'rejected')).toHaveLength(3)
    const next = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('after'), value: b('v') }],
    })
    expect(next.lsn).toBe(4)
    expect((await store.verify()).entries).toBe(4)
  })

  it('does not reveal a write that is not durable yet through a failed condition', async () => {
    // The first put is accepted but still on its way to disk when the create-only put arrives.
    const first = seq.write({ kind: 'put', ops: [{ type: 'put', key: b('k'), value: b('1') }] })
    const second = seq
      .write({ kind: 'put', ops: [{ type: 'put', key: b('k'), value: b('2'), ifAbsent: true }] })
      .then(
        () => ({ ok: true, appliedWhenAnswered: store.appliedLsn }),
        (err: KvError) => ({ ok: false, code: err.code, appliedWhenAnswered: store.appliedLsn }),
      )
    const answer = await second
    expect(answer).toMatchObject({ ok: false, code: 'KV_ERR_PRECONDITION_FAILED' })
    // The 412 named version 1, so version 1 was durable before the client heard of it.
    expect(answer.appliedWhenAnswered).toBe(1)
    await first
  })

  it('does not answer 404 for a delete that is not durable yet', async () => {
    await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('d'), value: b('1') }] })
    const deleting = seq.write({ kind: 'delete', ops: [{ type: 'delete', key: b('d') }] })
    const again = await seq.write({ kind: 'delete', ops: [{ type: 'delete', key: b('d') }] }).then(
      () => null,
      (err: KvError) => ({ code: err.code, appliedWhenAnswered: store.appliedLsn }),
    )
    expect(again).toEqual({ code: 'KV_ERR_KEY_NOT_FOUND', appliedWhenAnswered: 2 })
    await deleting
  })

  it('continues the log after a truncation, forgetting the truncated writes', async () => {
    await store.close()
    store = await openStore(tmp.dir)
    // Not committed on append: the tail can be truncated.
    seq = new Sequencer(store, { now: () => 0, commitOnAppend: false })
    await store.setHardState({ commitLsn: 0 })
    await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('t'), value: b('1') }] })
    await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('t'), value: b('2') }] })
    await store.setHardState({ commitLsn: 1 })
    await store.truncateAfter(1)
    // A condition on the truncated write's version now fails; on the surviving one it holds.
    const stale = await failure(
      seq.write({ kind: 'put', ops: [{ type: 'put', key: b('t'), value: b('x'), ifVersion: 2 }] }),
    )
    expect(stale.details.currentVersion).toBe(1)
    const next = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: b('t'), value: b('3'), ifVersion: 1 }],
    })
    expect(next.lsn).toBe(2)
    expect(store.failed).toBeNull()
  })
})

describe('request ids are bound to their request', () => {
  const putA: WriteRequest = {
    kind: 'put',
    ops: [{ type: 'put', key: b('a'), value: b('1') }],
    requestId: 'order-42',
  }

  it('a retry of the same request is deduplicated, durable or in flight', async () => {
    const [first, concurrent] = await Promise.all([seq.write(putA), seq.write({ ...putA })])
    expect(first).toMatchObject({ lsn: 1, deduplicated: false })
    expect(concurrent).toMatchObject({ lsn: 1, deduplicated: true })
    // A copy of the request, not the same object: equal bytes are the same request.
    const later = await seq.write({
      kind: 'put',
      ops: [{ type: 'put', key: Buffer.from('a'), value: Buffer.from('1') }],
      requestId: 'order-42',
    })
    expect(later).toMatchObject({ lsn: 1, deduplicated: true, results: [{ version: 1 }] })
    expect(store.appliedLsn).toBe(1)
  })

  it.each<[string, WriteRequest]>([
    ['another key', { ...putA, ops: [{ type: 'put', key: b('b'), value: b('1') }] }],
    ['another value', { ...putA, ops: [{ type: 'put', key: b('a'), value: b('2') }] }],
    ['another kind', { ...putA, kind: 'delete', ops: [{ type: 'delete', key: b('a') }] }],
    ['a batch of the same op', { ...putA, kind: 'batch' }],
    [
      'a condition',
      { ...putA, ops: [{ type: 'put', key: b('a'), value: b('1'), ifAbsent: true }] },
    ],
    [
      'another version condition',
      { ...putA, ops: [{ type: 'put', key: b('a'), value: b('1'), ifVersion: 1 }] },
    ],
    ['one more op', { ...putA, kind: 'batch', ops: [...putA.ops, ...putA.ops] }],
  ])('the same id on %s is refused with KV_ERR_REQUEST_ID_REUSED', async (_, other) => {
    await seq.write(putA)
    const err = await failure(seq.write(other))
    expect(err.code).toBe('KV_ERR_REQUEST_ID_REUSED')
    expect(err.status).toBe(409)
    expect(err.details).toEqual({ requestId: 'order-42', lsn: 1 })
    // Nothing was written: no entry, and neither key changed.
    expect(store.appliedLsn).toBe(1)
    expect(store.getSync(b('a'))?.value.toString()).toBe('1')
    expect(store.getSync(b('b'))).toBeNull()
    // The first request is still the one the id is bound to.
    expect(await seq.write(putA)).toMatchObject({ lsn: 1, deduplicated: true })
  })

  it('an in-flight request with another body is refused once the first is durable', async () => {
    const first = seq.write(putA)
    const other = seq.write({ ...putA, ops: [{ type: 'put', key: b('b'), value: b('x') }] }).then(
      () => null,
      (err: KvError) => ({ code: err.code, lsn: err.details.lsn, applied: store.appliedLsn }),
    )
    expect(await first).toMatchObject({ lsn: 1, deduplicated: false })
    // The 409 named LSN 1 only once it was durable.
    expect(await other).toEqual({ code: 'KV_ERR_REQUEST_ID_REUSED', lsn: 1, applied: 1 })
    expect(store.getSync(b('b'))).toBeNull()
    expect(store.appliedLsn).toBe(1)
  })

  it('an id whose first request failed is free for another one', async () => {
    const refused = failure(
      seq.write({ ...putA, ops: [{ type: 'put', key: b('a'), value: b('1'), ifExists: true }] }),
    )
    const other = seq.write({ ...putA, ops: [{ type: 'put', key: b('b'), value: b('2') }] })
    expect((await refused).code).toBe('KV_ERR_PRECONDITION_FAILED')
    expect(await other).toMatchObject({ lsn: 1, deduplicated: false })
    expect(store.getSync(b('b'))?.value.toString()).toBe('2')
  })

  it('writes the fingerprint into the entry and the request record, and none without an id', async () => {
    await seq.write(putA)
    await seq.write({ kind: 'put', ops: [{ type: 'put', key: b('c'), value: b('3') }] })
    const [withId, withoutId] = await store.readLog(1, { entriesMax: 2, bytesMax: 1e6 })
    const fingerprint = requestFingerprint(putA)
    expect(fingerprint).toHaveLength(16)
    expect(withId?.requestFingerprint?.equals(fingerprint)).toBe(true)
    expect(withoutId?.requestFingerprint).toHaveLength(0)
    expect(store.getRequest('order-42')?.fingerprint.equals(fingerprint)).toBe(true)
  })
})

describe('requestFingerprint', () => {
  const base: WriteRequest = {
    kind: 'batch',
    ops: [
      { type: 'put', key: b('ab'), value: b('c') },
      { type: 'delete', key: b('d') },
    ],
  }
  const fp = (request: WriteRequest) => requestFingerprint(request).toString('hex')

  it('is 16 bytes, the same for equal requests, and ignores the id', () => {
    expect(requestFingerprint(base)).toHaveLength(16)
    expect(fp({ ...base, requestId: 'x' })).toBe(
      fp({
        kind: 'batch',
        ops: [
          { type: 'put', key: b('ab'), value: b('c') },
          { type: 'delete', key: b('d') },
        ],
      }),
    )
    // What the sequencer writes the same way: a put without a value, a delete's value.
    expect(fp({ kind: 'put', ops: [{ type: 'put', key: b('k') }] })).toBe(
      fp({ kind: 'put', ops: [{ type: 'put', key: b('k'), value: Buffer.alloc(0) }] }),
    )
    expect(fp({ kind: 'delete', ops: [{ type: 'delete', key: b('k'), value: b('v') }] })).toBe(
      fp({ kind: 'delete', ops: [{ type: 'delete', key: b('k') }] }),
    )
  })

  it('differs for every field, and where the bytes of key and value meet', () => {
    const variants: WriteRequest[] = [
      base,
      { ...base, kind: 'put' },
      { ...base, ops: [{ type: 'put', key: b('a'), value: b('bc') }, base.ops[1]!] },
      { ...base, ops: [{ type: 'put', key: b('abc'), value: b('') }, base.ops[1]!] },
      { ...base, ops: [{ type: 'put', key: b('ab'), value: b('c') }] },
      { ...base, ops: [base.ops[1]!, base.ops[0]!] },
      { ...base, ops: [base.ops[0]!, { type: 'put', key: b('d') }] },
      { ...base, ops: [base.ops[0]!, { type: 'delete', key: b('d'), ifExists: true }] },
      { ...base, ops: [base.ops[0]!, { type: 'delete', key: b('d'), ifAbsent: true }] },
      { ...base, ops: [base.ops[0]!, { type: 'delete', key: b('d'), ifVersion: 0 }] },
      { ...base, ops: [base.ops[0]!, { type: 'delete', key: b('d'), ifVersion: 1 }] },
    ]
    expect(new Set(variants.map(fp)).size).toBe(variants.length)
  })
})
