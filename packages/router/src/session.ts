/**
 * Session tokens through the router.
 *
 * A node's token (`s1.<epoch>.<lsn>`) is a position in one group's log. Behind a router with
 * several groups a client's session spans them, so the router gives out its own token,
 *
 *   r1.<base64url of JSON [mapVersion, [[group, epoch, lsn], ...]]>
 *
 * the shard map version the client has seen and its position in each group it touched. A read
 * forwards the key's group's position as the node's own token, so read-your-writes and
 * monotonic reads hold per group; a token naming a newer map than the router's makes the router
 * refresh its map first. Each answer carries the request's token merged with the position the
 * group just reported, so a client that always sends back the last token it got keeps every
 * group's position. The token is signed by nothing: it only ever makes a read wait for data
 * that exists, so a forged one costs the forger a slower read, nothing else.
 *
 * With a single group the router hands out the node's own tokens unchanged (the SDK reads
 * those); it accepts both kinds either way.
 */
import {
  KvError,
  decodeSession,
  encodeSession,
  identityNamePattern,
  isEpoch,
  isLsn,
  shardLimits,
  type SessionPosition,
} from '@kvstore/protocol'

export interface RouterSession {
  /** The shard map version the client last saw. */
  mapVersion: number
  /** Its position in each group it touched. */
  groups: Map<string, SessionPosition>
}

/** Longest router token accepted: every group of a deployment, with room to spare. */
export const routerSessionCharsMax = 32 * 1024

const prefix = 'r1.'

function invalid(why: string): KvError {
  return new KvError(
    'KV_ERR_INVALID_SESSION',
    `the session token is malformed (${why}); send one the router returned`,
  )
}

export function encodeRouterSession(session: RouterSession): string {
  const entries: [string, number, number][] = []
  for (const [group, position] of session.groups)
    entries.push([group, position.epoch, position.lsn])
  // Sorted, so equal sessions make equal tokens.
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  return `${prefix}${Buffer.from(JSON.stringify([session.mapVersion, entries]), 'utf8').toString('base64url')}`
}

/** Parses a router token; throws KV_ERR_INVALID_SESSION when it is not one. */
export function decodeRouterSession(token: string): RouterSession {
  if (!token.startsWith(prefix)) throw invalid('not a router token')
  if (token.length > routerSessionCharsMax) throw invalid('too long')
  const body = token.slice(prefix.length)
  if (!/^[A-Za-z0-9_-]*$/.test(body)) throw invalid('not base64url')
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'))
  } catch {
    throw invalid('not JSON')
  }
  if (!Array.isArray(parsed) || parsed.length !== 2) throw invalid('not [mapVersion, groups]')
  const [mapVersion, entries] = parsed as [unknown, unknown]
  if (typeof mapVersion !== 'number' || !Number.isSafeInteger(mapVersion) || mapVersion < 0)
    throw invalid('bad map version')
  if (!Array.isArray(entries) || entries.length > shardLimits.groupsMax)
    throw invalid('bad group list')
  const groups = new Map<string, SessionPosition>()
  for (const entry of entries as unknown[]) {
    if (!Array.isArray(entry) || entry.length !== 3) throw invalid('bad group entry')
    const [group, epoch, lsn] = entry as [unknown, unknown, unknown]
    if (typeof group !== 'string' || !identityNamePattern.test(group)) throw invalid('bad group id')
    if (!isEpoch(epoch) || !isLsn(lsn)) throw invalid('bad position')
    if (groups.has(group)) throw invalid(`group ${group} twice`)
    groups.set(group, { epoch, lsn })
  }
  return { mapVersion, groups }
}

/** A client's token, of either kind. */
export type ClientSession =
  | { kind: 'node'; position: SessionPosition; token: string }
  | { kind: 'router'; session: RouterSession }

/** Reads a token a client sent; throws KV_ERR_INVALID_SESSION when it is neither kind. */
export function parseClientSession(token: string): ClientSession {
  const trimmed = token.trim()
  if (trimmed.startsWith(prefix)) return { kind: 'router', session: decodeRouterSession(trimmed) }
  return { kind: 'node', position: decodeSession(trimmed), token: trimmed }
}

/** The later of two positions (by LSN, then epoch). */
export function laterPosition(
  a: SessionPosition | undefined,
  b: SessionPosition | undefined,
): SessionPosition | undefined {
  if (a === undefined) return b
  if (b === undefined) return a
  if (a.lsn !== b.lsn) return a.lsn > b.lsn ? a : b
  return a.epoch >= b.epoch ? a : b
}

/**
 * The token to answer with: `base` (the request's, or none) with `group` moved up to
 * `position`, at map version at least `mapVersion`.
 */
export function advanceRouterSession(
  base: RouterSession | null,
  mapVersion: number,
  group: string,
  position: SessionPosition | undefined,
): RouterSession {
  const groups = new Map(base?.groups ?? [])
  const later = laterPosition(groups.get(group), position)
  if (later !== undefined) groups.set(group, later)
  return { mapVersion: Math.max(base?.mapVersion ?? 0, mapVersion), groups }
}

/** The node token of a position (what a group's replica understands). */
export function nodeToken(position: SessionPosition): string {
  return encodeSession(position)
}

/** A node's token, or undefined when absent or unreadable. */
export function positionOfNodeToken(token: string | undefined): SessionPosition | undefined {
  if (token === undefined) return undefined
  try {
    return decodeSession(token)
  } catch {
    return undefined
  }
}
