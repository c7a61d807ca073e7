/**
 * `kv certs`: makes and shows the cluster's TLS certificates. It runs before, and apart from,
 * the SDK: it never contacts a node and needs no --url.
 */
import { readFile } from 'node:fs/promises'
import { relative } from 'node:path'
import type { CertificateDescription, CertsResult } from './certs.js'

/** The options of `kv certs`, parsed along with the rest of `kv`'s. */
export const certsOptions = {
  dir: { type: 'string' },
  members: { type: 'string' },
  hosts: { type: 'string' },
  'cluster-id': { type: 'string' },
  users: { type: 'string' },
  routers: { type: 'string' },
  days: { type: 'string' },
  force: { type: 'boolean', default: false },
} as const

export interface CertsArgs {
  dir?: string | undefined
  members?: string | undefined
  hosts?: string | undefined
  'cluster-id'?: string | undefined
  users?: string | undefined
  routers?: string | undefined
  /** `certs router --id ID` (the option is kv member's too). */
  id?: string | undefined
  days?: string | undefined
  force?: boolean | undefined
  json?: boolean | undefined
  help?: boolean | undefined
}

export interface CertsIo {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

export const certsUsage = `Certificates (made on this machine; these commands never contact a node):
  certs init --dir DIR --members ID,...
        [--hosts HOST,...] [--cluster-id ID] [--users NAME,...] [--routers ID,...]
        [--days N] [--force]
                          make a new cluster id, a CA, and a certificate and key for each
                          member, user and kv-router (default users: root, who also gets
                          root.password; no router); each member's and router's certificate
                          names localhost, 127.0.0.1, ::1, its id, and every --hosts host
                          name or IP address
  certs add-member ID --dir DIR [--hosts HOST,...] [--days N] [--force]
                          a certificate for one more member, signed by the CA in DIR
  certs add-router ID --dir DIR [--hosts HOST,...] [--days N] [--force]
                          a certificate for a kv-router (also: certs router --id ID), naming
                          kv://<cluster-id>/router/ID: it serves clients over TLS with it and
                          presents it to the groups, which let it act for the users it names
                          (all groups of a sharded deployment share the CA and cluster id)
  certs add-user NAME --dir DIR [--days N] [--force]
                          a client certificate for a user, signed by the CA in DIR
  certs show FILE         a certificate's subject, identities, usages and validity (--json)
  --days N                validity of member and user certificates (default 825; the CA's is
                          3650)
  --force                 replace files that exist (refused otherwise)
  Private keys (*.key), root.password and auth.secret are secret: they are written with mode
  0600.
`

class CertsUsageError extends Error {}

function write(stream: NodeJS.WritableStream, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    stream.write(text, (err) => (err ? reject(err) : resolve()))
  })
}

/** `a, b,c` → `['a', 'b', 'c']`. */
function list(text: string | undefined): string[] | undefined {
  if (text === undefined) return undefined
  return text
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '')
}

function days(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  if (!/^[1-9][0-9]*$/.test(text))
    throw new CertsUsageError(`--days must be a positive whole number, got ${text}`)
  return Number(text)
}

const allowedOptions: Record<string, (keyof CertsArgs)[]> = {
  init: ['dir', 'members', 'hosts', 'cluster-id', 'users', 'routers', 'days', 'force'],
  'add-member': ['dir', 'hosts', 'days', 'force'],
  'add-router': ['dir', 'hosts', 'days', 'force'],
  router: ['dir', 'hosts', 'days', 'force', 'id'],
  'add-user': ['dir', 'days', 'force'],
  show: [],
}

function checkOptions(sub: string, opts: CertsArgs): void {
  const allowed = allowedOptions[sub] ?? []
  for (const name of [...Object.keys(certsOptions), 'id'] as (keyof CertsArgs)[]) {
    const value = opts[name]
    if (value !== undefined && value !== false && !allowed.includes(name))
      throw new CertsUsageError(`certs ${sub} takes no --${name}`)
  }
}

function needDir(opts: CertsArgs, sub: string): string {
  if (opts.dir === undefined || opts.dir === '')
    throw new CertsUsageError(`certs ${sub} needs --dir DIR`)
  return opts.dir
}

function fileList(result: CertsResult, dir: string): string {
  const names = result.files.map((f) => relative(dir, f.path) || f.path)
  const width = Math.max(...names.map((n) => n.length))
  const lines = result.files.map(
    (f, i) =>
      `  ${(names[i] as string).padEnd(width)}  ${f.mode.toString(8).padStart(4, '0')}${f.secret ? '  secret' : ''}\n`,
  )
  return lines.join('')
}

function filesJson(result: CertsResult): unknown {
  return {
    clusterId: result.clusterId,
    files: result.files.map((f) => ({
      path: f.path,
      mode: f.mode.toString(8).padStart(4, '0'),
      secret: f.secret,
    })),
  }
}

const secretNote =
  'Files marked secret (*.key, root.password, auth.secret) have mode 0600: keep them so. ca.key signs certificates for the whole cluster; give each member only its own key, and auth.secret.\n'

function validity(d: CertificateDescription, nowMs: number): string {
  const range = `${d.notBefore.toISOString()} to ${d.notAfter.toISOString()}`
  if (nowMs < d.notBefore.getTime()) return `${range} (NOT YET VALID)`
  if (nowMs > d.notAfter.getTime()) return `${range} (EXPIRED)`
  const left = Math.floor((d.notAfter.getTime() - nowMs) / (24 * 60 * 60 * 1000))
  return `${range} (${left} days left)`
}

function showText(file: string, d: CertificateDescription): string {
  const identities =
    d.identities.length === 0
      ? ['(none: no kv:// identity)']
      : d.identities.map((i) => `${i.kind} ${i.name} of cluster ${i.clusterId}`)
  const rows: [string, string][] = [
    ['file', file],
    ['subject', d.subject],
    ['issuer', d.issuer],
    ...identities.map((text): [string, string] => ['identity', text]),
    ['names', d.subjectAltName ?? '(none)'],
    ['usage', d.ca ? 'CA' : d.extendedKeyUsage.join(', ') || '(any)'],
    ['valid', validity(d, Date.now())],
    ['serial', d.serialNumber],
    ['sha-256', d.fingerprint256],
  ]
  return rows.map(([name, value]) => `${name.padEnd(9)} ${value}\n`).join('')
}

/** Runs `kv certs SUBCOMMAND ARGS...`; returns the exit status. */
export async function runCerts(args: string[], opts: CertsArgs, io: CertsIo): Promise<number> {
  const [sub, ...rest] = args
  if (opts.help || sub === undefined) {
    await write(
      sub === undefined && !opts.help ? io.stderr : io.stdout,
      `Usage: kv certs <init|add-member|add-router|add-user|show> [arguments]\n\n${certsUsage}`,
    )
    return sub === undefined && !opts.help ? 2 : 0
  }
  const out = (value: unknown) => write(io.stdout, `${JSON.stringify(value, null, 2)}\n`)
  try {
    if (!Object.hasOwn(allowedOptions, sub))
      throw new CertsUsageError(`unknown command certs ${JSON.stringify(sub)}`)
    checkOptions(sub, opts)
    // The certificate library (and its X.509 dependency) loads only for these commands.
    const certs = await import('./certs.js')
    switch (sub) {
      case 'init': {
        if (rest.length > 0)
          throw new CertsUsageError(`certs init takes no arguments, got ${rest.join(' ')}`)
        const dir = needDir(opts, sub)
        const members = list(opts.members)
        if (members === undefined || members.length === 0)
          throw new CertsUsageError('certs init needs --members ID,...')
        const hosts = list(opts.hosts)
        const users = list(opts.users)
        const routers = list(opts.routers)
        const validDays = days(opts.days)
        const result = await certs.initCerts({
          dir,
          members,
          ...(hosts !== undefined ? { hosts } : {}),
          ...(opts['cluster-id'] !== undefined ? { clusterId: opts['cluster-id'] } : {}),
          ...(users !== undefined ? { users } : {}),
          ...(routers !== undefined ? { routers } : {}),
          ...(validDays !== undefined ? { days: validDays } : {}),
          force: opts.force ?? false,
        })
        if (opts.json) await out(filesJson(result))
        else
          await write(
            io.stdout,
            `cluster ${result.clusterId}: wrote ${result.files.length} files in ${dir}\n${fileList(result, dir)}${secretNote}`,
          )
        return 0
      }
      case 'add-member':
      case 'add-router':
      case 'router':
      case 'add-user': {
        const what = sub === 'add-user' ? 'NAME' : 'ID'
        // `certs router --id ID` says the same as `certs add-router ID`.
        const given = sub === 'router' && opts.id !== undefined ? [opts.id, ...rest] : rest
        const [name, ...extra] = given
        if (name === undefined)
          throw new CertsUsageError(
            sub === 'router' ? 'certs router needs --id ID' : `certs ${sub} needs ${what}`,
          )
        if (extra.length > 0)
          throw new CertsUsageError(`certs ${sub} takes one ${what}, got ${given.join(' ')}`)
        const dir = needDir(opts, sub)
        const hosts = list(opts.hosts)
        const validDays = days(opts.days)
        const common = {
          dir,
          ...(validDays !== undefined ? { days: validDays } : {}),
          force: opts.force ?? false,
        }
        const result =
          sub === 'add-member'
            ? await certs.addMember({
                ...common,
                memberId: name,
                ...(hosts !== undefined ? { hosts } : {}),
              })
            : sub === 'add-user'
              ? await certs.addUser({ ...common, user: name })
              : await certs.addRouter({
                  ...common,
                  routerId: name,
                  ...(hosts !== undefined ? { hosts } : {}),
                })
        if (opts.json) await out(filesJson(result))
        else
          await write(
            io.stdout,
            `cluster ${result.clusterId}: wrote ${result.files.length} files in ${dir}\n${fileList(result, dir)}${secretNote}`,
          )
        return 0
      }
      case 'show': {
        const [file, ...extra] = rest
        if (file === undefined) throw new CertsUsageError('certs show needs a FILE')
        if (extra.length > 0)
          throw new CertsUsageError(`certs show takes one FILE, got ${rest.join(' ')}`)
        const pem = await readFile(file)
        let description: CertificateDescription
        try {
          description = certs.describeCertificate(pem)
        } catch (err) {
          throw new Error(`${file} is not a PEM certificate (${(err as Error).message})`)
        }
        if (opts.json) await out({ file, ...description })
        else await write(io.stdout, showText(file, description))
        return 0
      }
      default:
        throw new CertsUsageError(`unknown command certs ${JSON.stringify(sub)}`)
    }
  } catch (err) {
    if (err instanceof CertsUsageError) {
      await write(
        io.stderr,
        `kv: ${err.message}\n\nUsage: kv certs <init|add-member|add-router|add-user|show> [arguments]\n\n${certsUsage}`,
      )
      return 2
    }
    await write(io.stderr, `kv: certs ${sub}: ${(err as Error).message}\n`)
    return 1
  }
}
