/** Tokens, password hashes and the limit on hashes running at once. */
import { randomBytes } from 'node:crypto'
import { KvError } from '@kvstore/protocol'
import {
  HashLimiter,
  checkPassword,
  hashPassword,
  verifyPassword,
} from '../src/security/passwords.js'
import { TokenService } from '../src/security/tokens.js'

const settings = { enabled: true, tokenKey: randomBytes(32), tokenKeyId: 'k1' }
const user = { name: 'alice', id: 'u1', generation: 3 }

describe('tokens', () => {
  it('are checked: signature, audience (the cluster) and expiry', async () => {
    let now = 1_000_000_000_000
    const tokens = new TokenService('kv-c1', 60_000, () => now)
    const { token, expiresAtMs } = await tokens.issue(user, settings)
    expect(await tokens.verify(token, settings)).toEqual({
      user: 'alice',
      userId: 'u1',
      generation: 3,
      expiresAtMs,
    })
    // Another cluster's node, or another signing key, refuses it.
    expect(await new TokenService('kv-c2', 60_000, () => now).verify(token, settings)).toBeNull()
    const rotated = { ...settings, tokenKey: randomBytes(32), tokenKeyId: 'k2' }
    expect(await tokens.verify(token, rotated)).toBeNull()
    // A tampered payload fails the signature.
    const [head, , sig] = token.split('.')
    const forged = Buffer.from(
      JSON.stringify({ sub: 'root', uid: 'u1', gen: 3, aud: 'kv-c1', exp: 9e9 }),
    ).toString('base64url')
    expect(await tokens.verify(`${head}.${forged}.${sig}`, settings)).toBeNull()
    // Expired: refused, from the cache too.
    expect(await tokens.verify(token, settings)).not.toBeNull()
    now += 61_000
    expect(tokens.cached(token, settings)).toBeNull()
    expect(await tokens.verify(token, settings)).toBeNull()
  })

  it('are served from the cache once checked', async () => {
    const tokens = new TokenService('kv-c1', 60_000)
    const { token } = await tokens.issue(user, settings)
    expect(tokens.cached(token, settings)).toBeUndefined()
    await tokens.verify(token, settings)
    expect(tokens.cached(token, settings)).toMatchObject({ user: 'alice' })
  })
})

describe('passwords', () => {
  it('hash with scrypt and verify', async () => {
    const limiter = new HashLimiter(2, 4, 1000)
    const hash = await hashPassword('correct horse', limiter)
    expect(hash).toMatch(/^scrypt\$15\$8\$1\$/)
    expect(await verifyPassword('correct horse', hash, limiter)).toBe(true)
    expect(await verifyPassword('wrong horse!', hash, limiter)).toBe(false)
    expect(await verifyPassword('x', 'not-a-hash', limiter)).toBe(false)
    // Parameters that would make a check cost minutes are refused, not run.
    expect(await verifyPassword('x', hash.replace('scrypt$15$', 'scrypt$30$'), limiter)).toBe(false)
  })

  it('refuse passwords too short or too long', () => {
    expect(() => checkPassword('short')).toThrow(KvError)
    expect(() => checkPassword('x'.repeat(2000))).toThrow(/8 to 1024 bytes/)
    expect(checkPassword('long enough')).toBe('long enough')
  })

  it('run a bounded number of hashes at once, and refuse past the queue', async () => {
    const limiter = new HashLimiter(1, 1, 5000)
    let release!: () => void
    const first = limiter.run(() => new Promise<void>((r) => (release = r)))
    const second = limiter.run(async () => 'second')
    await expect(limiter.run(async () => 'third')).rejects.toMatchObject({
      code: 'KV_ERR_OVERLOADED',
    })
    release()
    await first
    expect(await second).toBe('second')
  })
})
