/**
 * Files that backups and the log archive are made of, and how they reach the disk.
 *
 * Their contents are "pair frames", gzip-compressed: a sequence of
 *
 *   u32be length of a | a | u32be length of b | b
 *
 * (a state record: key and stored record; a request id: id and request record; a log entry:
 * u64be LSN and the entry as stored). Compression is done in chunks, each its own gzip
 * member, so a large file is compressed in pieces off the event loop; gunzip reads the
 * members back as one stream.
 *
 * Every file is written atomically: to a temporary name, fsynced, renamed into place, and the
 * directory fsynced, so a crash leaves either the whole file or none of it. Files are 0600
 * and directories 0700: a backup holds the auth store (password hashes included).
 */
import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { gunzip as gunzipCb, gzip as gzipCb } from 'node:zlib'

const gzipDefault = promisify(gzipCb)
/** gzip at level 1: a backup is read once and written under load, so speed beats size. */
export const gzip = (data: Buffer): Promise<Buffer> => gzipDefault(data, { level: 1 })
export const gunzip = promisify(gunzipCb)

export const fileMode = 0o600
export const dirMode = 0o700

/** Appends pairs to one growing buffer; `take` hands over what it holds. */
export class PairWriter {
  private buffer = Buffer.allocUnsafe(64 * 1024)
  bytes = 0
  count = 0

  add(a: Uint8Array, b: Uint8Array): void {
    const need = this.bytes + 8 + a.length + b.length
    if (need > this.buffer.length) {
      const grown = Buffer.allocUnsafe(Math.max(need, this.buffer.length * 2))
      this.buffer.copy(grown, 0, 0, this.bytes)
      this.buffer = grown
    }
    const out = this.buffer
    let at = this.bytes
    out.writeUInt32BE(a.length, at)
    out.set(a, at + 4)
    at += 4 + a.length
    out.writeUInt32BE(b.length, at)
    out.set(b, at + 4)
    this.bytes = at + 4 + b.length
    this.count++
  }

  /** What was added since the last take, as a buffer of its own. */
  take(): Buffer {
    const out = Buffer.from(this.buffer.subarray(0, this.bytes))
    this.bytes = 0
    this.count = 0
    return out
  }
}

/**
 * The pairs in `bytes`, in order. Throws `onError(message)` if the frames do not add up
 * exactly (a truncated or damaged file).
 */
export function* readPairs(
  bytes: Buffer,
  onError: (message: string) => Error,
): Generator<[Buffer, Buffer]> {
  let at = 0
  while (at < bytes.length) {
    if (bytes.length - at < 4) throw onError(`a record is cut off at byte ${at}`)
    const aLength = bytes.readUInt32BE(at)
    if (bytes.length - at - 4 < aLength + 4) throw onError(`a record is cut off at byte ${at}`)
    const a = bytes.subarray(at + 4, at + 4 + aLength)
    at += 4 + aLength
    const bLength = bytes.readUInt32BE(at)
    if (bytes.length - at - 4 < bLength) throw onError(`a record is cut off at byte ${at}`)
    const b = bytes.subarray(at + 4, at + 4 + bLength)
    at += 4 + bLength
    yield [a, b]
  }
}

/** A file being written under a temporary name, hashed as it goes. */
export class AtomicFile {
  readonly sha = createHash('sha256')
  bytes = 0
  private constructor(
    private readonly handle: Awaited<ReturnType<typeof open>>,
    private readonly tmpPath: string,
    readonly path: string,
  ) {}

  static async create(dir: string, name: string): Promise<AtomicFile> {
    const tmpPath = join(dir, `.${name}.tmp-${process.pid}-${Date.now()}`)
    const handle = await open(
      tmpPath,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL,
      fileMode,
    )
    return new AtomicFile(handle, tmpPath, join(dir, name))
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

/** Writes `data` to `dir/name` atomically; returns its SHA-256. */
export async function writeFileAtomic(
  dir: string,
  name: string,
  data: Uint8Array,
): Promise<string> {
  const file = await AtomicFile.create(dir, name)
  try {
    await file.write(data)
    return await file.commit()
  } catch (err) {
    await file.abort()
    throw err
  }
}

/** Makes a directory's entries durable (after renames into it). */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY)
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** True when `path` exists and is a directory with at least one entry. */
export async function hasEntries(path: string): Promise<boolean> {
  try {
    return (await readdir(path)).length > 0
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

/** Creates `path` (and its parents) with mode 0700. */
export async function makeDir(path: string): Promise<void> {
  await mkdir(path, { recursive: true, mode: dirMode })
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}
