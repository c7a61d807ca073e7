/**
 * The client's session: what it has written and read, sent with every read so that the replica
 * serving it waits until it has applied that far (read-your-writes, monotonic reads).
 *
 * It holds one of two kinds of token:
 * - a node's (`s1.<epoch>.<lsn>`): a position in one group's log. The session keeps the later of
 *   the positions it is given.
 * - a kv-router's in front of several groups (`r1.…`, @kvstore/protocol's router-session.ts): a
 *   position per group, and the shard map version seen. Each answer's token is the request's
 *   advanced in the group that answered, so concurrent requests come back with tokens that each
 *   know only part of the story; the session merges them (per group the later position, the
 *   higher map version), which gives the same result whatever order they arrive in.
 *
 * A router token replaces a node's position, and a node token is not merged into a router
 * session: a node's position names no group, and a router in front of several groups refuses
 * it. (A client meets both only when a router that had one group is given more.)
 */
import {
  encodeRouterSession,
  mergeRouterSessions,
  parseClientSession,
  type RouterSession,
} from '@kvstore/protocol/router-session'
import { encodeSession, laterSession, type SessionPosition } from '@kvstore/protocol/session'

export class SessionState {
  private node: SessionPosition | null = null
  private router: RouterSession | null = null
  /** The token of the session, made once per change (every read sends it). */
  private encoded: string | null = null

  /** The token to send, or null before the first. */
  get token(): string | null {
    if (this.encoded === null) {
      if (this.router !== null) this.encoded = encodeRouterSession(this.router)
      else if (this.node !== null) this.encoded = encodeSession(this.node)
    }
    return this.encoded
  }

  /** Which kind of token the session holds. */
  get kind(): 'node' | 'router' | null {
    return this.router !== null ? 'router' : this.node !== null ? 'node' : null
  }

  /**
   * Takes in a token (from an answer, or one the caller passes on). Returns false when it was
   * not taken: a node token while the session holds a router's. Throws KV_ERR_INVALID_SESSION
   * when the token is malformed, or when merging it would name more groups than a deployment
   * may have (it came from another deployment); the session is then unchanged.
   */
  add(token: string): boolean {
    // The same token again (sequential requests that moved nothing): nothing to do.
    if (this.encoded !== null && token === this.encoded) return true
    const parsed = parseClientSession(token)
    if (parsed.kind === 'router') {
      this.router =
        this.router === null ? parsed.session : mergeRouterSessions(this.router, parsed.session)
      this.node = null
    } else {
      if (this.router !== null) return false
      const later = laterSession(this.node, parsed.position)
      if (later === this.node) return true
      this.node = later
    }
    this.encoded = null
    return true
  }
}
