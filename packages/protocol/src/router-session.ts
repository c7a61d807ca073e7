/**
 * Router session tokens.
 *
 * A node's token (`s1.<epoch>.<lsn>`, session.ts) is a position in one group's log. Behind a
 * kv-router with several groups a client's session spans them, so the router gives out its
 * own token,
 *
 *   r1.<base64url of JSON [mapVersion, [[group, epoch, lsn], ...]]>
 *
 * the shard map version the client has seen and its position in each group it touched. The
 * router forwards a read's group's position as the node's own token; the SDK keeps the merge of
 * every token it is given (`mergeRouterSessions`), so answers that arrive in any order never
 * lose a group's position.
 *
 * A token comes from outside and is trusted by nobody: decoding bounds its length and its number
 * of groups, and checks every group id, epoch and LSN; anything else is KV_ERR_INVALID_SESSION.
 * It is signed by nothing: it only ever makes a read wait for data that exists, so a forged one
 * costs the forger a slower read, nothing else.
 */
import { KvError } from './errors.js'
import { identityNamePattern } from './identity.js'
import { isEpoch, isLsn } from './limits.js'
import { decodeSession, laterSession, type SessionPosition } from './session.js'
import { shardLimits } from './shards.js'

export interface RouterSession {
  /** The shard map version the client last saw. */
  mapVersion: number
  /** Its position in each group it touched. */
  groups: Map<string, SessionPosition>
}

export const routerSessionPrefix = 'r1.'

/**
 * Longest router token accepted. The longest one can encode (`shardLimits.groupsMax` groups with
 * 64-character ids, the largest epoch, LSN and map version) is about 34,850 characters; a test
 * keeps this above it, so every token a router can make is one it accepts.
 */
export const routerSessionCharsMax = 36 * 1024

function invalid(why: string): KvError {
  return new KvError(
    'KV_ERR_INVALID_SESSION',
    `the session token is malformed (${why}); send one the router returned`,
  )
}

/** Whether `token` is a router token (by its prefix; it may still be malformed). */
export function isRouterSessionToken(token: string): boolean {
  return token.trimStart().startsWith(routerSessionPrefix)
}

/** Encodes a router session. Equal sessions make equal tokens, whatever their groups' order. */
export function encodeRouterSession(session: RouterSession): string {
  const entries: [string, number, number][] = []
  for (const [group, position] of session.groups)
    entries.push([group, position.epoch, position.lsn])
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  const body = Buffer.from(JSON.stringify([session.mapVersion, entries]), 'utf8')
  return `${routerSessionPrefix}${body.toString('base64url')}`
}

/** Parses a router token; throws KV_ERR_INVALID_SESSION when it is not a valid one. */
export function decodeRouterSession(token: string): RouterSession {
  if (!token.startsWith(routerSessionPrefix)) throw invalid('not a router token')
  if (token.length > routerSessionCharsMax) throw invalid('too long')
  const body = token.slice(routerSessionPrefix.length)
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

/**
 * The session that has seen what both have: per group the later position, and the higher map
 * version. Neither argument is changed. Throws KV_ERR_INVALID_SESSION when the two together
 * name more than `shardLimits.groupsMax` groups (no deployment has that many: they come from
 * different ones), since no router would accept the result.
 */
export function mergeRouterSessions(a: RouterSession, b: RouterSession): RouterSession {
  const groups = new Map(a.groups)
  for (const [group, position] of b.groups)
    groups.set(group, laterSession(groups.get(group) ?? null, position) as SessionPosition)
  if (groups.size > shardLimits.groupsMax)
    throw invalid(`more than ${shardLimits.groupsMax} groups`)
  return { mapVersion: Math.max(a.mapVersion, b.mapVersion), groups }
}

/** A client's token, of either kind. `token` is the node token as it was sent. */
export type ClientSession =
  | { kind: 'node'; position: SessionPosition; token: string }
  | { kind: 'router'; session: RouterSession }

/** Reads a token of either kind; throws KV_ERR_INVALID_SESSION when it is neither. */
export function parseClientSession(token: string): ClientSession {
  const trimmed = token.trim()
  if (trimmed.startsWith(routerSessionPrefix))
    return { kind: 'router', session: decodeRouterSession(trimmed) }
  return { kind: 'node', position: decodeSession(trimmed), token: trimmed }
}
