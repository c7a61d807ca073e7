import {
  DecodeError,
  compareStamps,
  conflictIdOfKey,
  conflictKey,
  decodeConflictRecord,
  decodeRegionBatch,
  decodeStoredRecord,
  encodeConflictRecord,
  encodeRegionBatch,
  encodeStoredRecord,
  formatStamp,
  parseStamp,
  regionsOfFile,
  type RegionBatch,
} from '../src/index.js'

const stamp = (wallMs: number, logical: number, region: string) => ({ wallMs, logical, region })

const batch = (): RegionBatch => ({
  source: 'us',
  sourceEpoch: 3,
  fromLsn: 10,
  throughLsn: 12,
  sourceCommitLsn: 12,
  sentAtMs: 1_700_000_000_000,
  entries: [
    {
      lsn: 11,
      timestampMs: 1_700_000_000_000,
      ops: [
        {
          type: 1,
          key: Buffer.from('a'),
          value: Buffer.from('1'),
          stamp: stamp(1_700_000_000_000, 0, 'us'),
          prev: stamp(1_699_999_999_000, 2, 'eu'),
        },
        {
          type: 2,
          key: Buffer.from('b'),
          value: Buffer.alloc(0),
          stamp: stamp(1_700_000_000_000, 1, 'us'),
        },
      ],
    },
  ],
})

describe('stamps', () => {
  it('order by time, then counter, then region', () => {
    expect(compareStamps(stamp(1, 0, 'us'), stamp(2, 0, 'eu'))).toBeLessThan(0)
    expect(compareStamps(stamp(2, 1, 'eu'), stamp(2, 0, 'us'))).toBeGreaterThan(0)
    expect(compareStamps(stamp(2, 0, 'eu'), stamp(2, 0, 'us'))).toBeLessThan(0)
    expect(compareStamps(stamp(2, 0, 'us'), stamp(2, 0, 'us'))).toBe(0)
  })

  it('read back as they are written, and refuse anything else', () => {
    const s = stamp(1_764_790_000_123, 7, 'eu-west')
    expect(formatStamp(s)).toBe('1764790000123.7@eu-west')
    expect(parseStamp(formatStamp(s))).toEqual(s)
    for (const bad of ['', '1.0', '1.0@', 'x.0@us', '1.0@US', '0.0@us', '1.0@us@eu'])
      expect(() => parseStamp(bad), bad).toThrow()
  })

  it('travel in stored records, and a bad one is refused on decode', () => {
    const record = {
      value: Buffer.from('v'),
      version: 4,
      tombstone: false,
      stamp: stamp(5, 1, 'us'),
    }
    expect(decodeStoredRecord(encodeStoredRecord(record))).toEqual(record)
    const plain = { value: Buffer.from('v'), version: 4, tombstone: false }
    expect(decodeStoredRecord(encodeStoredRecord(plain))).toEqual(plain)
    expect(() => encodeStoredRecord({ ...record, stamp: stamp(5, 1, 'Not A Region') })).toThrow(
      /region/,
    )
  })
})

describe('shipped batches', () => {
  it('round-trip', () => {
    expect(decodeRegionBatch(encodeRegionBatch(batch()))).toEqual(batch())
  })

  it('refuse what a region must not send', () => {
    const cases: [string, (b: RegionBatch) => void][] = [
      [
        'another region',
        (b) => void ((b.entries[0]!.ops[0]!.stamp as { region: string }).region = 'eu'),
      ],
      ['an unstamped op', (b) => void delete b.entries[0]!.ops[0]!.stamp],
      ['a reserved key', (b) => void (b.entries[0]!.ops[0]!.key = Buffer.from('\0auth/x'))],
      ['an lsn outside the range', (b) => void (b.entries[0]!.lsn = 13)],
      ['a commit lsn below the range', (b) => void (b.sourceCommitLsn = 11)],
      ['a bad source', (b) => void (b.source = 'EU')],
    ]
    for (const [what, spoil] of cases) {
      const b = batch()
      spoil(b)
      expect(() => encodeRegionBatch(b), what).toThrow()
    }
    // The same checks on decode: a forged frame is refused, not applied.
    expect(() => decodeRegionBatch(Buffer.from([0x08, 0x63]))).toThrow(DecodeError)
  })
})

describe('the conflict record', () => {
  it('keys sort by LSN and round-trip', () => {
    expect(Buffer.compare(conflictKey(9, 0), conflictKey(10, 0))).toBeLessThan(0)
    expect(conflictIdOfKey(conflictKey(42, 3))).toBe('00000000000000000042-3')
    const record = {
      key: Buffer.from('k'),
      winner: { stamp: stamp(5, 0, 'us'), deleted: false, value: Buffer.from('w') },
      loser: { stamp: stamp(4, 0, 'eu'), deleted: true, value: Buffer.alloc(0) },
      detectedIn: 'us',
      detectedAtMs: 7,
      lsn: 42,
    }
    expect(decodeConflictRecord(encodeConflictRecord(record))).toEqual(record)
  })
})

describe('the regions file', () => {
  const file = {
    regions: [
      { id: 'us', members: [{ id: 'n1', url: 'https://10.0.0.1:7001' }] },
      { id: 'eu', members: [{ id: 'n4', url: 'https://10.0.1.1:7001' }] },
    ],
  }
  it('is read', () => {
    expect(regionsOfFile(file).map((r) => r.id)).toEqual(['us', 'eu'])
  })
  it('refuses one region, bad ids and a member in two regions', () => {
    expect(() => regionsOfFile({ regions: [file.regions[0]] })).toThrow(/at least two/)
    expect(() =>
      regionsOfFile({ regions: [{ ...file.regions[0], id: 'US' }, file.regions[1]] }),
    ).toThrow(/not valid/)
    expect(() =>
      regionsOfFile({
        regions: [
          file.regions[0],
          { id: 'eu', members: [{ id: 'n1', url: 'https://10.0.1.1:7001' }] },
        ],
      }),
    ).toThrow(/twice/)
  })
})
