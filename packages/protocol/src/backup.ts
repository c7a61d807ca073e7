/**
 * Backups: the manifest that describes one, and the stream a node sends a backup in.
 *
 * A backup is a directory of files: `manifest.json` and the files it names (the state and the
 * request ids, compressed; see the storage package's backup.ts for their contents). The
 * manifest holds a SHA-256 of every file and one of itself, so a backup can be checked
 * offline, file by file, before anything is restored from it.
 *
 * Over HTTP (`POST /admin/v1/backups`) a node sends the same files as a stream of frames:
 *
 *   u8 type | u16be name length | name (UTF-8) | u32be data length | data
 *
 *   type 1  a piece of the named file's bytes (files arrive one after another, in order)
 *   type 2  the named file is complete (no data)
 *   type 3  the backup failed: data is an error body `{ "error": { "code", "message" } }`
 *
 * `manifest.json` comes last, so a stream that ends before it is an incomplete backup.
 */
import { createHash } from 'node:crypto'
import { KvError } from './errors.js'

/** The backup format this build writes and reads. */
export const backupFormat = 1

export const backupManifestName = 'manifest.json'

/** One file of a backup, as the manifest describes it. */
export interface BackupFileInfo {
  name: string
  kind: 'state' | 'requests'
  /** Bytes of the file as stored (compressed). */
  bytes: number
  /** Records in it. */
  records: number
  sha256: string
}

/** What a backup holds, and the checksums to prove it. */
export interface BackupManifest {
  kind: 'kvstore-backup'
  format: number
  clusterId: string
  /** The member the backup was taken from. */
  nodeId: string
  mode: 'single-leader' | 'leaderless' | 'standalone'
  /** Its role when the backup was taken (leader, follower, replica, ...). */
  role: string
  /** The state is exactly the log applied up to this LSN (committed, in single-leader mode). */
  lsn: number
  /** Epoch of the entry at `lsn`. */
  epoch: number
  /** Wall-clock time of the entry at `lsn` (ms since the Unix epoch; 0 when unknown). */
  lsnTimeMs: number
  /** When the backup was taken (ms since the Unix epoch). */
  takenAtMs: number
  /** Data keys (the reserved keys of the auth store apart), their bytes, and the reserved keys. */
  keys: number
  bytes: number
  reservedKeys: number
  /** Remembered request ids (so that retries of writes before the backup still apply once). */
  requests: number
  /** The state digest at `lsn` (as `GET /v1/digest` reports it). */
  digest: string
  files: BackupFileInfo[]
  /** SHA-256 of this manifest's JSON without this field. */
  checksum: string
}

/** The checksum a manifest carries: SHA-256 over its JSON without the checksum field. */
export function manifestChecksum(manifest: Omit<BackupManifest, 'checksum'>): string {
  const rest: Record<string, unknown> = { ...manifest }
  delete rest.checksum
  return createHash('sha256').update(JSON.stringify(rest)).digest('hex')
}

/** The manifest's JSON, with its checksum filled in. */
export function encodeManifest(manifest: Omit<BackupManifest, 'checksum'>): string {
  return `${JSON.stringify({ ...manifest, checksum: manifestChecksum(manifest) }, null, 2)}\n`
}

const hex64 = /^[0-9a-f]{64}$/
const fileName = /^[a-z0-9][a-z0-9._-]{0,63}$/

function corrupt(message: string, file = backupManifestName): KvError {
  return new KvError('KV_ERR_BACKUP_CORRUPT', message, { file })
}

/**
 * Parses and checks a manifest: its JSON, every field's type and range, and its checksum.
 * Throws KV_ERR_BACKUP_CORRUPT naming what is wrong.
 */
export function decodeManifest(text: string): BackupManifest {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch (err) {
    throw corrupt(`the manifest is not valid JSON (truncated?): ${(err as Error).message}`)
  }
  const m = parsed as Partial<BackupManifest> | null
  if (typeof m !== 'object' || m === null || m.kind !== 'kvstore-backup') {
    throw corrupt('the manifest is not a kvstore backup manifest')
  }
  if (m.format !== backupFormat) {
    throw corrupt(`the manifest has format ${String(m.format)}; this build reads ${backupFormat}`)
  }
  const counts = [
    'lsn',
    'epoch',
    'lsnTimeMs',
    'takenAtMs',
    'keys',
    'bytes',
    'reservedKeys',
    'requests',
  ] as const
  for (const name of counts) {
    const value = m[name]
    if (!Number.isSafeInteger(value) || (value as number) < 0) {
      throw corrupt(`the manifest's ${name} is not a count: ${JSON.stringify(value)}`)
    }
  }
  for (const name of ['clusterId', 'nodeId', 'role'] as const) {
    if (typeof m[name] !== 'string' || (m[name] as string).length === 0) {
      throw corrupt(`the manifest's ${name} is missing`)
    }
  }
  if (m.mode !== 'single-leader' && m.mode !== 'leaderless' && m.mode !== 'standalone') {
    throw corrupt(`the manifest's mode ${JSON.stringify(m.mode)} is unknown`)
  }
  if (typeof m.digest !== 'string' || !hex64.test(m.digest)) {
    throw corrupt("the manifest's digest is not a SHA-256")
  }
  if (!Array.isArray(m.files)) throw corrupt("the manifest's file list is missing")
  const seen = new Set<string>()
  for (const f of m.files as Partial<BackupFileInfo>[]) {
    if (
      typeof f !== 'object' ||
      f === null ||
      typeof f.name !== 'string' ||
      !fileName.test(f.name) ||
      f.name === backupManifestName ||
      seen.has(f.name) ||
      (f.kind !== 'state' && f.kind !== 'requests') ||
      !Number.isSafeInteger(f.bytes) ||
      (f.bytes as number) < 0 ||
      !Number.isSafeInteger(f.records) ||
      (f.records as number) < 0 ||
      typeof f.sha256 !== 'string' ||
      !hex64.test(f.sha256)
    ) {
      throw corrupt(`the manifest lists a bad file entry: ${JSON.stringify(f)}`)
    }
    seen.add(f.name)
  }
  if (typeof m.checksum !== 'string' || m.checksum !== manifestChecksum(m as BackupManifest)) {
    throw corrupt('the manifest does not match its checksum (it was changed or damaged)')
  }
  return m as BackupManifest
}

// ------------------------------------------------------------------ the stream

export const BackupFrameType = { Data: 1, End: 2, Error: 3 } as const
export type BackupFrameType = (typeof BackupFrameType)[keyof typeof BackupFrameType]

/** Largest data in one frame of a backup stream. */
export const backupFrameDataBytesMax = 4 * 1024 * 1024

export interface BackupFrame {
  type: BackupFrameType
  name: string
  data: Buffer
}

/** One frame of a backup stream. */
export function encodeBackupFrame(type: BackupFrameType, name: string, data?: Uint8Array): Buffer {
  const nameBytes = Buffer.from(name, 'utf8')
  const length = data?.length ?? 0
  if (nameBytes.length > 0xffff) throw new Error('backup file name too long')
  if (length > backupFrameDataBytesMax) throw new Error('backup frame too large')
  const out = Buffer.allocUnsafe(7 + nameBytes.length + length)
  out[0] = type
  out.writeUInt16BE(nameBytes.length, 1)
  nameBytes.copy(out, 3)
  out.writeUInt32BE(length, 3 + nameBytes.length)
  if (data) out.set(data, 7 + nameBytes.length)
  return out
}

/**
 * Splits a backup stream into frames, whatever the chunks it arrives in. A frame that is
 * malformed (unknown type, a bad name, data over the limit) throws KV_ERR_BACKUP_CORRUPT.
 */
export class BackupStreamDecoder {
  private pending: Buffer[] = []
  private pendingBytes = 0
  /**
   * Bytes that must be buffered before parsing is worth trying again: the rest of a frame
   * whose header has arrived, so that a large frame arriving in small chunks is joined once,
   * not once per chunk.
   */
  private needed = 3

  /** The frames completed by `chunk`. */
  push(chunk: Uint8Array): BackupFrame[] {
    this.pending.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length))
    this.pendingBytes += chunk.length
    if (this.pendingBytes < this.needed) return []
    let buffer =
      this.pending.length === 1 ? (this.pending[0] as Buffer) : Buffer.concat(this.pending)
    const frames: BackupFrame[] = []
    let at = 0
    this.needed = 3
    for (;;) {
      if (buffer.length - at < 3) {
        this.needed = 3
        break
      }
      const type = buffer[at] as number
      if (type !== 1 && type !== 2 && type !== 3) {
        throw corrupt(`the backup stream has a frame of unknown type ${type}`, 'stream')
      }
      const nameLength = buffer.readUInt16BE(at + 1)
      if (buffer.length - at < 7 + nameLength) {
        this.needed = 7 + nameLength
        break
      }
      const length = buffer.readUInt32BE(at + 3 + nameLength)
      if (length > backupFrameDataBytesMax) {
        throw corrupt(`the backup stream has a frame of ${length} bytes`, 'stream')
      }
      if (buffer.length - at < 7 + nameLength + length) {
        this.needed = 7 + nameLength + length
        break
      }
      const name = buffer.toString('utf8', at + 3, at + 3 + nameLength)
      if (name !== backupManifestName && name !== 'error' && !fileName.test(name)) {
        throw corrupt(`the backup stream names a bad file ${JSON.stringify(name)}`, 'stream')
      }
      const start = at + 7 + nameLength
      frames.push({ type, name, data: buffer.subarray(start, start + length) })
      at = start + length
    }
    buffer = buffer.subarray(at)
    this.pending = buffer.length > 0 ? [buffer] : []
    this.pendingBytes = buffer.length
    return frames
  }

  /** Bytes received that do not yet make a whole frame. */
  get buffered(): number {
    return this.pendingBytes
  }
}
