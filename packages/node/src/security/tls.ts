/**
 * This node's TLS material: its certificate and key, and the cluster's CA. The certificate
 * names the member (`kv://<cluster-id>/member/<id>`, see protocol/identity.ts), so it also
 * tells the node which cluster it belongs to.
 *
 * Files are read and checked at start (the certificate must be signed by the CA, be valid now,
 * match the key, and name this node), and again on `reload()` (SIGHUP): a reload that fails any
 * check keeps the material in use and reports why, so a bad rotation never takes a node down.
 */
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { SecureContextOptions } from 'node:tls'
import { certificateIdentity, identitiesOfSan } from '@kvstore/protocol/identity'

export interface TlsFiles {
  certFile: string
  keyFile: string
  /** Required for mutual TLS between members and for client certificates. */
  caFile: string | undefined
}

export interface TlsMaterial {
  cert: Buffer
  key: Buffer
  ca: Buffer | undefined
  /** The cluster the certificate names this member in; null when it names none. */
  clusterId: string | null
  notAfter: Date
  fingerprint256: string
}

/** A TLS file that cannot be used; the message says which and why. */
export class TlsError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'TlsError'
  }
}

function read(file: string, what: string): Buffer {
  try {
    return readFileSync(file)
  } catch (err) {
    throw new TlsError(`cannot read ${what} ${file}: ${(err as Error).message}`)
  }
}

/** Every certificate in a PEM bundle. */
function certificatesOf(pem: Buffer, what: string): X509Certificate[] {
  const blocks = pem
    .toString('utf8')
    .match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)
  if (blocks === null) throw new TlsError(`${what} holds no PEM certificate`)
  return blocks.map((block) => {
    try {
      return new X509Certificate(block)
    } catch (err) {
      throw new TlsError(
        `${what} holds a certificate that does not parse: ${(err as Error).message}`,
      )
    }
  })
}

/**
 * Reads and checks the files for member `memberId`. With `requireMember` the certificate must
 * name this member in exactly one cluster (peer TLS); without it any certificate the CA signed
 * will do (a client port behind an operator's own certificate).
 */
export function loadTlsMaterial(
  files: TlsFiles,
  memberId: string,
  options: { requireMember: boolean; now?: Date },
): TlsMaterial {
  const cert = read(files.certFile, 'certificate')
  const key = read(files.keyFile, 'private key')
  const ca = files.caFile === undefined ? undefined : read(files.caFile, 'CA certificate')
  const [leaf] = certificatesOf(cert, `certificate ${files.certFile}`)
  if (leaf === undefined) throw new TlsError(`certificate ${files.certFile} is empty`)
  const now = options.now ?? new Date()
  if (new Date(leaf.validFrom) > now || new Date(leaf.validTo) < now) {
    throw new TlsError(
      `certificate ${files.certFile} is valid from ${leaf.validFrom} to ${leaf.validTo}, not now`,
    )
  }
  let privateKey
  try {
    privateKey = createPrivateKey(key)
  } catch (err) {
    throw new TlsError(`private key ${files.keyFile} does not parse: ${(err as Error).message}`)
  }
  const fromKey = createPublicKey(privateKey).export({ type: 'spki', format: 'der' })
  const fromCert = leaf.publicKey.export({ type: 'spki', format: 'der' })
  if (!fromKey.equals(fromCert)) {
    throw new TlsError(`private key ${files.keyFile} does not belong to ${files.certFile}`)
  }
  if (ca !== undefined) {
    const authorities = certificatesOf(ca, `CA file ${files.caFile}`)
    const issuer = authorities.find((a) => leaf.checkIssued(a) && leaf.verify(a.publicKey))
    if (issuer === undefined) {
      throw new TlsError(
        `certificate ${files.certFile} is not signed by the CA in ${files.caFile}; members must share one CA`,
      )
    }
  }
  const members = identitiesOfSan(leaf.subjectAltName).filter((i) => i.kind === 'member')
  let clusterId: string | null = null
  if (members.length === 1 && members[0] !== undefined) {
    clusterId = members[0].clusterId
    if (certificateIdentity(leaf.subjectAltName, clusterId, 'member') !== memberId) {
      throw new TlsError(
        `certificate ${files.certFile} names member ${members[0].name}, not this node (${memberId})`,
      )
    }
  } else if (options.requireMember) {
    throw new TlsError(
      `certificate ${files.certFile} must name exactly one member as a URI kv://<cluster-id>/member/${memberId}; it names ${members.length === 0 ? 'none' : members.map((m) => `${m.clusterId}/${m.name}`).join(', ')}. Make member certificates with \`kv certs init\` or \`kv certs add-member\``,
    )
  }
  return {
    cert,
    key,
    ca,
    clusterId,
    notAfter: new Date(leaf.validTo),
    fingerprint256: leaf.fingerprint256,
  }
}

/**
 * The material in use, and who to tell when it changes. Servers call
 * `setSecureContext(contextOptions())` and clients read `contextOptions()` for each new
 * connection, so a reload reaches every new connection while open ones finish undisturbed.
 */
export class TlsSource {
  private material: TlsMaterial
  private readonly listeners: ((material: TlsMaterial) => void)[] = []

  constructor(
    private readonly files: TlsFiles,
    private readonly memberId: string,
    private readonly requireMember: boolean,
  ) {
    this.material = loadTlsMaterial(files, memberId, { requireMember })
  }

  get current(): TlsMaterial {
    return this.material
  }

  /** Key, certificate and CA, as `tls` options take them. */
  contextOptions(): SecureContextOptions {
    const { cert, key, ca } = this.material
    return { cert, key, ...(ca !== undefined ? { ca } : {}) }
  }

  onReload(listener: (material: TlsMaterial) => void): void {
    this.listeners.push(listener)
  }

  /**
   * Reads the files again. The new certificate must name the same member of the same cluster;
   * on any problem the old material stays and the error is thrown.
   */
  reload(): TlsMaterial {
    const next = loadTlsMaterial(this.files, this.memberId, { requireMember: this.requireMember })
    if (next.clusterId !== this.material.clusterId) {
      throw new TlsError(
        `the new certificate names cluster ${String(next.clusterId)}, not ${String(this.material.clusterId)}; a member cannot change clusters`,
      )
    }
    this.material = next
    for (const listener of this.listeners) listener(next)
    return next
  }
}
