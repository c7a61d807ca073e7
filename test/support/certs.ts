/**
 * The test run's certificates (made once by global-setup.ts) and the credentials tests use:
 * every process test talks to its nodes over TLS as root, with root's client certificate.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Agent, setGlobalDispatcher } from 'undici'
import { inject } from 'vitest'

/** The directory `kv certs init` wrote: ca.crt, n1..n9 and root certificates, root.password. */
export function testCertsDir(): string {
  return inject('kvTestCertsDir')
}

/** kv-node flags that give a node its certificate (and root's password on a new cluster). */
export function securityArgs(): string[] {
  return ['--certs-dir', testCertsDir()]
}

export function caPem(): Buffer {
  return readFileSync(join(testCertsDir(), 'ca.crt'))
}

export function rootPassword(): string {
  return readFileSync(join(testCertsDir(), 'root.password'), 'utf8').trim()
}

/** SDK options: trust the test CA and log in as root with its client certificate. */
export function rootTls(): { tls: { ca: Buffer; cert: Buffer; key: Buffer } } {
  const dir = testCertsDir()
  return {
    tls: {
      ca: caPem(),
      cert: readFileSync(join(dir, 'root.crt')),
      key: readFileSync(join(dir, 'root.key')),
    },
  }
}

/** undici `connect` options: trust the test CA, present root's client certificate. */
export function rootConnect(): { ca: Buffer; cert: Buffer; key: Buffer } {
  return rootTls().tls
}

/** The environment of a `kv` command run as root with its client certificate. */
export function rootEnv(): NodeJS.ProcessEnv {
  const dir = testCertsDir()
  return {
    KV_CACERT: join(dir, 'ca.crt'),
    KV_CERT: join(dir, 'root.crt'),
    KV_KEY: join(dir, 'root.key'),
    // No kept login from the machine's user leaks into a test.
    KV_CREDENTIALS: join(dir, 'no-such-credentials.json'),
  }
}

/** TLS options of member `id` (n1..n9), to talk to a peer port as that member. */
export function memberTls(id: string): { ca: Buffer; cert: Buffer; key: Buffer } {
  const dir = testCertsDir()
  return {
    ca: caPem(),
    cert: readFileSync(join(dir, `${id}.crt`)),
    key: readFileSync(join(dir, `${id}.key`)),
  }
}

/** TLS options of a user with no certificate (for tests of tokens and refusals). */
export function caOnly(): { tls: { ca: Buffer } } {
  return { tls: { ca: caPem() } }
}

/**
 * Makes every `fetch` of this test process trust the test CA and present root's client
 * certificate, so tests read and write their nodes as an admin.
 */
export function installRootDispatcher(): void {
  const { tls } = rootTls()
  setGlobalDispatcher(new Agent({ connect: { ca: tls.ca, cert: tls.cert, key: tls.key } }))
}
