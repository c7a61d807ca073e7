/**
 * Session tokens through the router.
 *
 * A node's token (`s1.<epoch>.<lsn>`) is a position in one group's log. Behind a router with
 * several groups a client's session spans them, so the router gives out its own token
 * (`r1.…`, whose codec is @kvstore/protocol's router-session.ts, shared with the SDK): the shard
 * map version the client has seen and its position in each group it touched. A read forwards
 * the key's group's position as the node's own token, so read-your-writes and monotonic reads
 * hold per group; a token naming a newer map than the router's makes the router refresh its map
 * first. Each answer carries the request's token merged with the position the group just
 * reported, so a client that always sends back the last token it got (or, like the SDK, merges
 * every token it gets) keeps every group's position.
 *
 * With a single group the router hands out the node's own tokens unchanged; it accepts both
 * kinds either way.
 */
import {
  decodeSession,
  encodeSession,
  type RouterSession,
  type SessionPosition,
} from '@kvstore/protocol'

export {
  decodeRouterSession,
  encodeRouterSession,
  parseClientSession,
  routerSessionCharsMax,
  type ClientSession,
  type RouterSession,
} from '@kvstore/protocol'

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
  // Not mergeRouterSessions: that refuses a result past shardLimits.groupsMax, and an answer
  // (a write already made) is never turned into an error by what the client's token held.
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
