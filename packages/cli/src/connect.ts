/**
 * Where `kv` connects and who it is, from (highest first) flags, the environment, and the
 * credentials file that `kv login` writes:
 *
 *   URLs          --url, KV_ENDPOINTS or KV_URL (each takes several, comma-separated), then
 *                 the members kv login found (also after given URLs, when one of them is
 *                 a member, so that a command survives the given node's failure),
 *                 https://127.0.0.1:7001
 *   CA            --cacert, KV_CACERT, the login's CA, ./data/certs/ca.crt when it exists
 *   certificate   --cert and --key (KV_CERT, KV_KEY): a client certificate naming a user
 *   token         --token, KV_TOKEN, --token-file, KV_TOKEN_FILE, the login's token
 *   password      --user with --password-file (KV_USER, KV_PASSWORD_FILE) or KV_PASSWORD
 *
 * Files holding secrets (password, token, credentials) must be readable by their owner only
 * (mode 0600), as ssh asks of its keys: one readable by others is refused.
 */
import { existsSync, statSync } from 'node:fs'
import { mkdir, readFile, rm } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import type { KvAuth, TlsOptions } from '@kvstore/client'
import { writeSecretFile } from './secret-file.js'

export class CredentialError extends Error {}

export interface ConnectOptions {
  url?: string | undefined
  cacert?: string | undefined
  cert?: string | undefined
  key?: string | undefined
  token?: string | undefined
  'token-file'?: string | undefined
  user?: string | undefined
  'password-file'?: string | undefined
}

/** What `kv login` keeps between commands. */
export interface SavedLogin {
  url: string
  /** Every member's client URL at login time, so that later commands survive a failover. */
  urls?: string[]
  user: string
  token: string
  expiresAt: string | null
  /** Absolute path of the CA file used at login. */
  cacert: string | null
}

export function credentialsPath(env: NodeJS.ProcessEnv): string {
  return env.KV_CREDENTIALS ?? join(env.HOME ?? homedir(), '.config', 'kv', 'credentials.json')
}

/** Reads a file that holds a secret, refusing one that others may read. */
export async function readSecret(path: string, what: string): Promise<string> {
  let mode: number
  try {
    mode = statSync(path).mode
  } catch (err) {
    throw new CredentialError(`cannot read ${what} ${path}: ${(err as Error).message}`)
  }
  if ((mode & 0o077) !== 0) {
    throw new CredentialError(
      `${what} ${path} is readable by others (mode ${(mode & 0o777).toString(8)}); run chmod 600 ${path}`,
    )
  }
  return (await readFile(path, 'utf8')).trim()
}

export async function loadSavedLogin(env: NodeJS.ProcessEnv): Promise<SavedLogin | null> {
  const path = credentialsPath(env)
  if (!existsSync(path)) return null
  const text = await readSecret(path, 'credentials file')
  try {
    const saved = JSON.parse(text) as Partial<SavedLogin>
    if (typeof saved.token !== 'string' || typeof saved.url !== 'string') return null
    return saved as SavedLogin
  } catch {
    throw new CredentialError(`credentials file ${path} is not valid JSON; run kv logout`)
  }
}

export async function saveLogin(env: NodeJS.ProcessEnv, login: SavedLogin): Promise<string> {
  const path = credentialsPath(env)
  await mkdir(dirname(path), { recursive: true, mode: 0o700 })
  await writeSecretFile(path, `${JSON.stringify(login, null, 2)}\n`)
  return path
}

export async function forgetLogin(env: NodeJS.ProcessEnv): Promise<boolean> {
  const path = credentialsPath(env)
  if (!existsSync(path)) return false
  await rm(path)
  return true
}

export interface Connection {
  /** The first of `urls`, for messages. */
  url: string
  urls: string[]
  tls: TlsOptions | undefined
  auth: KvAuth | undefined
  /** Where the CA came from, for messages. */
  cacertPath: string | null
}

/** A URL's origin, for comparing them (`https://127.0.0.1:7001/` is `https://127.0.0.1:7001`). */
function originOf(url: string): string {
  try {
    return new URL(url).origin
  } catch {
    return url
  }
}

/** Resolves the URL, TLS settings and credential of a `kv` command. */
export async function resolveConnection(
  opts: ConnectOptions,
  env: NodeJS.ProcessEnv,
  options: { useSavedToken?: boolean } = {},
): Promise<Connection> {
  const saved = await loadSavedLogin(env)
  const given = opts.url ?? env.KV_ENDPOINTS ?? env.KV_URL
  const savedUrls = saved === null ? [] : (saved.urls ?? [saved.url])
  let urls: string[]
  if (given !== undefined) {
    urls = given
      .split(',')
      .map((u) => u.trim())
      .filter((u) => u !== '')
    if (urls.length === 0) throw new CredentialError('--url names no URL')
    // The same cluster as the login's: its other members are fallbacks.
    const origins = new Set(urls.map(originOf))
    if (savedUrls.some((u) => origins.has(originOf(u))))
      urls = [...new Set([...urls, ...savedUrls])]
  } else {
    urls = savedUrls.length > 0 ? savedUrls : ['https://127.0.0.1:7001']
  }
  const url = urls[0] as string
  const localCa = resolve('data/certs/ca.crt')
  const cacertPath =
    opts.cacert ?? env.KV_CACERT ?? saved?.cacert ?? (existsSync(localCa) ? localCa : null)
  const tls: TlsOptions = {}
  if (cacertPath !== null)
    tls.ca = await readFile(cacertPath).catch((err: Error) => {
      throw new CredentialError(`cannot read the CA file ${cacertPath}: ${err.message}`)
    })
  const certPath = opts.cert ?? env.KV_CERT
  const keyPath = opts.key ?? env.KV_KEY
  if ((certPath === undefined) !== (keyPath === undefined))
    throw new CredentialError('--cert and --key go together')
  if (certPath !== undefined && keyPath !== undefined) {
    tls.cert = await readFile(certPath)
    tls.key = Buffer.from(await readSecret(keyPath, 'private key'))
  }
  let auth: KvAuth | undefined
  const token =
    opts.token ??
    env.KV_TOKEN ??
    ((opts['token-file'] ?? env.KV_TOKEN_FILE)
      ? await readSecret((opts['token-file'] ?? env.KV_TOKEN_FILE) as string, 'token file')
      : undefined)
  const user = opts.user ?? env.KV_USER
  if (token !== undefined && token !== '') {
    auth = { token }
  } else if (user !== undefined) {
    const passwordFile = opts['password-file'] ?? env.KV_PASSWORD_FILE
    const password =
      passwordFile !== undefined ? await readSecret(passwordFile, 'password file') : env.KV_PASSWORD
    if (password === undefined)
      throw new CredentialError(
        `--user ${user} needs a password: --password-file FILE (mode 0600) or KV_PASSWORD; or log in once with kv login`,
      )
    auth = { user, password }
  } else if (options.useSavedToken !== false && saved !== null && tls.cert === undefined) {
    auth = { token: saved.token }
  }
  return {
    url,
    urls,
    tls: Object.keys(tls).length === 0 ? undefined : tls,
    auth,
    cacertPath,
  }
}
