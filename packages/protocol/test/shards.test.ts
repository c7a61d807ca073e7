import {
  crc16,
  decodeShardRecord,
  encodeShardRecord,
  formatSlotRanges,
  hashTagOf,
  mergeShardClaims,
  parseSlotRanges,
  shardMapOfFile,
  slotOfKey,
  type ShardRecord,
} from '../src/shards.js'

const members = (prefix: string) => [
  { id: `${prefix}n1`, url: 'https://127.0.0.1:7001' },
  { id: `${prefix}n2`, url: 'https://127.0.0.1:7002' },
]

describe('hash slots', () => {
  it('are CRC16-XMODEM modulo 4,096, as Redis Cluster computes them', () => {
    // The check value of CRC-16/XMODEM.
    expect(crc16(Buffer.from('123456789'))).toBe(0x31c3)
    // Redis Cluster (16,384 slots) puts "foo" in slot 12182; 12182 mod 4096 = 3990.
    expect(slotOfKey('foo')).toBe(12182 % 4096)
    expect(slotOfKey(Buffer.from('foo'))).toBe(slotOfKey('foo'))
  })

  it('hash only the tag between the first { and the next }, when it is not empty', () => {
    expect(slotOfKey('{user42}/profile')).toBe(slotOfKey('{user42}/cart'))
    expect(slotOfKey('{user42}/cart')).toBe(slotOfKey('user42'))
    expect(hashTagOf('{user42}/cart')).toBe('user42')
    // An empty tag, or no closing brace: the whole key is hashed.
    expect(hashTagOf('{}x')).toBeNull()
    expect(slotOfKey('{}x')).toBe(crc16(Buffer.from('{}x')) % 4096)
    expect(hashTagOf('{abc')).toBeNull()
    // Only the first tag counts.
    expect(slotOfKey('{a}{b}')).toBe(slotOfKey('a'))
    expect(hashTagOf('x{}{y}')).toBeNull()
  })
})

describe('slot ranges', () => {
  it('parse, merge and print', () => {
    expect(parseSlotRanges('10-20, 5,21-30')).toEqual([
      { first: 5, last: 5 },
      { first: 10, last: 30 },
    ])
    expect(formatSlotRanges(parseSlotRanges('0-99,200'))).toBe('0-99,200')
    expect(parseSlotRanges('')).toEqual([])
  })

  it('refuse what is not a slot with a message that says why', () => {
    expect(() => parseSlotRanges('4096')).toThrow(/out of range/)
    expect(() => parseSlotRanges('9-3')).toThrow(/ends before it starts/)
    expect(() => parseSlotRanges('a-b')).toThrow(/not a slot/)
  })
})

describe('the shard map file', () => {
  it('gives every slot to exactly one group at version 1', () => {
    const map = shardMapOfFile({
      groups: [
        { id: 'g1', members: members('a'), slots: '0-2047' },
        { id: 'g2', members: members('b'), slots: '2048-4095' },
      ],
    })
    expect(map.version).toBe(1)
    expect(map.slots).toEqual([
      { first: 0, last: 2047, group: 'g1', version: 1, sinceLsn: 0 },
      { first: 2048, last: 4095, group: 'g2', version: 1, sinceLsn: 0 },
    ])
  })

  it('refuses overlaps, gaps and duplicate ids', () => {
    const g = (id: string, prefix: string, slots: string) => ({
      id,
      members: members(prefix),
      slots,
    })
    expect(() =>
      shardMapOfFile({ groups: [g('g1', 'a', '0-4095'), g('g2', 'b', '4095')] }),
    ).toThrow(/slot 4095 is given to both g1 and g2/)
    expect(() => shardMapOfFile({ groups: [g('g1', 'a', '0-4094')] })).toThrow(
      /slot 4095 is owned by no group/,
    )
    expect(() =>
      shardMapOfFile({ groups: [g('g1', 'a', '0-2047'), g('g1', 'b', '2048-4095')] }),
    ).toThrow(/listed twice/)
    expect(() =>
      shardMapOfFile({ groups: [g('g1', 'a', '0-2047'), g('g2', 'a', '2048-4095')] }),
    ).toThrow(/unique across groups/)
    expect(() => shardMapOfFile({ slotCount: 16384, groups: [g('g1', 'a', '0-4095')] })).toThrow(
      /slotCount/,
    )
  })
})

describe("merging the groups' claims", () => {
  it('gives each slot to its highest version', () => {
    const file = shardMapOfFile({
      groups: [
        { id: 'g1', members: members('a'), slots: '0-2047' },
        { id: 'g2', members: members('b'), slots: '2048-4095' },
      ],
    })
    // g1 moved 0-99 to g2 at version 2; g1's own claim on them (version 1) is older.
    const merged = mergeShardClaims(
      file.groups,
      [
        [{ first: 0, last: 2047, group: 'g1', version: 1, sinceLsn: 0 }],
        [
          { first: 0, last: 99, group: 'g2', version: 2, sinceLsn: 57 },
          { first: 2048, last: 4095, group: 'g2', version: 1, sinceLsn: 0 },
        ],
      ],
      file,
    )
    expect(merged.version).toBe(2)
    expect(merged.slots).toEqual([
      { first: 0, last: 99, group: 'g2', version: 2, sinceLsn: 57 },
      { first: 100, last: 2047, group: 'g1', version: 1, sinceLsn: 0 },
      { first: 2048, last: 4095, group: 'g2', version: 1, sinceLsn: 0 },
    ])
  })
})

describe('the shard record', () => {
  const base: ShardRecord = {
    slots: [{ first: 0, last: 4095, group: 'g1', version: 3, sinceLsn: 12 }],
    fenced: [{ first: 5, last: 9 }],
    move: {
      id: 'm-1',
      slots: [{ first: 5, last: 9 }],
      target: 'g2',
      phase: 'fenced',
      fenceLsn: 40,
      version: 4,
      startedAtMs: 1,
      updatedAtMs: 2,
      targetLsn: 0,
      error: '',
    },
    history: [],
    imports: [
      {
        id: 'm-0',
        slots: [{ first: 1, last: 1 }],
        source: 'g2',
        state: 'owned',
        sourceEpoch: 7,
        cursorLsn: 99,
        keys: 3,
      },
    ],
  }

  it('round-trips through protobuf', () => {
    expect(decodeShardRecord(encodeShardRecord(base))).toEqual(base)
  })

  it('never writes or reads a record that does not cover every slot once', () => {
    const gap = { ...base, slots: [{ first: 0, last: 4094, group: 'g1', version: 1, sinceLsn: 0 }] }
    expect(() => encodeShardRecord(gap)).toThrow(/cover/)
    expect(() => decodeShardRecord(Buffer.from([0x08, 0x01]))).toThrow(/cover/)
  })
})
