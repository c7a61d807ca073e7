/** Starts kv-node processes for benchmarks (the built dist, as a user runs it). */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

export const kvNodeBin = fileURLToPath(new URL('../../cli/dist/kv-node.js', import.meta.url))

export interface BenchNode {
  child: ChildProcess
  pid: number
  url: string
  stop(): Promise<void>
}

export async function startBenchNode(args: string[]): Promise<BenchNode> {
  const child = spawn(
    process.execPath,
    [kvNodeBin, '--port', '0', '--log-level', 'info', ...args],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('kv-node did not start in 20 s')), 20_000)
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      try {
        const parsed = JSON.parse(line) as { msg?: string; url?: string; level?: string }
        if (parsed.msg === 'node started' && parsed.url) {
          clearTimeout(timer)
          resolve(parsed.url)
        } else if (parsed.level === 'error' || parsed.level === 'fatal') {
          process.stderr.write(`${line}\n`)
        }
      } catch {
        // not a log line
      }
    })
    void exited.then(() => reject(new Error('kv-node exited during start')))
  })
  return {
    child,
    pid: child.pid as number,
    url,
    async stop() {
      child.kill('SIGTERM')
      await exited
    },
  }
}

export interface BenchMember extends BenchNode {
  id: string
  peerUrl: string
  role: 'leader' | 'follower'
}

export interface BenchCluster {
  members: BenchMember[]
  leader: BenchMember
  followers: BenchMember[]
  stop(): Promise<void>
}

async function freePort(): Promise<number> {
  const { createServer } = await import('node:net')
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
    })
  })
}

/**
 * Starts an `n`-node single-leader cluster on 127.0.0.1 with n1 as the leader, and resolves once
 * every follower is connected to the leader.
 */
export async function startBenchCluster(
  dataDir: string,
  n: number,
  args: string[] = [],
): Promise<BenchCluster> {
  const ports: number[] = []
  while (ports.length < 2 * n) {
    const port = await freePort()
    if (!ports.includes(port)) ports.push(port)
  }
  const specs = Array.from({ length: n }, (_, i) => ({
    id: `n${i + 1}`,
    url: `http://127.0.0.1:${ports[i]}`,
    peerUrl: `http://127.0.0.1:${ports[n + i]}`,
  }))
  const membersFlag = specs.map((m) => `${m.id}@${m.url}@${m.peerUrl}`).join(',')
  const members: BenchMember[] = []
  const stopAll = async () => {
    await Promise.all(members.map((m) => m.stop()))
  }
  try {
    for (const spec of specs) {
      const child = spawn(
        process.execPath,
        [
          kvNodeBin,
          '--id',
          spec.id,
          '--data-dir',
          `${dataDir}/${spec.id}`,
          '--members',
          membersFlag,
          '--leader',
          'n1',
          '--log-level',
          'warn',
          ...args,
        ],
        { stdio: ['ignore', 'ignore', 'inherit'] },
      )
      const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
      members.push({
        id: spec.id,
        url: spec.url,
        peerUrl: spec.peerUrl,
        role: spec.id === 'n1' ? 'leader' : 'follower',
        child,
        pid: child.pid as number,
        async stop() {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
          await exited
        },
      })
    }
    const leader = members[0] as BenchMember
    const deadline = Date.now() + 30_000
    for (;;) {
      try {
        const res = await fetch(`${leader.url}/v1/cluster`)
        if (res.ok) {
          const view = (await res.json()) as { members: { connected: boolean }[] }
          if (view.members.every((m) => m.connected)) break
        }
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error('the bench cluster did not form in 30 s')
      if (members.some((m) => m.child.exitCode !== null)) throw new Error('a kv-node exited')
      await new Promise((r) => setTimeout(r, 100))
    }
    return { members, leader, followers: members.slice(1), stop: stopAll }
  } catch (err) {
    await stopAll()
    throw err
  }
}
