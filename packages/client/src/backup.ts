/**
 * Writing a backup stream (POST /admin/v1/backups) into a directory, on the client side.
 *
 * The node sends each file as Data frames and an End frame, `manifest.json` last (the frame
 * format is in the protocol package's backup.ts). Each file goes to a temporary name, hashed
 * as it is written, and is fsynced and renamed into place at its End frame. The manifest
 * arrives last: it is checked (`decodeManifest`), every file it names must have arrived with
 * the size and SHA-256 it gives (and no other file), and only then is `manifest.json` written,
 * atomically, so a directory with a manifest is always a complete backup. On any failure (an
 * Error frame, a stream cut short, a checksum that does not match, a full disk) what was
 * written is removed.
 *
 * Memory stays bounded: frames are written as they arrive (one frame, at most
 * `backupFrameDataBytesMax`, is held at a time), and only the manifest is kept whole
 * (at most `backupManifestBytesMax`).
 */
import { createHash, type Hash } from 'node:crypto'
import { constants } from 'node:fs'
import { mkdir, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import {
  BackupFrameType,
  BackupStreamDecoder,
  backupManifestName,
  decodeManifest,
  type BackupManifest,
} from '@kvstore/protocol'
import { KvError, isErrorCode, type ErrorDetails } from '@kvstore/protocol/errors'

/** Largest manifest accepted from a stream (it lists the files; a few KB in practice). */
export const backupManifestBytesMax = 8 * 1024 * 1024

/** Mode of a backup directory and of its files: the data is as secret as the cluster's. */
const dirMode = 0o700
const fileMode = 0o600

/** What `writeBackupStream` wrote. */
export interface WrittenBackup {
  manifest: BackupManifest
  /** Bytes of the files written, the manifest included. */
  bytes: number
  /** Files written, the manifest included. */
  files: number
}

function corrupt(message: string, file = 'stream'): KvError {
  return new KvError('KV_ERR_BACKUP_CORRUPT', `backup stream: ${message}`, { file })
}

/** The KvError an Error frame carries (`{"error": {code, message, ...}}`). */
function frameError(data: Buffer): KvError {
  try {
    const parsed = JSON.parse(data.toString('utf8')) as {
      error?: { code?: unknown; message?: unknown } & ErrorDetails
    }
    const error = parsed.error
    if (error && isErrorCode(error.code)) {
      const { code, message, ...details } = error
      return new KvError(
        code,
        typeof message === 'string' ? message : code,
        details as ErrorDetails,
      )
    }
  } catch {
    // fall through
  }
  return new KvError(
    'KV_ERR_INTERNAL',
    `the node sent an error frame without a readable error: ${data.toString('utf8').slice(0, 200)}`,
  )
}

/** True when `path` exists and is a directory with at least one entry. */
async function hasEntries(path: string): Promise<boolean> {
  try {
    return (await readdir(path)).length > 0
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY)
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** Refuses a backup directory that holds anything (KV_ERR_INVALID_ARGUMENT). */
export async function checkBackupDir(dir: string): Promise<void> {
  if (await hasEntries(dir)) {
    throw new KvError('KV_ERR_INVALID_ARGUMENT', `backup directory ${dir} is not empty`, { dir })
  }
}

/** One file being written under a temporary name, hashed as it goes. */
class PartFile {
  private readonly sha: Hash = createHash('sha256')
  bytes = 0
  private constructor(
    readonly name: string,
    private readonly handle: FileHandle,
    readonly tmpPath: string,
    readonly path: string,
  ) {}

  static async create(dir: string, name: string): Promise<PartFile> {
    const tmpPath = join(dir, `.${name}.partial`)
    const handle = await open(
      tmpPath,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL,
      fileMode,
    )
    return new PartFile(name, handle, tmpPath, join(dir, name))
  }

  async write(data: Uint8Array): Promise<void> {
    this.sha.update(data)
    this.bytes += data.length
    let at = 0
    while (at < data.length) {
      const { bytesWritten } = await this.handle.write(data, at, data.length - at)
      at += bytesWritten
    }
  }

  /** fsync, close, rename into place; returns the file's SHA-256. */
  async commit(): Promise<string> {
    await this.handle.sync()
    await this.handle.close()
    await rename(this.tmpPath, this.path)
    return this.sha.digest('hex')
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => {})
    await rm(this.tmpPath, { force: true })
  }
}

/**
 * Writes the backup stream `body` into `dir` (which must not exist, or be empty): see the top
 * of this file. Throws the KvError of an Error frame, or KV_ERR_BACKUP_CORRUPT for a stream
 * that is malformed, incomplete, or does not match its manifest; then nothing is left behind
 * (a directory this call made is removed, an empty one given is emptied again).
 */
export async function writeBackupStream(
  dir: string,
  body: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
): Promise<WrittenBackup> {
  await checkBackupDir(dir)
  let made = false
  try {
    made = (await mkdir(dir, { recursive: true, mode: dirMode })) !== undefined
  } catch (err) {
    if (
      (err as NodeJS.ErrnoException).code === 'ENOTDIR' ||
      (err as NodeJS.ErrnoException).code === 'EEXIST'
    )
      throw new KvError('KV_ERR_INVALID_ARGUMENT', `${dir} is not a directory`, { dir })
    throw err
  }
  const decoder = new BackupStreamDecoder()
  /** Files complete so far, with the SHA-256 and size they arrived with. */
  const done = new Map<string, { sha256: string; bytes: number }>()
  let file: PartFile | null = null
  const manifestParts: Buffer[] = []
  let manifestBytes = 0
  let manifest: BackupManifest | null = null
  try {
    for await (const chunk of body) {
      for (const frame of decoder.push(chunk)) {
        if (frame.type === BackupFrameType.Error) throw frameError(frame.data)
        if (manifest !== null) throw corrupt(`a frame for ${frame.name} after the manifest`)
        if (frame.name === backupManifestName) {
          if (file !== null) throw corrupt(`the manifest began inside ${file.name}`, file.name)
          if (frame.type === BackupFrameType.Data) {
            manifestBytes += frame.data.length
            if (manifestBytes > backupManifestBytesMax)
              throw corrupt(`the manifest is over ${backupManifestBytesMax} bytes`)
            manifestParts.push(Buffer.from(frame.data))
            continue
          }
          manifest = decodeManifest(Buffer.concat(manifestParts).toString('utf8'))
          continue
        }
        if (done.has(frame.name)) throw corrupt(`${frame.name} arrived twice`, frame.name)
        if (file !== null && file.name !== frame.name)
          throw corrupt(`${frame.name} began inside ${file.name}`, file.name)
        if (file === null) file = await PartFile.create(dir, frame.name)
        if (frame.type === BackupFrameType.Data) {
          await file.write(frame.data)
        } else {
          const { bytes } = file
          const sha256 = await file.commit()
          done.set(file.name, { sha256, bytes })
          file = null
        }
      }
    }
    if (file !== null) throw corrupt(`the stream ended inside ${file.name}`, file.name)
    if (manifest === null) {
      throw corrupt(
        decoder.buffered > 0
          ? 'the stream ended inside a frame, before the manifest: the backup is incomplete'
          : 'the stream ended before the manifest: the backup is incomplete',
      )
    }
    if (decoder.buffered > 0) throw corrupt('bytes after the manifest')
    // Every file the manifest names arrived whole, and nothing else did.
    for (const info of manifest.files) {
      const got = done.get(info.name)
      if (got === undefined)
        throw corrupt(`${info.name} is in the manifest but never arrived`, info.name)
      if (got.bytes !== info.bytes)
        throw corrupt(
          `${info.name} has ${got.bytes} bytes, the manifest says ${info.bytes}`,
          info.name,
        )
      if (got.sha256 !== info.sha256)
        throw corrupt(`${info.name} does not match its checksum in the manifest`, info.name)
    }
    const named = new Set(manifest.files.map((f) => f.name))
    for (const name of done.keys()) {
      if (!named.has(name)) throw corrupt(`${name} arrived but the manifest does not name it`, name)
    }
    // Only now does the directory become a backup.
    const text = Buffer.concat(manifestParts)
    const manifestFile = await PartFile.create(dir, backupManifestName)
    file = manifestFile
    await manifestFile.write(text)
    await manifestFile.commit()
    file = null
    await syncDir(dir)
    let bytes = text.length
    for (const f of done.values()) bytes += f.bytes
    return { manifest, bytes, files: done.size + 1 }
  } catch (err) {
    if (file !== null) await file.abort()
    if (made) await rm(dir, { recursive: true, force: true })
    else {
      for (const name of await readdir(dir).catch(() => [] as string[]))
        await rm(join(dir, name), { recursive: true, force: true })
    }
    throw err
  }
}
