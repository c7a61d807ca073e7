/**
 * The single-leader cluster's configuration (proto/kv.proto `MembershipRecord`): who the
 * members are, which of them vote, and which ids were removed. It is the value of the reserved
 * key `\0cluster/membership`, written by MEMBERSHIP log entries, so it travels with the log,
 * snapshots and backups, and a truncation restores the configuration before a change.
 *
 * Decoding validates every field: ids as member ids, URLs as http(s) origins, no duplicates,
 * at least one voter, and both lists bounded.
 */
import { fileURLToPath } from 'node:url'
import protobuf from 'protobufjs'
import {
  DecodeError,
  EncodeError,
  EntryKind,
  OpType,
  membershipKeyBytes,
  type LogEntry,
} from './codec.js'
import { identityNamePattern } from './identity.js'
import { formatVersion } from './limits.js'

const root = protobuf.loadSync(fileURLToPath(new URL('../proto/kv.proto', import.meta.url)))
const MembershipRecordType = root.lookupType('kv.v1.MembershipRecord')

export const membershipLimits = {
  /** Members in one configuration, voters and learners together. */
  membersMax: 64,
  /** Removed ids remembered (the oldest are forgotten first). */
  removedMax: 1024,
  urlBytesMax: 512,
} as const

export interface MemberSpec {
  id: string
  clientUrl: string
  peerUrl: string
  /** False for a learner. */
  voter: boolean
}

export interface MembershipConfig {
  members: MemberSpec[]
  /** Ids removed from the cluster, oldest first. */
  removed: string[]
}

function urlProblem(url: unknown, what: string): string | null {
  if (typeof url !== 'string') return `${what} is not a string`
  if (Buffer.byteLength(url) > membershipLimits.urlBytesMax) return `${what} is too long`
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return `${what} ${JSON.stringify(url)} is not a URL`
  }
  if ((parsed.protocol !== 'http:' && parsed.protocol !== 'https:') || parsed.origin !== url) {
    return `${what} ${JSON.stringify(url)} is not an http(s) origin`
  }
  return null
}

/** What is wrong with a configuration, or null. */
export function membershipProblem(config: { members: unknown; removed: unknown }): string | null {
  if (!Array.isArray(config.members)) return 'members is not a list'
  if (!Array.isArray(config.removed)) return 'removed is not a list'
  if (config.members.length > membershipLimits.membersMax) {
    return `${config.members.length} members (at most ${membershipLimits.membersMax})`
  }
  if (config.removed.length > membershipLimits.removedMax) {
    return `${config.removed.length} removed ids (at most ${membershipLimits.removedMax})`
  }
  const ids = new Set<string>()
  let voters = 0
  for (const m of config.members as Partial<MemberSpec>[]) {
    if (typeof m?.id !== 'string' || !identityNamePattern.test(m.id)) {
      return `member id ${JSON.stringify(m?.id)} is not valid`
    }
    if (ids.has(m.id)) return `member ${m.id} is listed twice`
    ids.add(m.id)
    const client = urlProblem(m.clientUrl, `client URL of ${m.id}`)
    if (client !== null) return client
    const peer = urlProblem(m.peerUrl, `peer URL of ${m.id}`)
    if (peer !== null) return peer
    if (typeof m.voter !== 'boolean') return `voter of ${m.id} is not a boolean`
    if (m.voter) voters++
  }
  if (voters === 0) return 'no voter'
  const removed = new Set<string>()
  for (const id of config.removed as unknown[]) {
    if (typeof id !== 'string' || !identityNamePattern.test(id)) {
      return `removed id ${JSON.stringify(id)} is not valid`
    }
    if (ids.has(id)) return `member ${id} is both a member and removed`
    if (removed.has(id)) return `removed id ${id} is listed twice`
    removed.add(id)
  }
  return null
}

export function encodeMembership(config: MembershipConfig): Buffer {
  const problem = membershipProblem(config)
  if (problem !== null) throw new EncodeError('membership record', problem)
  return Buffer.from(
    MembershipRecordType.encode({
      format: formatVersion,
      members: config.members.map((m) => ({
        id: m.id,
        clientUrl: m.clientUrl,
        peerUrl: m.peerUrl,
        voter: m.voter,
      })),
      removed: config.removed,
    }).finish(),
  )
}

export function decodeMembership(bytes: Uint8Array): MembershipConfig {
  let raw: { format: number; members: MemberSpec[]; removed: string[] }
  try {
    raw = MembershipRecordType.decode(bytes) as unknown as typeof raw
  } catch (err) {
    throw new DecodeError('membership record', (err as Error).message, { cause: err })
  }
  if (raw.format !== formatVersion) {
    throw new DecodeError('membership record', `unknown format ${String(raw.format)}`)
  }
  const problem = membershipProblem(raw)
  if (problem !== null) throw new DecodeError('membership record', problem)
  return {
    members: raw.members.map((m) => ({
      id: m.id,
      clientUrl: m.clientUrl,
      peerUrl: m.peerUrl,
      voter: m.voter,
    })),
    removed: [...raw.removed],
  }
}

/** The log entry that makes `config` the configuration at `lsn`. */
export function membershipEntry(
  lsn: number,
  epoch: number,
  config: MembershipConfig,
  timestampMs: number,
): LogEntry {
  return {
    epoch,
    lsn,
    kind: EntryKind.Membership,
    ops: [{ type: OpType.Put, key: membershipKeyBytes, value: encodeMembership(config) }],
    timestampMs,
    requestId: '',
  }
}

/** The configuration a MEMBERSHIP entry carries (decoded and checked), or null for others. */
export function membershipOfEntry(entry: LogEntry): MembershipConfig | null {
  if (entry.kind !== EntryKind.Membership) return null
  return decodeMembership((entry.ops[0] as { value: Buffer }).value)
}
