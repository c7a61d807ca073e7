/**
 * The backup manifest and stream codecs: a manifest round-trips and any edit breaks its
 * checksum; a stream decodes the same whatever chunks it arrives in, and malformed frames are
 * refused with KV_ERR_BACKUP_CORRUPT.
 */
import { randomBytes } from 'node:crypto'
import {
  BackupFrameType,
  BackupStreamDecoder,
  KvError,
  backupFrameDataBytesMax,
  decodeManifest,
  encodeBackupFrame,
  encodeManifest,
  type BackupFrame,
  type BackupManifest,
} from '../src/index.js'

const manifest: Omit<BackupManifest, 'checksum'> = {
  kind: 'kvstore-backup',
  format: 1,
  clusterId: 'c1',
  nodeId: 'n2',
  mode: 'single-leader',
  role: 'follower',
  lsn: 42,
  epoch: 3,
  lsnTimeMs: 1_700_000_000_000,
  takenAtMs: 1_700_000_000_500,
  keys: 10,
  bytes: 100,
  reservedKeys: 4,
  requests: 2,
  digest: 'a'.repeat(64),
  files: [
    { name: 'state-000001.kvb', kind: 'state', bytes: 10, records: 14, sha256: 'b'.repeat(64) },
  ],
}

function code(fn: () => unknown): string {
  try {
    fn()
  } catch (err) {
    return err instanceof KvError ? err.code : `not a KvError: ${String(err)}`
  }
  return 'no error'
}

describe('backup manifest', () => {
  it('round-trips, and refuses any edit or truncation', () => {
    const text = encodeManifest(manifest)
    expect(decodeManifest(text)).toMatchObject(manifest)
    expect(code(() => decodeManifest(text.replace('"lsn": 42', '"lsn": 43')))).toBe(
      'KV_ERR_BACKUP_CORRUPT',
    )
    expect(code(() => decodeManifest(text.slice(0, text.length - 20)))).toBe(
      'KV_ERR_BACKUP_CORRUPT',
    )
    expect(code(() => decodeManifest(text.replace('state-000001.kvb', '../evil')))).toBe(
      'KV_ERR_BACKUP_CORRUPT',
    )
  })
})

describe('backup stream', () => {
  const frames: Buffer[] = [
    encodeBackupFrame(BackupFrameType.Data, 'state-000001.kvb', randomBytes(100_000)),
    encodeBackupFrame(BackupFrameType.Data, 'state-000001.kvb', randomBytes(10)),
    encodeBackupFrame(BackupFrameType.End, 'state-000001.kvb'),
    encodeBackupFrame(BackupFrameType.Data, 'manifest.json', Buffer.from('{}')),
    encodeBackupFrame(BackupFrameType.End, 'manifest.json'),
  ]
  const stream = Buffer.concat(frames)

  function decodeIn(chunks: Buffer[]): BackupFrame[] {
    const decoder = new BackupStreamDecoder()
    const out: BackupFrame[] = []
    for (const chunk of chunks) out.push(...decoder.push(chunk))
    expect(decoder.buffered).toBe(0)
    return out
  }

  it('decodes the same frames whatever chunks they arrive in', () => {
    const whole = decodeIn([stream])
    expect(whole.map((f) => [f.type, f.name, f.data.length])).toEqual([
      [1, 'state-000001.kvb', 100_000],
      [1, 'state-000001.kvb', 10],
      [2, 'state-000001.kvb', 0],
      [1, 'manifest.json', 2],
      [2, 'manifest.json', 0],
    ])
    for (const size of [1, 7, 4096, 65_537]) {
      const chunks: Buffer[] = []
      for (let at = 0; at < stream.length; at += size) chunks.push(stream.subarray(at, at + size))
      const frames = decodeIn(chunks)
      expect(frames.map((f) => Buffer.from(f.data).toString('hex'))).toEqual(
        whole.map((f) => f.data.toString('hex')),
      )
    }
  })

  it('refuses an unknown frame type, a bad name and an oversized frame', () => {
    const bad = Buffer.from(stream)
    bad[0] = 9
    expect(code(() => new BackupStreamDecoder().push(bad))).toBe('KV_ERR_BACKUP_CORRUPT')
    const badName = encodeBackupFrame(BackupFrameType.Data, 'ok-name', Buffer.alloc(1))
    badName.write('../', 3)
    expect(code(() => new BackupStreamDecoder().push(badName))).toBe('KV_ERR_BACKUP_CORRUPT')
    const huge = Buffer.alloc(7 + 4)
    huge[0] = 1
    huge.writeUInt16BE(4, 1)
    huge.write('abcd', 3)
    const lengthField = Buffer.alloc(4)
    lengthField.writeUInt32BE(backupFrameDataBytesMax + 1)
    expect(
      code(() => new BackupStreamDecoder().push(Buffer.concat([huge.subarray(0, 7), lengthField]))),
    ).toBe('KV_ERR_BACKUP_CORRUPT')
  })
})
