/**
 * Who a TLS certificate speaks for. Every certificate the cluster trusts names one identity in
 * a subject alternative name of type URI:
 *
 *   kv://<cluster-id>/member/<member-id>   a member of the cluster (peer port, both ways)
 *   kv://<cluster-id>/user/<user-name>     a user of the client API (client certificates)
 *   kv://<cluster-id>/router/<router-id>   a kv-router: it may act for the user it names in
 *                                          `kv-on-behalf-of` (that user's permissions apply)
 *
 * The cluster id is random, made once when the cluster's certificates are made (`kv certs
 * init`), and stored in every member's data directory on first start; a certificate of another
 * cluster is refused even when the same CA signed it.
 */

/** Cluster ids: what `kv certs init` makes (`kv-` and 32 hex digits), or an operator's own. */
export const clusterIdPattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
/** Member ids and user names share the rule of member ids. */
export const identityNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

export type IdentityKind = 'member' | 'user' | 'router'

export interface Identity {
  clusterId: string
  kind: IdentityKind
  name: string
}

/** The URI naming `name` of `kind` in cluster `clusterId`. */
export function identityUri(identity: Identity): string {
  if (!clusterIdPattern.test(identity.clusterId))
    throw new Error(`cluster id ${JSON.stringify(identity.clusterId)} is not valid`)
  if (!identityNamePattern.test(identity.name))
    throw new Error(`${identity.kind} name ${JSON.stringify(identity.name)} is not valid`)
  return `kv://${identity.clusterId}/${identity.kind}/${identity.name}`
}

/** Parses one identity URI; null when it is not one. */
export function parseIdentityUri(uri: string): Identity | null {
  const match = /^kv:\/\/([^/]+)\/(member|user|router)\/([^/]+)$/.exec(uri)
  if (match === null) return null
  const [, clusterId, kind, name] = match as unknown as [string, string, IdentityKind, string]
  if (!clusterIdPattern.test(clusterId) || !identityNamePattern.test(name)) return null
  return { clusterId, kind, name }
}

/**
 * The identities in a certificate's subject alternative names, as Node.js prints them
 * (`X509Certificate.subjectAltName` or `getPeerCertificate().subjectaltname`):
 * `URI:kv://c/member/n1, DNS:localhost, IP Address:127.0.0.1`.
 */
export function identitiesOfSan(subjectAltName: string | undefined): Identity[] {
  if (subjectAltName === undefined || subjectAltName === '') return []
  const out: Identity[] = []
  for (const part of subjectAltName.split(',')) {
    const item = part.trim()
    if (!item.startsWith('URI:')) continue
    const identity = parseIdentityUri(item.slice(4))
    if (identity !== null) out.push(identity)
  }
  return out
}

/**
 * The one identity of `kind` a certificate names in `clusterId`: null when it names none, or
 * names several (an ambiguous certificate is trusted for nothing).
 */
export function certificateIdentity(
  subjectAltName: string | undefined,
  clusterId: string,
  kind: IdentityKind,
): string | null {
  const names = identitiesOfSan(subjectAltName).filter(
    (i) => i.clusterId === clusterId && i.kind === kind,
  )
  return names.length === 1 ? (names[0] as Identity).name : null
}
