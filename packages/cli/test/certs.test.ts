import 'reflect-metadata'
import { X509Certificate, createPrivateKey } from 'node:crypto'
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import * as tls from 'node:tls'
import * as x509 from '@peculiar/x509'
import { certificateIdentity } from '@kvstore/protocol/identity'
import {
  addMember,
  addRouter,
  addUser,
  describeCertificate,
  initCerts,
  makeMemberCert,
  newClusterId,
  type CertsResult,
} from '../src/certs.js'
import * as cli from '../src/index.js'
import { runKv } from '../src/kv-command.js'

const serverAuth = '1.3.6.1.5.5.7.3.1'
const clientAuth = '1.3.6.1.5.5.7.3.2'
const dayMs = 24 * 60 * 60 * 1000

let root: string
/** A cluster n1, n2, n3 with users root and alice, made once. */
let dir: string
let made: CertsResult
/** Another cluster, with its own CA. */
let otherDir: string

const read = (d: string, name: string) => readFile(join(d, name), 'utf8')
const cert = async (d: string, name: string) => new X509Certificate(await read(d, name))
const mode = async (path: string) => (await stat(path)).mode & 0o777

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'kv-certs-'))
  dir = join(root, 'certs')
  made = await initCerts({
    dir,
    members: ['n1', 'n2', 'n3'],
    hosts: ['kv.example.test', '10.1.2.3', 'fd00::5'],
    users: ['root', 'alice'],
  })
  otherDir = join(root, 'other')
  await initCerts({ dir: otherDir, members: ['n1', 'n2'] })
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

describe('certificates', () => {
  it('makes random cluster ids of kv- and 32 hex digits', () => {
    const a = newClusterId()
    expect(a).toMatch(/^kv-[0-9a-f]{32}$/)
    expect(newClusterId()).not.toBe(a)
    expect(made.clusterId).toMatch(/^kv-[0-9a-f]{32}$/)
  })

  it('makes a self-signed CA limited to signing certificates', async () => {
    const ca = await cert(dir, 'ca.crt')
    expect(ca.ca).toBe(true)
    expect(ca.subject).toBe(`CN=kvstore CA ${made.clusterId}`)
    expect(ca.checkIssued(ca)).toBe(true)
    expect(ca.verify(ca.publicKey)).toBe(true)
    expect(ca.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1')
    // 16 bytes, positive: the top bit is clear.
    expect(ca.serialNumber).toMatch(/^[0-7][0-9A-F]{31}$/)
    const notBefore = Date.parse(ca.validFrom)
    expect(Math.abs(Date.now() - 60 * 60 * 1000 - notBefore)).toBeLessThan(5 * 60 * 1000)
    expect(Math.abs(Date.now() + 3650 * dayMs - Date.parse(ca.validTo))).toBeLessThan(dayMs)

    const parsed = new x509.X509Certificate(await read(dir, 'ca.crt'))
    const basic = parsed.getExtension(x509.BasicConstraintsExtension)
    expect(basic).toMatchObject({ ca: true, pathLength: 0, critical: true })
    const usage = parsed.getExtension(x509.KeyUsagesExtension)
    expect(usage?.critical).toBe(true)
    expect(usage?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign)
    expect(parsed.signatureAlgorithm).toMatchObject({ name: 'ECDSA', hash: { name: 'SHA-256' } })
  })

  it('gives each member a certificate the CA signed, naming it and its hosts, for both TLS ends', async () => {
    const ca = await cert(dir, 'ca.crt')
    const other = await cert(otherDir, 'ca.crt')
    for (const id of ['n1', 'n2', 'n3']) {
      const c = await cert(dir, `${id}.crt`)
      expect(c.checkIssued(ca)).toBe(true)
      expect(c.verify(ca.publicKey)).toBe(true)
      expect(c.checkIssued(other)).toBe(false)
      expect(c.verify(other.publicKey)).toBe(false)
      expect(c.ca).toBe(false)
      expect(c.subject).toBe(`CN=${id}`)
      expect(c.checkPrivateKey(createPrivateKey(await read(dir, `${id}.key`)))).toBe(true)
      expect(certificateIdentity(c.subjectAltName, made.clusterId, 'member')).toBe(id)
      expect(certificateIdentity(c.subjectAltName, made.clusterId, 'user')).toBeNull()
      expect(describeCertificate(await read(dir, `${id}.crt`)).identities).toEqual([
        { clusterId: made.clusterId, kind: 'member', name: id },
      ])
      expect(c.keyUsage?.sort()).toEqual([serverAuth, clientAuth])
      for (const host of ['localhost', id, 'kv.example.test'])
        expect(c.checkHost(host), host).toBe(host)
      expect(c.checkHost('elsewhere.example.test')).toBeUndefined()
      for (const ip of ['127.0.0.1', '::1', '10.1.2.3', 'fd00::5'])
        expect(c.checkIP(ip), ip).toBe(ip)
      expect(c.checkIP('10.1.2.4')).toBeUndefined()

      const parsed = new x509.X509Certificate(await read(dir, `${id}.crt`))
      const usage = parsed.getExtension(x509.KeyUsagesExtension)
      expect(usage?.critical).toBe(true)
      expect(usage?.usages).toBe(x509.KeyUsageFlags.digitalSignature)
      expect(Math.abs(Date.now() + 825 * dayMs - Date.parse(c.validTo))).toBeLessThan(dayMs)
    }
  })

  it('gives each user a client certificate naming the user', async () => {
    const ca = await cert(dir, 'ca.crt')
    for (const user of ['root', 'alice']) {
      const c = await cert(dir, `${user}.crt`)
      expect(c.verify(ca.publicKey)).toBe(true)
      expect(c.subject).toBe(`CN=${user}`)
      expect(certificateIdentity(c.subjectAltName, made.clusterId, 'user')).toBe(user)
      expect(certificateIdentity(c.subjectAltName, made.clusterId, 'member')).toBeNull()
      expect(c.subjectAltName).toBe(`URI:kv://${made.clusterId}/user/${user}`)
      expect(c.keyUsage).toEqual([clientAuth])
    }
  })

  it('describes a certificate', async () => {
    const pem = await read(dir, 'n2.crt')
    const d = describeCertificate(pem)
    expect(d).toMatchObject({
      subject: 'CN=n2',
      issuer: `CN=kvstore CA ${made.clusterId}`,
      identities: [{ clusterId: made.clusterId, kind: 'member', name: 'n2' }],
      extendedKeyUsage: ['serverAuth', 'clientAuth'],
      ca: false,
      fingerprint256: new X509Certificate(pem).fingerprint256,
    })
    expect(d.notBefore.getTime()).toBeLessThan(Date.now())
    expect(d.notAfter.getTime()).toBeGreaterThan(Date.now() + 800 * dayMs)
    expect(() => describeCertificate(Buffer.from('not a certificate'))).toThrow()
  })

  it('refuses names that are not member ids or user names, and a member or user named twice', async () => {
    const d = join(root, 'bad')
    await expect(initCerts({ dir: d, members: ['n 1'] })).rejects.toThrow(
      /member id "n 1" is not valid/,
    )
    await expect(initCerts({ dir: d, members: ['../n1'] })).rejects.toThrow(/not valid/)
    await expect(initCerts({ dir: d, members: ['ca'] })).rejects.toThrow(/reserved/)
    await expect(initCerts({ dir: d, members: ['n1'], users: ['a/b'] })).rejects.toThrow(
      /user name "a\/b" is not valid/,
    )
    await expect(initCerts({ dir: d, members: ['n1', 'n1'] })).rejects.toThrow(/more than once/)
    await expect(initCerts({ dir: d, members: ['root'] })).rejects.toThrow(/more than once/)
    await expect(initCerts({ dir: d, members: [] })).rejects.toThrow(/at least one member/)
    await expect(initCerts({ dir: d, members: ['n1'], hosts: ['a b'] })).rejects.toThrow(
      /neither an IP address nor a host name/,
    )
    await expect(initCerts({ dir: d, members: ['n1'], days: 0 })).rejects.toThrow(/validity/)
    await expect(initCerts({ dir: d, members: ['n1'], clusterId: 'no/slash' })).rejects.toThrow(
      /cluster id/,
    )
    // Nothing was written for any of them.
    await expect(stat(d)).rejects.toThrow(/ENOENT/)
  })
})

describe('mutual TLS with the certificates', () => {
  interface Outcome {
    /** What the server answered: the member id it read from the client's certificate. */
    answer: string | null
    clientError: string | null
  }

  let server: tls.Server
  let port: number
  const serverErrors: string[] = []
  /** The member each accepted connection's certificate named, in order. */
  const accepted: string[] = []

  beforeAll(async () => {
    server = tls.createServer({
      cert: await read(dir, 'n1.crt'),
      key: await read(dir, 'n1.key'),
      ca: await read(dir, 'ca.crt'),
      requestCert: true,
      rejectUnauthorized: true,
    })
    server.on('secureConnection', (socket) => {
      const san = socket.getPeerCertificate().subjectaltname
      const member = certificateIdentity(san, made.clusterId, 'member') ?? 'nobody'
      accepted.push(member)
      socket.end(`${member}\n`)
    })
    server.on('tlsClientError', (err) => serverErrors.push(err.message))
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    port = (server.address() as AddressInfo).port
  })
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve))
  })

  /** Connects with `cert`/`key` (or none), trusting the CA of `dir`, and reads the answer. */
  async function connect(
    credentials: { cert: string; key: string } | null,
    maxVersion: tls.SecureVersion = 'TLSv1.3',
  ): Promise<Outcome> {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca: await read(dir, 'ca.crt'),
      maxVersion,
      ...(credentials ?? {}),
    })
    return new Promise((resolve) => {
      let text = ''
      let clientError: string | null = null
      socket.setEncoding('utf8')
      socket.on('data', (chunk: string) => (text += chunk))
      socket.on('error', (err) => (clientError = err.message))
      socket.on('close', () => resolve({ answer: text === '' ? null : text.trim(), clientError }))
    })
  }

  const pair = async (d: string, name: string) => ({
    cert: await read(d, `${name}.crt`),
    key: await read(d, `${name}.key`),
  })

  it('lets a member in and reads its identity from its certificate', async () => {
    expect(await connect(await pair(dir, 'n2'))).toEqual({ answer: 'n2', clientError: null })
    expect(await connect(await pair(dir, 'n3'), 'TLSv1.2')).toEqual({
      answer: 'n3',
      clientError: null,
    })
    expect(accepted).toEqual(['n2', 'n3'])
  })

  // With TLS 1.3 the client finishes its side of the handshake before the server has checked
  // the client's certificate, so only the server sees the refusal; with TLS 1.2 the client
  // sees it too. Either way the server never accepts the connection.
  it.each(['TLSv1.3', 'TLSv1.2'] as const)(
    'refuses a client whose certificate another CA signed, at the handshake (%s)',
    async (maxVersion) => {
      const errorsBefore = serverErrors.length
      const acceptedBefore = accepted.length
      const outcome = await connect(await pair(otherDir, 'n2'), maxVersion)
      expect(outcome.answer).toBeNull()
      if (maxVersion === 'TLSv1.2') expect(outcome.clientError).not.toBeNull()
      expect(accepted.length).toBe(acceptedBefore)
      expect(serverErrors.length).toBeGreaterThan(errorsBefore)
    },
  )

  it('refuses a client without a certificate', async () => {
    const errorsBefore = serverErrors.length
    const acceptedBefore = accepted.length
    const outcome = await connect(null)
    expect(outcome.answer).toBeNull()
    expect(accepted.length).toBe(acceptedBefore)
    expect(serverErrors.slice(errorsBefore).join(' ')).toMatch(/peer did not return a certificate/)
  })

  it('lets a router in over mutual TLS, as no member', async () => {
    const ca = { certPem: await read(dir, 'ca.crt'), keyPem: await read(dir, 'ca.key') }
    const { makeRouterCert } = await import('../src/certs.js')
    const router = await makeRouterCert(ca, { clusterId: made.clusterId, routerId: 'r1' })
    const outcome = await connect({ cert: router.certPem, key: router.keyPem })
    expect(outcome).toEqual({ answer: 'nobody', clientError: null })
  })

  it('names no member for a certificate of another cluster, even from the same CA', async () => {
    const ca = { certPem: await read(dir, 'ca.crt'), keyPem: await read(dir, 'ca.key') }
    const stranger = await makeMemberCert(ca, { clusterId: 'kv-another', memberId: 'n2' })
    const outcome = await connect({ cert: stranger.certPem, key: stranger.keyPem })
    expect(outcome).toEqual({ answer: 'nobody', clientError: null })
  })
})

describe('certificate files', () => {
  it('writes exactly the expected files, keys and the root password readable only by their owner', async () => {
    const names = [
      'ca.crt',
      'ca.key',
      'cluster-id',
      'n1.crt',
      'n1.key',
      'n2.crt',
      'n2.key',
      'n3.crt',
      'n3.key',
      'root.crt',
      'root.key',
      'alice.crt',
      'alice.key',
      'root.password',
      'auth.secret',
    ]
    expect(made.files.map((f) => f.path)).toEqual(names.map((n) => join(dir, n)))
    expect((await readdir(dir)).sort()).toEqual([...names].sort())
    expect(await mode(dir)).toBe(0o700)
    for (const f of made.files) {
      const secret =
        f.path.endsWith('.key') ||
        f.path.endsWith('root.password') ||
        f.path.endsWith('auth.secret')
      expect(f.secret, f.path).toBe(secret)
      expect(f.mode, f.path).toBe(secret ? 0o600 : 0o644)
      expect(await mode(f.path), f.path).toBe(secret ? 0o600 : 0o644)
    }
    expect(await read(dir, 'cluster-id')).toBe(`${made.clusterId}\n`)
    expect(await read(dir, 'root.password')).toMatch(/^[A-Za-z0-9_-]{32}\n$/)
    expect(await read(dir, 'auth.secret')).toMatch(/^[A-Za-z0-9_-]{43}\n$/)
  })

  it('keeps public files readable whatever the umask', async () => {
    const d = join(root, 'umask')
    const old = process.umask(0o077)
    try {
      await initCerts({ dir: d, members: ['n1'], users: [] })
    } finally {
      process.umask(old)
    }
    expect(await mode(join(d, 'ca.crt'))).toBe(0o644)
    expect(await mode(join(d, 'n1.crt'))).toBe(0o644)
    expect(await mode(join(d, 'n1.key'))).toBe(0o600)
    expect(await mode(join(d, 'auth.secret'))).toBe(0o600)
    // No users: no root password.
    expect((await readdir(d)).sort()).toEqual([
      'auth.secret',
      'ca.crt',
      'ca.key',
      'cluster-id',
      'n1.crt',
      'n1.key',
    ])
  })

  it('refuses to overwrite any file unless forced', async () => {
    const d = join(root, 'again')
    const first = await initCerts({ dir: d, members: ['n1'], clusterId: 'kv-test' })
    expect(first.clusterId).toBe('kv-test')
    const caBefore = await read(d, 'ca.crt')
    await writeFile(join(d, 'unrelated.txt'), 'keep me')
    await expect(initCerts({ dir: d, members: ['n1'] })).rejects.toThrow(
      /already has ca\.crt, ca\.key, cluster-id, n1\.crt, n1\.key, root\.crt, root\.key, root\.password, auth\.secret; refusing to overwrite/,
    )
    // Even one clashing file stops it, before anything is written.
    await rm(join(d, 'ca.crt'))
    await rm(join(d, 'ca.key'))
    await expect(initCerts({ dir: d, members: ['n1'] })).rejects.toThrow(/refusing to overwrite/)
    await expect(stat(join(d, 'ca.crt'))).rejects.toThrow(/ENOENT/)
    await writeFile(join(d, 'ca.crt'), caBefore)

    const forced = await initCerts({ dir: d, members: ['n1'], force: true })
    expect(forced.clusterId).not.toBe('kv-test')
    expect(await read(d, 'ca.crt')).not.toBe(caBefore)
    expect(await read(d, 'cluster-id')).toBe(`${forced.clusterId}\n`)
    expect(await mode(join(d, 'ca.key'))).toBe(0o600)
    // No temporary files left behind; files that are not ours untouched.
    expect((await readdir(d)).filter((n) => n.includes('.tmp-'))).toEqual([])
    expect(await read(d, 'unrelated.txt')).toBe('keep me')
  })

  it('adds a member and a user with the CA and cluster id in the directory', async () => {
    const d = join(root, 'grow')
    const { clusterId } = await initCerts({ dir: d, members: ['n1'] })
    const added = await addMember({ dir: d, memberId: 'n4', hosts: ['n4.example.test'] })
    expect(added.clusterId).toBe(clusterId)
    expect(added.files.map((f) => [f.path, f.mode])).toEqual([
      [join(d, 'n4.crt'), 0o644],
      [join(d, 'n4.key'), 0o600],
    ])
    const ca = await cert(d, 'ca.crt')
    const n4 = await cert(d, 'n4.crt')
    expect(n4.verify(ca.publicKey)).toBe(true)
    expect(certificateIdentity(n4.subjectAltName, clusterId, 'member')).toBe('n4')
    expect(n4.checkHost('n4.example.test')).toBe('n4.example.test')
    expect(await mode(join(d, 'n4.key'))).toBe(0o600)

    await expect(addMember({ dir: d, memberId: 'n4' })).rejects.toThrow(/refusing to overwrite/)
    const before = await read(d, 'n4.crt')
    await addMember({ dir: d, memberId: 'n4', force: true })
    expect(await read(d, 'n4.crt')).not.toBe(before)

    const alice = await addUser({ dir: d, user: 'alice', days: 30 })
    expect(alice.files.map((f) => f.path)).toEqual([join(d, 'alice.crt'), join(d, 'alice.key')])
    const c = await cert(d, 'alice.crt')
    expect(c.verify(ca.publicKey)).toBe(true)
    expect(certificateIdentity(c.subjectAltName, clusterId, 'user')).toBe('alice')
    expect(Math.abs(Date.now() + 30 * dayMs - Date.parse(c.validTo))).toBeLessThan(dayMs)

    // root.crt is a user's: no member may take it over, forced or not.
    await expect(addMember({ dir: d, memberId: 'root', force: true })).rejects.toThrow(
      /belongs to user root/,
    )
    await expect(addUser({ dir: d, user: 'n1', force: true })).rejects.toThrow(
      /belongs to member n1/,
    )
  })

  it('makes router certificates naming kv://<cluster>/router/<id>, for both TLS ends', async () => {
    const d = join(root, 'routers')
    const { clusterId, files } = await initCerts({
      dir: d,
      members: ['g1n1', 'g2n1'],
      routers: ['r1'],
      hosts: ['router.example.test'],
    })
    expect(files.map((f) => f.path)).toEqual(
      expect.arrayContaining([join(d, 'r1.crt'), join(d, 'r1.key')]),
    )
    const added = await addRouter({ dir: d, routerId: 'r2', hosts: ['10.9.8.7'] })
    expect(added.files.map((f) => [f.path, f.mode])).toEqual([
      [join(d, 'r2.crt'), 0o644],
      [join(d, 'r2.key'), 0o600],
    ])
    const ca = await cert(d, 'ca.crt')
    for (const [id, host] of [
      ['r1', 'router.example.test'],
      ['r2', '10.9.8.7'],
    ] as const) {
      const c = await cert(d, `${id}.crt`)
      expect(c.verify(ca.publicKey)).toBe(true)
      expect(c.subject).toBe(`CN=${id}`)
      expect(c.checkPrivateKey(createPrivateKey(await read(d, `${id}.key`)))).toBe(true)
      expect(certificateIdentity(c.subjectAltName, clusterId, 'router')).toBe(id)
      // A router is neither a member nor a user.
      expect(certificateIdentity(c.subjectAltName, clusterId, 'member')).toBeNull()
      expect(certificateIdentity(c.subjectAltName, clusterId, 'user')).toBeNull()
      expect(c.subjectAltName).toContain(`URI:kv://${clusterId}/router/${id}`)
      // It serves clients over TLS (serverAuth) and presents itself to the groups (clientAuth).
      expect(c.keyUsage?.sort()).toEqual([serverAuth, clientAuth])
      for (const name of ['localhost', id]) expect(c.checkHost(name)).toBe(name)
      for (const ip of ['127.0.0.1', '::1']) expect(c.checkIP(ip)).toBe(ip)
      if (host.includes('.example.')) expect(c.checkHost(host)).toBe(host)
      else expect(c.checkIP(host)).toBe(host)
      expect(describeCertificate(await read(d, `${id}.crt`)).identities).toEqual([
        { clusterId, kind: 'router', name: id },
      ])
    }
    // A router may not take a member's or user's name, nor the other way round.
    await expect(addRouter({ dir: d, routerId: 'g1n1', force: true })).rejects.toThrow(
      /belongs to member g1n1/,
    )
    await expect(addMember({ dir: d, memberId: 'r1', force: true })).rejects.toThrow(
      /belongs to router r1/,
    )
    await expect(addRouter({ dir: d, routerId: 'ca' })).rejects.toThrow(
      /router id "ca" is reserved/,
    )
    await expect(
      initCerts({ dir: join(root, 'routers-twice'), members: ['n1'], routers: ['n1'] }),
    ).rejects.toThrow(/n1 named more than once/)
  })

  it('says what is missing when the directory has no CA', async () => {
    await expect(addMember({ dir: join(root, 'empty'), memberId: 'n1' })).rejects.toThrow(
      /ca\.crt does not exist; make the cluster's CA first \(kv certs init\)/,
    )
  })

  it('refuses a cluster id that does not match the CA', async () => {
    const d = join(root, 'mismatch')
    await initCerts({ dir: d, members: ['n1'] })
    await writeFile(join(d, 'cluster-id'), 'kv-someone-else\n')
    await expect(addUser({ dir: d, user: 'bob' })).rejects.toThrow(/is the CA of cluster/)
  })

  it('is exported from the package entry', () => {
    for (const name of [
      'initCerts',
      'addMember',
      'addRouter',
      'addUser',
      'makeCa',
      'makeMemberCert',
      'makeRouterCert',
      'makeUserCert',
      'describeCertificate',
      'newClusterId',
    ])
      expect(typeof (cli as Record<string, unknown>)[name], name).toBe('function')
  })
})

describe('kv certs', () => {
  /** Runs `kv` with `args` and no node to talk to; --url would be a bad URL if it were used. */
  async function kv(args: string[]): Promise<{ code: number; out: string; err: string }> {
    const stdout = new PassThrough()
    const stderr = new PassThrough()
    let out = ''
    let err = ''
    stdout.on('data', (c: Buffer) => (out += c.toString()))
    stderr.on('data', (c: Buffer) => (err += c.toString()))
    const stdin = Object.assign(Readable.from([]), { isTTY: true })
    const code = await runKv(args, { env: { KV_URL: 'not a url' }, stdin, stdout, stderr })
    return { code, out, err }
  }

  it('makes a cluster, adds a member and a user, and shows a certificate', async () => {
    const d = join(root, 'cli')
    const init = await kv([
      'certs',
      'init',
      '--dir',
      d,
      '--members',
      'n1, n2',
      '--hosts',
      'db.example.test',
    ])
    expect(init.err).toBe('')
    expect(init.code).toBe(0)
    const clusterId = (await read(d, 'cluster-id')).trim()
    expect(init.out).toContain(`cluster ${clusterId}: wrote 11 files in ${d}`)
    expect(init.out).toMatch(/^ {2}ca\.key +0600 {2}secret$/m)
    expect(init.out).toMatch(/^ {2}ca\.crt +0644$/m)
    expect(init.out).toMatch(/^ {2}root\.password +0600 {2}secret$/m)
    expect(init.out).toMatch(/mode 0600/)
    expect((await readdir(d)).sort()).toEqual(
      [
        'ca.crt',
        'ca.key',
        'cluster-id',
        'n1.crt',
        'n1.key',
        'n2.crt',
        'n2.key',
        'root.crt',
        'root.key',
        'root.password',
        'auth.secret',
      ].sort(),
    )
    expect(await mode(join(d, 'n2.key'))).toBe(0o600)
    expect((await cert(d, 'n2.crt')).checkHost('db.example.test')).toBe('db.example.test')

    const again = await kv(['certs', 'init', '--dir', d, '--members', 'n1'])
    expect(again.code).toBe(1)
    expect(again.err).toMatch(/refusing to overwrite/)

    const member = await kv(['certs', 'add-member', 'n3', '--dir', d, '--json'])
    expect(member.code).toBe(0)
    expect(JSON.parse(member.out)).toEqual({
      clusterId,
      files: [
        { path: join(d, 'n3.crt'), mode: '0644', secret: false },
        { path: join(d, 'n3.key'), mode: '0600', secret: true },
      ],
    })
    const user = await kv(['certs', 'add-user', 'alice', '--dir', d, '--days', '10'])
    expect(user.code).toBe(0)
    expect(user.out).toMatch(/alice\.key +0600 {2}secret/)

    const show = await kv(['certs', 'show', join(d, 'n3.crt')])
    expect(show.code).toBe(0)
    expect(show.out).toContain(`identity  member n3 of cluster ${clusterId}`)
    expect(show.out).toMatch(/^subject +CN=n3$/m)
    expect(show.out).toMatch(/^usage +serverAuth, clientAuth$/m)
    expect(show.out).toMatch(/^valid +\S+ to \S+ \(82[45] days left\)$/m)
    const json = await kv(['certs', 'show', join(d, 'alice.crt'), '--json'])
    expect(json.code).toBe(0)
    expect(JSON.parse(json.out)).toMatchObject({
      subject: 'CN=alice',
      identities: [{ clusterId, kind: 'user', name: 'alice' }],
      extendedKeyUsage: ['clientAuth'],
    })
  })

  it('makes router certificates: kv certs init --routers, add-router ID, router --id ID', async () => {
    const d = join(root, 'cli-routers')
    const init = await kv(['certs', 'init', '--dir', d, '--members', 'g1n1', '--routers', 'r1'])
    expect(init.code, init.err).toBe(0)
    expect(init.out).toMatch(/^ {2}r1\.key +0600 {2}secret$/m)
    const clusterId = (await read(d, 'cluster-id')).trim()
    const added = await kv(['certs', 'add-router', 'r2', '--dir', d, '--hosts', 'lb.example.test'])
    expect(added.code, added.err).toBe(0)
    expect(added.out).toMatch(/r2\.crt +0644/)
    const alias = await kv(['certs', 'router', '--id', 'r3', '--dir', d, '--json'])
    expect(alias.code, alias.err).toBe(0)
    expect(JSON.parse(alias.out)).toEqual({
      clusterId,
      files: [
        { path: join(d, 'r3.crt'), mode: '0644', secret: false },
        { path: join(d, 'r3.key'), mode: '0600', secret: true },
      ],
    })
    const show = await kv(['certs', 'show', join(d, 'r3.crt')])
    expect(show.out).toContain(`identity  router r3 of cluster ${clusterId}`)
    expect(show.out).toMatch(/^usage +serverAuth, clientAuth$/m)
    expect((await cert(d, 'r2.crt')).checkHost('lb.example.test')).toBe('lb.example.test')
    const noId = await kv(['certs', 'router', '--dir', d])
    expect(noId.code).toBe(2)
    expect(noId.err).toMatch(/certs router needs --id ID/)
    expect((await kv(['certs', 'add-router', '--dir', d])).err).toMatch(/needs ID/)
    const idElsewhere = await kv(['certs', 'add-member', 'n9', '--dir', d, '--id', 'x'])
    expect(idElsewhere.code).toBe(2)
    expect(idElsewhere.err).toMatch(/certs add-member takes no --id/)
    expect((await kv(['certs', 'add-user', 'bob', '--dir', d, '--routers', 'r9'])).code).toBe(2)
  })

  it('explains usage errors with exit status 2 and failures with 1', async () => {
    const d = join(root, 'cli-errors')
    const noMembers = await kv(['certs', 'init', '--dir', d])
    expect(noMembers.code).toBe(2)
    expect(noMembers.err).toMatch(/certs init needs --members/)
    expect(noMembers.err).toContain('certs add-member ID --dir DIR')
    expect((await kv(['certs', 'init', '--members', 'n1'])).err).toMatch(/needs --dir DIR/)
    expect((await kv(['certs', 'frobnicate'])).code).toBe(2)
    expect((await kv(['certs', 'toString'])).code).toBe(2)
    expect((await kv(['certs'])).code).toBe(2)
    expect((await kv(['certs', 'add-user', '--dir', d])).err).toMatch(/needs NAME/)
    expect((await kv(['certs', 'add-user', 'bob', '--dir', d, '--members', 'x'])).err).toMatch(
      /takes no --members/,
    )
    expect((await kv(['certs', 'init', '--dir', d, '--members', 'n1', '--days', 'x'])).code).toBe(2)
    const bad = await kv(['certs', 'init', '--dir', d, '--members', 'n/1'])
    expect(bad.code).toBe(1)
    expect(bad.err).toMatch(/member id "n\/1" is not valid/)
    const missing = await kv(['certs', 'show', join(d, 'nope.crt')])
    expect(missing.code).toBe(1)
    expect(missing.err).toMatch(/ENOENT/)
    const help = await kv(['--help'])
    expect(help.code).toBe(0)
    expect(help.out).toContain('certs init --dir DIR --members ID,...')
  })
})
