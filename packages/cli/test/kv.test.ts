import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import { KvNode, parseConfig } from '@kvstore/node'
import { KvClient } from '@kvstore/client'
import { runImport } from '../src/import.js'
import { runKv } from '../src/kv-command.js'
import { initCerts } from '../src/certs.js'

let dir: string
let node: KvNode
let url: string
let certs: string
/** What every `kv` run gets: the CA, and root's password (auth is on, as shipped). */
let env: NodeJS.ProcessEnv

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-cli-'))
  certs = join(dir, 'certs')
  await initCerts({ dir: certs, members: ['n1'] })
  const { config } = parseConfig(
    ['--port', '0', '--data-dir', join(dir, 'data'), '--log-level', 'silent', '--certs-dir', certs],
    {},
  )
  node = await KvNode.start(config)
  url = node.url
  env = {
    KV_CACERT: join(certs, 'ca.crt'),
    KV_USER: 'root',
    KV_PASSWORD_FILE: join(certs, 'root.password'),
    KV_CREDENTIALS: join(dir, 'credentials.json'),
  }
})
afterAll(async () => {
  await node.stop()
  await rm(dir, { recursive: true, force: true })
})

/** Runs `kv` with `args`, returning its exit status and everything it printed. */
async function kv(
  args: string[],
  stdin?: string,
  envOverride?: NodeJS.ProcessEnv,
): Promise<{ code: number; out: string; err: string; raw: Buffer }> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  const outChunks: Buffer[] = []
  const errChunks: Buffer[] = []
  stdout.on('data', (c: Buffer) => outChunks.push(c))
  stderr.on('data', (c: Buffer) => errChunks.push(c))
  const input = Object.assign(
    stdin === undefined ? Readable.from([]) : Readable.from([Buffer.from(stdin)]),
    {
      isTTY: stdin === undefined,
    },
  )
  const code = await runKv(['--url', url, ...args], {
    env: envOverride ?? env,
    stdin: input,
    stdout,
    stderr,
  })
  const raw = Buffer.concat(outChunks)
  return { code, out: raw.toString(), err: Buffer.concat(errChunks).toString(), raw }
}

describe('kv', () => {
  it('puts and gets a value given as an argument', async () => {
    const put = await kv(['put', 'users/1', '{"name":"Ada"}'])
    expect(put).toMatchObject({ code: 0 })
    expect(put.out).toMatch(/^OK wrote users\/1 version \d+\n$/)
    const get = await kv(['get', 'users/1'])
    expect(get).toMatchObject({ code: 0, out: '{"name":"Ada"}' })
  })

  it('reads the value from standard input and from a file, byte for byte', async () => {
    expect((await kv(['put', 'piped'], 'from stdin')).code).toBe(0)
    expect((await kv(['get', 'piped'])).out).toBe('from stdin')
    const file = join(dir, 'blob.bin')
    const bytes = Buffer.from([0, 1, 2, 253, 254, 255])
    await writeFile(file, bytes)
    expect((await kv(['put', 'blob', '--file', file])).code).toBe(0)
    expect((await kv(['get', 'blob'])).raw.equals(bytes)).toBe(true)
    const out = join(dir, 'out.bin')
    expect((await kv(['get', 'blob', '--output', out])).code).toBe(0)
    expect((await readFile(out)).equals(bytes)).toBe(true)
  })

  it('a value over the limit is refused with KV_ERR_VALUE_TOO_LARGE over HTTP/2 and HTTP/1.1', async () => {
    // 10 MB over HTTP/2 used to fail as KV_ERR_UNAVAILABLE: the client's HTTP/2 session reset
    // the stream (ENHANCE_YOUR_CALM, or "stream half-closed" over TLS) before the node answered.
    const file = join(dir, 'ten-megabytes.bin')
    await writeFile(file, Buffer.alloc(10 * 1024 * 1024, 7))
    for (const flags of [[], ['--http1']]) {
      const big = await kv([...flags, 'put', 'big', '--file', file])
      expect(big.err).toMatch(/^kv: KV_ERR_VALUE_TOO_LARGE: .*limitBytes=1048576/)
      expect(big.code).toBe(1)
    }
    // Just under the limit, a value streamed in chunks over HTTP/2 arrives whole.
    const under = Buffer.alloc(1024 * 1024, 9)
    under[under.length - 1] = 1
    await writeFile(file, under)
    expect((await kv(['put', 'big', '--file', file])).code).toBe(0)
    expect((await kv(['get', 'big'])).raw.equals(under)).toBe(true)
  })

  it('compare-and-set exits 4 when the condition fails', async () => {
    const first = await kv(['put', 'cas', 'a', '--if-absent', '--json'])
    expect(first.code).toBe(0)
    const version = (JSON.parse(first.out) as { version: number }).version
    const stale = await kv(['put', 'cas', 'b', '--if-version', String(version + 100)])
    expect(stale.code).toBe(4)
    expect(stale.err).toMatch(/KV_ERR_PRECONDITION_FAILED/)
    expect((await kv(['put', 'cas', 'b', '--if-version', String(version)])).code).toBe(0)
    expect((await kv(['put', 'cas', 'c', '--if-absent'])).code).toBe(4)
  })

  it('exits 3 for a missing key, and deletes', async () => {
    const missing = await kv(['get', 'nope'])
    expect(missing.code).toBe(3)
    expect(missing.err).toBe('kv: KV_ERR_KEY_NOT_FOUND: key "nope" does not exist\n')
    await kv(['put', 'gone', 'x'])
    expect((await kv(['del', 'gone'])).out).toMatch(/^OK deleted gone at lsn \d+\n$/)
    expect((await kv(['del', 'gone'])).code).toBe(3)
  })

  it('lists by prefix, one page or all of them', async () => {
    for (let i = 0; i < 5; i++) await kv(['put', `list/${i}`, 'v'])
    const page = await kv(['ls', 'list/', '--limit', '2'])
    expect(page.out).toBe('list/0\nlist/1\n')
    expect(page.err).toMatch(/more keys/)
    const all = await kv(['ls', 'list/', '--limit', '2', '--all'])
    expect(all.out).toBe('list/0\nlist/1\nlist/2\nlist/3\nlist/4\n')
  })

  it('applies a batch file atomically', async () => {
    const file = join(dir, 'batch.json')
    await writeFile(
      file,
      JSON.stringify({
        ops: [
          { op: 'put', key: 'b1', value: '1' },
          { op: 'delete', key: 'list/0' },
        ],
      }),
    )
    const res = await kv(['batch', file])
    expect(res.code).toBe(0)
    expect(JSON.parse(res.out)).toMatchObject({
      results: [{ key: 'b1' }, { key: 'list/0', version: null }],
    })
    await writeFile(file, '{"ops": [')
    expect((await kv(['batch', file])).code).toBe(2)
  })

  it('imports NDJSON so that a key repeated in the file keeps its last value', async () => {
    const file = join(dir, 'repeat.ndjson')
    const lines: string[] = []
    // The same one-record batch three times (a=1, a=2, a=1), and a key rewritten 40 times,
    // with batches of one record and eight in flight.
    for (const v of ['1', '2', '1']) lines.push(JSON.stringify({ key: 'imp/a', value: v }))
    for (let i = 1; i <= 40; i++) {
      lines.push(JSON.stringify({ key: 'imp/b', value: String(i) }))
      lines.push(JSON.stringify({ key: `imp/c${i}`, value: String(i) }))
    }
    await writeFile(file, `${lines.join('\n')}\n`)
    const res = await kv(['import', file, '--chunk', '1', '--concurrency', '8'])
    expect(res.err).toMatch(/imported 83 records/)
    expect(res.code).toBe(0)
    expect((await kv(['get', 'imp/a'])).out).toBe('1')
    expect((await kv(['get', 'imp/b'])).out).toBe('40')
    expect((await kv(['get', 'imp/c40'])).out).toBe('40')
    // Importing it again writes it again.
    await kv(['put', 'imp/a', 'changed'])
    expect((await kv(['import', file, '--chunk', '1'])).code).toBe(0)
    expect((await kv(['get', 'imp/a'])).out).toBe('1')
  })

  it('stops an import at a malformed line, after writing every line before it', async () => {
    const file = join(dir, 'broken.ndjson')
    const good = Array.from({ length: 10 }, (_, i) =>
      JSON.stringify({ key: `brk/${i}`, value: `${i}` }),
    )
    await writeFile(file, `${good.join('\n')}\n{"key": "brk/10", "value": \n`)
    const res = await kv(['import', file])
    expect(res.code).toBe(1)
    expect(res.err).toMatch(/line 11/)
    const listed = await kv(['ls', 'brk/', '--all'])
    expect(listed.out.trim().split('\n')).toHaveLength(10)
  })

  it('imports a key again only after its earlier batch has been applied', async () => {
    // The first batch is held back on its way to the node; without ordering per key, the
    // second one (a later value of the same key) would land first and then be overwritten.
    class SlowFirstBatch extends KvClient {
      private held = false
      override async batch(...args: Parameters<KvClient['batch']>) {
        if (!this.held) {
          this.held = true
          await new Promise((r) => setTimeout(r, 200))
        }
        return super.batch(...args)
      }
    }
    const file = join(dir, 'order.ndjson')
    await writeFile(
      file,
      ['first', 'second'].map((v) => JSON.stringify({ key: 'imp/order', value: v })).join('\n'),
    )
    const client = new SlowFirstBatch({
      url,
      tls: { ca: await readFile(join(certs, 'ca.crt')) },
      auth: {
        user: 'root',
        password: (await readFile(join(certs, 'root.password'), 'utf8')).trim(),
      },
    })
    try {
      const summary = await runImport(client, {
        file,
        format: 'ndjson',
        chunk: 1,
        concurrency: 4,
        maxLagMs: 1000,
        ack: undefined,
        progress: new PassThrough(),
      })
      expect(summary.records).toBe(2)
      expect((await client.get('imp/order'))?.value.toString()).toBe('second')
    } finally {
      await client.close()
    }
  })

  it('prints status and digest as JSON', async () => {
    const status = JSON.parse((await kv(['status'])).out) as { nodeId: string; role: string }
    expect(status).toMatchObject({ nodeId: 'n1', role: 'leader' })
    const digest = JSON.parse((await kv(['digest'])).out) as { digest: string }
    expect(digest.digest).toMatch(/^[0-9a-f]{64}$/)
  })

  it('explains usage errors with exit status 2', async () => {
    expect((await kv(['frobnicate'])).code).toBe(2)
    expect((await kv(['get'])).err).toMatch(/get needs a KEY/)
    expect((await kv(['put', 'k'])).err).toMatch(/put needs a VALUE/)
    expect((await kv(['put', 'k', 'v', '--if-version', 'x'])).code).toBe(2)
    expect((await kv(['--nope'])).code).toBe(2)
  })

  it('says clearly when no node answers', async () => {
    const stdout = new PassThrough()
    const stderr = new PassThrough()
    let err = ''
    stderr.on('data', (c: Buffer) => (err += c.toString()))
    const code = await runKv(['--url', 'http://127.0.0.1:1', 'get', 'x'], {
      env: {},
      stdin: Object.assign(Readable.from([]), { isTTY: true }),
      stdout,
      stderr,
    })
    expect(code).toBe(1)
    expect(err).toMatch(/^kv: KV_ERR_UNAVAILABLE: cannot reach http:\/\/127\.0\.0\.1:1/)
  })
})

describe('kv with auth', () => {
  it('logs in once and keeps the token in a 0600 file', async () => {
    const login = await kv(['login'], undefined, { ...env, KV_USER: 'root' })
    expect(login.code, login.err).toBe(0)
    expect(login.out).toMatch(/logged in to https:.* as root/)
    const { statSync } = await import('node:fs')
    expect(statSync(join(dir, 'credentials.json')).mode & 0o777).toBe(0o600)
    // Later commands use the kept token, with no password around.
    const tokenOnly = { KV_CACERT: env.KV_CACERT, KV_CREDENTIALS: env.KV_CREDENTIALS }
    const who = await kv(['whoami', '--json'], undefined, tokenOnly)
    expect(JSON.parse(who.out)).toMatchObject({ user: 'root', via: 'token', authEnabled: true })
    expect((await kv(['logout'], undefined, tokenOnly)).code).toBe(0)
    const after = await kv(['get', 'users/1'], undefined, tokenOnly)
    expect(after.code).toBe(1)
    expect(after.err).toMatch(/KV_ERR_UNAUTHENTICATED/)
  })

  it('logs in with a client certificate naming the user', async () => {
    const who = await kv(
      ['whoami', '--json', '--cert', join(certs, 'root.crt'), '--key', join(certs, 'root.key')],
      undefined,
      { KV_CACERT: env.KV_CACERT, KV_CREDENTIALS: join(dir, 'none.json') },
    )
    expect(who.code, who.err).toBe(0)
    expect(JSON.parse(who.out)).toMatchObject({ user: 'root', via: 'certificate' })
  })

  it('manages users and roles, and a user is held to its grants', async () => {
    const pw = join(dir, 'dana.password')
    await writeFile(pw, 'dana-secret-1\n', { mode: 0o600 })
    expect((await kv(['role', 'add', 'shop'])).code).toBe(0)
    expect((await kv(['role', 'grant', 'shop', 'readwrite', 'shop/'])).code).toBe(0)
    const add = await kv(['user', 'add', 'dana', '--roles', 'shop', '--new-password-file', pw])
    expect(add.code, add.err).toBe(0)
    const dana = { ...env, KV_USER: 'dana', KV_PASSWORD_FILE: pw }
    expect((await kv(['put', 'shop/1', 'x'], undefined, dana)).code).toBe(0)
    const denied = await kv(['put', 'other/1', 'x'], undefined, dana)
    expect(denied.code).toBe(1)
    expect(denied.err).toMatch(/KV_ERR_PERMISSION_DENIED/)
    const status = await kv(['auth', 'status', '--json'])
    expect(JSON.parse(status.out)).toMatchObject({ enabled: true })
    expect((await kv(['user', 'revoke', 'dana', 'shop'])).code).toBe(0)
    const revoked = await kv(['get', 'shop/1'], undefined, dana)
    expect(revoked.err).toMatch(/KV_ERR_PERMISSION_DENIED/)
    expect((await kv(['user', 'del', 'dana'])).code).toBe(0)
    expect((await kv(['get', 'shop/1'], undefined, dana)).err).toMatch(/KV_ERR_UNAUTHENTICATED/)
  })

  it('refuses a password file others can read', async () => {
    const loose = join(dir, 'loose.password')
    await writeFile(loose, 'whatever-1\n', { mode: 0o644 })
    const run = await kv(['get', 'x'], undefined, { ...env, KV_PASSWORD_FILE: loose })
    expect(run.code).toBe(2)
    expect(run.err).toMatch(/readable by others.*chmod 600/)
  })
})
