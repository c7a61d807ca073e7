import {
  DecodeError,
  EncodeError,
  decodeFenceRecord,
  decodeLeaseRecord,
  encodeFenceRecord,
  encodeLeaseRecord,
  leaseIdOf,
  leaseKeyOf,
  parseLeaseKey,
} from '../src/index.js'

describe('lease and fence records', () => {
  it('round-trip, and the lease key names its id', () => {
    const record = {
      id: leaseIdOf(12, 3),
      ttlMs: 5000,
      grantedLsn: 12,
      keys: [{ key: Buffer.from('a/b'), version: 14 }],
    }
    expect(decodeLeaseRecord(encodeLeaseRecord(record))).toEqual(record)
    expect(parseLeaseKey(leaseKeyOf('12-3'))).toBe('12-3')
    expect(parseLeaseKey(Buffer.from('\u0000lease/x'))).toBeNull()
    expect(parseLeaseKey(Buffer.from('lease/12-3'))).toBeNull()
    expect(decodeFenceRecord(encodeFenceRecord(77))).toBe(77)
  })

  it('refuse malformed records on both sides', () => {
    expect(() => encodeLeaseRecord({ id: 'x', ttlMs: 5000, grantedLsn: 1, keys: [] })).toThrow(
      EncodeError,
    )
    expect(() => encodeLeaseRecord({ id: '1-1', ttlMs: 1, grantedLsn: 1, keys: [] })).toThrow(
      EncodeError,
    )
    expect(() => encodeFenceRecord(0)).toThrow(EncodeError)
    expect(() => decodeLeaseRecord(Buffer.from([0xff, 0xff, 0xff]))).toThrow(DecodeError)
    expect(() => decodeLeaseRecord(encodeFenceRecord(5))).toThrow(DecodeError)
    expect(() => decodeFenceRecord(Buffer.alloc(0))).toThrow(DecodeError)
  })
})
