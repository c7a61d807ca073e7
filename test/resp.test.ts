/**
 * The RESP front (docs/resp.md) on a real 3-node cluster started by kv-cluster (as
 * `bash scripts/start.sh` starts one: TLS, auth on, RESP ports at client port + offset), driven
 * by the real redis-cli and redis-benchmark (Debian redis-tools) and the ioredis client:
 * set/get/pipeline, NOAUTH before a credential, a client certificate as the credential,
 * READONLY on a follower, redis-benchmark clean against the leader, and a kill -9 of the leader
 * that ioredis (Sentinel mode against the members) rides through without an error while
 * redis-benchmark keeps reading from a follower.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import { assertBuilt } from '@kvstore/testkit'
import { clusterPorts, freePorts } from './support/ports.js'

const root = fileURLToPath(new URL('..', import.meta.url))

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

function run(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
  input?: string,
): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(
      command,
      args,
      {
        env: { ...process.env, ...env },
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: 16 << 20,
      },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null
        resolve({ code, stdout: stdout.toString(), stderr: stderr.toString() })
      },
    )
    if (input !== undefined) child.stdin?.end(input)
  })
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

describe('the RESP front on a 3-node kv-cluster', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kv-resp-'))
  let cluster: ChildProcess | null = null
  const pids = new Map<string, number>()
  let respBase = 0
  let certs = ''
  let password = ''
  /** redis-cli / redis-benchmark flags: TLS with the cluster's CA, as root with its password. */
  let tlsArgs: string[] = []
  const env = (): NodeJS.ProcessEnv => ({ REDISCLI_AUTH: password })
  const cli = (port: number, ...args: string[]) =>
    run('redis-cli', [...tlsArgs, '--user', 'root', '-p', String(port), ...args], env(), 20_000)
  const respPort = (id: string) => respBase + Number(id.slice(1)) - 1
  let leader = 'n1'

  beforeAll(async () => {
    assertBuilt()
    const { client, peer } = await clusterPorts(3)
    respBase = await freePorts(3)
    cluster = spawn(
      process.execPath,
      [
        join(root, 'packages/cli/dist/kv-cluster.js'),
        '--client-port',
        String(client),
        '--peer-port',
        String(peer),
        '--resp-port',
        String(respBase),
        '--data-dir',
        join(dir, 'data'),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    let printed = ''
    cluster.stdout?.on('data', (chunk: Buffer) => (printed += chunk.toString()))
    cluster.stderr?.on('data', (chunk: Buffer) => (printed += chunk.toString()))
    await waitFor(
      () => printed.includes('Ctrl-C stops every node cleanly'),
      90_000,
      `kv-cluster:\n${printed}`,
    )
    for (const m of printed.matchAll(
      /^ {2}(n\d) +(\w+) +https:\/\/\S+ +\(peers: \S+, pid (\d+)\)$/gm,
    )) {
      pids.set(m[1] as string, Number(m[3]))
      if (m[2] === 'leader') leader = m[1] as string
    }
    expect(pids.size, printed).toBe(3)
    expect(printed, 'kv-cluster shows how to reach the RESP front').toContain(
      `-p ${respBase} SET greeting hello`,
    )
    certs = join(dir, 'data', 'certs')
    password = readFileSync(join(certs, 'root.password'), 'utf8').trim()
    tlsArgs = ['--tls', '--cacert', join(certs, 'ca.crt')]
  }, 120_000)

  afterAll(async () => {
    const running = (child: ChildProcess) => child.exitCode === null && child.signalCode === null
    if (cluster !== null && running(cluster)) {
      const child = cluster
      child.kill('SIGTERM')
      await waitFor(() => !running(child), 20_000, 'kv-cluster to stop').catch(() =>
        child.kill('SIGKILL'),
      )
    }
    for (const pid of pids.values()) if (alive(pid)) process.kill(pid, 'SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }, 30_000)

  it('answers redis-cli: SET, GET, pipelines, INCR, MSET/MGET, SCAN, unknown commands', async () => {
    const port = respPort(leader)
    expect((await cli(port, 'SET', 'a', '1')).stdout.trim()).toBe('OK')
    expect((await cli(port, 'GET', 'a')).stdout.trim()).toBe('1')
    expect((await cli(port, 'SET', 'a', '2', 'NX')).stdout.trim()).toBe('')
    expect((await cli(port, 'INCRBY', 'a', '41')).stdout.trim()).toBe('42')
    expect((await cli(port, 'MSET', 'p:1', 'x', 'p:2', 'y')).stdout.trim()).toBe('OK')
    expect((await cli(port, 'MGET', 'p:1', 'p:2', 'p:3')).stdout.split('\n').slice(0, 3)).toEqual([
      'x',
      'y',
      '',
    ])
    expect(
      (await cli(port, '--scan', '--pattern', 'p:*')).stdout.trim().split('\n').sort(),
    ).toEqual(['p:1', 'p:2'])
    expect((await cli(port, 'DEL', 'p:1', 'p:2', 'p:3')).stdout.trim()).toBe('2')
    const unknown = await cli(port, 'FLUSHALL')
    expect(unknown.stdout).toContain("ERR unknown command 'FLUSHALL'")
    // A pipeline of 1,000 commands in one write (redis-cli --pipe), every reply in order.
    let commands = ''
    for (let i = 0; i < 1000; i++)
      commands += `*3\r\n$3\r\nSET\r\n$${`k${i}`.length}\r\nk${i}\r\n$${String(i).length}\r\n${i}\r\n`
    const piped = await run(
      'redis-cli',
      [...tlsArgs, '--user', 'root', '-p', String(port), '--pipe'],
      env(),
      30_000,
      commands,
    )
    expect(piped.stdout, piped.stderr).toContain('errors: 0, replies: 1000')
    expect((await cli(port, 'GET', 'k999')).stdout.trim()).toBe('999')
    const info = (await cli(port, 'INFO', 'replication')).stdout
    expect(info).toContain('role:master')
    expect(info).toMatch(/connected_slaves:2/)
  }, 60_000)

  it('asks for a credential first, and takes a client certificate as one', async () => {
    const port = respPort(leader)
    const anonymous = await run(
      'redis-cli',
      [...tlsArgs, '-p', String(port), 'GET', 'a'],
      {},
      10_000,
    )
    expect(anonymous.stdout).toContain('NOAUTH')
    expect(
      (await run('redis-cli', [...tlsArgs, '-p', String(port), 'PING'], {}, 10_000)).stdout.trim(),
    ).toBe('PONG')
    const wrong = await run(
      'redis-cli',
      [...tlsArgs, '--user', 'root', '-p', String(port), 'GET', 'a'],
      { REDISCLI_AUTH: 'not-the-password' },
      10_000,
    )
    expect(wrong.stdout + wrong.stderr).toContain('WRONGPASS')
    const byCert = await run(
      'redis-cli',
      [
        ...tlsArgs,
        '--cert',
        join(certs, 'root.crt'),
        '--key',
        join(certs, 'root.key'),
        '-p',
        String(port),
        'GET',
        'a',
      ],
      {},
      10_000,
    )
    expect(byCert.stdout.trim()).toBe('42')
    // Plaintext on a TLS port is not RESP to the node: no reply, the connection closes.
    const plain = await run('redis-cli', ['-p', String(port), 'PING'], {}, 10_000)
    expect(plain.stdout).not.toContain('PONG')
  }, 60_000)

  it('refuses writes on a follower with READONLY naming the leader, and serves its reads', async () => {
    const follower = [...pids.keys()].find((id) => id !== leader) as string
    const refused = await cli(respPort(follower), 'SET', 'a', '7')
    expect(refused.stdout).toMatch(/^READONLY You can't write against a read only replica\./)
    expect(refused.stdout).toContain(`leader ${leader} at 127.0.0.1:${respPort(leader)}`)
    await waitFor(
      async () => (await cli(respPort(follower), 'GET', 'k999')).stdout.trim() === '999',
      10_000,
      'the follower to have k999',
    )
    expect((await cli(respPort(follower), 'INFO', 'replication')).stdout).toContain(
      `master_port:${respPort(leader)}`,
    )
    expect(
      (await cli(respPort(follower), 'SENTINEL', 'get-master-addr-by-name', 'kv')).stdout
        .trim()
        .split('\n'),
    ).toEqual(['127.0.0.1', String(respPort(leader))])
  }, 60_000)

  it('runs redis-benchmark -t set,get clean against the leader', async () => {
    const bench = await run(
      'redis-benchmark',
      [
        ...tlsArgs,
        '--user',
        'root',
        '-a',
        password,
        '-p',
        String(respPort(leader)),
        '-t',
        'set,get',
        '-n',
        '4000',
        '-c',
        '20',
        '-P',
        '4',
        '--csv',
      ],
      {},
      120_000,
    )
    expect(bench.code, bench.stderr).toBe(0)
    expect(bench.stdout + bench.stderr).not.toMatch(/error/i)
    const rows = bench.stdout
      .trim()
      .split('\n')
      .filter((l) => /^"(SET|GET)"/.test(l))
    expect(rows.length, bench.stdout).toBe(2)
    for (const row of rows)
      expect(Number((row.split(',')[1] as string).replace(/"/g, ''))).toBeGreaterThan(0)
  }, 150_000)

  it('ioredis rides through a kill -9 of the leader; redis-benchmark reads from a follower meanwhile', async () => {
    const ca = readFileSync(join(certs, 'ca.crt'))
    const redis = new Redis({
      sentinels: [...pids.keys()].map((id) => ({ host: '127.0.0.1', port: respPort(id) })),
      name: 'kv',
      username: 'root',
      password,
      sentinelUsername: 'root',
      sentinelPassword: password,
      tls: { ca },
      sentinelTLS: { ca },
      enableTLSForSentinelMode: true,
      // A write that reaches a member that no longer leads: reconnect (the Sentinel lookup
      // finds the new leader) and send it again.
      reconnectOnError: (err) => (err.message.startsWith('READONLY') ? 2 : false),
      maxRetriesPerRequest: 100,
    })
    // The connection errors ioredis recovers from itself (the killed leader's reset socket, a
    // Sentinel lookup that tries the dead member first): kept, with when they came, rather than
    // printed as "Unhandled error event". None may come before the kill.
    const connectionErrors: { at: number; message: string }[] = []
    redis.on('error', (err: Error) =>
      connectionErrors.push({ at: Date.now(), message: err.message }),
    )
    const survivor = [...pids.keys()].find((id) => id !== leader) as string
    try {
      expect(await redis.set('ride', 'start')).toBe('OK')
      const bench = run(
        'redis-benchmark',
        [
          ...tlsArgs,
          '--user',
          'root',
          '-a',
          password,
          '-p',
          String(respPort(survivor)),
          '-t',
          'get',
          '-n',
          '20000',
          '-c',
          '4',
          '--csv',
        ],
        {},
        60_000,
      )
      const acknowledged: number[] = []
      const errors: string[] = []
      let killedAt = 0
      const startedAt = Date.now()
      for (let i = 0; Date.now() - startedAt < 9000; i++) {
        if (killedAt === 0 && Date.now() - startedAt > 1500) {
          process.kill(pids.get(leader) as number, 'SIGKILL')
          killedAt = Date.now()
        }
        try {
          const reply = await redis.set(`ride:${i}`, String(i))
          if (reply === 'OK') acknowledged.push(i)
          else errors.push(`ride:${i} got ${String(reply)}`)
        } catch (err) {
          errors.push(`ride:${i}: ${(err as Error).message}`)
        }
      }
      expect(killedAt, 'the leader was killed during the run').toBeGreaterThan(0)
      expect(errors, 'ioredis saw no error').toEqual([])
      expect(
        connectionErrors.filter((e) => e.at < killedAt),
        'no connection error before the kill',
      ).toEqual([])
      expect(acknowledged.length).toBeGreaterThan(20)
      // The new leader, by the members' own answer, and every acknowledged write on it.
      const master = (await redis.info('replication')).match(/role:(\w+)/)?.[1]
      expect(master).toBe('master')
      for (let at = 0; at < acknowledged.length; at += 100) {
        const some = acknowledged.slice(at, at + 100)
        expect(await redis.mget(some.map((i) => `ride:${i}`))).toEqual(some.map((i) => String(i)))
      }
      const benchRun = await bench
      expect(benchRun.code, benchRun.stderr).toBe(0)
      expect(benchRun.stdout + benchRun.stderr).not.toMatch(/error/i)
    } finally {
      redis.disconnect()
    }
  }, 120_000)
})
