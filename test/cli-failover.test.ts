/**
 * `kv` after the node it was first pointed at dies (the Quickstart's failover): every command
 * finds a live node, and the leader where one is needed, from the URLs it was given (--url
 * a,b,c or KV_ENDPOINTS) or the members `kv login` kept. It used to fail `kv status` (and
 * before that `kv cluster`) with ECONNREFUSED on the dead node.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { rootEnv, testCertsDir } from './support/certs.js'
import { kvBin, TestCluster } from '@kvstore/testkit'

let cluster: TestCluster
let dir: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-cli-failover-'))
  cluster = await TestCluster.start(3)
})
afterAll(async () => {
  await cluster?.stop()
  await rm(dir, { recursive: true, force: true })
})

/** Runs the built `kv` with `args` and `env` (beside PATH), within 30 s. */
function kv(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [kvBin, ...args],
      { env: { PATH: process.env.PATH, ...env }, timeout: 30_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1
        resolve({ code, out: stdout, err: stderr })
      },
    )
  })
}

/** Every command a newcomer runs, each expected to succeed. */
async function everyCommand(env: NodeJS.ProcessEnv, args: string[] = []): Promise<void> {
  const ok = async (command: string[]) => {
    const result = await kv([...args, ...command], env)
    expect(result.err, `kv ${command.join(' ')}`).toBe('')
    expect(result.code, `kv ${command.join(' ')}`).toBe(0)
    return result.out
  }
  expect(await ok(['cluster'])).toMatch(/\(single-leader\)/)
  expect(JSON.parse(await ok(['status'])) as { ready: boolean }).toMatchObject({ ready: true })
  expect(await ok(['digest'])).toMatch(/"digest"/)
  expect(await ok(['rollbacks'])).toMatch(/"count"/)
  await ok(['put', 'after/failover', 'yes'])
  expect(await ok(['get', 'after/failover'])).toBe('yes')
  expect(await ok(['user', 'list'])).toMatch(/root/)
  await ok(['role', 'add', `r${Math.floor(Math.random() * 1e9)}`])
  expect(await ok(['whoami'])).toMatch(/^root/)
}

it('every command works after the first named node is killed', async () => {
  const first = cluster.leader
  const urls = [first, ...cluster.followers].map((m) => m.url)
  // A login through the first node keeps every member's URL.
  const loginEnv = {
    KV_CACERT: rootEnv().KV_CACERT,
    KV_CREDENTIALS: join(dir, 'credentials.json'),
  }
  const login = await kv(
    [
      '--url',
      first.url,
      'login',
      '--user',
      'root',
      '--password-file',
      join(testCertsDir(), 'root.password'),
    ],
    loginEnv,
  )
  expect(login.code, login.err).toBe(0)

  await cluster.kill(first.id)
  await cluster.waitForLeader()

  // --url a,b,c with the dead node first.
  await everyCommand(rootEnv(), ['--url', urls.join(',')])
  // KV_ENDPOINTS.
  await everyCommand({ ...rootEnv(), KV_ENDPOINTS: urls.join(',') })
  // The members kv login kept, with no URL given, and with only the dead one given.
  await everyCommand(loginEnv)
  await everyCommand(loginEnv, ['--url', first.url])
})
