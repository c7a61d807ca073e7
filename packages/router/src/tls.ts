/**
 * The router's TLS material: the certificate it serves on its client port, and the identity it
 * presents to the groups. Both are read and checked at start (readable, valid now, the key
 * matches, signed by the CA), so a bad file stops the router with a clear message instead of
 * failing its first connections.
 *
 * The identity names the router (`kv://<cluster-id>/router/<id>`): the nodes then let it act
 * for the user it names in `kv-on-behalf-of`. A user's certificate is accepted as a development
 * fallback: the router then acts as that user upstream, so it refuses callers that would gain
 * from it (no credential, or a certificate of another user) and logs a warning at start.
 */
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { identitiesOfSan, type Identity } from '@kvstore/protocol'
import type { RouterConfig } from './config.js'

export class RouterTlsError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RouterTlsError'
  }
}

export interface CertificatePair {
  cert: Buffer
  key: Buffer
  /** The kv:// identities the certificate names. */
  identities: Identity[]
  notAfter: Date
}

export interface RouterTls {
  /** What the client port serves; null: plaintext. */
  listener: CertificatePair | null
  ca: Buffer | undefined
  /** What the router presents to the groups; null: nothing (plaintext groups). */
  identity: CertificatePair | null
  /** `router` (as meant), `user` (development fallback) or `none`. */
  identityKind: 'router' | 'user' | 'none'
  /** The user a development identity acts as. */
  identityUser: string | null
  clusterId: string | null
}

function read(file: string, what: string): Buffer {
  try {
    return readFileSync(file)
  } catch (err) {
    throw new RouterTlsError(`cannot read ${what} ${file}: ${(err as Error).message}`)
  }
}

function certificatesOf(pem: Buffer, what: string): X509Certificate[] {
  const blocks = pem
    .toString('utf8')
    .match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)
  if (blocks === null) throw new RouterTlsError(`${what} holds no PEM certificate`)
  return blocks.map((block) => {
    try {
      return new X509Certificate(block)
    } catch (err) {
      throw new RouterTlsError(
        `${what} holds a certificate that does not parse: ${(err as Error).message}`,
      )
    }
  })
}

function loadPair(
  certFile: string,
  keyFile: string,
  ca: Buffer | undefined,
  caFile: string | undefined,
  now: Date,
): CertificatePair {
  const cert = read(certFile, 'certificate')
  const key = read(keyFile, 'private key')
  const [leaf] = certificatesOf(cert, `certificate ${certFile}`)
  if (leaf === undefined) throw new RouterTlsError(`certificate ${certFile} is empty`)
  if (new Date(leaf.validFrom) > now || new Date(leaf.validTo) < now)
    throw new RouterTlsError(
      `certificate ${certFile} is valid from ${leaf.validFrom} to ${leaf.validTo}, not now`,
    )
  let privateKey
  try {
    privateKey = createPrivateKey(key)
  } catch (err) {
    throw new RouterTlsError(`private key ${keyFile} does not parse: ${(err as Error).message}`)
  }
  const fromKey = createPublicKey(privateKey).export({ type: 'spki', format: 'der' })
  if (!fromKey.equals(leaf.publicKey.export({ type: 'spki', format: 'der' })))
    throw new RouterTlsError(`private key ${keyFile} does not belong to ${certFile}`)
  if (ca !== undefined) {
    const signed = certificatesOf(ca, `CA file ${caFile}`).some(
      (a) => leaf.checkIssued(a) && leaf.verify(a.publicKey),
    )
    if (!signed)
      throw new RouterTlsError(`certificate ${certFile} is not signed by the CA in ${caFile}`)
  }
  return {
    cert,
    key,
    identities: identitiesOfSan(leaf.subjectAltName),
    notAfter: new Date(leaf.validTo),
  }
}

/** Reads and checks the router's certificates as the configuration names them. */
export function loadRouterTls(config: RouterConfig, now = new Date()): RouterTls {
  const ca = config.caFile === undefined ? undefined : read(config.caFile, 'CA certificate')
  if (ca !== undefined) certificatesOf(ca, `CA file ${config.caFile}`)
  const listener =
    config.certFile !== undefined && config.keyFile !== undefined
      ? loadPair(config.certFile, config.keyFile, ca, config.caFile, now)
      : null
  const identity =
    config.identityCert !== undefined && config.identityKey !== undefined
      ? loadPair(config.identityCert, config.identityKey, ca, config.caFile, now)
      : null
  let identityKind: RouterTls['identityKind'] = 'none'
  let identityUser: string | null = null
  let clusterId = config.clusterId ?? null
  if (identity !== null) {
    const inCluster = identity.identities.filter(
      (i) => clusterId === null || i.clusterId === clusterId,
    )
    const routers = inCluster.filter((i) => i.kind === 'router')
    const users = inCluster.filter((i) => i.kind === 'user')
    if (routers.length === 1) {
      const named = routers[0] as Identity
      if (named.name !== config.routerId)
        throw new RouterTlsError(
          `identity certificate ${config.identityCert} names router ${named.name}, not this router (--id ${config.routerId})`,
        )
      identityKind = 'router'
      clusterId = named.clusterId
    } else if (routers.length === 0 && users.length === 1) {
      const named = users[0] as Identity
      identityKind = 'user'
      identityUser = named.name
      clusterId = named.clusterId
    } else {
      throw new RouterTlsError(
        `identity certificate ${config.identityCert} must name exactly one router as a URI kv://<cluster-id>/router/${config.routerId} (or, for development, one user); it names ${
          identity.identities.length === 0
            ? 'none'
            : identity.identities.map((i) => `${i.kind} ${i.clusterId}/${i.name}`).join(', ')
        }`,
      )
    }
  }
  if (clusterId === null && listener !== null) {
    const named = listener.identities[0]
    if (named !== undefined) clusterId = named.clusterId
  }
  return { listener, ca, identity, identityKind, identityUser, clusterId }
}
