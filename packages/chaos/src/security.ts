/**
 * The chaos suite runs clusters as they ship: members talk mutual TLS, client ports serve
 * HTTPS and every request needs a credential. A run makes (or is given) the cluster's
 * certificates with `kv certs init`; the runner, its workloads and its checkers act as root
 * with root's client certificate.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Agent, setGlobalDispatcher } from 'undici'
import type { TlsOptions } from '@kvstore/client'
import { initCerts } from '@kvstore/cli'

export interface ChaosSecurity {
  /** What `kv certs init` wrote: ca.crt, n1..n9 certificates and keys, root's. */
  certsDir: string
  /** SDK and undici options: the CA and root's client certificate. */
  tls: Required<Pick<TlsOptions, 'ca' | 'cert' | 'key'>>
}

/** Members any chaos cluster may have. */
const membersMax = 9

/**
 * Every member id a chaos run has a certificate for: n1..n9. A cluster of N starts with n1..nN;
 * the membership nemesis adds new members from the rest (a removed id is never reused).
 */
export const chaosMemberIds: readonly string[] = Array.from(
  { length: membersMax },
  (_, i) => `n${i + 1}`,
)

/** Uses the certificates in `certsDir`, making them first when the directory has none. */
export async function chaosSecurity(certsDir: string): Promise<ChaosSecurity> {
  if (!existsSync(join(certsDir, 'ca.crt'))) {
    await initCerts({
      dir: certsDir,
      members: [...chaosMemberIds],
    })
  }
  const tls = {
    ca: readFileSync(join(certsDir, 'ca.crt')),
    cert: readFileSync(join(certsDir, 'root.crt')),
    key: readFileSync(join(certsDir, 'root.key')),
  }
  // Every fetch of this process (readiness, views, digests, the checkers' reads) goes as root.
  setGlobalDispatcher(new Agent({ connect: tls }))
  return { certsDir, tls }
}
