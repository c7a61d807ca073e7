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
 *
 * Membership changes: `join(id)` starts a new container of the same image on the same network
 * (alias `id`, an empty data directory, KV_JOIN, KV_MEMBERS naming the nodes now and itself,
 * a new published port); `retire(id)` kills a removed member's container and drops it from
 * `nodes` (the container stays until `stop()`, for its logs). In leaderless mode a joined node
 * is not ready until it is added to the ring, so `join` waits for /health instead.
 *
 * The image is `options.image`, else $KV_CHAOS_IMAGE, else kvstore-node:local.
 *
 * Leaderless mode (`leaderless: true`): the same image, with the mode and its options as
 * command-line arguments (`args`, appended to the image's kv-node entrypoint) and no
 * preferred leader; the cluster is up once every node is ready.
 */
import { execFile, execFileSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { StartedNetwork } from 'testcontainers'
import {
  freePort,
  waitForLeader,
  waitReady,
  type ChaosCluster,
  type ChaosNode,
  type MemberSpec,
} from './cluster.js'
import { DelayProxy } from './delay-proxy.js'
import { atExit } from './node-process.js'
import type { ChaosSecurity } from './security.js'

const run = promisify(execFile)

/** Runs a command with `input` on its stdin. */
function withInput(command: string, args: string[], input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, (err, _stdout, stderr) =>
      err ? reject(new Error(`${command} ${args.join(' ')}: ${stderr || err.message}`)) : resolve(),
    )
    child.stdin?.end(input)
  })
}

/** Every node's peer URL: its network alias, port 7101 inside the container. */
const peerUrlOf = (id: string) => `https://${id}:7101`
/** A --members entry: the client URL on the host (the published port), the peer URL inside. */
const memberText = (id: string, port: number) => `${id}@https://127.0.0.1:${port}@${peerUrlOf(id)}`

process.env.TESTCONTAINERS_RYUK_DISABLED ??= 'true'

/**
 * Containers and networks this runner made and has not removed: removed at exit, even on
 * Ctrl-C.
 */
const live = new Set<string>()
const liveNetworks = new Set<string>()
function removeLive(): void {
  try {
    if (live.size > 0) execFileSync('docker', ['rm', '-f', '-v', ...live], { stdio: 'ignore' })
    if (liveNetworks.size > 0)
      execFileSync('docker', ['network', 'rm', ...liveNetworks], { stdio: 'ignore' })
  } catch {
    // best effort
  }
  live.clear()
  liveNetworks.clear()
}
atExit(removeLive)

export interface DockerClusterOptions {
  nodes: number
  image?: string
  /** Extra environment for every node (KV_* options, test-only switches). */
  env?: Record<string, string>
  /** Extra kv-node arguments for every node (the image's entrypoint is kv-node). */
  args?: string[]
  /** The nodes run in leaderless mode: no preferred leader, no leader to wait for. */
  leaderless?: boolean
  /** The cluster's certificates (copied into every container) and root's credentials. */
  security: ChaosSecurity
  /** This member archives its log (`--archive-dir /data/archive`) for the archive-restore check. */
  archiveOn?: string
}

interface Member extends ChaosNode {
  port: number
  containerId: string
  running: boolean
}

/**
 * Where the archiving member keeps its archive inside its container: outside the data directory
 * (/data, which a node refuses to archive into), somewhere its unprivileged user may write.
 */
const containerArchiveDir = '/tmp/kv-archive'

/** [table, chain, the built-in chain that jumps to it]: where fault rules go. */
const faultChains = [
  ['filter', 'KV_CHAOS_IN', 'INPUT'],
  ['filter', 'KV_CHAOS_OUT', 'OUTPUT'],
  ['nat', 'KV_CHAOS_NAT', 'OUTPUT'],
] as const

async function docker(...args: string[]): Promise<string> {
  const { stdout } = await run('docker', args, { maxBuffer: 64 * 1024 * 1024 })
  return stdout.trim()
}

export class DockerCluster implements ChaosCluster {
  readonly backend = 'docker' as const
  readonly nodes: Member[]
  readonly tls: ChaosSecurity['tls']
  private readonly networkName: string
  private readonly networkId: string
  private readonly stopNetwork: () => Promise<unknown>
  private readonly network: StartedNetwork
  private readonly options: DockerClusterOptions
  private readonly image: string
  /** Members removed and stopped (retire): out of `nodes`; their containers stay for the logs. */
  private readonly retired: Member[] = []
  /** Delay proxies of the slow links now in place. */
  private proxies: DelayProxy[] = []
  /** The member that archives its log, if any. */
  private archiveOn: string | undefined
  /** Local copies of the archive, removed on stop. */
  private archiveCopies: string[] = []

  private constructor(
    nodes: Member[],
    network: { name: string; id: string; stop: () => Promise<unknown>; started: StartedNetwork },
    options: DockerClusterOptions,
    image: string,
  ) {
    this.nodes = nodes
    this.tls = options.security.tls
    this.networkName = network.name
    this.networkId = network.id
    this.stopNetwork = network.stop
    this.network = network.started
    this.options = options
    this.image = image
    this.archiveOn = options.archiveOn
  }

  static async start(options: DockerClusterOptions): Promise<DockerCluster> {
    const image = options.image ?? process.env.KV_CHAOS_IMAGE ?? 'kvstore-node:local'
    try {
      await docker('image', 'inspect', image)
    } catch {
      throw new Error(
        `the image ${image} is missing: build it with bash scripts/docker-build.sh (no registry needed)`,
      )
    }
    const { Network } = await import('testcontainers')
    const network = await new Network().start()
    liveNetworks.add(network.getId())
    const ids = Array.from({ length: options.nodes }, (_, i) => `n${i + 1}`)
    const ports: number[] = []
    while (ports.length < ids.length) {
      const p = await freePort()
      if (!ports.includes(p)) ports.push(p)
    }
    const cluster = new DockerCluster(
      [],
      {
        name: network.getName(),
        id: network.getId(),
        stop: () => network.stop(),
        started: network,
      },
      options,
      image,
    )
    const members = ids.map((id, i) => memberText(id, ports[i] as number)).join(',')
    const started: Member[] = []
    try {
      await Promise.all(
        ids.map(async (id, i) => {
          started[i] = await cluster.startContainer(id, ports[i] as number, {
            KV_MEMBERS: members,
            ...(options.leaderless ? {} : { KV_LEADER: 'n1' }),
          })
        }),
      )
      cluster.nodes.push(...started)
    } catch (err) {
      cluster.nodes.push(...started.filter((m) => m !== undefined))
      await cluster.stop()
      throw err
    }
    if (!options.leaderless) await waitForLeader(cluster)
    return cluster
  }

  /**
   * Creates and starts node `id`'s container on the cluster's network, its client port
   * published as the same port on the host, and resolves once it is ready. `env` gives its
   * members (and the preferred leader, or KV_JOIN).
   */
  private async startContainer(
    id: string,
    port: number,
    env: Record<string, string>,
    waitPath: '/ready' | '/health' = '/ready',
  ): Promise<Member> {
    const { GenericContainer, Wait } = await import('testcontainers')
    const options = this.options
    let container = new GenericContainer(this.image)
      .withNetwork(this.network)
      .withNetworkAliases(id)
      .withHostname(id)
      .withEnvironment({
        KV_NODE_ID: id,
        KV_PORT: String(port),
        KV_CERTS_DIR: '/certs',
        ...env,
        ...options.env,
      })
      // The node runs as an unprivileged user: its certificate and key are copied in
      // readable by it (the files on the host stay 0600).
      .withCopyFilesToContainer(
        ['ca.crt', `${id}.crt`, `${id}.key`, 'root.password'].map((file) => ({
          source: join(options.security.certsDir, file),
          target: `/certs/${file}`,
          mode: 0o444,
        })),
      )
      .withExposedPorts({ container: port, host: port })
      .withWaitStrategy(
        Wait.forHttp(waitPath, port).usingTls().allowInsecure().withStartupTimeout(60_000),
      )
    const args = [
      ...(options.args ?? []),
      ...(options.archiveOn === id
        ? ['--archive-dir', containerArchiveDir, '--archive-segment-ms', '200']
        : []),
    ]
    if (args.length > 0) container = container.withCommand(args)
    const started = await container.start()
    live.add(started.getId())
    return {
      id,
      url: `https://127.0.0.1:${port}`,
      port,
      containerId: started.getId(),
      running: true,
    }
  }

  async join(id: string): Promise<MemberSpec> {
    if ([...this.nodes, ...this.retired].some((n) => n.id === id)) {
      throw new Error(`${id} was a member of this cluster already: a new member needs a new id`)
    }
    let port = await freePort()
    while (this.nodes.some((n) => n.port === port)) port = await freePort()
    const members = [...this.nodes.map((n) => memberText(n.id, n.port)), memberText(id, port)]
    // Leaderless: the new node is not ready until it is added to the ring; it serves
    // /health once it has started.
    const m = await this.startContainer(
      id,
      port,
      { KV_MEMBERS: members.join(','), KV_JOIN: 'true' },
      this.options.leaderless === true ? '/health' : '/ready',
    )
    this.nodes.push(m)
    return { id, clientUrl: m.url, peerUrl: peerUrlOf(id) }
  }

  async retire(id: string): Promise<void> {
    const m = this.member(id)
    await this.kill(id)
    this.nodes.splice(this.nodes.indexOf(m), 1)
    this.retired.push(m)
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
    await waitReady(m, 30_000)
  }

  async pause(id: string): Promise<void> {
    const m = this.member(id)
    if (!m.running) return
    // runc's cgroup freezer gives up with "unable to freeze" when a task of the container does
    // not stop in time (seen in CI on a machine with heavy I/O wait); the container is left
    // running, so the pause is tried again, up to 5 times, before the error is the nemesis's.
    for (let attempt = 1; ; attempt++) {
      try {
        await docker('pause', m.containerId)
        return
      } catch (err) {
        if (attempt >= 5 || !/unable to freeze/.test((err as Error).message)) throw err
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
    }
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

  /**
   * The chains every fault rule goes in, so that healing flushes exactly those: the
   * container's own rules (Docker's embedded DNS lives in its nat OUTPUT chain) stay.
   * Created on first use in each network namespace (a restarted container has a new one).
   */
  private async chains(m: Member): Promise<void> {
    for (const [table, chain, parent] of faultChains) {
      await this.iptables(m, '-t', table, '-N', chain).catch(() => {})
      const jumps = await this.iptables(m, '-t', table, '-C', parent, '-j', chain).then(
        () => true,
        () => false,
      )
      if (!jumps) await this.iptables(m, '-t', table, '-I', parent, '-j', chain)
    }
  }

  /** Adds one fault rule to `chain` (KV_CHAOS_IN, KV_CHAOS_OUT or KV_CHAOS_NAT). */
  private async rule(m: Member, chain: string, ...args: string[]): Promise<void> {
    await this.chains(m)
    const table = chain === 'KV_CHAOS_NAT' ? 'nat' : 'filter'
    await this.iptables(m, '-t', table, '-A', chain, ...args)
  }

  /**
   * Cuts the links at once rather than one rule at a time: every namespace's chains, process
   * and addresses are looked up first, then each node gets all of its DROP rules in one
   * iptables-restore (in parallel), so a partition lands within one such call and nodes do not
   * see it build up link by link over seconds.
   */
  async cutLinks(links: [string, string][]): Promise<void> {
    const live = links.filter(([a, b]) => this.member(a).running && this.member(b).running)
    const involved = [...new Set(live.flat())].map((id) => this.member(id))
    const ip = new Map<string, string>()
    const pid = new Map<string, number>()
    await Promise.all(
      involved.map(async (m) => {
        await this.chains(m)
        ip.set(m.id, await this.ipOf(m))
        pid.set(m.id, await this.pidOf(m))
      }),
    )
    const rules = new Map<string, string[]>()
    const add = (id: string, line: string) => rules.set(id, [...(rules.get(id) ?? []), line])
    for (const [a, b] of live) {
      for (const [self, peer] of [
        [a, b],
        [b, a],
      ] as const) {
        add(self, `-A KV_CHAOS_IN -s ${ip.get(peer)} -j DROP`)
        add(self, `-A KV_CHAOS_OUT -d ${ip.get(peer)} -j DROP`)
      }
    }
    await Promise.all(
      [...rules].map(async ([id, lines]) => {
        const p = pid.get(id)
        if (!p) return
        await withInput(
          'nsenter',
          ['-t', String(p), '-n', 'iptables-restore', '-w', '--noflush'],
          `*filter\n${lines.join('\n')}\nCOMMIT\n`,
        )
      }),
    )
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
        await this.rule(
          m,
          'KV_CHAOS_IN',
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

  /**
   * Slows every link of the given nodes by `delayMs` each way. Inside each end's network
   * namespace, new peer connections are redirected (DNAT) to a delay proxy this runner runs on
   * the network's gateway, and the connections already open are reset so that the nodes
   * reconnect through it.
   */
  async slow(ids: string[], delayMs: number): Promise<void> {
    const gateway = await docker(
      'network',
      'inspect',
      '-f',
      '{{(index .IPAM.Config 0).Gateway}}',
      this.networkName,
    )
    const ipOf = new Map<string, string>()
    for (const m of this.nodes) if (m.running) ipOf.set(m.id, await this.ipOf(m))
    const proxyTo = new Map<string, DelayProxy>()
    const proxyFor = async (id: string) => {
      let proxy = proxyTo.get(id)
      if (!proxy) {
        proxy = await DelayProxy.start(
          gateway,
          { host: ipOf.get(id) as string, port: 7101 },
          delayMs,
        )
        proxyTo.set(id, proxy)
        this.proxies.push(proxy)
      }
      return proxy
    }
    const done = new Set<string>()
    for (const id of ids) {
      for (const peer of this.nodes) {
        if (peer.id === id || !ipOf.has(peer.id) || !ipOf.has(id)) continue
        const link = [id, peer.id].sort().join('|')
        if (done.has(link)) continue
        done.add(link)
        for (const [from, to] of [
          [id, peer.id],
          [peer.id, id],
        ] as const) {
          const fromNode = this.member(from)
          const toIp = ipOf.get(to) as string
          const proxy = await proxyFor(to)
          await this.rule(
            fromNode,
            'KV_CHAOS_NAT',
            '-p',
            'tcp',
            '-d',
            toIp,
            '--dport',
            '7101',
            '-j',
            'DNAT',
            '--to-destination',
            `${gateway}:${proxy.port}`,
          )
          // Reset what is already open on the direct path, both the connections this end
          // dialed (to the peer port) and the ones it accepted (from its own).
          for (const port of ['--dport', '--sport']) {
            await this.rule(
              fromNode,
              'KV_CHAOS_OUT',
              ...['-p', 'tcp', '-d', toIp, port, '7101'],
              ...['-j', 'REJECT', '--reject-with', 'tcp-reset'],
            )
          }
        }
      }
    }
  }

  async heal(): Promise<void> {
    for (const m of this.nodes) {
      if (!m.running) continue
      await this.resume(m.id)
      for (const [table, chain] of faultChains) {
        await this.iptables(m, '-t', table, '-F', chain).catch(() => {})
      }
    }
    // Cut the slowed connections: the nodes reconnect directly.
    const proxies = this.proxies
    this.proxies = []
    await Promise.all(proxies.map((p) => p.close()))
  }

  /** The logs of every node, for the report. */
  async logs(): Promise<Record<string, string>> {
    const out: Record<string, string> = {}
    for (const m of [...this.nodes, ...this.retired]) {
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

  async archive(): Promise<{ node: string; dir: string } | null> {
    if (this.archiveOn === undefined) return null
    const m = this.member(this.archiveOn)
    const copy = await mkdtemp(join(tmpdir(), 'kv-chaos-archive-'))
    this.archiveCopies.push(copy)
    // docker cp reads a stopped or running container alike.
    await docker('cp', `${m.containerId}:${containerArchiveDir}`, join(copy, 'archive'))
    return { node: m.id, dir: join(copy, 'archive') }
  }

  async stop(): Promise<void> {
    for (const copy of this.archiveCopies) await rm(copy, { recursive: true, force: true })
    this.archiveCopies = []
    await Promise.all(this.proxies.map((p) => p.close()))
    this.proxies = []
    await Promise.all(
      [...this.nodes, ...this.retired].map(async (m) => {
        await docker('rm', '-f', '-v', m.containerId).catch(() => {})
        live.delete(m.containerId)
      }),
    )
    await this.stopNetwork().catch(() => {})
    liveNetworks.delete(this.networkId)
  }
}
