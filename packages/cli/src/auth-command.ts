/**
 * `kv login`, `kv logout`, `kv whoami`, `kv auth`, `kv user` and `kv role`: logging in, and
 * managing users and roles. A thin shell over the SDK's admin calls.
 */
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'
import type { GrantAccess, KvClient, RoleInfo, UserInfo } from '@kvstore/client'
import { forgetLogin, readSecret, saveLogin, type Connection } from './connect.js'

export class AuthUsageError extends Error {}

export interface AuthIo {
  env: NodeJS.ProcessEnv
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (raw: boolean) => void }
  stdout: NodeJS.WritableStream & { isTTY?: boolean }
  stderr: NodeJS.WritableStream
}

export interface AuthOptions {
  json: boolean
  user?: string | undefined
  'password-file'?: string | undefined
  'new-password-file'?: string | undefined
  roles?: string | undefined
  admin?: boolean | undefined
  monitor?: boolean | undefined
  'rate-limit'?: string | undefined
  'no-password'?: boolean | undefined
}

export const authUsage = `Logging in (credentials: --user with --password-file, or KV_USER and KV_PASSWORD;
--token or KV_TOKEN; --cert and --key, a client certificate naming a user):
  login [--user NAME] [--password-file FILE]
                          trade a password for a token and keep it (with the URL and CA) in
                          ~/.config/kv/credentials.json (mode 0600; KV_CREDENTIALS elsewhere);
                          later commands use it; without --password-file the password is read
                          from the terminal or standard input
  logout                  forget the kept token
  whoami                  the user this command acts as, its roles and permissions

Users, roles and auth (admin):
  auth status|enable|disable
  user list
  user add NAME [--roles R1,R2] [--new-password-file FILE | --no-password]
  user del NAME
  user passwd NAME [--new-password-file FILE]  (an admin, or the user themself)
  user grant NAME ROLE     user revoke NAME ROLE      (revoking ends the user's tokens)
  user revoke-tokens NAME  every token of the user stops working at once
  role list
  role add NAME [--admin] [--monitor] [--rate-limit N]
  role del NAME
  role grant NAME read|write|readwrite PREFIX   ('' for every key)
  role grant NAME admin|monitor
  role revoke NAME ...     the same forms as grant
`

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) =>
    stream.write(text, (err) => (err ? reject(err) : resolve())),
  )
}

/** Reads a password: from a 0600 file, else the terminal (not echoed), else standard input. */
async function readPassword(io: AuthIo, file: string | undefined, prompt: string): Promise<string> {
  if (file !== undefined) return readSecret(file, 'password file')
  if (!io.stdin.isTTY) {
    const chunks: Buffer[] = []
    for await (const chunk of io.stdin)
      chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string))
    const text = Buffer.concat(chunks).toString('utf8').split('\n')[0] ?? ''
    if (text === '') throw new AuthUsageError('no password on standard input')
    return text
  }
  await write(io.stderr, prompt)
  let muted = true
  const silent = new Writable({
    write(chunk: Buffer, _encoding, done) {
      if (!muted) io.stderr.write(chunk)
      done()
    },
  })
  const rl = createInterface({ input: io.stdin, output: silent, terminal: true })
  try {
    const answer = await new Promise<string>((resolve) => rl.question('', resolve))
    muted = false
    await write(io.stderr, '\n')
    return answer
  } finally {
    rl.close()
  }
}

function userLine(u: UserInfo): string {
  return `${u.name.padEnd(16)} roles: ${u.roles.join(', ') || '-'}${u.password ? '' : '  (no password: certificate only)'}\n`
}

function roleLine(r: RoleInfo): string {
  const flags = [r.admin ? 'admin' : '', r.monitor ? 'monitor' : ''].filter(Boolean)
  const grants = r.grants.map((g) => `${g.access} ${JSON.stringify(g.prefix)}`)
  const rate = r.rateLimitPerSecond > 0 ? [`rate limit ${r.rateLimitPerSecond}/s`] : []
  return `${r.name.padEnd(16)} ${[...flags, ...grants, ...rate].join(', ') || '(nothing)'}\n`
}

function grantArgs(
  args: string[],
  verb: string,
): { role: string; access: GrantAccess; prefix?: string } {
  const [role, access, prefix] = args
  const kinds = ['read', 'write', 'readwrite', 'admin', 'monitor']
  if (role === undefined || access === undefined || !kinds.includes(access))
    throw new AuthUsageError(`role ${verb} needs NAME and one of ${kinds.join(', ')}`)
  if (access === 'admin' || access === 'monitor') {
    if (prefix !== undefined) throw new AuthUsageError(`${access} takes no prefix`)
    return { role, access }
  }
  if (prefix === undefined)
    throw new AuthUsageError(`role ${verb} NAME ${access} needs a PREFIX ('' for every key)`)
  return { role, access: access as GrantAccess, prefix }
}

/**
 * Runs one of the auth commands. `connection` says where and as whom; `makeClient` builds
 * the SDK client for it.
 */
export async function runAuthCommand(
  command: string,
  args: string[],
  opts: AuthOptions,
  connection: Connection,
  makeClient: (connection: Connection) => KvClient,
  io: AuthIo,
): Promise<number> {
  const out = (value: unknown) => write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
  if (command === 'logout') {
    const forgot = await forgetLogin(io.env)
    await write(io.stdout, forgot ? 'logged out\n' : 'no kept login\n')
    return 0
  }
  if (command === 'login') {
    const user = opts.user ?? io.env.KV_USER ?? args[0]
    if (user === undefined) throw new AuthUsageError('login needs --user NAME')
    const file = opts['password-file'] ?? io.env.KV_PASSWORD_FILE
    const password =
      io.env.KV_PASSWORD !== undefined && file === undefined
        ? io.env.KV_PASSWORD
        : await readPassword(io, file, `password for ${user}: `)
    const client = makeClient({ ...connection, auth: undefined })
    try {
      const login = await client.token(user, password)
      if (login.token === null) {
        await write(io.stdout, `auth is off on ${connection.url}: no token is needed\n`)
        return 0
      }
      // Every member, so that later commands still find the cluster after a failover.
      const authed = makeClient({ ...connection, auth: { token: login.token } })
      let urls = connection.urls
      try {
        const mode = await authed.mode()
        const members =
          mode === 'leaderless'
            ? (await authed.leaderlessCluster()).members.map((m) => m.clientUrl)
            : (await authed.cluster()).members.map((m) => m.clientUrl)
        urls = [...new Set([...connection.urls, ...members])]
      } catch {
        // keep the URLs given
      } finally {
        await authed.close()
      }
      const path = await saveLogin(io.env, {
        url: connection.url,
        urls,
        user,
        token: login.token,
        expiresAt: login.expiresAt,
        cacert: connection.cacertPath,
      })
      await write(
        io.stdout,
        `logged in to ${connection.url} as ${user} until ${login.expiresAt ?? 'never'}; token kept in ${path}\n`,
      )
      return 0
    } finally {
      await client.close()
    }
  }

  const client = makeClient(connection)
  try {
    const [sub, ...rest] = args
    if (command === 'whoami') {
      const me = await client.whoami()
      if (opts.json) await out(me)
      else if (!me.authEnabled)
        await write(
          io.stdout,
          `auth is off: every request is allowed${me.user ? ` (${me.user})` : ''}\n`,
        )
      else
        await write(
          io.stdout,
          `${me.user} (by ${me.via}), roles: ${me.roles.join(', ') || '-'}\n  read: ${me.permissions?.read.map((p) => JSON.stringify(p)).join(', ') || '-'}\n  write: ${me.permissions?.write.map((p) => JSON.stringify(p)).join(', ') || '-'}\n  admin: ${me.permissions?.admin ? 'yes' : 'no'}, monitor: ${me.permissions?.monitor ? 'yes' : 'no'}\n`,
        )
      return 0
    }
    if (command === 'auth') {
      if (sub === 'status' || sub === undefined) {
        const status = await client.authStatus()
        if (opts.json) await out(status)
        else {
          await write(io.stdout, `auth is ${status.enabled ? 'ON' : 'OFF'}\nusers:\n`)
          for (const u of status.users) await write(io.stdout, `  ${userLine(u)}`)
          await write(io.stdout, 'roles:\n')
          for (const r of status.roles) await write(io.stdout, `  ${roleLine(r)}`)
        }
        return 0
      }
      if (sub !== 'enable' && sub !== 'disable')
        throw new AuthUsageError('auth takes status, enable or disable')
      const result = await client.setAuthEnabled(sub === 'enable')
      await write(io.stdout, `auth is ${result.enabled ? 'ON' : 'OFF'}\n`)
      return 0
    }
    if (command === 'user') {
      const name = rest[0]
      const need = (): string => {
        if (name === undefined) throw new AuthUsageError(`user ${sub} needs a NAME`)
        return name
      }
      switch (sub) {
        case 'list':
        case undefined: {
          const users = await client.users()
          if (opts.json) await out(users)
          else for (const u of users) await write(io.stdout, userLine(u))
          return 0
        }
        case 'add': {
          const user = need()
          const roles =
            opts.roles === undefined ? [] : opts.roles.split(',').filter((r) => r !== '')
          const password = opts['no-password']
            ? undefined
            : await readPassword(
                io,
                opts['new-password-file'],
                `password for the new user ${user}: `,
              )
          const made = await client.addUser(user, {
            ...(password !== undefined ? { password } : {}),
            roles,
          })
          if (opts.json) await out(made)
          else await write(io.stdout, `added ${userLine(made)}`)
          return 0
        }
        case 'del':
        case 'delete':
          await client.deleteUser(need())
          await write(io.stdout, `deleted user ${name}\n`)
          return 0
        case 'passwd': {
          const user = need()
          const password = await readPassword(
            io,
            opts['password-file'],
            `new password for ${user}: `,
          )
          await client.setPassword(user, password)
          await write(io.stdout, `password of ${user} changed; its old tokens no longer work\n`)
          return 0
        }
        case 'grant':
        case 'revoke': {
          const user = need()
          const role = rest[1]
          if (role === undefined) throw new AuthUsageError(`user ${sub} needs NAME and ROLE`)
          const result =
            sub === 'grant'
              ? await client.grantRole(user, role)
              : await client.revokeRole(user, role)
          if (opts.json) await out(result)
          else await write(io.stdout, userLine(result))
          return 0
        }
        case 'revoke-tokens':
          await client.revokeTokens(need())
          await write(io.stdout, `every token of ${name} is revoked\n`)
          return 0
        default:
          throw new AuthUsageError(`unknown user command ${JSON.stringify(sub)}`)
      }
    }
    if (command === 'role') {
      const name = rest[0]
      switch (sub) {
        case 'list':
        case undefined: {
          const roles = await client.roles()
          if (opts.json) await out(roles)
          else for (const r of roles) await write(io.stdout, roleLine(r))
          return 0
        }
        case 'add': {
          if (name === undefined) throw new AuthUsageError('role add needs a NAME')
          const rate = opts['rate-limit']
          if (rate !== undefined && !/^[0-9]{1,8}$/.test(rate))
            throw new AuthUsageError('--rate-limit must be a whole number of requests a second')
          const made = await client.addRole(name, {
            ...(opts.admin ? { admin: true } : {}),
            ...(opts.monitor ? { monitor: true } : {}),
            ...(rate !== undefined ? { rateLimitPerSecond: Number(rate) } : {}),
          })
          if (opts.json) await out(made)
          else await write(io.stdout, `added ${roleLine(made)}`)
          return 0
        }
        case 'del':
        case 'delete':
          if (name === undefined) throw new AuthUsageError('role del needs a NAME')
          await client.deleteRole(name)
          await write(io.stdout, `deleted role ${name}\n`)
          return 0
        case 'grant':
        case 'revoke': {
          const { role, access, prefix } = grantArgs(rest, sub)
          const result =
            sub === 'grant'
              ? await client.grantPermission(role, access, prefix)
              : await client.revokePermission(role, access, prefix)
          if (opts.json) await out(result)
          else await write(io.stdout, roleLine(result))
          return 0
        }
        default:
          throw new AuthUsageError(`unknown role command ${JSON.stringify(sub)}`)
      }
    }
    throw new AuthUsageError(`unknown command ${command}`)
  } finally {
    await client.close()
  }
}
