/**
 * The RESP front side by side with Redis (`pnpm bench --suite resp`): the same
 * `redis-benchmark -t set,get` against
 *   - our 3-node single-leader cluster, as `kv-cluster` starts it (TLS, auth on, ack=quorum:
 *     each SET is fsynced on a majority before its reply), at the leader's RESP port; and
 *   - a real redis-server primary with 2 replicas on loopback (Debian's redis-server), TLS and
 *     a password too, AOF on with `appendfsync everysec` (Redis's default; replication is
 *     asynchronous, so an acknowledged SET can be lost on failover), and again with
 *     `appendfsync always` (fsync per write on the primary only),
 * one after the other in one run, with --clients connections and pipelines of 1 and
 * --pipeline commands. Every process runs on this machine, the benchmark client included.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, readFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { fmt, say, sleep } from './common.js'
import { publish } from './report.js'

export interface RespBenchOptions {
  requests: number
  clients: number
  pipeline: number
  valueBytes: number
  out: string
  command: string
}

interface Row {
  system: string
  test: 'SET' | 'GET'
  pipeline: number
  rps: number
  p50Ms: number
  p99Ms: number
  maxMs: number
}

const kvCluster = fileURLToPath(new URL('../../cli/dist/kv-cluster.js', import.meta.url))

function freeConsecutive(count: number): Promise<number> {
  const free = (port: number) =>
    new Promise<boolean>((resolve) => {
      const server = createServer()
      server.once('error', () => resolve(false))
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
    })
  return (async () => {
    for (let attempt = 0; attempt < 50; attempt++) {
      const base = 20_000 + Math.floor(Math.random() * 30_000)
      let ok = true
      for (let i = 0; i < count && ok; i++) ok = await free(base + i)
      if (ok) return base
    }
    throw new Error(`no ${count} consecutive free ports`)
  })()
}

function run(command: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err !== null) reject(new Error(`${command} failed: ${err.message}\n${stderr}`))
        else resolve(`${stdout}${stderr}`)
      },
    )
  })
}

async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string) {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`)
    await sleep(200)
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  await exited
  clearTimeout(timer)
}

/** redis-benchmark -t set,get --csv; the SET and GET rows. */
async function benchmark(
  system: string,
  tlsArgs: string[],
  port: number,
  options: RespBenchOptions,
  pipeline: number,
): Promise<Row[]> {
  say(`${system}: redis-benchmark -t set,get -P ${pipeline}`)
  const output = await run(
    'redis-benchmark',
    [
      ...tlsArgs,
      '-p',
      String(port),
      '-t',
      'set,get',
      '-n',
      String(options.requests),
      '-c',
      String(options.clients),
      '-P',
      String(pipeline),
      '-d',
      String(options.valueBytes),
      '-r',
      '100000',
      '--csv',
    ],
    600_000,
  )
  if (/error/i.test(output))
    throw new Error(`redis-benchmark against ${system} reported errors:\n${output}`)
  const rows: Row[] = []
  for (const line of output.split('\n')) {
    const cells = line.split(',').map((c) => c.replace(/"/g, ''))
    const test = cells[0]
    if (test !== 'SET' && test !== 'GET') continue
    rows.push({
      system,
      test,
      pipeline,
      rps: Number(cells[1]),
      p50Ms: Number(cells[4]),
      p99Ms: Number(cells[6]),
      maxMs: Number(cells[7]),
    })
  }
  if (rows.length !== 2) throw new Error(`unexpected redis-benchmark output:\n${output}`)
  return rows
}

/** Our cluster through kv-cluster; returns the leader's RESP port and how to stop it. */
async function startKvCluster(
  dir: string,
): Promise<{ port: number; certs: string; stop: () => Promise<void> }> {
  const client = await freeConsecutive(3)
  let peer = await freeConsecutive(3)
  while (Math.abs(peer - client) < 3) peer = await freeConsecutive(3)
  let resp = await freeConsecutive(3)
  while (Math.abs(resp - client) < 3 || Math.abs(resp - peer) < 3) resp = await freeConsecutive(3)
  const child = spawn(
    process.execPath,
    [
      kvCluster,
      '--client-port',
      String(client),
      '--peer-port',
      String(peer),
      '--resp-port',
      String(resp),
      '--data-dir',
      join(dir, 'kv'),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let printed = ''
  child.stdout?.on('data', (chunk: Buffer) => (printed += chunk.toString()))
  child.stderr?.on('data', (chunk: Buffer) => (printed += chunk.toString()))
  try {
    await waitFor(
      () => printed.includes('Ctrl-C stops every node cleanly'),
      120_000,
      `kv-cluster:\n${printed}`,
    )
  } catch (err) {
    await stopChild(child)
    throw err
  }
  const leader = /^ {2}n(\d) +leader /m.exec(printed)
  if (leader === null) {
    await stopChild(child)
    throw new Error(`kv-cluster shows no leader:\n${printed}`)
  }
  return {
    port: resp + Number(leader[1]) - 1,
    certs: join(dir, 'kv', 'certs'),
    stop: () => stopChild(child),
  }
}

/** A redis-server primary and 2 replicas over TLS with a password; returns the primary's port. */
async function startRedis(
  dir: string,
  certs: string,
  password: string,
  fsync: 'everysec' | 'always',
): Promise<{ port: number; stop: () => Promise<void> }> {
  const base = await freeConsecutive(3)
  const children: ChildProcess[] = []
  const tls = [
    '--tls-cert-file',
    join(certs, 'n1.crt'),
    '--tls-key-file',
    join(certs, 'n1.key'),
    '--tls-ca-cert-file',
    join(certs, 'ca.crt'),
    '--tls-auth-clients',
    'no',
    '--tls-replication',
    'yes',
  ]
  const stop = async () => {
    for (const child of children) await stopChild(child)
  }
  try {
    for (let i = 0; i < 3; i++) {
      const data = join(dir, `redis-${fsync}-${i}`)
      await run('mkdir', ['-p', data], 5000)
      children.push(
        spawn(
          'redis-server',
          [
            '--port',
            '0',
            '--tls-port',
            String(base + i),
            '--bind',
            '127.0.0.1',
            ...tls,
            '--dir',
            data,
            '--save',
            '',
            '--appendonly',
            'yes',
            '--appendfsync',
            fsync,
            '--requirepass',
            password,
            '--masterauth',
            password,
            ...(i === 0 ? [] : ['--replicaof', '127.0.0.1', String(base)]),
          ],
          { stdio: 'ignore' },
        ),
      )
    }
    const cli = ['--tls', '--cacert', join(certs, 'ca.crt'), '--no-auth-warning', '-a', password]
    await waitFor(
      async () => {
        try {
          const info = await run(
            'redis-cli',
            [...cli, '-p', String(base), 'INFO', 'replication'],
            5000,
          )
          return /connected_slaves:2/.test(info)
        } catch {
          return false
        }
      },
      60_000,
      'the Redis replicas to connect',
    )
  } catch (err) {
    await stop()
    throw err
  }
  return { port: base, stop }
}

export async function runRespBench(options: RespBenchOptions): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-bench-resp-'))
  const rows: Row[] = []
  const pipelines = [...new Set([1, options.pipeline])]
  try {
    const kv = await startKvCluster(dir)
    const password = (await readFile(join(kv.certs, 'root.password'), 'utf8')).trim()
    const tlsArgs = ['--tls', '--cacert', join(kv.certs, 'ca.crt')]
    try {
      for (const p of pipelines)
        rows.push(
          ...(await benchmark(
            'kvstore 3 nodes, ack=quorum',
            [...tlsArgs, '--user', 'root', '-a', password],
            kv.port,
            options,
            p,
          )),
        )
    } finally {
      await kv.stop()
    }
    for (const fsync of ['everysec', 'always'] as const) {
      const redis = await startRedis(dir, kv.certs, password, fsync)
      try {
        for (const p of pipelines)
          rows.push(
            ...(await benchmark(
              `redis primary + 2 replicas, appendfsync ${fsync}`,
              [...tlsArgs, '-a', password],
              redis.port,
              options,
              p,
            )),
          )
      } finally {
        await redis.stop()
      }
    }
    const version = (await run('redis-server', ['--version'], 5000)).trim()
    const body = [
      '| system | test | pipeline | requests/s | p50 ms | p99 ms | max ms |',
      '|---|---|---:|---:|---:|---:|---:|',
      ...rows.map(
        (r) =>
          `| ${r.system} | ${r.test} | ${r.pipeline} | ${fmt(r.rps)} | ${fmt(r.p50Ms, 3)} | ${fmt(r.p99Ms, 3)} | ${fmt(r.maxMs, 3)} |`,
      ),
      '',
      `redis-benchmark -t set,get -n ${options.requests} -c ${options.clients} -d ${options.valueBytes} -r 100000, over TLS with a password, against the leader's RESP port of a 3-node kv-cluster and against a redis-server primary (${version.split(' ').slice(0, 3).join(' ')}) with 2 replicas; every process on this machine. Our SET returns once a majority has it on disk (ack=quorum, fsync); Redis's returns once the primary has it in memory (replication is asynchronous; AOF fsync each second, or per write with always).`,
    ]
    await publish(options.out, {
      suite: 'resp',
      command: options.command,
      summary: `The RESP front against Redis: redis-benchmark -t set,get on a 3-node cluster's leader and on a Redis primary with 2 replicas, over TLS, ${options.clients} clients.`,
      body,
      json: {
        requests: options.requests,
        clients: options.clients,
        pipelines,
        valueBytes: options.valueBytes,
        redis: version,
        rows,
      },
    })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
