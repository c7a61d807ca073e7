/**
 * Backups: a consistent copy of one member's state at one LSN, as a directory of files that
 * can be checked offline (the manifest's format is in the protocol package's backup.ts).
 *
 *   manifest.json          what the backup holds, a SHA-256 of every file and of itself
 *   state-000001.kvb ...   the state's records in key order (key, stored record), the auth
 *                          store's reserved keys included, split every `fileBytesMax` bytes
 *   requests-000001.kvb    the remembered request ids (id, request record)
 *
 * `backupPieces` produces those files as a stream of pieces, so that the same bytes can go to
 * a local directory (`writeBackupDir`) or over HTTP to a client that writes them.
 */
import { readFile, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import {
  KvError,
  backupManifestName,
  decodeManifest,
  decodeRequestRecord,
  decodeStoredRecord,
  encodeManifest,
  backupFormat,
  type BackupFileInfo,
  type BackupManifest,
} from '@kvstore/protocol'
import { createHash } from 'node:crypto'
import { DigestHasher } from './digest.js'
import {
  AtomicFile,
  PairWriter,
  gunzip,
  gzip,
  hasEntries,
  makeDir,
  readPairs,
  sha256,
  syncDir,
} from './files.js'
import type { StateSnapshot } from './types.js'

/** Uncompressed bytes compressed at a time (one gzip member). */
const compressChunkBytes = 1024 * 1024
/** Chunks compressed at once, beside the reading and encoding of the next. */
const compressInFlightMax = 3
/** Uncompressed bytes per state or request file, unless told otherwise. */
export const backupFileBytesMaxDefault = 64 * 1024 * 1024

/** What a backup says about where it came from. */
export interface BackupOrigin {
  clusterId: string
  nodeId: string
  mode: BackupManifest['mode']
  role: string
  /** Wall-clock time of the entry at the snapshot's LSN (0 when unknown). */
  lsnTimeMs: number
  takenAtMs: number
}

/** A piece of one file of a backup; `end` marks the file complete. */
export interface BackupPiece {
  name: string
  data?: Buffer
  end?: true
}

function fileName(kind: 'state' | 'requests', n: number): string {
  return `${kind}-${String(n).padStart(6, '0')}.kvb`
}

/**
 * The files of a backup of `snapshot`, piece by piece, the manifest last. The digest and the
 * counts are computed from the very records written, so the manifest describes the files.
 */
export async function* backupPieces(
  snapshot: StateSnapshot,
  origin: BackupOrigin,
  options: { fileBytesMax?: number } = {},
): AsyncGenerator<BackupPiece, BackupManifest> {
  const fileBytesMax = options.fileBytesMax ?? backupFileBytesMaxDefault
  const files: BackupFileInfo[] = []
  const digest = new DigestHasher()
  let keys = 0
  let reservedKeys = 0
  let bytes = 0
  let requests = 0

  // One file at a time: its pairs are compressed a chunk at a time.
  let current = null as {
    info: BackupFileInfo
    sha: ReturnType<typeof createHash>
    raw: number
  } | null
  const pairs = new PairWriter()
  // Chunks being compressed in the thread pool while the next ones are read and encoded;
  // yielded (and hashed) in order.
  const compressing: { file: NonNullable<typeof current>; data: Promise<Buffer> }[] = []
  async function* drain(keep: number): AsyncGenerator<BackupPiece> {
    while (compressing.length > keep) {
      const next = compressing.shift() as (typeof compressing)[number]
      const data = await next.data
      next.file.sha.update(data)
      next.file.info.bytes += data.length
      yield { name: next.file.info.name, data }
    }
  }
  async function* flush(): AsyncGenerator<BackupPiece> {
    if (current === null || pairs.count === 0) return
    current.info.records += pairs.count
    current.raw += pairs.bytes
    const data = gzip(pairs.take())
    // A failure surfaces when the chunk's turn comes (and is not "unhandled" before it).
    data.catch(() => {})
    compressing.push({ file: current, data })
    yield* drain(compressInFlightMax)
  }
  async function* close(): AsyncGenerator<BackupPiece> {
    if (current === null) return
    yield* drain(0)
    current.info.sha256 = current.sha.digest('hex')
    files.push(current.info)
    yield { name: current.info.name, end: true }
    current = null
  }
  function open(kind: 'state' | 'requests'): void {
    const n = files.filter((f) => f.kind === kind).length + 1
    current = {
      info: { name: fileName(kind, n), kind, bytes: 0, records: 0, sha256: '' },
      sha: createHash('sha256'),
      raw: 0,
    }
  }

  for (const kind of ['state', 'requests'] as const) {
    const chunks =
      kind === 'state'
        ? snapshot.rawChunks()
        : (async function* () {
            for await (const page of snapshot.requestChunks()) {
              yield page.map(({ id, record }) => ({ key: Buffer.from(id, 'utf8'), record }))
            }
          })()
    for await (const page of chunks) {
      for (const { key, record } of page) {
        if (kind === 'state') {
          const decoded = decodeStoredRecord(record)
          digest.add(key, decoded)
          if (key[0] === 0x00) reservedKeys++
          else {
            keys++
            bytes += key.length + decoded.value.length
          }
        } else {
          decodeRequestRecord(record)
          requests++
        }
        // A file is opened by its first record, so none is ever empty.
        if (current === null) open(kind)
        pairs.add(key, record)
        if (pairs.bytes >= compressChunkBytes) yield* flush()
        const open_ = current as { raw: number } | null
        if (open_ !== null && open_.raw + pairs.bytes >= fileBytesMax) {
          yield* flush()
          yield* close()
        }
      }
    }
    yield* flush()
    yield* close()
  }

  const manifest: Omit<BackupManifest, 'checksum'> = {
    kind: 'kvstore-backup',
    format: backupFormat,
    clusterId: origin.clusterId,
    nodeId: origin.nodeId,
    mode: origin.mode,
    role: origin.role,
    lsn: snapshot.appliedLsn,
    epoch: snapshot.lastEpoch,
    lsnTimeMs: origin.lsnTimeMs,
    takenAtMs: origin.takenAtMs,
    keys,
    bytes,
    reservedKeys,
    requests,
    digest: digest.hex(),
    files,
  }
  const text = encodeManifest(manifest)
  yield { name: backupManifestName, data: Buffer.from(text, 'utf8') }
  yield { name: backupManifestName, end: true }
  return decodeManifest(text)
}

/**
 * Writes backup pieces into `dir`, which must not exist or be empty: each file atomically,
 * the manifest last (a directory without one is no backup). On failure, what was written is
 * removed.
 */
export async function writeBackupDir(
  dir: string,
  pieces: AsyncIterable<BackupPiece>,
): Promise<BackupManifest> {
  if (await hasEntries(dir)) {
    throw new KvError('KV_ERR_INVALID_ARGUMENT', `backup directory ${dir} is not empty`, { dir })
  }
  await makeDir(dir)
  let file: AtomicFile | null = null
  let manifestText = ''
  try {
    for await (const piece of pieces) {
      if (file === null) file = await AtomicFile.create(dir, piece.name)
      if (piece.data) {
        await file.write(piece.data)
        if (piece.name === backupManifestName) manifestText += piece.data.toString('utf8')
      }
      if (piece.end) {
        await file.commit()
        file = null
      }
    }
    if (file !== null) throw new Error(`backup stream ended inside ${file.path}`)
    await syncDir(dir)
    return decodeManifest(manifestText)
  } catch (err) {
    if (file !== null) await file.abort()
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}

/** Writes a backup of `snapshot` into `dir` (see `writeBackupDir`). */
export function writeBackup(
  dir: string,
  snapshot: StateSnapshot,
  origin: BackupOrigin,
  options: { fileBytesMax?: number } = {},
): Promise<BackupManifest> {
  return writeBackupDir(dir, backupPieces(snapshot, origin, options))
}

function corrupt(file: string, message: string): KvError {
  return new KvError('KV_ERR_BACKUP_CORRUPT', `backup file ${file}: ${message}`, { file })
}

/** Reads and checks a backup's manifest (its JSON, fields and checksum). */
export async function readManifest(dir: string): Promise<BackupManifest> {
  let text: string
  try {
    text = await readFile(join(dir, backupManifestName), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new KvError(
        'KV_ERR_BACKUP_CORRUPT',
        `${dir} has no ${backupManifestName}: it is not a backup, or the backup never finished`,
        { file: backupManifestName },
      )
    }
    throw err
  }
  return decodeManifest(text)
}

/** Reads one file of a backup, checks its size and checksum, and decompresses it. */
async function readChecked(dir: string, info: BackupFileInfo): Promise<Buffer> {
  const path = join(dir, info.name)
  let data: Buffer
  try {
    const size = (await stat(path)).size
    if (size !== info.bytes) {
      throw corrupt(info.name, `has ${size} bytes, the manifest says ${info.bytes}`)
    }
    data = await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw corrupt(info.name, 'is missing')
    throw err
  }
  if (sha256(data) !== info.sha256) throw corrupt(info.name, 'does not match its checksum')
  try {
    return await gunzip(data)
  } catch (err) {
    throw corrupt(info.name, `does not decompress: ${(err as Error).message}`)
  }
}

/**
 * The records of a backup's files of `kind`, file by file, each file checked (size, checksum,
 * decoding) before any of its records is returned.
 */
export async function* readBackupRecords(
  dir: string,
  manifest: BackupManifest,
  kind: 'state' | 'requests',
): AsyncGenerator<{ key: Buffer; record: Buffer }[]> {
  for (const info of manifest.files) {
    if (info.kind !== kind) continue
    const raw = await readChecked(dir, info)
    const page: { key: Buffer; record: Buffer }[] = []
    for (const [key, record] of readPairs(raw, (message) => corrupt(info.name, message))) {
      page.push({ key, record })
    }
    if (page.length !== info.records) {
      throw corrupt(info.name, `holds ${page.length} records, the manifest says ${info.records}`)
    }
    yield page
  }
}

/** What `verifyBackup` found. */
export interface BackupCheck {
  manifest: BackupManifest
  files: number
  bytes: number
  keys: number
  requests: number
  digest: string
}

/**
 * Checks a backup's records as they are read, in order (the state's, then the request ids'):
 * each decodes, keys strictly increase, no version is past the backup's LSN; `finish` compares
 * the digest and the counts with the manifest. Throws KV_ERR_BACKUP_CORRUPT naming the first
 * problem.
 */
export class BackupChecker {
  private readonly digest = new DigestHasher()
  private keys = 0
  private reservedKeys = 0
  private bytes = 0
  private requests = 0
  private previous: Buffer | null = null

  constructor(private readonly manifest: BackupManifest) {}

  state(page: { key: Buffer; record: Buffer }[]): void {
    for (const { key, record } of page) {
      let decoded
      try {
        decoded = decodeStoredRecord(record)
      } catch (err) {
        throw corrupt('state', `a record does not decode: ${(err as Error).message}`)
      }
      if (key.length === 0 || (this.previous !== null && Buffer.compare(this.previous, key) >= 0)) {
        throw corrupt('state', 'records are not in strictly increasing key order')
      }
      if (decoded.version > this.manifest.lsn) {
        throw corrupt('state', `a record's version ${decoded.version} is past the backup's LSN`)
      }
      this.previous = key
      this.digest.add(key, decoded)
      if (key[0] === 0x00) this.reservedKeys++
      else {
        this.keys++
        this.bytes += key.length + decoded.value.length
      }
    }
  }

  requestIds(page: { key: Buffer; record: Buffer }[]): void {
    for (const { record } of page) {
      try {
        decodeRequestRecord(record)
      } catch (err) {
        throw corrupt('requests', `a request record does not decode: ${(err as Error).message}`)
      }
      this.requests++
    }
  }

  /** Compares what was read with the manifest; returns the digest. */
  finish(): { digest: string; keys: number; requests: number } {
    const manifest = this.manifest
    const hex = this.digest.hex()
    const mismatch =
      hex !== manifest.digest
        ? `the state's digest is ${hex}, the manifest says ${manifest.digest}`
        : this.keys !== manifest.keys || this.reservedKeys !== manifest.reservedKeys
          ? `the state holds ${this.keys} keys and ${this.reservedKeys} reserved ones, the manifest says ${manifest.keys} and ${manifest.reservedKeys}`
          : this.bytes !== manifest.bytes
            ? `the state holds ${this.bytes} bytes, the manifest says ${manifest.bytes}`
            : this.requests !== manifest.requests
              ? `the backup holds ${this.requests} request ids, the manifest says ${manifest.requests}`
              : null
    if (mismatch !== null) {
      throw new KvError('KV_ERR_BACKUP_CORRUPT', mismatch, { file: backupManifestName })
    }
    return { digest: hex, keys: this.keys, requests: this.requests }
  }
}

/** Checks that every file a manifest names is there with its size (nothing is read). */
export async function checkBackupFiles(dir: string, manifest: BackupManifest): Promise<void> {
  for (const info of manifest.files) {
    let size: number
    try {
      size = (await stat(join(dir, info.name))).size
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw corrupt(info.name, 'is missing')
      throw err
    }
    if (size !== info.bytes) {
      throw corrupt(info.name, `has ${size} bytes, the manifest says ${info.bytes}`)
    }
  }
}

/**
 * Checks a backup offline: the manifest's checksum, every file's size and checksum, every
 * record's decoding, key order, the counts, and the state digest recomputed from the records.
 * Throws KV_ERR_BACKUP_CORRUPT naming the first problem.
 */
export async function verifyBackup(dir: string): Promise<BackupCheck> {
  const manifest = await readManifest(dir)
  await checkBackupFiles(dir, manifest)
  const checker = new BackupChecker(manifest)
  for await (const page of readBackupRecords(dir, manifest, 'state')) checker.state(page)
  for await (const page of readBackupRecords(dir, manifest, 'requests')) checker.requestIds(page)
  const { digest, keys, requests } = checker.finish()
  return {
    manifest,
    files: manifest.files.length + 1,
    bytes: manifest.files.reduce((sum, f) => sum + f.bytes, 0),
    keys,
    requests,
    digest,
  }
}
