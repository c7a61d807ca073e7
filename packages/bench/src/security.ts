/**
 * How benchmark nodes are secured, and how the load reaches them:
 *
 *   tls-auth   (default) as shipped: mutual TLS between members, HTTPS for clients, every
 *              request with a token (wrk sends `Authorization: Bearer`, the SDK root's
 *              client certificate)
 *   tls        TLS everywhere, auth off
 *   plaintext  the unsafe baseline: h2c between members, HTTP for clients, auth off
 *
 * Certificates come from `kv certs init`, once per run, in the run's work directory.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Agent, request, setGlobalDispatcher } from 'undici'
import type { KvClientOptions } from '@kvstore/client'
import { initCerts } from '@kvstore/cli'

export const securityProfiles = ['tls-auth', 'tls', 'plaintext'] as const
export type SecurityProfile = (typeof securityProfiles)[number]

export interface BenchSecurity {
  profile: SecurityProfile
  scheme: 'http' | 'https'
  /** The `kv certs init` directory the nodes take their certificates from; null in plaintext. */
  certsDir: string | null
  /** kv-node flags: certificates, auth, and the unsafe switch for the baseline. */
  nodeArgs(cluster: boolean): string[]
  /** SDK options reaching the nodes as root. */
  client: Pick<KvClientOptions, 'tls'>
  /** The Authorization header wrk sends (tls-auth), from a login at `url`. */
  authorization(url: string): Promise<string | undefined>
}

/** Makes (or reuses) certificates in `dir` and returns the profile's settings. */
export async function benchSecurity(profile: SecurityProfile, dir: string): Promise<BenchSecurity> {
  const certsDir = join(dir, 'certs')
  if (profile !== 'plaintext' && !existsSync(join(certsDir, 'ca.crt')))
    await initCerts({ dir: certsDir, members: ['n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n7'] })
  const tls =
    profile === 'plaintext'
      ? undefined
      : {
          ca: readFileSync(join(certsDir, 'ca.crt')),
          cert: readFileSync(join(certsDir, 'root.crt')),
          key: readFileSync(join(certsDir, 'root.key')),
        }
  // The suites' own fetches (readiness, views, metrics) go over TLS as root.
  setGlobalDispatcher(new Agent(tls === undefined ? {} : { connect: tls }))
  const tokenCache = new Map<string, string>()
  return {
    profile,
    scheme: profile === 'plaintext' ? 'http' : 'https',
    certsDir: profile === 'plaintext' ? null : certsDir,
    nodeArgs(cluster) {
      switch (profile) {
        case 'plaintext':
          return [...(cluster ? ['--unsafe-plaintext-peers'] : []), '--auth', 'false']
        case 'tls':
          return ['--certs-dir', certsDir, '--auth', 'false']
        case 'tls-auth':
          // A run outlasts the default token lifetime.
          return ['--certs-dir', certsDir, '--token-ttl-ms', '86400000']
      }
    },
    client: tls === undefined ? {} : { tls },
    async authorization(url) {
      if (profile !== 'tls-auth') return undefined
      const cached = tokenCache.get(url)
      if (cached !== undefined) return cached
      const password = readFileSync(join(certsDir, 'root.password'), 'utf8').trim()
      const res = await request(`${url}/v1/auth/token`, {
        method: 'POST',
        body: JSON.stringify({ user: 'root', password }),
        headers: { 'content-type': 'application/json' },
      })
      const body = (await res.body.json()) as { token?: string }
      if (res.statusCode !== 200 || typeof body.token !== 'string')
        throw new Error(`cannot log in as root at ${url}: HTTP ${res.statusCode}`)
      const header = `Bearer ${body.token}`
      tokenCache.set(url, header)
      return header
    },
  }
}
