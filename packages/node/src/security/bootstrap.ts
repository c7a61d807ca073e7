/**
 * How a new cluster gets its auth store: auth on, the root and monitor roles, and a root user.
 *
 * The root password comes from --root-password-file (`kv certs init` writes root.password).
 * Without one, the node that creates the cluster draws a random password and, once the
 * records holding its hash are committed, writes it to <data-dir>/root.password (mode 0600)
 * and logs the file's path, never the password.
 */
import { hkdfSync, randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { open, rename } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import {
  OpType,
  authRecordKey,
  encodeAuthRecord,
  type AuthRecord,
  type Op,
} from '@kvstore/protocol'
import type { Store } from '@kvstore/storage'
import { bootstrapRecords, rootUser, type AuthStore } from './auth-store.js'
import { checkPassword, hashPassword, type HashLimiter } from './passwords.js'

export interface Bootstrap {
  records: AuthRecord[]
  ops: Op[]
  /** The password this node drew, when no file gave one. */
  generatedPassword: string | null
  rootPasswordHash: string
}

/** The records a new cluster starts with, ready to write. */
export async function prepareBootstrap(options: {
  rootPasswordFile: string | undefined
  nodeId: string
  limiter: HashLimiter
  stampWallMs: number
  log: Logger
  /**
   * Leaderless mode: every member makes the first records on its own, so with the cluster's
   * auth secret (and a password file) they make them alike: the same stamp, and the token key,
   * the root user's id and its salt derived from the secret and the cluster id. They agree from
   * the first request on. The key is not derived from the password, which people learn.
   */
  sameOnEveryMember?: { clusterId: string; secretFile: string | undefined }
}): Promise<Bootstrap> {
  let password: string | null = null
  if (options.rootPasswordFile !== undefined && existsSync(options.rootPasswordFile)) {
    password = checkPassword(readFileSync(options.rootPasswordFile, 'utf8').trim())
  }
  const generatedPassword = password === null ? randomBytes(24).toString('base64url') : null
  const alike = options.sameOnEveryMember
  const secret =
    alike?.secretFile !== undefined && existsSync(alike.secretFile)
      ? readFileSync(alike.secretFile, 'utf8').trim()
      : ''
  if (alike !== undefined && secret.length < 32) {
    options.log.warn(
      { file: alike.secretFile ?? null },
      'no auth secret (kv certs init makes auth.secret): each member draws its own token key at first start, and a token works on every member only once they have exchanged records',
    )
  }
  const same = alike !== undefined && password !== null && secret.length >= 32
  const derive = (info: string, bytes: number): Buffer =>
    Buffer.from(hkdfSync('sha256', secret, alike?.clusterId ?? '', info, bytes))
  const rootPasswordHash = await hashPassword(
    password ?? (generatedPassword as string),
    options.limiter,
    ...(same ? [derive('kv root password salt', 16)] : []),
  )
  const records = bootstrapRecords({
    enabled: true,
    rootPasswordHash,
    stamp: same
      ? { wallMs: 0, logical: 0, node: '' }
      : { wallMs: options.stampWallMs, logical: 0, node: options.nodeId },
    ...(same
      ? {
          tokenKey: derive('kv token signing key', 32),
          rootUserId: derive('kv root user id', 12).toString('base64url'),
        }
      : {}),
  })
  const ops = records.map((record) => ({
    type: OpType.Put,
    key: authRecordKey(record),
    value: encodeAuthRecord(record),
  }))
  return { records, ops, generatedPassword, rootPasswordHash }
}

/** Writes a file readable by its owner only: temp file, fsync, rename. */
export async function writeSecretFile(path: string, text: string): Promise<void> {
  const temp = `${path}.tmp-${process.pid}`
  const handle = await open(temp, 'w', 0o600)
  try {
    await handle.writeFile(text)
    await handle.sync()
  } finally {
    await handle.close()
  }
  await rename(temp, path)
}

/**
 * When this node drew the root password: waits until the root user it made is committed (it
 * may lose the race to another member, whose root user then stands), then writes the password
 * to <data-dir>/root.password. Gives up after `timeoutMs`.
 */
export function saveGeneratedPassword(options: {
  bootstrap: Bootstrap
  auth: AuthStore
  store: Store
  dataDir: string
  log: Logger
  timeoutMs?: number
}): void {
  const { bootstrap, auth, store, log } = options
  const password = bootstrap.generatedPassword
  if (password === null) return
  const deadline = Date.now() + (options.timeoutMs ?? 120_000)
  const timer = setInterval(() => {
    const entry = auth.entry('user', rootUser)
    const mine =
      entry !== null &&
      entry.record.body.kind === 'user' &&
      entry.record.body.user.passwordHash === bootstrap.rootPasswordHash
    if (entry !== null && !mine) {
      clearInterval(timer) // another member's bootstrap stands; its node holds the password
      return
    }
    if (mine && store.commitLsn >= entry.version) {
      clearInterval(timer)
      const path = join(options.dataDir, 'root.password')
      writeSecretFile(path, `${password}\n`).then(
        () =>
          log.warn(
            { file: path },
            'new cluster: the root password was written to this file (mode 0600); log in with kv login --user root and change it, or make certificates with kv certs init, which sets one',
          ),
        (err: unknown) => log.error({ err, file: path }, 'could not write the root password'),
      )
      return
    }
    if (Date.now() > deadline) clearInterval(timer)
  }, 100)
  timer.unref()
}
