import type protobuf from 'protobufjs'
import {
  DecodeError,
  EncodeError,
  EntryKind,
  OpType,
  decodeLogEntry,
  decodeRequestRecord,
  decodeStoredRecord,
  decodeUndoRecord,
  encodeLogEntry,
  encodeRequestRecord,
  encodeStoredRecord,
  encodeUndoRecord,
  schemaRoot,
  type LogEntry,
} from '../src/index.js'

const sample: LogEntry = {
  epoch: 7,
  lsn: 2 ** 52 + 3,
  kind: EntryKind.Batch,
  ops: [
    { type: OpType.Put, key: Buffer.from('users/1'), value: Buffer.from([0, 1, 2, 255]) },
    { type: OpType.Delete, key: Buffer.from('users/2'), value: Buffer.alloc(0) },
  ],
  timestampMs: 1_767_225_600_000,
  requestId: 'req-1',
  requestFingerprint: Buffer.alloc(16, 0xab),
}

describe('log entry codec', () => {
  it('round-trips every field, including LSNs above 2^32', () => {
    expect(decodeLogEntry(encodeLogEntry(sample))).toEqual(sample)
  })

  it('refuses to encode an entry that breaks the rules', () => {
    expect(() => encodeLogEntry({ ...sample, lsn: 0 })).toThrow(EncodeError)
    expect(() => encodeLogEntry({ ...sample, kind: EntryKind.Put })).toThrow(/one put op/)
    expect(() =>
      encodeLogEntry({
        ...sample,
        ops: [{ type: OpType.Put, key: Buffer.alloc(0), value: Buffer.alloc(1) }],
      }),
    ).toThrow(/key is empty/)
    expect(() => encodeLogEntry({ ...sample, kind: EntryKind.Noop })).toThrow(/NOOP/)
  })

  it('rejects garbage, unknown formats and unsafe numbers when decoding', () => {
    expect(() => decodeLogEntry(Buffer.from([0xff, 0xff, 0xff, 0xff]))).toThrow(DecodeError)
    const type = schemaRoot.lookupType('kv.v1.LogEntry')
    const withFormat = (format: number, lsn: number) =>
      type
        .encode({ format, epoch: 1, lsn, kind: 1, ops: [{ type: 1, key: Buffer.from('k') }] })
        .finish()
    expect(() => decodeLogEntry(withFormat(2, 1))).toThrow(/unknown format 2/)
    expect(() => decodeLogEntry(withFormat(0, 1))).toThrow(/unknown format 0/)
    expect(() => decodeLogEntry(withFormat(1, 2 ** 60))).toThrow(/not a valid lsn/)
    expect(decodeLogEntry(withFormat(1, 5)).lsn).toBe(5)
    const unknownOp = type
      .encode({ format: 1, epoch: 1, lsn: 1, kind: 3, ops: [{ type: 9, key: Buffer.from('k') }] })
      .finish()
    expect(() => decodeLogEntry(unknownOp)).toThrow(/unknown op type 9/)
  })
})

describe('request fingerprints', () => {
  const logEntryType = schemaRoot.lookupType('kv.v1.LogEntry')
  const requestRecordType = schemaRoot.lookupType('kv.v1.RequestRecord')
  const rawEntry = (fields: Record<string, unknown>) =>
    logEntryType
      .encode({
        format: 1,
        epoch: 1,
        lsn: 1,
        kind: 1,
        ops: [{ type: 1, key: Buffer.from('k') }],
        ...fields,
      })
      .finish()

  it('an entry without one decodes with an empty one, and encodes to the bytes it had before', () => {
    const { requestFingerprint: _, ...withoutField } = sample
    // What the encoder wrote before the field existed.
    const before = logEntryType.encode({ format: 1, ...withoutField }).finish()
    expect(decodeLogEntry(before)).toEqual({ ...sample, requestFingerprint: Buffer.alloc(0) })
    expect(Buffer.from(encodeLogEntry(withoutField))).toEqual(Buffer.from(before))
    const empty = { ...sample, requestFingerprint: Buffer.alloc(0) }
    expect(Buffer.from(encodeLogEntry(empty))).toEqual(Buffer.from(before))
  })

  it('refuses a fingerprint of the wrong length, or one without a request id', () => {
    for (const length of [1, 15, 17, 32]) {
      const bytes = rawEntry({ requestId: 'r', requestFingerprint: Buffer.alloc(length, 1) })
      expect(() => decodeLogEntry(bytes)).toThrow(/request fingerprint is \d+ bytes/)
      expect(() =>
        encodeLogEntry({ ...sample, requestFingerprint: Buffer.alloc(length, 1) }),
      ).toThrow(EncodeError)
    }
    expect(() =>
      decodeLogEntry(rawEntry({ requestId: '', requestFingerprint: Buffer.alloc(16, 1) })),
    ).toThrow(/without a request id/)
    expect(() => encodeLogEntry({ ...sample, requestId: '' })).toThrow(/without a request id/)
  })

  it('request records round-trip it, and an old record decodes with an empty one', () => {
    const record = { lsn: 3, epoch: 2, timestampMs: 99, fingerprint: Buffer.alloc(16, 7) }
    expect(decodeRequestRecord(encodeRequestRecord(record))).toEqual(record)
    const none = { ...record, fingerprint: Buffer.alloc(0) }
    expect(decodeRequestRecord(encodeRequestRecord(none))).toEqual(none)
    const old = requestRecordType.encode({ format: 1, lsn: 3, epoch: 2, timestampMs: 99 }).finish()
    expect(decodeRequestRecord(old)).toEqual(none)
    expect(Buffer.from(encodeRequestRecord(none))).toEqual(Buffer.from(old))
  })

  it('request records refuse a fingerprint of the wrong length', () => {
    for (const length of [1, 8, 15, 17, 32]) {
      const bad = requestRecordType
        .encode({ format: 1, lsn: 3, epoch: 2, timestampMs: 99, fingerprint: Buffer.alloc(length) })
        .finish()
      expect(() => decodeRequestRecord(bad)).toThrow(/request fingerprint is \d+ bytes/)
      expect(() =>
        encodeRequestRecord({
          lsn: 3,
          epoch: 2,
          timestampMs: 99,
          fingerprint: Buffer.alloc(length),
        }),
      ).toThrow(EncodeError)
    }
  })
})

describe('stored record and undo codecs', () => {
  it('round-trip', () => {
    const record = { value: Buffer.from('v'), version: 12, tombstone: false }
    expect(decodeStoredRecord(encodeStoredRecord(record))).toEqual(record)
    const undo = {
      lsn: 9,
      images: [
        { key: Buffer.from('a'), prior: record },
        { key: Buffer.from('b'), prior: null },
      ],
    }
    expect(decodeUndoRecord(encodeUndoRecord(undo))).toEqual(undo)
  })

  it('rejects a tombstone with a value and a zero version', () => {
    expect(() =>
      encodeStoredRecord({ value: Buffer.from('x'), version: 1, tombstone: true }),
    ).toThrow(/tombstone carries a value/)
    const type = schemaRoot.lookupType('kv.v1.StoredRecord')
    expect(() =>
      decodeStoredRecord(type.encode({ format: 1, value: Buffer.from('x') }).finish()),
    ).toThrow(/version 0/)
  })
})

describe('schema and TypeScript types stay in step', () => {
  const fields = (name: string) =>
    Object.keys((schemaRoot.lookupType(name) as protobuf.Type).fields).sort()

  it('every field of the TypeScript types exists in the .proto, and back', () => {
    expect(fields('kv.v1.LogEntry')).toEqual(['format', ...Object.keys(sample)].sort())
    expect(fields('kv.v1.Op')).toEqual(['key', 'prev', 'stamp', 'type', 'value'])
    expect(fields('kv.v1.Stamp')).toEqual(['logical', 'region', 'wallMs'])
    expect(fields('kv.v1.StoredRecord')).toEqual([
      'format',
      'stamp',
      'tombstone',
      'value',
      'version',
    ])
    expect(fields('kv.v1.UndoRecord')).toEqual(['format', 'images', 'lsn'])
    expect(fields('kv.v1.UndoImage')).toEqual(['key', 'prior'])
    expect(fields('kv.v1.RequestRecord')).toEqual([
      'epoch',
      'fingerprint',
      'format',
      'lsn',
      'timestampMs',
    ])
  })

  it('enum numbers match the .proto', () => {
    const op = schemaRoot.lookupEnum('kv.v1.OpType').values
    expect(op).toMatchObject({ OP_TYPE_PUT: OpType.Put, OP_TYPE_DELETE: OpType.Delete })
    const kind = schemaRoot.lookupEnum('kv.v1.EntryKind').values
    expect(kind).toMatchObject({
      ENTRY_KIND_PUT: EntryKind.Put,
      ENTRY_KIND_DELETE: EntryKind.Delete,
      ENTRY_KIND_BATCH: EntryKind.Batch,
      ENTRY_KIND_NOOP: EntryKind.Noop,
      ENTRY_KIND_MEMBERSHIP: EntryKind.Membership,
      ENTRY_KIND_EXPIRY: EntryKind.Expiry,
    })
  })

  it('an EXPIRY entry holds deletes only', () => {
    const del = { type: OpType.Delete, key: Buffer.from('a'), value: Buffer.alloc(0) }
    const expiry = {
      ...sample,
      kind: EntryKind.Expiry,
      ops: [del, { ...del, key: Buffer.from('b') }],
    }
    expect(decodeLogEntry(encodeLogEntry(expiry)).kind).toBe(EntryKind.Expiry)
    expect(() => encodeLogEntry({ ...sample, kind: EntryKind.Expiry })).toThrow(
      /EXPIRY entry holds a put/,
    )
    expect(() => encodeLogEntry({ ...expiry, ops: [] })).toThrow(/EXPIRY entry holds 0 ops/)
  })
})
