/**
 * Password hashes: scrypt (memory-hard), in libuv's thread pool so the event loop never waits
 * on one. Each hash costs about 32 MiB and tens of milliseconds on purpose, which also makes it
 * a way to starve the node: the thread pool is shared with LevelDB's reads and fsyncs. So at
 * most `concurrency` hashes run at once, a few more wait briefly, and the rest are refused with
 * KV_ERR_OVERLOADED.
 *
 * Format: scrypt$<log2 N>$<r>$<p>$<salt base64url>$<hash base64url>
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import { KvError } from '@kvstore/protocol/errors'

const log2N = 15
const r = 8
const p = 1
const keyBytes = 32
const saltBytes = 16
/** A password of more bytes than this is refused (it would only cost hashing time). */
export const passwordBytesMax = 1024
export const passwordBytesMin = 8

function scryptAsync(password: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) =>
    scrypt(password, salt, keyBytes, options, (err, key) => (err ? reject(err) : resolve(key))),
  )
}

function options(n: number, rr: number, pp: number): ScryptOptions {
  // scrypt needs 128 * N * r bytes; allow twice that.
  return { N: 2 ** n, r: rr, p: pp, maxmem: 256 * 2 ** n * rr }
}

/** Refuses a password that is too short or too long, with a message for the user. */
export function checkPassword(password: unknown): string {
  if (typeof password !== 'string')
    throw new KvError('KV_ERR_MALFORMED_BODY', '"password" must be a string')
  const bytes = Buffer.byteLength(password)
  if (bytes < passwordBytesMin || bytes > passwordBytesMax) {
    throw new KvError(
      'KV_ERR_INVALID_ARGUMENT',
      `a password must be ${passwordBytesMin} to ${passwordBytesMax} bytes long`,
    )
  }
  return password
}

/** Runs at most `concurrency` tasks at once; `queueMax` more wait up to `waitMs`. */
export class HashLimiter {
  private running = 0
  private readonly waiting: (() => void)[] = []

  constructor(
    private readonly concurrency: number,
    private readonly queueMax: number,
    private readonly waitMs: number,
  ) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.running >= this.concurrency) {
      if (this.waiting.length >= this.queueMax) throw this.overloaded()
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          clearTimeout(timer)
          resolve()
        }
        const timer = setTimeout(() => {
          const at = this.waiting.indexOf(wake)
          if (at >= 0) this.waiting.splice(at, 1)
          reject(this.overloaded())
        }, this.waitMs)
        this.waiting.push(wake)
      })
    }
    this.running++
    try {
      return await task()
    } finally {
      this.running--
      this.waiting.shift()?.()
    }
  }

  private overloaded(): KvError {
    return new KvError(
      'KV_ERR_OVERLOADED',
      'too many password checks are running; retry in a moment',
    )
  }
}

/** Hashes with a random salt, or with `salt` (leaderless members that must agree on a hash). */
export async function hashPassword(
  password: string,
  limiter: HashLimiter,
  salt: Buffer = randomBytes(saltBytes),
): Promise<string> {
  const key = await limiter.run(() => scryptAsync(password, salt, options(log2N, r, p)))
  return `scrypt$${log2N}$${r}$${p}$${salt.toString('base64url')}$${key.toString('base64url')}`
}

/** True when `password` matches `hash`; false for an empty or malformed hash. */
export async function verifyPassword(
  password: string,
  hash: string,
  limiter: HashLimiter,
): Promise<boolean> {
  const parts = hash.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [n, rr, pp] = [Number(parts[1]), Number(parts[2]), Number(parts[3])]
  // Parameters come from the replicated store: bound them, so a bad record cannot make one
  // check take minutes or gigabytes.
  if (!(n >= 10 && n <= 20 && rr >= 1 && rr <= 32 && pp >= 1 && pp <= 4)) return false
  const salt = Buffer.from(parts[4] as string, 'base64url')
  const expected = Buffer.from(parts[5] as string, 'base64url')
  if (expected.length !== keyBytes || salt.length === 0) return false
  const key = await limiter.run(() => scryptAsync(password, salt, options(n, rr, pp)))
  return timingSafeEqual(key, expected)
}
