/**
 * Outbound peer connections over mutual TLS: this member presents its certificate, and the
 * server's certificate must be signed by the cluster's CA and name exactly the member we meant
 * to reach (`kv://<cluster-id>/member/<peer>`). Host names play no part: members are known by
 * the identity in their certificate, so a peer URL may use any address.
 */
import type { SecureClientSessionOptions } from 'node:http2'
import type { PeerCertificate } from 'node:tls'
import { invariant } from '@kvstore/core'
import { certificateIdentity } from '@kvstore/protocol/identity'
import type { PeerSecurity } from './peer-server.js'

export function peerConnectOptions(
  security: PeerSecurity,
  peer: string,
): SecureClientSessionOptions {
  const tls = security.tls
  // Called only when peer TLS is on (the transport dials plaintext itself otherwise).
  invariant(tls !== null, 'peerConnectOptions needs TLS')
  return {
    ...tls.contextOptions(),
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    rejectUnauthorized: true,
    checkServerIdentity: (_host: string, cert: PeerCertificate): Error | undefined => {
      const member = certificateIdentity(cert.subjectaltname, security.clusterId, 'member')
      if (member === peer) return undefined
      security.onRefused('not_a_member', {
        expected: peer,
        member,
        subjectAltName: cert.subjectaltname ?? null,
      })
      return new Error(
        `the server at ${peer}'s peer URL presents a certificate of ${member === null ? 'no member of this cluster' : `member ${member}`}, not ${peer}`,
      )
    },
  }
}
