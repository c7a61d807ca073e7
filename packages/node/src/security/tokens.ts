/**
 * Tokens: short-lived JWTs (HS256, signed with the auth store's key, so every member can check
 * a token any member issued). A token names its user and the user's generation when it was
 * issued; a token whose generation is older than the user's (new password, revoked, deleted
 * and re-created) is refused, so revocation takes effect as soon as a member applies it.
 *
 * Checked tokens are cached (bounded), so a request with a known token costs a map lookup.
 */
import { createHash } from 'node:crypto'
import { SignJWT, jwtVerify, errors as joseErrors } from 'jose'
import type { AuthSettings } from '@kvstore/protocol'

export interface TokenClaims {
  user: string
  /** The user's random id when the token was issued. */
  userId: string
  generation: number
  expiresAtMs: number
}

const cacheEntriesMax = 10_000

export class TokenService {
  private readonly cache = new Map<string, TokenClaims>()
  private cachedKeyId = ''

  constructor(
    private readonly clusterId: string,
    private readonly ttlMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  async issue(
    user: { name: string; id: string; generation: number },
    settings: AuthSettings,
  ): Promise<{ token: string; expiresAtMs: number }> {
    const nowMs = this.now()
    const expiresAtMs = nowMs + this.ttlMs
    const token = await new SignJWT({ gen: user.generation, uid: user.id })
      .setProtectedHeader({ alg: 'HS256', kid: settings.tokenKeyId })
      .setSubject(user.name)
      .setAudience(this.clusterId)
      .setIssuedAt(Math.floor(nowMs / 1000))
      .setExpirationTime(Math.floor(expiresAtMs / 1000))
      .sign(settings.tokenKey)
    return { token, expiresAtMs: Math.floor(expiresAtMs / 1000) * 1000 }
  }

  /** The token's claims from the cache, if it was checked before and has not expired. */
  cached(token: string, settings: AuthSettings): TokenClaims | null | undefined {
    if (settings.tokenKeyId !== this.cachedKeyId) {
      // A new signing key (rotation, or auth enabled again): nothing cached is valid.
      this.cache.clear()
      this.cachedKeyId = settings.tokenKeyId
    }
    const claims = this.cache.get(token)
    if (claims === undefined) return undefined
    if (claims.expiresAtMs <= this.now()) {
      this.cache.delete(token)
      return null
    }
    return claims
  }

  /** Checks a token's signature, audience and expiry; null when it is not valid. */
  async verify(token: string, settings: AuthSettings): Promise<TokenClaims | null> {
    const hit = this.cached(token, settings)
    if (hit !== undefined) return hit
    if (token.length > 4096 || settings.tokenKey.length === 0) return null
    try {
      const { payload } = await jwtVerify(token, settings.tokenKey, {
        algorithms: ['HS256'],
        audience: this.clusterId,
        currentDate: new Date(this.now()),
      })
      const generation = payload.gen
      if (
        typeof payload.sub !== 'string' ||
        typeof payload.uid !== 'string' ||
        typeof generation !== 'number' ||
        !Number.isSafeInteger(generation) ||
        typeof payload.exp !== 'number'
      )
        return null
      const claims = {
        user: payload.sub,
        userId: payload.uid,
        generation,
        expiresAtMs: payload.exp * 1000,
      }
      if (this.cache.size >= cacheEntriesMax) {
        const oldest = this.cache.keys().next().value
        if (oldest !== undefined) this.cache.delete(oldest)
      }
      this.cache.set(token, claims)
      return claims
    } catch (err) {
      if (err instanceof joseErrors.JOSEError) return null
      throw err
    }
  }
}

/** A short, non-reversible name for a token in logs. */
export function tokenFingerprint(token: string): string {
  return createHash('sha256').update(token).digest('base64url').slice(0, 12)
}
