/**
 * What the SDK sends to prove who it is: a token given by the caller, or a user and password
 * that it trades for a token (POST /v1/auth/token) when first needed, again before the token
 * expires, and once more if a node refuses it (a revoked or rotated token). A client
 * certificate needs nothing here: it goes in the TLS options.
 */
import { KvError } from '@kvstore/protocol/errors'
import type { TokenResponse } from '@kvstore/protocol'

export type KvAuth = { token: string } | { user: string; password: string }

/** What a login gives the credentials: the token (null while auth is off) and its expiry. */
export type LoginResult = Pick<TokenResponse, 'token' | 'expiresAt'>

/** How long before its expiry a token is renewed, at least (ms). */
const renewBeforeMs = 30_000

export class Credentials {
  private token: string | null
  private expiresAtMs = Infinity
  private issuedAtMs = 0
  private pending: Promise<string | null> | null = null

  constructor(
    private readonly auth: KvAuth | undefined,
    private readonly login: (user: string, password: string) => Promise<LoginResult>,
    private readonly now: () => number = Date.now,
  ) {
    this.token = auth !== undefined && 'token' in auth ? auth.token : null
  }

  /** True when a refused token can be replaced by logging in again. */
  get canRenew(): boolean {
    return this.auth !== undefined && 'user' in this.auth
  }

  /** The Authorization header to send; undefined when the client has no credential. */
  async header(): Promise<string | undefined> {
    if (this.auth === undefined) return undefined
    if ('token' in this.auth) return `Bearer ${this.auth.token}`
    const now = this.now()
    const lifetime = this.expiresAtMs - this.issuedAtMs
    const renewAt = this.expiresAtMs - Math.max(renewBeforeMs, lifetime / 5)
    if (this.token === null || now >= renewAt) await this.renew()
    return this.token === null ? undefined : `Bearer ${this.token}`
  }

  /** Drops the token (a node refused it); the next request logs in again. */
  invalidate(refused: string | undefined): void {
    if (refused !== undefined && refused === `Bearer ${this.token}`) this.token = null
  }

  private async renew(): Promise<void> {
    const auth = this.auth
    if (auth === undefined || !('user' in auth)) return
    this.pending ??= this.login(auth.user, auth.password)
      .then((result) => {
        this.issuedAtMs = this.now()
        this.expiresAtMs = result.expiresAt === null ? Infinity : Date.parse(result.expiresAt)
        return result.token
      })
      .finally(() => {
        this.pending = null
      })
    try {
      this.token = await this.pending
    } catch (err) {
      if (err instanceof KvError) throw err
      throw new KvError('KV_ERR_UNAVAILABLE', `cannot log in: ${(err as Error).message}`)
    }
  }
}
