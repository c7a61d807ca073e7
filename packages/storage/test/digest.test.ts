import { createHash } from 'node:crypto'
import { hashDigestRecord } from '../src/index.js'
import { del, entry, openStore, put, useTempDir } from './helpers.js'

/** The digest format written out by hand, byte by byte, independently of the code. */
function expectedBytes(key: Buffer, version: number, tombstone: boolean, value: Buffer): Buffer {
  const header = Buffer.alloc(17)
  header.writeBigUInt64BE(BigInt(version), 4)
  header.writeUInt32BE(key.length, 0)
  header[12] = tombstone ? 1 : 0
  header.writeUInt32BE(value.length, 13)
  return Buffer.concat([header, key, value])
}

describe('the state digest format', () => {
  const tmp = useTempDir()

  it('hashes a 17-byte header, the key and the value of each record', () => {
    const records = [
      { key: Buffer.from('a'), version: 1, tombstone: false, value: Buffer.from('one') },
      {
        key: Buffer.from('\u0000auth/x'),
        version: 2 ** 40 + 7,
        tombstone: false,
        value: Buffer.alloc(0),
      },
      { key: Buffer.from('z'), version: 9, tombstone: true, value: Buffer.from('') },
    ]
    const viaFormat = createHash('sha256')
    const byHand = createHash('sha256')
    for (const { key, ...record } of records) {
      hashDigestRecord(viaFormat, key, record)
      byHand.update(expectedBytes(key, record.version, record.tombstone, record.value))
    }
    expect(viaFormat.digest('hex')).toBe(byHand.digest('hex'))
  })

  it('is what the store digest hashes', async () => {
    const store = await openStore(tmp.dir)
    await store.append(
      [entry(1, [put('b', '2'), put('a', '1')]), entry(2, [put('c', '3')]), entry(3, [del('b')])],
      { commitLsn: 3 },
    )
    const hash = createHash('sha256')
    hashDigestRecord(hash, Buffer.from('a'), {
      version: 1,
      tombstone: false,
      value: Buffer.from('1'),
    })
    hashDigestRecord(hash, Buffer.from('c'), {
      version: 2,
      tombstone: false,
      value: Buffer.from('3'),
    })
    expect(await store.digest()).toEqual({
      appliedLsn: 3,
      digest: hash.digest('hex'),
      keys: 2,
      bytes: 4,
      reservedKeys: 0,
    })
    await store.close()
  })

  it('refuses a version that is not an lsn', () => {
    const hash = createHash('sha256')
    expect(() =>
      hashDigestRecord(hash, Buffer.from('a'), {
        version: -1,
        tombstone: false,
        value: Buffer.alloc(0),
      }),
    ).toThrow(/not an lsn/)
  })
})
