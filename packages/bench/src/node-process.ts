/** Starts kv-node processes for benchmarks (the built dist, as a user runs it). */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { BenchSecurity } from './security.js'

export const kvNodeBin = fileURLToPath(new URL('../../cli/dist/kv-node.js', import.meta.url))

export interface BenchNode {
  child: ChildProcess
  pid: number
  url: string
  stop(): Promise<void>
}

export async function startBenchNode(args: string[], security: BenchSecurity): Promise<BenchNode> {
  const child = spawn(
    process.execPath,
    [kvNodeBin, '--port', '0', '--log-level', 'info', ...security.nodeArgs(false), ...args],
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
  /** In a single-leader cluster, as last seen by waitForLeader; 'replica' when leaderless. */
  role: 'leader' | 'follower' | 'replica'
}

export interface BenchCluster {
  members: BenchMember[]
  leader: BenchMember
  followers: BenchMember[]
  /** kill -9 one member (and wait for it to exit). */
  kill(id: string): Promise<void>
  /** Starts a stopped member again, on the same data directory and ports. */
  restart(id: string): Promise<void>
  /** Waits until one member leads and can take writes; updates `leader`, `followers` and roles. */
  waitForLeader(timeoutMs?: number): Promise<BenchMember>
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

/** Every cluster node started here and still running: killed if the bench itself stops. */
const running = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const child of running) child.kill('SIGKILL')
    process.exit(130)
  })
}

/**
 * Ports, member specs and a spawner for an `n`-node cluster on 127.0.0.1; `modeArgs` go to
 * every node before `args`. A member's stop sends SIGTERM, and SIGKILL after 15 s.
 */
async function clusterProcesses(
  dataDir: string,
  n: number,
  modeArgs: string[],
  args: string[],
  security: BenchSecurity,
) {
  const ports: number[] = []
  while (ports.length < 2 * n) {
    const port = await freePort()
    if (!ports.includes(port)) ports.push(port)
  }
  const specs = Array.from({ length: n }, (_, i) => ({
    id: `n${i + 1}`,
    url: `${security.scheme}://127.0.0.1:${ports[i]}`,
    peerUrl: `${security.scheme}://127.0.0.1:${ports[n + i]}`,
  }))
  const membersFlag = specs.map((m) => `${m.id}@${m.url}@${m.peerUrl}`).join(',')
  const spawnMember = (spec: (typeof specs)[number]): BenchMember => {
    const child = spawn(
      process.execPath,
      [
        kvNodeBin,
        ...modeArgs,
        '--id',
        spec.id,
        '--data-dir',
        `${dataDir}/${spec.id}`,
        '--members',
        membersFlag,
        '--log-level',
        'warn',
        ...security.nodeArgs(true),
        ...args,
      ],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    )
    running.add(child)
    const exited = new Promise<void>((resolve) =>
      child.on('exit', () => {
        running.delete(child)
        resolve()
      }),
    )
    return {
      id: spec.id,
      url: spec.url,
      peerUrl: spec.peerUrl,
      role: 'follower',
      child,
      pid: child.pid as number,
      async stop() {
        if (child.exitCode !== null || child.signalCode !== null) return
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
        await exited
        clearTimeout(timer)
      },
    }
  }
  return { specs, spawnMember }
}

/** Waits until a member answers GET /ready with 200 (it fails if the process exits). */
async function waitReady(member: BenchMember, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (member.child.exitCode !== null || member.child.signalCode !== null) {
      throw new Error(`${member.id} exited while starting`)
    }
    try {
      const res = await fetch(`${member.url}/ready`, { signal: AbortSignal.timeout(500) })
      await res.arrayBuffer()
      if (res.ok) return
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`${member.id} was not ready within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/**
 * Starts an `n`-node leaderless cluster on 127.0.0.1 (`args` name the replicas and the like)
 * and resolves once every member is ready.
 */
export async function startLeaderlessBenchCluster(
  dataDir: string,
  n: number,
  security: BenchSecurity,
  args: string[] = [],
): Promise<{ members: BenchMember[]; stop(): Promise<void> }> {
  const { specs, spawnMember } = await clusterProcesses(
    dataDir,
    n,
    ['--mode', 'leaderless'],
    args,
    security,
  )
  const members: BenchMember[] = []
  const stop = async () => {
    await Promise.all(members.map((m) => m.stop()))
  }
  try {
    for (const spec of specs) members.push({ ...spawnMember(spec), role: 'replica' })
    for (const member of members) await waitReady(member)
    return { members, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

interface ClusterView {
  leaderId: string | null
  writable: boolean
  members: { id: string; connected: boolean }[]
}

async function viewOf(url: string): Promise<ClusterView | null> {
  try {
    const res = await fetch(`${url}/v1/cluster`, { signal: AbortSignal.timeout(1000) })
    return res.ok ? ((await res.json()) as ClusterView) : null
  } catch {
    return null
  }
}

/**
 * Starts an `n`-node single-leader cluster on 127.0.0.1 (n1 is the preferred leader), and
 * resolves once a leader is elected and every member is connected to it.
 */
export async function startBenchCluster(
  dataDir: string,
  n: number,
  security: BenchSecurity,
  args: string[] = [],
): Promise<BenchCluster> {
  const { specs, spawnMember } = await clusterProcesses(
    dataDir,
    n,
    ['--leader', 'n1'],
    args,
    security,
  )
  const members: BenchMember[] = []
  const stopAll = async () => {
    await Promise.all(members.map((m) => m.stop()))
  }
  const cluster: BenchCluster = {
    members,
    leader: undefined as unknown as BenchMember,
    followers: [],
    async kill(id) {
      const member = members.find((m) => m.id === id) as BenchMember
      const exited = new Promise<void>((resolve) => {
        if (member.child.exitCode !== null || member.child.signalCode !== null) resolve()
        else member.child.once('exit', () => resolve())
      })
      member.child.kill('SIGKILL')
      await exited
    },
    async restart(id) {
      const index = members.findIndex((m) => m.id === id)
      members[index] = spawnMember(specs[index] as (typeof specs)[number])
    },
    async waitForLeader(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs
      for (;;) {
        const running = members.filter(
          (m) => m.child.exitCode === null && m.child.signalCode === null,
        )
        const views = await Promise.all(running.map((m) => viewOf(m.url)))
        const leaderIndex = views.findIndex((v) => v?.writable === true)
        const leader = running[leaderIndex]
        if (
          leader !== undefined &&
          views.every((v) => v?.leaderId === leader.id) &&
          running.every((m) => views[leaderIndex]?.members.find((x) => x.id === m.id)?.connected)
        ) {
          for (const m of members) m.role = m.id === leader.id ? 'leader' : 'follower'
          cluster.leader = leader
          cluster.followers = members.filter((m) => m.id !== leader.id)
          return leader
        }
        if (Date.now() > deadline) throw new Error(`no leader within ${timeoutMs} ms`)
        await new Promise((r) => setTimeout(r, 20))
      }
    },
    stop: stopAll,
  }
  try {
    for (const spec of specs) members.push(spawnMember(spec))
    await cluster.waitForLeader()
    return cluster
  } catch (err) {
    await stopAll()
    throw err
  }
}
