/**
 * The docker backend: N containers of the node image (scripts/docker-build.sh makes
 * kvstore-node:local) on one user network, started with testcontainers. Each node advertises a
 * client URL on 127.0.0.1 with the same port published, so the runner and the SDK reach every
 * node; peers talk over the container network.
 *
 * Faults: kill (docker kill, SIGKILL), restart (docker start, same container and data), pause
 * (docker pause, the cgroup freezer), and network faults made with iptables inside each
 * container's network namespace, entered from the host with nsenter: partitions drop packets
 * to and from the other side's addresses; loss uses the statistic match. heal() flushes every
 * rule.
 */
import { execFile, execFileSync } from 'node:child_process'
import { createServer } from 'node:net'
import { promisify } from 'node:util'
import { waitForLeader, type ChaosCluster, type ChaosNode } from './cluster.js'

const run = promisify(execFile)

process.env.TESTCONTAINERS_RYUK_DISABLED ??= 'true'

/** Containers this runner started and has not removed: removed at exit, even on Ctrl-C. */
const live = new Set<string>()
function removeLive(): void {
  if (live.size === 0) return
  try {
    execFileSync('docker', ['rm', '-f', '-v', ...live], { stdio: 'ignore' })
  } catch {
    // best effort
  }
  live.clear()
}
process.once('exit', removeLive)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    removeLive()
    process.exit(130)
  })
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
    })
  })
}

export interface DockerClusterOptions {
  nodes: number
  image?: string
  /** Extra environment for every node (KV_* options, test-only switches). */
  env?: Record<string, string>
}

interface Member extends ChaosNode {
  port: number
  containerId: string
  running: boolean
}

async function docker(...args: string[]): Promise<string> {
  const { stdout } = await run('docker', args, { maxBuffer: 64 * 1024 * 1024 })
  return stdout.trim()
}

export class DockerCluster implements ChaosCluster {
  readonly backend = 'docker' as const
  readonly nodes: Member[]
  private readonly networkName: string
  private readonly stopNetwork: () => Promise<unknown>

  private constructor(nodes: Member[], networkName: string, stopNetwork: () => Promise<unknown>) {
    this.nodes = nodes
    this.networkName = networkName
    this.stopNetwork = stopNetwork
  }

  static async start(options: DockerClusterOptions): Promise<DockerCluster> {
    const image = options.image ?? 'kvstore-node:local'
    try {
      await docker('image', 'inspect', image)
    } catch {
      throw new Error(
        `the image ${image} is missing: build it with bash scripts/docker-build.sh (no registry needed)`,
      )
    }
    const { GenericContainer, Network, Wait } = await import('testcontainers')
    const network = await new Network().start()
    const ids = Array.from({ length: options.nodes }, (_, i) => `n${i + 1}`)
    const ports: number[] = []
    while (ports.length < ids.length) {
      const p = await freePort()
      if (!ports.includes(p)) ports.push(p)
    }
    const members = ids
      .map((id, i) => `${id}@http://127.0.0.1:${ports[i]}@http://${id}:7101`)
      .join(',')
    const nodes: Member[] = []
    try {
      await Promise.all(
        ids.map(async (id, i) => {
          const port = ports[i] as number
          const container = await new GenericContainer(image)
            .withNetwork(network)
            .withNetworkAliases(id)
            .withHostname(id)
            .withEnvironment({
              KV_NODE_ID: id,
              KV_MEMBERS: members,
              KV_LEADER: 'n1',
              KV_PORT: String(port),
              ...options.env,
            })
            .withExposedPorts({ container: port, host: port })
            .withWaitStrategy(Wait.forHttp('/ready', port).withStartupTimeout(60_000))
            .start()
          live.add(container.getId())
          nodes[i] = {
            id,
            url: `http://127.0.0.1:${port}`,
            port,
            containerId: container.getId(),
            running: true,
          }
        }),
      )
    } catch (err) {
      await Promise.all(nodes.map((n) => docker('rm', '-f', n.containerId).catch(() => {})))
      await network.stop().catch(() => {})
      throw err
    }
    const cluster = new DockerCluster(nodes, network.getName(), () => network.stop())
    await waitForLeader(cluster)
    return cluster
  }

  private member(id: string): Member {
    const m = this.nodes.find((n) => n.id === id)
    if (!m) throw new Error(`no node ${id}`)
    return m
  }

  isRunning(id: string): boolean {
    return this.member(id).running
  }

  async kill(id: string): Promise<void> {
    const m = this.member(id)
    if (!m.running) return
    await docker('unpause', m.containerId).catch(() => {})
    await docker('kill', '--signal', 'KILL', m.containerId)
    m.running = false
  }

  async start(id: string): Promise<void> {
    const m = this.member(id)
    if (m.running) return
    await docker('start', m.containerId)
    m.running = true
    const deadline = Date.now() + 30_000
    for (;;) {
      try {
        const res = await fetch(`${m.url}/ready`, { signal: AbortSignal.timeout(500) })
        if (res.ok) return
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`${id} did not come back in 30 s`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  async pause(id: string): Promise<void> {
    const m = this.member(id)
    if (m.running) await docker('pause', m.containerId)
  }

  async resume(id: string): Promise<void> {
    const m = this.member(id)
    if (m.running) await docker('unpause', m.containerId).catch(() => {})
  }

  private async pidOf(m: Member): Promise<number> {
    return Number(await docker('inspect', '-f', '{{.State.Pid}}', m.containerId))
  }

  private async ipOf(m: Member): Promise<string> {
    return docker(
      'inspect',
      '-f',
      `{{(index .NetworkSettings.Networks "${this.networkName}").IPAddress}}`,
      m.containerId,
    )
  }

  /** Runs iptables inside a node's network namespace. */
  private async iptables(m: Member, ...args: string[]): Promise<void> {
    const pid = await this.pidOf(m)
    if (!pid) return
    await run('nsenter', ['-t', String(pid), '-n', 'iptables', '-w', ...args])
  }

  async cutLinks(links: [string, string][]): Promise<void> {
    for (const [a, b] of links) {
      const ma = this.member(a)
      const mb = this.member(b)
      if (!ma.running || !mb.running) continue
      const [ipA, ipB] = await Promise.all([this.ipOf(ma), this.ipOf(mb)])
      await this.iptables(ma, '-A', 'INPUT', '-s', ipB, '-j', 'DROP')
      await this.iptables(ma, '-A', 'OUTPUT', '-d', ipB, '-j', 'DROP')
      await this.iptables(mb, '-A', 'INPUT', '-s', ipA, '-j', 'DROP')
      await this.iptables(mb, '-A', 'OUTPUT', '-d', ipA, '-j', 'DROP')
    }
  }

  async partition(groups: string[][]): Promise<void> {
    const links: [string, string][] = []
    for (let i = 0; i < groups.length; i++)
      for (let j = i + 1; j < groups.length; j++)
        for (const a of groups[i] as string[])
          for (const b of groups[j] as string[]) links.push([a, b])
    await this.cutLinks(links)
  }

  async loss(ids: string[], probability: number): Promise<void> {
    for (const id of ids) {
      const m = this.member(id)
      if (!m.running) continue
      for (const peer of this.nodes) {
        if (peer.id === id || !peer.running) continue
        const ip = await this.ipOf(peer)
        await this.iptables(
          m,
          '-A',
          'INPUT',
          '-s',
          ip,
          '-m',
          'statistic',
          '--mode',
          'random',
          '--probability',
          String(probability),
          '-j',
          'DROP',
        )
      }
    }
  }

  async heal(): Promise<void> {
    for (const m of this.nodes) {
      if (!m.running) continue
      await this.resume(m.id)
      await this.iptables(m, '-F', 'INPUT')
      await this.iptables(m, '-F', 'OUTPUT')
    }
  }

  /** The logs of every node, for the report. */
  async logs(): Promise<Record<string, string>> {
    const out: Record<string, string> = {}
    for (const m of this.nodes) {
      try {
        const { stdout, stderr } = await run('docker', ['logs', m.containerId], {
          maxBuffer: 256 * 1024 * 1024,
        })
        out[m.id] = stdout + stderr
      } catch (err) {
        out[m.id] = String(err)
      }
    }
    return out
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (m) => {
        await docker('rm', '-f', '-v', m.containerId).catch(() => {})
        live.delete(m.containerId)
      }),
    )
    await this.stopNetwork().catch(() => {})
  }
}
