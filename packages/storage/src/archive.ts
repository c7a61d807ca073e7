/**
 * The log archive: base backups plus every committed log entry since, in segments, so that a
 * restore can reach any LSN or moment after the oldest base backup kept.
 *
 *   archive.json                       {kind, format, clusterId}: whose archive this is
 *   base/<lsn, 20 digits>/             base backups (see backup.ts), newest = highest LSN
 *   segments/<from>-<to>.kvseg         log entries from..to (LSNs, 20 digits each)
 *
 * A segment is a 96-byte header and a gzip payload of pair frames (u64be LSN, entry as stored):
 *
 *   magic "KVSEG001" | u64be from | u64be to | u32be count | u32be payload bytes |
 *   u64be time of the first entry | u64be time of the last entry | 24 bytes zero |
 *   sha256 of the 64 bytes before it and the payload
 *
 * The name, the header and the entries inside must all agree, so a flipped byte, a truncated
 * file or a renamed one is found before a restore writes anything.
 */
import { readFile, readdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { KvError, decodeLogEntry, type LogEntry } from '@kvstore/protocol'
import { readManifest } from './backup.js'
import {
  PairWriter,
  exists,
  gunzip,
  gzip,
  makeDir,
  readPairs,
  syncDir,
  writeFileAtomic,
} from './files.js'
import { encodeU64, decodeU64 } from './layout.js'
import type { BackupManifest } from '@kvstore/protocol'

export const archiveFormat = 1
const magic = Buffer.from('KVSEG001', 'ascii')
const headerBytes = 96
const hashedHeaderBytes = 64
const segmentName = /^(\d{20})-(\d{20})\.kvseg$/
const baseName = /^\d{20}$/

export const archiveDirs = { base: 'base', segments: 'segments' } as const

function pad(lsn: number): string {
  return String(lsn).padStart(20, '0')
}

export function segmentFileName(fromLsn: number, toLsn: number): string {
  return `${pad(fromLsn)}-${pad(toLsn)}.kvseg`
}

export function baseDirName(lsn: number): string {
  return pad(lsn)
}

/** One raw log entry as a segment holds it. */
export interface SegmentEntry {
  lsn: number
  timestampMs: number
  data: Uint8Array
}

/** A segment file's bytes for `entries` (contiguous, non-empty). */
export async function encodeSegment(entries: SegmentEntry[]): Promise<Buffer> {
  const first = entries[0]
  const last = entries[entries.length - 1]
  if (first === undefined || last === undefined) throw new Error('a segment needs entries')
  const pairs = new PairWriter()
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i] as SegmentEntry
    if (entry.lsn !== first.lsn + i) throw new Error('segment entries must be contiguous')
    pairs.add(encodeU64(entry.lsn), entry.data)
  }
  const payload = await gzip(pairs.take())
  const header = Buffer.alloc(headerBytes)
  magic.copy(header, 0)
  encodeU64(first.lsn).copy(header, 8)
  encodeU64(last.lsn).copy(header, 16)
  header.writeUInt32BE(entries.length, 24)
  header.writeUInt32BE(payload.length, 28)
  encodeU64(first.timestampMs).copy(header, 32)
  encodeU64(last.timestampMs).copy(header, 40)
  createHash('sha256')
    .update(header.subarray(0, hashedHeaderBytes))
    .update(payload)
    .digest()
    .copy(header, hashedHeaderBytes)
  return Buffer.concat([header, payload])
}

/** What a segment's name and header say, before its payload is read. */
export interface SegmentInfo {
  file: string
  fromLsn: number
  toLsn: number
}

function segmentCorrupt(info: SegmentInfo, message: string): KvError {
  return new KvError(
    'KV_ERR_ARCHIVE_CORRUPT',
    `archive segment ${info.file} (LSN ${info.fromLsn} to ${info.toLsn}): ${message}`,
    { file: info.file, fromLsn: info.fromLsn, toLsn: info.toLsn },
  )
}

/** Checks a segment's bytes completely and returns its entries, decoded and validated. */
export async function decodeSegment(info: SegmentInfo, bytes: Buffer): Promise<LogEntry[]> {
  if (bytes.length < headerBytes) throw segmentCorrupt(info, `is cut off (${bytes.length} bytes)`)
  if (!bytes.subarray(0, 8).equals(magic)) throw segmentCorrupt(info, 'is not a segment (magic)')
  const expected = createHash('sha256')
    .update(bytes.subarray(0, hashedHeaderBytes))
    .update(bytes.subarray(headerBytes))
    .digest()
  if (!expected.equals(bytes.subarray(hashedHeaderBytes, headerBytes))) {
    throw segmentCorrupt(info, 'does not match its checksum')
  }
  const fromLsn = decodeU64(bytes.subarray(8, 16), 'segment from')
  const toLsn = decodeU64(bytes.subarray(16, 24), 'segment to')
  const count = bytes.readUInt32BE(24)
  const payloadBytes = bytes.readUInt32BE(28)
  if (fromLsn !== info.fromLsn || toLsn !== info.toLsn || count !== toLsn - fromLsn + 1) {
    throw segmentCorrupt(info, `its header says LSN ${fromLsn} to ${toLsn} (${count} entries)`)
  }
  if (payloadBytes !== bytes.length - headerBytes) {
    throw segmentCorrupt(
      info,
      `its payload has ${bytes.length - headerBytes} bytes, not ${payloadBytes}`,
    )
  }
  let plain: Buffer
  try {
    plain = await gunzip(bytes.subarray(headerBytes))
  } catch (err) {
    throw segmentCorrupt(info, `does not decompress: ${(err as Error).message}`)
  }
  const entries: LogEntry[] = []
  let lsn = fromLsn
  for (const [lsnBytes, data] of readPairs(plain, (m) => segmentCorrupt(info, m))) {
    let entry: LogEntry
    try {
      entry = decodeLogEntry(data)
    } catch (err) {
      throw segmentCorrupt(info, `entry ${lsn} does not decode: ${(err as Error).message}`)
    }
    if (decodeU64(lsnBytes, 'segment lsn') !== lsn || entry.lsn !== lsn) {
      throw segmentCorrupt(info, `entry ${entry.lsn} is where ${lsn} belongs`)
    }
    entries.push(entry)
    lsn++
  }
  if (lsn !== toLsn + 1) throw segmentCorrupt(info, `holds entries up to ${lsn - 1} only`)
  return entries
}

/** Reads and checks one segment file. */
export async function readSegment(archiveDir: string, info: SegmentInfo): Promise<LogEntry[]> {
  let bytes: Buffer
  try {
    bytes = await readFile(join(archiveDir, archiveDirs.segments, info.file))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new KvError(
        'KV_ERR_ARCHIVE_GAP',
        `archive segment ${info.file} (LSN ${info.fromLsn} to ${info.toLsn}) is missing`,
        { fromLsn: info.fromLsn, toLsn: info.toLsn },
      )
    }
    throw err
  }
  return decodeSegment(info, bytes)
}

/** The archive's marker: which cluster it belongs to, and which member writes it. */
export interface ArchiveMarker {
  kind: 'kvstore-archive'
  format: number
  clusterId: string
  /** The one member that archives into it (absent: any; offline tools and tests). */
  member?: string
}

/**
 * Prepares `dir` as the archive of cluster `clusterId`, written by `member`: creates it, or
 * checks that it is this cluster's (an archive shared by two clusters would mix their logs)
 * and this member's (two members writing one archive would prune each other's base backups;
 * a leaderless member's log is its own).
 */
export async function openArchiveDir(
  dir: string,
  clusterId: string,
  member?: string,
): Promise<void> {
  await makeDir(join(dir, archiveDirs.base))
  await makeDir(join(dir, archiveDirs.segments))
  const markerPath = join(dir, 'archive.json')
  if (await exists(markerPath)) {
    let marker: Partial<ArchiveMarker>
    try {
      marker = JSON.parse(await readFile(markerPath, 'utf8')) as Partial<ArchiveMarker>
    } catch (err) {
      throw new KvError(
        'KV_ERR_ARCHIVE_CORRUPT',
        `${markerPath} is not JSON: ${(err as Error).message}`,
        {
          file: 'archive.json',
        },
      )
    }
    if (marker.kind !== 'kvstore-archive' || marker.format !== archiveFormat) {
      throw new KvError('KV_ERR_ARCHIVE_CORRUPT', `${markerPath} is not a kvstore archive marker`, {
        file: 'archive.json',
      })
    }
    if (marker.clusterId !== clusterId) {
      throw new KvError(
        'KV_ERR_CLUSTER_MISMATCH',
        `archive ${dir} belongs to cluster ${String(marker.clusterId)}, not ${clusterId}`,
        { dir },
      )
    }
    if (member !== undefined && marker.member !== undefined && marker.member !== member) {
      throw new KvError(
        'KV_ERR_INVALID_ARGUMENT',
        `archive ${dir} is written by member ${marker.member}, not ${member}: one member archives into one directory (to hand it over, stop ${marker.member}'s archive and set "member" in ${markerPath})`,
        { dir },
      )
    }
    if (member !== undefined && marker.member === undefined) {
      const claimed: ArchiveMarker = { ...(marker as ArchiveMarker), member }
      await writeFileAtomic(dir, 'archive.json', Buffer.from(`${JSON.stringify(claimed)}\n`))
      await syncDir(dir)
    }
  } else {
    const marker: ArchiveMarker = {
      kind: 'kvstore-archive',
      format: archiveFormat,
      clusterId,
      ...(member !== undefined ? { member } : {}),
    }
    await writeFileAtomic(dir, 'archive.json', Buffer.from(`${JSON.stringify(marker)}\n`))
    await syncDir(dir)
  }
  // Temporary files of writes a crash cut off.
  for (const sub of [dir, join(dir, archiveDirs.segments), join(dir, archiveDirs.base)]) {
    for (const name of await readdir(sub)) {
      if (name.startsWith('.') && name.includes('.tmp-')) await rm(join(sub, name), { force: true })
    }
  }
}

/** The segments in an archive, by first LSN (names only; nothing is read). */
export async function listSegments(dir: string): Promise<SegmentInfo[]> {
  let names: string[]
  try {
    names = await readdir(join(dir, archiveDirs.segments))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const out: SegmentInfo[] = []
  for (const file of names) {
    const match = segmentName.exec(file)
    if (match === null) continue
    const fromLsn = Number(match[1])
    const toLsn = Number(match[2])
    if (
      !Number.isSafeInteger(fromLsn) ||
      !Number.isSafeInteger(toLsn) ||
      fromLsn < 1 ||
      toLsn < fromLsn
    )
      continue
    out.push({ file, fromLsn, toLsn })
  }
  return out.sort((a, b) => a.fromLsn - b.fromLsn || b.toLsn - a.toLsn)
}

/** A base backup in an archive. */
export interface BaseInfo {
  dir: string
  lsn: number
  manifest: BackupManifest
}

/**
 * The base backups in an archive whose manifests read and check, oldest first. A directory
 * whose manifest is missing (a backup a crash cut off) is left out.
 */
export async function listBases(dir: string): Promise<BaseInfo[]> {
  let names: string[]
  try {
    names = await readdir(join(dir, archiveDirs.base))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  const out: BaseInfo[] = []
  for (const name of names.filter((n) => baseName.test(n)).sort()) {
    const path = join(dir, archiveDirs.base, name)
    try {
      const manifest = await readManifest(path)
      out.push({ dir: path, lsn: manifest.lsn, manifest })
    } catch {
      // not a finished backup
    }
  }
  return out
}

/**
 * The segments that carry entries `fromLsn`..`toLsn` (toLsn Infinity: as far as they go
 * without a gap), in order. Only names are looked at. Returns the LSN the chain reaches.
 */
export function chainSegments(
  segments: SegmentInfo[],
  fromLsn: number,
  toLsn: number,
): { chain: SegmentInfo[]; reachedLsn: number } {
  const chain: SegmentInfo[] = []
  let next = fromLsn
  while (next <= toLsn) {
    let best: SegmentInfo | undefined
    for (const s of segments) {
      if (s.fromLsn <= next && s.toLsn >= next && (best === undefined || s.toLsn > best.toLsn)) {
        best = s
      }
    }
    if (best === undefined) break
    chain.push(best)
    next = best.toLsn + 1
  }
  return { chain, reachedLsn: next - 1 }
}

/**
 * Retention: keeps the `keep` newest base backups and the segments they need, removes older
 * ones. Returns what it removed.
 */
export async function pruneArchive(
  dir: string,
  keep: number,
): Promise<{ bases: number; segments: number }> {
  if (!Number.isSafeInteger(keep) || keep < 1) throw new Error('keep at least one base backup')
  const bases = await listBases(dir)
  if (bases.length <= keep) return { bases: 0, segments: 0 }
  const kept = bases.slice(bases.length - keep)
  const oldestKept = (kept[0] as BaseInfo).lsn
  let removedBases = 0
  for (const base of bases.slice(0, bases.length - keep)) {
    await rm(base.dir, { recursive: true, force: true })
    removedBases++
  }
  let removedSegments = 0
  for (const segment of await listSegments(dir)) {
    if (segment.toLsn <= oldestKept) {
      await rm(join(dir, archiveDirs.segments, segment.file), { force: true })
      removedSegments++
    }
  }
  await syncDir(join(dir, archiveDirs.segments))
  await syncDir(join(dir, archiveDirs.base))
  return { bases: removedBases, segments: removedSegments }
}

/** Writes one segment into the archive atomically. */
export async function writeSegment(dir: string, entries: SegmentEntry[]): Promise<SegmentInfo> {
  const first = entries[0] as SegmentEntry
  const last = entries[entries.length - 1] as SegmentEntry
  const file = segmentFileName(first.lsn, last.lsn)
  const segmentsDir = join(dir, archiveDirs.segments)
  await writeFileAtomic(segmentsDir, file, await encodeSegment(entries))
  await syncDir(segmentsDir)
  return { file, fromLsn: first.lsn, toLsn: last.lsn }
}
