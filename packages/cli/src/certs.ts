/**
 * The cluster's TLS certificates: one CA per cluster, a certificate per member (mutual TLS on
 * the peer port, and TLS on the client port) and a client certificate per user. Each
 * certificate names one identity in a URI subject alternative name (see
 * `@kvstore/protocol/identity`): `kv://<cluster-id>/member/<id>` or `kv://<cluster-id>/user/<name>`.
 *
 * Keys are ECDSA P-256, signatures SHA-256. This module only makes and writes files: it never
 * prints, never exits and never contacts a node (`kv certs` is its command).
 */
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded before it.
import { writeAtomically } from './secret-file.js'
import 'reflect-metadata'
import { X509Certificate, createPrivateKey, randomBytes, webcrypto } from 'node:crypto'
import { mkdir, open, readFile, stat } from 'node:fs/promises'
import { isIP } from 'node:net'
import { join, resolve } from 'node:path'
import * as x509 from '@peculiar/x509'
import {
  clusterIdPattern,
  identitiesOfSan,
  identityNamePattern,
  identityUri,
  type Identity,
  type IdentityKind,
} from '@kvstore/protocol/identity'

x509.cryptoProvider.set(webcrypto)

/** Validity of a CA made by `makeCa`, unless told otherwise: ten years. */
export const caValidityDaysDefault = 3650
/** Validity of a member or user certificate, unless told otherwise (the CA/Browser maximum). */
export const certValidityDaysDefault = 825
/** The longest validity accepted for any certificate. */
export const certValidityDaysMax = 36_500
/** Certificates start this long before they are made, so a peer whose clock is behind accepts them. */
export const notBeforeBackdateMs = 60 * 60 * 1000
/** Random bytes in a certificate's serial number. */
export const serialBytes = 16
/** Random bytes of the root user's first password (base64url in `root.password`). */
export const rootPasswordBytes = 24

/** File names in a certificates directory. */
export const caCertFile = 'ca.crt'
export const caKeyFile = 'ca.key'
export const clusterIdFile = 'cluster-id'
export const rootPasswordFile = 'root.password'
/**
 * A secret every member holds: leaderless members derive the auth store's first token signing
 * key from it, so that they agree on it from their first start without talking.
 */
export const authSecretFile = 'auth.secret'
/** Names a member or user may not have, because their files would clash with the CA's. */
const reservedNames = new Set(['ca'])

const publicFileMode = 0o644
const secretFileMode = 0o600
const dirMode = 0o700

const ecdsa = { name: 'ECDSA', namedCurve: 'P-256' } as const
const signingAlgorithm = { name: 'ECDSA', hash: 'SHA-256' } as const
const dayMs = 24 * 60 * 60 * 1000

/** A certificate and its private key, PEM-encoded (the key as PKCS #8). */
export interface CertAndKey {
  certPem: string
  keyPem: string
}

export interface MakeCaOptions {
  clusterId: string
  /** Default `caValidityDaysDefault`. */
  days?: number
}

export interface MakeMemberCertOptions {
  clusterId: string
  memberId: string
  /** More host names and IP addresses the member is reached at (beyond localhost and its id). */
  hosts?: string[]
  /** Default `certValidityDaysDefault`; never past the CA's own end. */
  days?: number
}

export interface MakeRouterCertOptions {
  clusterId: string
  routerId: string
  /** More host names and IP addresses clients reach the router at (beyond localhost and its id). */
  hosts?: string[]
  /** Default `certValidityDaysDefault`; never past the CA's own end. */
  days?: number
}

export interface MakeUserCertOptions {
  clusterId: string
  user: string
  /** Default `certValidityDaysDefault`; never past the CA's own end. */
  days?: number
}

/** A file written by `initCerts`, `addMember` or `addUser`. */
export interface WrittenFile {
  path: string
  /** 0o600 for private keys and passwords, 0o644 for the rest. */
  mode: number
  secret: boolean
}

export interface CertsResult {
  clusterId: string
  files: WrittenFile[]
}

export interface InitCertsOptions {
  dir: string
  members: string[]
  /** Host names and IP addresses put in every member's certificate. */
  hosts?: string[]
  /** Default: a new one from `newClusterId()`. */
  clusterId?: string
  /** Default `['root']`. `root` also gets `root.password`. */
  users?: string[]
  /** kv-routers to make certificates for (none by default). */
  routers?: string[]
  /** Validity of the member and user certificates. */
  days?: number
  /** Validity of the CA. */
  caDays?: number
  /** Overwrite files that exist. */
  force?: boolean
}

export interface AddMemberOptions {
  dir: string
  memberId: string
  hosts?: string[]
  days?: number
  force?: boolean
}

export interface AddRouterOptions {
  dir: string
  routerId: string
  hosts?: string[]
  days?: number
  force?: boolean
}

export interface AddUserOptions {
  dir: string
  user: string
  days?: number
  force?: boolean
}

export interface CertificateDescription {
  subject: string
  issuer: string
  /** The kv:// identities among the subject alternative names. */
  identities: Identity[]
  /** Every subject alternative name, as Node.js prints them. */
  subjectAltName: string | null
  /** Extended key usages: `serverAuth`, `clientAuth`, or an OID. */
  extendedKeyUsage: string[]
  ca: boolean
  serialNumber: string
  notBefore: Date
  notAfter: Date
  fingerprint256: string
}

/** A new random cluster id: `kv-` and 32 hex digits. */
export function newClusterId(): string {
  return `kv-${randomBytes(16).toString('hex')}`
}

function checkClusterId(clusterId: string): void {
  if (!clusterIdPattern.test(clusterId))
    throw new Error(
      `cluster id ${JSON.stringify(clusterId)} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    )
}

function checkName(kind: IdentityKind, name: string): void {
  const what = kind === 'member' ? 'member id' : kind === 'router' ? 'router id' : 'user name'
  if (!identityNamePattern.test(name))
    throw new Error(
      `${what} ${JSON.stringify(name)} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    )
  if (reservedNames.has(name))
    throw new Error(
      `${what} ${JSON.stringify(name)} is reserved (its files would clash with the CA's)`,
    )
}

function checkDays(days: number, what: string): number {
  if (!Number.isSafeInteger(days) || days < 1 || days > certValidityDaysMax)
    throw new Error(
      `${what} validity must be a whole number of days from 1 to ${certValidityDaysMax}, got ${days}`,
    )
  return days
}

/** A random positive serial number of exactly `serialBytes` bytes, as hex. */
function newSerial(): string {
  const bytes = randomBytes(serialBytes)
  // Clear the sign bit (DER integers are signed) and set the next one, so the number is
  // positive and keeps all its bytes.
  bytes[0] = ((bytes[0] as number) & 0x7f) | 0x40
  return bytes.toString('hex')
}

type CryptoKey = webcrypto.CryptoKey

async function newKeys(): Promise<webcrypto.CryptoKeyPair> {
  return webcrypto.subtle.generateKey(ecdsa, true, ['sign', 'verify'])
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key))
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })
    .export({ type: 'pkcs8', format: 'pem' })
    .toString()
}

/** The PEM text of a certificate, as Node.js writes it. */
function certPem(cert: x509.X509Certificate): string {
  return new X509Certificate(Buffer.from(cert.rawData)).toString()
}

/** Makes a self-signed CA for the cluster `clusterId`. */
export async function makeCa(options: MakeCaOptions): Promise<CertAndKey> {
  checkClusterId(options.clusterId)
  const days = checkDays(options.days ?? caValidityDaysDefault, 'CA')
  const keys = await newKeys()
  const now = Date.now()
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: newSerial(),
    name: `CN=kvstore CA ${options.clusterId}`,
    notBefore: new Date(now - notBeforeBackdateMs),
    notAfter: new Date(now + days * dayMs),
    signingAlgorithm,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  })
  return { certPem: certPem(cert), keyPem: await keyPem(keys.privateKey) }
}

interface LoadedCa {
  cert: x509.X509Certificate
  key: CryptoKey
  notAfterMs: number
}

/** Parses a CA and checks that it is one, that the key is its key and that it is still valid. */
async function loadCa(ca: CertAndKey): Promise<LoadedCa> {
  let nodeCert: X509Certificate
  try {
    nodeCert = new X509Certificate(ca.certPem)
  } catch (err) {
    throw new Error(`the CA certificate is not a PEM certificate: ${(err as Error).message}`)
  }
  if (!nodeCert.ca) throw new Error('the CA certificate is not a CA (basicConstraints CA:FALSE)')
  let privateKey
  try {
    privateKey = createPrivateKey(ca.keyPem)
  } catch (err) {
    throw new Error(`the CA key is not a PEM private key: ${(err as Error).message}`)
  }
  if (
    privateKey.asymmetricKeyType !== 'ec' ||
    privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1'
  )
    throw new Error('the CA key is not an ECDSA P-256 key, the only kind kv certs signs with')
  if (!nodeCert.checkPrivateKey(privateKey))
    throw new Error('the CA key does not belong to the CA certificate')
  const notAfterMs = Date.parse(nodeCert.validTo)
  if (!(notAfterMs > Date.now())) throw new Error(`the CA expired on ${nodeCert.validTo}`)
  const der = privateKey.export({ type: 'pkcs8', format: 'der' })
  const key = await webcrypto.subtle.importKey('pkcs8', der, ecdsa, false, ['sign'])
  return { cert: new x509.X509Certificate(nodeCert.raw), key, notAfterMs }
}

interface LeafOptions {
  commonName: string
  uri: string
  dns: string[]
  ips: string[]
  usages: x509.ExtendedKeyUsage[]
  days: number
}

async function issue(ca: LoadedCa, leaf: LeafOptions): Promise<CertAndKey> {
  const keys = await newKeys()
  const now = Date.now()
  const names: x509.JsonGeneralName[] = [{ type: 'url', value: leaf.uri }]
  for (const value of new Set(leaf.dns)) names.push({ type: 'dns', value })
  for (const value of new Set(leaf.ips)) names.push({ type: 'ip', value })
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: newSerial(),
    subject: `CN=${leaf.commonName}`,
    issuer: ca.cert.subjectName,
    notBefore: new Date(now - notBeforeBackdateMs),
    // A certificate never outlives the CA that vouches for it.
    notAfter: new Date(Math.min(now + leaf.days * dayMs, ca.notAfterMs)),
    signingAlgorithm,
    publicKey: keys.publicKey,
    signingKey: ca.key,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(leaf.usages, false),
      new x509.SubjectAlternativeNameExtension(names, false),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
    ],
  })
  return { certPem: certPem(cert), keyPem: await keyPem(keys.privateKey) }
}

/** A host name for a certificate: letters, digits, '-', '_' and dots, or `*.` and one. */
const hostNamePattern =
  /^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*$/

/**
 * Makes the certificate of member `memberId`, signed by `ca`, for both ends of mutual TLS
 * (serverAuth and clientAuth). Its subject alternative names: the member's identity URI,
 * localhost, the member id as a host name (docker-compose names hosts after members),
 * 127.0.0.1, ::1, and each of `hosts`.
 */
export async function makeMemberCert(
  ca: CertAndKey,
  options: MakeMemberCertOptions,
): Promise<CertAndKey> {
  return makeServerCert(ca, 'member', options.clusterId, options.memberId, options)
}

/**
 * Makes the certificate of kv-router `routerId`, signed by `ca`: the router serves clients
 * over TLS with it (serverAuth) and presents it to the groups (clientAuth), which let it act
 * for the user it names in `kv-on-behalf-of`. Its subject alternative names: the router's
 * identity URI (`kv://<cluster-id>/router/<id>`), localhost, the router id as a host name,
 * 127.0.0.1, ::1, and each of `hosts`.
 */
export async function makeRouterCert(
  ca: CertAndKey,
  options: MakeRouterCertOptions,
): Promise<CertAndKey> {
  return makeServerCert(ca, 'router', options.clusterId, options.routerId, options)
}

/** A certificate for both ends of TLS naming a member or a router, and the hosts it serves on. */
async function makeServerCert(
  ca: CertAndKey,
  kind: 'member' | 'router',
  clusterId: string,
  name: string,
  options: { hosts?: string[] | undefined; days?: number | undefined },
): Promise<CertAndKey> {
  checkClusterId(clusterId)
  checkName(kind, name)
  const days = checkDays(options.days ?? certValidityDaysDefault, `${kind} certificate`)
  const dns = ['localhost', name]
  const ips = ['127.0.0.1', '::1']
  for (const host of options.hosts ?? []) {
    if (isIP(host) !== 0) ips.push(host)
    else if (hostNamePattern.test(host) && host.length <= 253) dns.push(host.toLowerCase())
    else throw new Error(`host ${JSON.stringify(host)} is neither an IP address nor a host name`)
  }
  return issue(await loadCa(ca), {
    commonName: name,
    uri: identityUri({ clusterId, kind, name }),
    dns,
    ips,
    usages: [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
    days,
  })
}

/** Makes the client certificate of user `user`, signed by `ca` (clientAuth only). */
export async function makeUserCert(
  ca: CertAndKey,
  options: MakeUserCertOptions,
): Promise<CertAndKey> {
  const { clusterId, user } = options
  checkClusterId(clusterId)
  checkName('user', user)
  const days = checkDays(options.days ?? certValidityDaysDefault, 'user certificate')
  return issue(await loadCa(ca), {
    commonName: user,
    uri: identityUri({ clusterId, kind: 'user', name: user }),
    dns: [],
    ips: [],
    usages: [x509.ExtendedKeyUsage.clientAuth],
    days,
  })
}

const ekuNames: Record<string, string> = {
  [x509.ExtendedKeyUsage.serverAuth]: 'serverAuth',
  [x509.ExtendedKeyUsage.clientAuth]: 'clientAuth',
}

/** What a PEM certificate says: subject, issuer, kv:// identities, validity, fingerprint. */
export function describeCertificate(pem: string | Buffer): CertificateDescription {
  const cert = new X509Certificate(pem)
  return {
    subject: cert.subject.split('\n').join(', '),
    issuer: cert.issuer.split('\n').join(', '),
    identities: identitiesOfSan(cert.subjectAltName),
    subjectAltName: cert.subjectAltName ?? null,
    // Node.js lists the extended key usage OIDs under the name `keyUsage`.
    extendedKeyUsage: (cert.keyUsage ?? []).map((oid) => ekuNames[oid] ?? oid),
    ca: cert.ca,
    serialNumber: cert.serialNumber,
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
    fingerprint256: cert.fingerprint256,
  }
}

/** One file to write: its name in the directory, its contents and whether it is secret. */
interface PendingFile {
  name: string
  data: string
  secret: boolean
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
}

/**
 * Writes `files` into `dir` (made with mode 0700 when missing). Refuses, before writing
 * anything, when one of them exists, unless `force`.
 */
async function writeFiles(
  dir: string,
  files: PendingFile[],
  force: boolean,
): Promise<WrittenFile[]> {
  await mkdir(dir, { recursive: true, mode: dirMode })
  if (!(await stat(dir)).isDirectory()) throw new Error(`${dir} is not a directory`)
  if (!force) {
    const present = []
    for (const f of files) if (await exists(join(dir, f.name))) present.push(f.name)
    if (present.length > 0)
      throw new Error(
        `${dir} already has ${present.join(', ')}; refusing to overwrite (use --force to replace them)`,
      )
  }
  const written: WrittenFile[] = []
  for (const f of files) {
    const path = join(dir, f.name)
    const mode = f.secret ? secretFileMode : publicFileMode
    await writeAtomically(path, f.data, mode)
    written.push({ path, mode, secret: f.secret })
  }
  // Make the renames durable.
  const handle = await open(dir, 'r')
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
  return written
}

function pairFiles(name: string, pair: CertAndKey): PendingFile[] {
  return [
    { name: `${name}.crt`, data: pair.certPem, secret: false },
    { name: `${name}.key`, data: pair.keyPem, secret: true },
  ]
}

function duplicates(names: string[]): string[] {
  return [...new Set(names.filter((n, i) => names.indexOf(n) !== i))]
}

/**
 * Makes a cluster's certificates in `dir`: a new CA (`ca.crt`, `ca.key`), its `cluster-id`,
 * `<member>.crt` and `<member>.key` for each member, `<user>.crt` and `<user>.key` for each
 * user, `<router>.crt` and `<router>.key` for each router, `root.password` when the users
 * include root, and `auth.secret`. Keys, the password and
 * the secret get mode 0600.
 */
export async function initCerts(options: InitCertsOptions): Promise<CertsResult> {
  const clusterId = options.clusterId ?? newClusterId()
  checkClusterId(clusterId)
  const { members } = options
  const users = options.users ?? ['root']
  const routers = options.routers ?? []
  if (members.length === 0) throw new Error('a cluster needs at least one member')
  for (const m of members) checkName('member', m)
  for (const u of users) checkName('user', u)
  for (const r of routers) checkName('router', r)
  const twice = duplicates([...members, ...users, ...routers])
  if (twice.length > 0)
    throw new Error(
      `${twice.join(', ')} named more than once (members, users and routers share one directory, so their names must differ)`,
    )
  const dir = resolve(options.dir)
  const days = options.days ?? certValidityDaysDefault
  const ca = await makeCa({ clusterId, days: options.caDays ?? caValidityDaysDefault })
  const files: PendingFile[] = [
    { name: caCertFile, data: ca.certPem, secret: false },
    { name: caKeyFile, data: ca.keyPem, secret: true },
    { name: clusterIdFile, data: `${clusterId}\n`, secret: false },
  ]
  for (const memberId of members) {
    const pair = await makeMemberCert(ca, { clusterId, memberId, hosts: options.hosts ?? [], days })
    files.push(...pairFiles(memberId, pair))
  }
  for (const user of users)
    files.push(...pairFiles(user, await makeUserCert(ca, { clusterId, user, days })))
  for (const routerId of routers) {
    const pair = await makeRouterCert(ca, { clusterId, routerId, hosts: options.hosts ?? [], days })
    files.push(...pairFiles(routerId, pair))
  }
  if (users.includes('root'))
    files.push({
      name: rootPasswordFile,
      data: `${randomBytes(rootPasswordBytes).toString('base64url')}\n`,
      secret: true,
    })
  files.push({
    name: authSecretFile,
    data: `${randomBytes(32).toString('base64url')}\n`,
    secret: true,
  })
  return { clusterId, files: await writeFiles(dir, files, options.force ?? false) }
}

async function readCertsFile(dir: string, name: string): Promise<string> {
  try {
    return await readFile(join(dir, name), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new Error(
        `${join(dir, name)} does not exist; make the cluster's CA first (kv certs init)`,
      )
    throw err
  }
}

/** The CA and cluster id kept in `dir` by `initCerts`. */
async function readCa(dir: string): Promise<{ ca: CertAndKey; clusterId: string }> {
  const certPem = await readCertsFile(dir, caCertFile)
  const keyPem = await readCertsFile(dir, caKeyFile)
  const clusterId = (await readCertsFile(dir, clusterIdFile)).trim()
  checkClusterId(clusterId)
  // A CA made by initCerts names its cluster; one an operator brought may not.
  const caName = /^CN=kvstore CA (.+)$/.exec(describeCertificate(certPem).subject)?.[1]
  if (caName !== undefined && caName !== clusterId)
    throw new Error(
      `${join(dir, caCertFile)} is the CA of cluster ${caName} but ${join(dir, clusterIdFile)} says ${clusterId}`,
    )
  return { ca: { certPem, keyPem }, clusterId }
}

/**
 * Refuses to replace the certificate of a member with one of a user or router of the same
 * name, or the other way round (all live in `<name>.crt`), even with force.
 */
async function checkSameKind(dir: string, name: string, kind: IdentityKind): Promise<void> {
  let pem: string
  try {
    pem = await readFile(join(dir, `${name}.crt`), 'utf8')
  } catch {
    return
  }
  let identities: Identity[]
  try {
    identities = describeCertificate(pem).identities
  } catch {
    return
  }
  const other = identities.find((i) => i.kind !== kind)
  if (other !== undefined)
    throw new Error(
      `${join(dir, `${name}.crt`)} belongs to ${other.kind} ${other.name}; a ${kind} may not take its name`,
    )
}

/** Makes `<memberId>.crt` and `<memberId>.key` in `dir`, signed by the CA kept there. */
export async function addMember(options: AddMemberOptions): Promise<CertsResult> {
  const dir = resolve(options.dir)
  checkName('member', options.memberId)
  const { ca, clusterId } = await readCa(dir)
  await checkSameKind(dir, options.memberId, 'member')
  const pair = await makeMemberCert(ca, {
    clusterId,
    memberId: options.memberId,
    hosts: options.hosts ?? [],
    ...(options.days !== undefined ? { days: options.days } : {}),
  })
  return {
    clusterId,
    files: await writeFiles(dir, pairFiles(options.memberId, pair), options.force ?? false),
  }
}

/** Makes `<routerId>.crt` and `<routerId>.key` in `dir`, signed by the CA kept there. */
export async function addRouter(options: AddRouterOptions): Promise<CertsResult> {
  const dir = resolve(options.dir)
  checkName('router', options.routerId)
  const { ca, clusterId } = await readCa(dir)
  await checkSameKind(dir, options.routerId, 'router')
  const pair = await makeRouterCert(ca, {
    clusterId,
    routerId: options.routerId,
    hosts: options.hosts ?? [],
    ...(options.days !== undefined ? { days: options.days } : {}),
  })
  return {
    clusterId,
    files: await writeFiles(dir, pairFiles(options.routerId, pair), options.force ?? false),
  }
}

/** Makes `<user>.crt` and `<user>.key` in `dir`, signed by the CA kept there. */
export async function addUser(options: AddUserOptions): Promise<CertsResult> {
  const dir = resolve(options.dir)
  checkName('user', options.user)
  const { ca, clusterId } = await readCa(dir)
  await checkSameKind(dir, options.user, 'user')
  const pair = await makeUserCert(ca, {
    clusterId,
    user: options.user,
    ...(options.days !== undefined ? { days: options.days } : {}),
  })
  return {
    clusterId,
    files: await writeFiles(dir, pairFiles(options.user, pair), options.force ?? false),
  }
}
