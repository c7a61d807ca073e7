#!/usr/bin/env node
/**
 * kv-cluster: a local cluster of kv-node processes (single-leader or leaderless), for trying
 * things out.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Agent, request } from 'undici'
import { addMember, addRouter, clusterIdFile, initCerts } from './certs.js'
import { runAddMember, writeLocalClusterInfo } from './kv-cluster-add.js'
import {
  groupNodeArgs,
  routerArgs,
  shardMapFileOf,
  shardedLayout,
  shardedLayoutProblem,
  type LocalGroup,
  type LocalMember,
  type ShardedLayout,
} from './kv-cluster-groups.js'
import {
  regionNodeArgs,
  regionsFileOf,
  regionsLayout,
  regionsLayoutProblem,
  type LocalRegion,
  type RegionsLayout,
} from './kv-cluster-regions.js'
// Types only: offline.ts (and with it the storage package) is loaded for a restore alone.
import type * as Offline from './offline.js'
import type { RestoreTarget } from './offline.js'

const usage = `kv-cluster: run a local cluster of kv-node processes.

Usage: kv-cluster [options] [-- kv-node options...]
       kv-cluster add-member [--data-dir DIR] [--id ID] [--promote]   (see add-member --help)

  --mode MODE        single-leader (default): n1 is the preferred leader and streams its log
                     to the others; leaderless: any node takes any key, each key is kept on
                     3 nodes of a consistent-hash ring (kv-node --replicas after --)
  --nodes N          members, 1 to 9 (default 3); for leaderless use 5, so that nodes
                     past a key's replicas can stand in for down ones (hinted handoff);
                     with --groups, the members of each group
  --groups N         sharded: N single-leader groups (g1..gN, 1 to 9) of --nodes members
                     each (g1n1, g1n2, ...), the 4,096 hash slots split evenly between them
                     (DIR/shard-map.json, which every node and the router is started with),
                     and one kv-router (r1) in front of them. Member i of group k gets the
                     client port P+10(k-1)+(i-1) and the peer port likewise (g1 on
                     7001-7003, g2 on 7011-7013, ...); every group shares the CA, the
                     cluster id, root's password and the auth secret of DIR/certs
  --router-port P    the router's port with --groups (default: the client port minus 1,
                     7000)
  --regions N        multi-region: N regions (us, eu, ap; 2 or 3) of --nodes single-leader
                     members each (us: n1-n3, eu: n4-n6, ...). Each region takes its own
                     writes and its leader ships them to the other regions; concurrent
                     writes of a key resolve alike everywhere (last writer wins by stamp)
                     and the losers are kept in the conflict record. Member i of region k
                     gets the client port P+10(k-1)+(i-1) and the peer port likewise (us on
                     7001-7003, eu on 7011-7013); one regions file (DIR/regions.json) that
                     every node is started with; the regions share the CA, the cluster id,
                     root's password and the auth secret of DIR/certs
  --host HOST        address to listen on (default 127.0.0.1)
  --client-port P    client port of n1; n2 gets P+1, and so on (default 7001)
  --peer-port P      peer port of n1; n2 gets P+1, and so on (default 7101)
  --resp-port P      RESP (Redis protocol) port of n1; n2 gets P+1, and so on (default:
                     the client port plus 300, 7301; "off" for none; single-leader only;
                     redis-cli --tls --cacert DIR/certs/ca.crt -p 7301, docs/resp.md)
  --data-dir DIR     one data directory per node below DIR, and their logs (default ./data)
  --fresh            delete the nodes' data directories first (the certificates stay)
  --log-archive DIR  n2 (n1 alone in a 1-node cluster) keeps a continuous archive of the
                     committed log in DIR, with base backups (kv-node --archive-dir); a
                     restore can then reach any LSN or moment (docs/backup.md)
  -h, --help         show this help

Restoring a backup into a new cluster:
  --restore-from DIR a backup (kv backup create), or a log archive's directory: every
                     member's data directory is restored from it, each with its own node id
                     and the new cluster's id, before any member starts. The data
                     directories must not hold data (use a new --data-dir)
  --archive DIR      the log archive to replay after the backup (default: --restore-from,
                     when that is an archive)
  --to-lsn N | --to-time ISO8601 | --latest
                     how far to replay the archive (default: the backup itself)

Security is on, as in production: on first start kv-cluster makes the cluster's certificates
in DIR/certs (kv certs init: a CA, one certificate per member, root's client certificate and
root's password in root.password), the members talk mutual TLS, the client ports serve HTTPS,
and every request needs a token or a client certificate.

Ctrl-C (or SIGTERM) stops every node cleanly; a second Ctrl-C kills them.

Growing it while it runs: \`kv-cluster add-member --data-dir DIR [--promote]\` in another
terminal starts one more member (n4, then n5, ...) with --join, on the next ports, and adds it
(kv member add); kv-cluster add-member --help says more.
`

function write(text: string): void {
  process.stdout.write(text)
}

/**
 * Ctrl-C (or SIGTERM) stops every child with SIGTERM, then SIGKILL after 15 s; a second signal
 * kills them at once. `markStopping` tells the children's exit handlers that exits are expected.
 * Returns the stop, for a start-up that fails.
 */
function stopOnSignals(
  children: Map<string, ChildProcess>,
  markStopping: () => void,
  say: { killing: string; stopping: string; stopped: string },
): (signal: NodeJS.Signals) => Promise<void> {
  const stopAll = async (signal: NodeJS.Signals) => {
    markStopping()
    for (const child of children.values()) child.kill(signal)
    const deadline = Date.now() + 15_000
    while (children.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
    for (const child of children.values()) child.kill('SIGKILL')
  }
  let signals = 0
  const onSignal = () => {
    signals++
    if (signals > 1) {
      write(`\n${say.killing}\n`)
      void stopAll('SIGKILL').then(() => process.exit(1))
      return
    }
    write(`\n${say.stopping}\n`)
    void stopAll('SIGTERM').then(() => {
      write(`${say.stopped}\n`)
      process.exit(0)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  return stopAll
}

async function main(): Promise<number> {
  if (process.argv[2] === 'add-member') return runAddMember(process.argv.slice(3))
  let parsed
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        mode: { type: 'string', default: 'single-leader' },
        nodes: { type: 'string', default: '3' },
        groups: { type: 'string' },
        'router-port': { type: 'string' },
        regions: { type: 'string' },
        host: { type: 'string', default: '127.0.0.1' },
        'client-port': { type: 'string', default: '7001' },
        'peer-port': { type: 'string', default: '7101' },
        'resp-port': { type: 'string' },
        'data-dir': { type: 'string', default: './data' },
        fresh: { type: 'boolean', default: false },
        'restore-from': { type: 'string' },
        'log-archive': { type: 'string' },
        archive: { type: 'string' },
        'to-lsn': { type: 'string' },
        'to-time': { type: 'string' },
        latest: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (err) {
    process.stderr.write(`kv-cluster: ${(err as Error).message}\n\n${usage}`)
    return 2
  }
  const { values: opts, positionals: extra } = parsed
  if (opts.help) {
    write(usage)
    return 0
  }
  if (opts.groups !== undefined && opts.regions !== undefined) {
    process.stderr.write(
      'kv-cluster: --groups and --regions do not go together (a region is one single-leader group)\n',
    )
    return 2
  }
  if (opts.groups !== undefined) return runSharded(opts, extra)
  if (opts.regions !== undefined) return runRegions(opts, extra)
  if (opts['router-port'] !== undefined) {
    process.stderr.write('kv-cluster: --router-port goes with --groups\n')
    return 2
  }
  const mode = opts.mode
  if (mode !== 'single-leader' && mode !== 'leaderless') {
    process.stderr.write(`kv-cluster: --mode must be single-leader or leaderless\n\n${usage}`)
    return 2
  }
  const nodes = Number(opts.nodes)
  const clientPort = Number(opts['client-port'])
  const peerPort = Number(opts['peer-port'])
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 9) {
    process.stderr.write('kv-cluster: --nodes must be 1 to 9\n')
    return 2
  }
  const dataDir = resolve(opts['data-dir'])
  const host = opts.host
  const members = Array.from({ length: nodes }, (_, i) => ({
    id: `n${i + 1}`,
    clientUrl: `https://${host}:${clientPort + i}`,
    peerUrl: `https://${host}:${peerPort + i}`,
  }))
  const membersFlag = members.map((m) => `${m.id}@${m.clientUrl}@${m.peerUrl}`).join(',')
  const kvNode = fileURLToPath(new URL('./kv-node.js', import.meta.url))
  const restoring = opts['restore-from'] !== undefined
  // The member that archives: a follower at the start (n1 is the preferred leader).
  const archiver = nodes > 1 ? 'n2' : 'n1'
  if (
    !restoring &&
    (opts.archive !== undefined ||
      opts['to-lsn'] !== undefined ||
      opts['to-time'] !== undefined ||
      opts.latest)
  ) {
    process.stderr.write(
      'kv-cluster: --archive, --to-lsn, --to-time and --latest go with --restore-from\n',
    )
    return 2
  }
  let offline: typeof Offline | null = null
  let target: RestoreTarget | null = null
  if (restoring) {
    if (opts.fresh) {
      process.stderr.write(
        'kv-cluster: --restore-from builds new data directories; it takes no --fresh\n',
      )
      return 2
    }
    offline = await import('./offline.js')
    try {
      target = offline.restoreTarget(opts)
    } catch (err) {
      process.stderr.write(`kv-cluster: ${(err as Error).message}\n`)
      return 2
    }
    // Refuse before anything is made: a restore only ever builds new data directories.
    for (const member of members) {
      const dir = resolve(dataDir, member.id)
      if (existsSync(dir) && readdirSync(dir).length > 0) {
        process.stderr.write(
          `kv-cluster: KV_ERR_DATA_DIR_IN_USE: ${dir} already holds data; restore into a new --data-dir\n`,
        )
        return 1
      }
    }
  }
  mkdirSync(dataDir, { recursive: true })
  // Where the cluster listens, for kv-cluster add-member.
  writeLocalClusterInfo(dataDir, { mode, host, clientPort, peerPort, nodes })
  const certsDir = join(dataDir, 'certs')
  const hosts = host === '127.0.0.1' || host === 'localhost' ? [] : [host]
  if (!existsSync(join(certsDir, 'ca.crt'))) {
    await initCerts({ dir: certsDir, members: members.map((m) => m.id), hosts })
    write(`made the cluster's certificates and root's password in ${certsDir}\n`)
  } else {
    for (const member of members) {
      if (!existsSync(join(certsDir, `${member.id}.crt`)))
        await addMember({ dir: certsDir, memberId: member.id, hosts })
    }
  }
  if (offline !== null && target !== null) {
    // The certificates name the new cluster; every member's data directory gets its id.
    const clusterId = readFileSync(join(certsDir, clusterIdFile), 'utf8').trim()
    const done: string[] = []
    try {
      for (const member of members) {
        const dir = resolve(dataDir, member.id)
        const result = await offline.restoreMember({
          from: resolve(opts['restore-from'] as string),
          archive: opts.archive === undefined ? undefined : resolve(opts.archive),
          target,
          dataDir: dir,
          nodeId: member.id,
          clusterId,
        })
        done.push(dir)
        write(offline.describeRestore(result, member.id))
      }
    } catch (err) {
      // All members or none: a cluster with some members restored and others empty could elect
      // an empty leader.
      for (const dir of done) rmSync(dir, { recursive: true, force: true })
      const coded = err as { code?: unknown; message: string }
      process.stderr.write(
        `kv-cluster: ${typeof coded.code === 'string' && coded.code.startsWith('KV_ERR_') ? `${coded.code}: ` : ''}${coded.message}\n`,
      )
      return 1
    }
    write(
      `restored ${members.length} members of the new cluster ${clusterId} (its certificates are in ${certsDir}); the users, roles and passwords are the backup's (root's client certificate works; ${certsDir}/root.password is root's password only if the backup's root had it)\n`,
    )
  }
  // kv-cluster itself checks on the nodes as root, with root's client certificate.
  const agent = new Agent({
    connect: {
      ca: readFileSync(join(certsDir, 'ca.crt')),
      cert: readFileSync(join(certsDir, 'root.crt')),
      key: readFileSync(join(certsDir, 'root.key')),
    },
  })
  const getJson = async (url: string): Promise<unknown> => {
    const res = await request(url, { dispatcher: agent, headersTimeout: 2000, bodyTimeout: 2000 })
    const body = await res.body.json()
    if (res.statusCode >= 400) throw new Error(`HTTP ${res.statusCode}`)
    return body
  }

  const children = new Map<string, ChildProcess>()
  let stopping = false
  for (const member of members) {
    const dir = resolve(dataDir, member.id)
    if (opts.fresh) rmSync(dir, { recursive: true, force: true })
    const log = createWriteStream(resolve(dataDir, `${member.id}.log`), { flags: 'a' })
    const child = spawn(
      process.execPath,
      [
        kvNode,
        '--id',
        member.id,
        '--data-dir',
        dir,
        '--host',
        host,
        '--members',
        membersFlag,
        '--certs-dir',
        certsDir,
        ...(mode === 'leaderless' ? ['--mode', 'leaderless'] : ['--leader', 'n1']),
        // The RESP front: every member at the same offset from its client port (docs/resp.md).
        ...(mode !== 'leaderless' && opts['resp-port'] !== 'off'
          ? [
              '--resp-port',
              String(
                (opts['resp-port'] === undefined ? clientPort + 300 : Number(opts['resp-port'])) +
                  members.indexOf(member),
              ),
            ]
          : []),
        ...(opts['log-archive'] !== undefined && member.id === archiver
          ? ['--archive-dir', resolve(opts['log-archive'])]
          : []),
        ...extra,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    child.stdout?.pipe(log)
    child.stderr?.pipe(log)
    child.on('exit', (code, signal) => {
      children.delete(member.id)
      if (!stopping) {
        process.stderr.write(
          `kv-cluster: ${member.id} exited (${code ?? signal}); see ${resolve(dataDir, `${member.id}.log`)}\n`,
        )
      }
    })
    children.set(member.id, child)
  }

  const stopAll = stopOnSignals(children, () => (stopping = true), {
    killing: 'killing the nodes',
    stopping: 'stopping the nodes...',
    stopped: 'all nodes stopped',
  })

  // Wait until every node answers, then show the cluster.
  const deadline = Date.now() + 30_000
  const roles = new Map<string, string>()
  for (const member of members) {
    for (;;) {
      if (stopping) return 0
      try {
        roles.set(
          member.id,
          ((await getJson(`${member.clientUrl}/v1/status`)) as { role: string }).role,
        )
        break
      } catch {
        // not up yet
      }
      if (Date.now() > deadline || !children.has(member.id)) {
        process.stderr.write(
          `kv-cluster: ${member.id} did not start; see ${resolve(dataDir, `${member.id}.log`)}\n`,
        )
        await stopAll('SIGTERM')
        return 1
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  if (mode === 'leaderless') {
    await showLeaderless(members, dataDir, certsDir, children, getJson)
    return new Promise<number>(() => {})
  }
  // Then until a leader is elected (a new cluster waits out four election timeouts first: a
  // member with an empty disk may not vote sooner).
  write('waiting for the members to elect a leader...\n')
  while (![...roles.values()].includes('leader') && Date.now() < deadline + 30_000) {
    if (stopping) return 0
    await new Promise((r) => setTimeout(r, 200))
    for (const member of members) {
      try {
        roles.set(
          member.id,
          ((await getJson(`${member.clientUrl}/v1/status`)) as { role: string }).role,
        )
      } catch {
        roles.set(member.id, 'down')
      }
    }
  }
  write(`\nA ${nodes}-node single-leader cluster is running (logs and data in ${dataDir}):\n\n`)
  for (const member of members) {
    write(
      `  ${member.id}  ${(roles.get(member.id) ?? '?').padEnd(8)}  ${member.clientUrl}   (peers: ${member.peerUrl}, pid ${children.get(member.id)?.pid ?? '?'})\n`,
    )
  }
  const first = members[0] as Member
  const last = members[members.length - 1] as Member
  const respBase =
    opts['resp-port'] === 'off'
      ? null
      : opts['resp-port'] === undefined
        ? clientPort + 300
        : Number(opts['resp-port'])
  write(`
Try, in another terminal (every request needs a credential; curl checks the node's
certificate against the cluster's CA):
  curl --cacert ${certsDir}/ca.crt --cert ${certsDir}/root.crt --key ${certsDir}/root.key \\
       -X PUT --data-binary 'hello' ${first.clientUrl}/v1/kv/greeting
  node packages/cli/dist/kv.js login --user root --password-file ${certsDir}/root.password
  node packages/cli/dist/kv.js get greeting --url ${last.clientUrl}
  node packages/cli/dist/kv.js cluster
  kill -9 <pid of the leader>   # a survivor takes over within about two seconds
${
  respBase === null
    ? ''
    : `  redis-cli --tls --cacert ${certsDir}/ca.crt --cert ${certsDir}/root.crt \\
       --key ${certsDir}/root.key -p ${respBase} SET greeting hello   # RESP ports ${respBase}-${respBase + nodes - 1}
`
}
Ctrl-C stops every node cleanly.
`)
  return new Promise<number>(() => {})
}

interface Member {
  id: string
  clientUrl: string
  peerUrl: string
}

/** Prints a started leaderless cluster: each member and its share of the ring, and what to try. */
async function showLeaderless(
  members: Member[],
  dataDir: string,
  certsDir: string,
  children: Map<string, ChildProcess>,
  getJson: (url: string) => Promise<unknown>,
): Promise<void> {
  const first = members[0] as Member
  let view: { replicas?: number; members?: { id: string; share: number }[] } = {}
  try {
    view = (await getJson(`${first.clientUrl}/v1/cluster`)) as typeof view
  } catch {
    // the table below goes without the shares
  }
  const shares = new Map((view.members ?? []).map((m) => [m.id, m.share]))
  write(
    `\nA ${members.length}-node leaderless cluster is running (${view.replicas ?? '?'} replicas per key; logs and data in ${dataDir}):\n\n`,
  )
  for (const member of members) {
    const share = shares.get(member.id)
    write(
      `  ${member.id}  ring ${share === undefined ? '   ?' : `${(share * 100).toFixed(1).padStart(4)}%`}  ${member.clientUrl}   (peers: ${member.peerUrl}, pid ${children.get(member.id)?.pid ?? '?'})\n`,
    )
  }
  const last = members[members.length - 1] as Member
  write(`
Try, in another terminal (every request needs a credential):
  curl --cacert ${certsDir}/ca.crt --cert ${certsDir}/root.crt --key ${certsDir}/root.key \\
       -X PUT --data-binary 'hello' '${first.clientUrl}/v1/kv/greeting?w=quorum'
  node packages/cli/dist/kv.js login --user root --password-file ${certsDir}/root.password
  node packages/cli/dist/kv.js get greeting --url ${last.clientUrl} --json   # value and context
  node packages/cli/dist/kv.js cluster
  kill -9 <pid of a node>   # writes go on (hinted handoff); it catches up when restarted

Ctrl-C stops every node cleanly.
`)
}

/** The options of kv-cluster, as parsed. */
interface ClusterOptions {
  mode: string
  nodes: string
  groups?: string | undefined
  'router-port'?: string | undefined
  regions?: string | undefined
  host: string
  'client-port': string
  'peer-port': string
  'data-dir': string
  fresh: boolean
  'restore-from'?: string | undefined
  'log-archive'?: string | undefined
  archive?: string | undefined
  'to-lsn'?: string | undefined
  'to-time'?: string | undefined
  latest: boolean
}

/** Where kv-router's entry point is: KV_ROUTER_BIN, else packages/router/dist in this workspace. */
function routerBin(): string {
  return (
    process.env.KV_ROUTER_BIN ??
    fileURLToPath(new URL('../../router/dist/main.js', import.meta.url))
  )
}

/**
 * `kv-cluster --groups N`: N single-leader groups behind one kv-router, as kv-cluster-groups.ts
 * lays them out. Stays in the foreground like kv-cluster; Ctrl-C stops every process.
 */
async function runSharded(opts: ClusterOptions, extra: string[]): Promise<number> {
  const usageError = (text: string) => {
    process.stderr.write(`kv-cluster: ${text}\n`)
    return 2
  }
  if (opts.mode !== 'single-leader')
    return usageError('--groups starts single-leader groups; it takes no --mode leaderless')
  for (const name of ['restore-from', 'log-archive', 'archive', 'to-lsn', 'to-time'] as const)
    if (opts[name] !== undefined) return usageError(`--groups takes no --${name}`)
  if (opts.latest) return usageError('--groups takes no --latest')
  const clientPort = Number(opts['client-port'])
  const layoutOptions = {
    groups: Number(opts.groups),
    nodes: Number(opts.nodes),
    host: opts.host,
    clientPort,
    peerPort: Number(opts['peer-port']),
    routerPort: opts['router-port'] === undefined ? clientPort - 1 : Number(opts['router-port']),
  }
  const problem = shardedLayoutProblem(layoutOptions)
  if (problem !== null) return usageError(problem)
  const layout = shardedLayout(layoutOptions)
  const host = opts.host
  const dataDir = resolve(opts['data-dir'])
  const members = layout.groups.flatMap((g) => g.members)
  mkdirSync(dataDir, { recursive: true })

  // The shard map every node and the router start with. A data directory made for another
  // layout would start its groups with claims that overlap: refused, unless --fresh.
  const shardMapFile = join(dataDir, 'shard-map.json')
  const mapText = `${JSON.stringify(shardMapFileOf(layout), null, 2)}\n`
  if (
    existsSync(shardMapFile) &&
    readFileSync(shardMapFile, 'utf8') !== mapText &&
    !opts.fresh &&
    members.some((m) => existsSync(join(dataDir, m.id)))
  ) {
    process.stderr.write(
      `kv-cluster: ${shardMapFile} describes another layout than --groups ${layout.groups.length} --nodes ${opts.nodes} on these ports, and its groups hold data; use --fresh (it deletes the groups' data) or another --data-dir\n`,
    )
    return 1
  }
  writeFileSync(shardMapFile, mapText)
  writeLocalClusterInfo(dataDir, {
    mode: 'single-leader',
    host,
    clientPort,
    peerPort: layoutOptions.peerPort,
    nodes: layoutOptions.nodes,
    groups: layout.groups.length,
  })

  // One CA, cluster id, root password and auth secret for every group, and the router's
  // certificate (kv://<cluster>/router/r1).
  const certsDir = join(dataDir, 'certs')
  const hosts = host === '127.0.0.1' || host === 'localhost' ? [] : [host]
  if (!existsSync(join(certsDir, 'ca.crt'))) {
    await initCerts({
      dir: certsDir,
      members: members.map((m) => m.id),
      routers: [layout.router.id],
      hosts,
    })
    write(`made the deployment's certificates and root's password in ${certsDir}\n`)
  } else {
    for (const member of members)
      if (!existsSync(join(certsDir, `${member.id}.crt`)))
        await addMember({ dir: certsDir, memberId: member.id, hosts })
    if (!existsSync(join(certsDir, `${layout.router.id}.crt`)))
      await addRouter({ dir: certsDir, routerId: layout.router.id, hosts })
  }
  const agent = new Agent({
    connect: {
      ca: readFileSync(join(certsDir, 'ca.crt')),
      cert: readFileSync(join(certsDir, 'root.crt')),
      key: readFileSync(join(certsDir, 'root.key')),
    },
  })
  const getJson = async (url: string): Promise<unknown> => {
    const res = await request(url, { dispatcher: agent, headersTimeout: 2000, bodyTimeout: 2000 })
    const body = await res.body.json()
    if (res.statusCode >= 400) throw new Error(`HTTP ${res.statusCode}`)
    return body
  }

  const kvNode = fileURLToPath(new URL('./kv-node.js', import.meta.url))
  const children = new Map<string, ChildProcess>()
  let stopping = false
  const start = (name: string, args: string[]) => {
    const logPath = resolve(dataDir, `${name}.log`)
    const log = createWriteStream(logPath, { flags: 'a' })
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child.stdout?.pipe(log)
    child.stderr?.pipe(log)
    child.on('exit', (code, signal) => {
      children.delete(name)
      if (!stopping)
        process.stderr.write(`kv-cluster: ${name} exited (${code ?? signal}); see ${logPath}\n`)
    })
    children.set(name, child)
  }
  for (const group of layout.groups) {
    for (const member of group.members) {
      const dir = resolve(dataDir, member.id)
      if (opts.fresh) rmSync(dir, { recursive: true, force: true })
      start(member.id, [
        kvNode,
        ...groupNodeArgs({ group, member, dataDir: dir, host, certsDir, shardMapFile }),
        ...extra,
      ])
    }
  }
  // The router package may be missing from an installation (or not built yet): the groups
  // still run, and each is reached directly.
  const router = routerBin()
  const withRouter = existsSync(router)
  if (withRouter)
    start(layout.router.id, [router, ...routerArgs({ layout, certsDir, shardMapFile })])
  else
    process.stderr.write(
      `kv-cluster: no kv-router at ${router} (build packages/router, or set KV_ROUTER_BIN); the groups run without a router\n`,
    )

  const stopAll = stopOnSignals(children, () => (stopping = true), {
    killing: 'killing every process',
    stopping: 'stopping the router and the nodes...',
    stopped: 'all stopped',
  })

  // Every node answers, then every group has a leader, then the router is ready.
  const deadline = Date.now() + 60_000
  const roles = new Map<string, string>()
  const roleOf = async (url: string) =>
    ((await getJson(`${url}/v1/status`)) as { role: string }).role
  const answered = await awaitMembers(members, {
    deadline,
    roles,
    children,
    dataDir,
    roleOf,
    stopping: () => stopping,
  })
  if (answered === 'stopping') return 0
  if (answered === 'failed') {
    await stopAll('SIGTERM')
    return 1
  }
  write('waiting for every group to elect a leader...\n')
  const leaderless = (g: LocalGroup) => !g.members.some((m) => roles.get(m.id) === 'leader')
  while (layout.groups.some(leaderless) && Date.now() < deadline + 30_000) {
    if (stopping) return 0
    await new Promise((r) => setTimeout(r, 200))
    for (const member of members) {
      try {
        roles.set(member.id, await roleOf(member.clientUrl))
      } catch {
        roles.set(member.id, 'down')
      }
    }
  }
  let routerState = withRouter ? 'starting' : 'not started'
  if (withRouter) {
    while (Date.now() < deadline + 45_000 && children.has(layout.router.id)) {
      if (stopping) return 0
      try {
        await getJson(`${layout.router.url}/ready`)
        routerState = 'ready'
        break
      } catch {
        await new Promise((r) => setTimeout(r, 200))
      }
    }
    if (routerState !== 'ready')
      process.stderr.write(
        `kv-cluster: the router is not ready; see ${resolve(dataDir, `${layout.router.id}.log`)}\n`,
      )
  }
  showSharded(layout, { dataDir, certsDir, shardMapFile, roles, children, routerState })
  return new Promise<number>(() => {})
}

/** Prints a started sharded deployment: each group's members and slots, the router, what to try. */
function showSharded(
  layout: ShardedLayout,
  o: {
    dataDir: string
    certsDir: string
    shardMapFile: string
    roles: Map<string, string>
    children: Map<string, ChildProcess>
    routerState: string
  },
): void {
  const nodes = layout.groups[0]?.members.length ?? 0
  write(
    `\n${layout.groups.length} groups of ${nodes} single-leader nodes are running behind a kv-router (shard map ${o.shardMapFile}; logs and data in ${o.dataDir}):\n\n`,
  )
  for (const group of layout.groups) {
    write(`  ${group.id}  slots ${group.slots}\n`)
    for (const member of group.members)
      write(
        `    ${member.id.padEnd(6)} ${(o.roles.get(member.id) ?? '?').padEnd(8)}  ${member.clientUrl}   (peers: ${member.peerUrl}, pid ${o.children.get(member.id)?.pid ?? '?'})\n`,
      )
  }
  write(
    `  router ${layout.router.id}  ${o.routerState.padEnd(8)}  ${layout.router.url}   (pid ${o.children.get(layout.router.id)?.pid ?? '-'})\n`,
  )
  const entry =
    o.routerState === 'not started' ? layout.groups[0]?.members[0]?.clientUrl : layout.router.url
  const tls = `--cacert ${o.certsDir}/ca.crt --cert ${o.certsDir}/root.crt --key ${o.certsDir}/root.key`
  write(`
Try, in another terminal (every request needs a credential; root's client certificate works
on every group and on the router):
  curl ${tls} \\
       -X PUT --data-binary 'hello' ${entry}/v1/kv/greeting
  export KV_CACERT=${o.certsDir}/ca.crt KV_CERT=${o.certsDir}/root.crt KV_KEY=${o.certsDir}/root.key
  node packages/cli/dist/kv.js get greeting --url ${entry}
  node packages/cli/dist/kv.js shard map --shard-map ${o.shardMapFile}
  node packages/cli/dist/kv.js shard move --slots 0-99 --to g2 --wait --shard-map ${o.shardMapFile}
  node packages/cli/dist/kv.js shard status --shard-map ${o.shardMapFile}

Ctrl-C stops every process cleanly.
`)
}

/** What kv-cluster reads of GET /v1/regions (the leader's answer). */
interface RegionsAnswer {
  region: string
  leader: boolean
  shipping: { to: string; state: string; lagEntries: number; lagMs: number }[]
}

/**
 * `kv-cluster --regions N`: N regions of single-leader members sharing one CA and one regions
 * file, as kv-cluster-regions.ts lays them out. Stays in the foreground like kv-cluster; Ctrl-C
 * stops every process.
 */
async function runRegions(opts: ClusterOptions, extra: string[]): Promise<number> {
  const usageError = (text: string) => {
    process.stderr.write(`kv-cluster: ${text}\n`)
    return 2
  }
  if (opts.mode !== 'single-leader')
    return usageError('--regions starts single-leader regions; it takes no --mode leaderless')
  if (opts['router-port'] !== undefined) return usageError('--router-port goes with --groups')
  for (const name of ['restore-from', 'log-archive', 'archive', 'to-lsn', 'to-time'] as const)
    if (opts[name] !== undefined) return usageError(`--regions takes no --${name}`)
  if (opts.latest) return usageError('--regions takes no --latest')
  const layoutOptions = {
    regions: Number(opts.regions),
    nodes: Number(opts.nodes),
    host: opts.host,
    clientPort: Number(opts['client-port']),
    peerPort: Number(opts['peer-port']),
  }
  const problem = regionsLayoutProblem(layoutOptions)
  if (problem !== null) return usageError(problem)
  const layout = regionsLayout(layoutOptions)
  const host = opts.host
  const dataDir = resolve(opts['data-dir'])
  const members = layout.regions.flatMap((r) => r.members)
  mkdirSync(dataDir, { recursive: true })

  // The regions file every node starts with. A data directory made for another layout would
  // start its regions with members that disagree with their logs: refused, unless --fresh.
  const regionsFile = join(dataDir, 'regions.json')
  const fileText = `${JSON.stringify(regionsFileOf(layout), null, 2)}\n`
  if (
    existsSync(regionsFile) &&
    readFileSync(regionsFile, 'utf8') !== fileText &&
    !opts.fresh &&
    members.some((m) => existsSync(join(dataDir, m.id)))
  ) {
    process.stderr.write(
      `kv-cluster: ${regionsFile} describes another layout than --regions ${layout.regions.length} --nodes ${opts.nodes} on these ports, and its regions hold data; use --fresh (it deletes the regions' data) or another --data-dir\n`,
    )
    return 1
  }
  if (
    !existsSync(regionsFile) &&
    !opts.fresh &&
    existsSync(join(dataDir, 'kv-cluster.json')) &&
    members.some((m) => existsSync(join(dataDir, m.id)))
  ) {
    process.stderr.write(
      `kv-cluster: ${dataDir} holds another kind of cluster (it has no regions.json); use --fresh (it deletes the nodes' data) or another --data-dir\n`,
    )
    return 1
  }
  writeFileSync(regionsFile, fileText)
  writeLocalClusterInfo(dataDir, {
    mode: 'single-leader',
    host,
    clientPort: layoutOptions.clientPort,
    peerPort: layoutOptions.peerPort,
    nodes: layoutOptions.nodes,
    regions: layout.regions.map((r) => r.id),
  })

  // One CA, cluster id, root password and auth secret for every region: a member of one region
  // is then a known peer to the others (their region-peer calls use member certificates).
  const certsDir = join(dataDir, 'certs')
  const hosts = host === '127.0.0.1' || host === 'localhost' ? [] : [host]
  if (!existsSync(join(certsDir, 'ca.crt'))) {
    await initCerts({ dir: certsDir, members: members.map((m) => m.id), hosts })
    write(`made the deployment's certificates and root's password in ${certsDir}\n`)
  } else {
    for (const member of members)
      if (!existsSync(join(certsDir, `${member.id}.crt`)))
        await addMember({ dir: certsDir, memberId: member.id, hosts })
  }
  const getJson = rootGetJson(certsDir)

  const kvNode = fileURLToPath(new URL('./kv-node.js', import.meta.url))
  const children = new Map<string, ChildProcess>()
  let stopping = false
  for (const region of layout.regions) {
    for (const member of region.members) {
      const dir = resolve(dataDir, member.id)
      if (opts.fresh) rmSync(dir, { recursive: true, force: true })
      const logPath = resolve(dataDir, `${member.id}.log`)
      const log = createWriteStream(logPath, { flags: 'a' })
      const child = spawn(
        process.execPath,
        [
          kvNode,
          ...regionNodeArgs({ region, member, dataDir: dir, host, certsDir, regionsFile }),
          ...extra,
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      )
      child.stdout?.pipe(log)
      child.stderr?.pipe(log)
      child.on('exit', (code, signal) => {
        children.delete(member.id)
        if (!stopping)
          process.stderr.write(
            `kv-cluster: ${member.id} exited (${code ?? signal}); see ${logPath}\n`,
          )
      })
      children.set(member.id, child)
    }
  }
  const stopAll = stopOnSignals(children, () => (stopping = true), {
    killing: 'killing the nodes',
    stopping: 'stopping the nodes...',
    stopped: 'all nodes stopped',
  })

  // Every node answers, then every region has a leader, then every leader ships.
  const deadline = Date.now() + 60_000
  const roles = new Map<string, string>()
  const roleOf = async (url: string) =>
    ((await getJson(`${url}/v1/status`)) as { role: string }).role
  const answered = await awaitMembers(members, {
    deadline,
    roles,
    children,
    dataDir,
    roleOf,
    stopping: () => stopping,
  })
  if (answered === 'stopping') return 0
  if (answered === 'failed') {
    await stopAll('SIGTERM')
    return 1
  }
  write('waiting for every region to elect a leader...\n')
  const leaderOf = (r: LocalRegion) => r.members.find((m) => roles.get(m.id) === 'leader')
  while (layout.regions.some((r) => leaderOf(r) === undefined) && Date.now() < deadline + 30_000) {
    if (stopping) return 0
    await new Promise((r) => setTimeout(r, 200))
    for (const member of members) {
      try {
        roles.set(member.id, await roleOf(member.clientUrl))
      } catch {
        roles.set(member.id, 'down')
      }
    }
  }
  // Each leader connects to the other regions (it asks each where to resume) within a moment.
  const shipping = new Map<string, RegionsAnswer['shipping']>()
  const streaming = () =>
    layout.regions.every((r) => {
      const s = shipping.get(r.id)
      return (
        s !== undefined &&
        s.length === layout.regions.length - 1 &&
        s.every((x) => x.state === 'streaming')
      )
    })
  const shipDeadline = Date.now() + 15_000
  while (!streaming() && Date.now() < shipDeadline) {
    if (stopping) return 0
    for (const region of layout.regions) {
      const leader = leaderOf(region)
      if (leader === undefined) continue
      try {
        shipping.set(
          region.id,
          ((await getJson(`${leader.clientUrl}/v1/regions`)) as RegionsAnswer).shipping,
        )
      } catch {
        // asked again below
      }
    }
    if (!streaming()) await new Promise((r) => setTimeout(r, 200))
  }
  showRegions(layout, { dataDir, certsDir, regionsFile, roles, children, shipping })
  return new Promise<number>(() => {})
}

/** Prints a started multi-region deployment: each region's members and shipping, what to try. */
function showRegions(
  layout: RegionsLayout,
  o: {
    dataDir: string
    certsDir: string
    regionsFile: string
    roles: Map<string, string>
    children: Map<string, ChildProcess>
    shipping: Map<string, RegionsAnswer['shipping']>
  },
): void {
  const nodes = layout.regions[0]?.members.length ?? 0
  write(
    `\n${layout.regions.length} regions of ${nodes} single-leader nodes are running (regions file ${o.regionsFile}; logs and data in ${o.dataDir}):\n\n`,
  )
  for (const region of layout.regions) {
    const ships = o.shipping.get(region.id) ?? []
    const shipText =
      ships.length === 0
        ? 'shipping: not known yet'
        : ships
            .map((s) => `to ${s.to} ${s.state} (lag ${s.lagEntries} entries, ${s.lagMs} ms)`)
            .join(', ')
    write(`  ${region.id}  ${shipText}\n`)
    for (const member of region.members)
      write(
        `    ${member.id.padEnd(4)} ${(o.roles.get(member.id) ?? '?').padEnd(8)}  ${member.clientUrl}   (peers: ${member.peerUrl}, pid ${o.children.get(member.id)?.pid ?? '?'})\n`,
      )
  }
  const [first, second] = layout.regions as [LocalRegion, LocalRegion]
  const urlOf = (r: LocalRegion) => (r.members[0] as LocalMember).clientUrl
  // curl does not follow KV_ERR_NOT_LEADER (kv does): give it the region's leader.
  const leaderUrlOf = (r: LocalRegion) =>
    (r.members.find((m) => o.roles.get(m.id) === 'leader') ?? (r.members[0] as LocalMember))
      .clientUrl
  const tls = `--cacert ${o.certsDir}/ca.crt --cert ${o.certsDir}/root.crt --key ${o.certsDir}/root.key`
  write(`
Try, in another terminal (every request needs a credential; root's client certificate works
in every region). Each region takes writes at its own leader; its leader ships them to the
others:
  curl ${tls} \\
       -X PUT --data-binary 'hello from ${first.id}' ${leaderUrlOf(first)}/v1/kv/greeting
  export KV_CACERT=${o.certsDir}/ca.crt KV_CERT=${o.certsDir}/root.crt KV_KEY=${o.certsDir}/root.key
  node packages/cli/dist/kv.js get greeting --url ${urlOf(second)}      # shipped to ${second.id}
  node packages/cli/dist/kv.js regions --url ${urlOf(first)}            # shipping, cursors, lag, conflicts
Two writes of one key at once, one in each region: both are acknowledged, one wins in every
region (the later stamp), and the other is kept in the conflict record:
  node packages/cli/dist/kv.js put cart ${first.id}-apples --url ${urlOf(first)} & \\
  node packages/cli/dist/kv.js put cart ${second.id}-pears --url ${urlOf(second)} & wait
  node packages/cli/dist/kv.js conflicts --url ${urlOf(second)}
  node packages/cli/dist/kv.js cluster --url ${urlOf(second)}           # members, and lag to ${first.id}

Ctrl-C stops every node cleanly.
`)
}

/** GET as root (its client certificate), JSON; throws on a failure or an error status. */
function rootGetJson(certsDir: string): (url: string) => Promise<unknown> {
  const agent = new Agent({
    connect: {
      ca: readFileSync(join(certsDir, 'ca.crt')),
      cert: readFileSync(join(certsDir, 'root.crt')),
      key: readFileSync(join(certsDir, 'root.key')),
    },
  })
  return async (url: string): Promise<unknown> => {
    const res = await request(url, { dispatcher: agent, headersTimeout: 2000, bodyTimeout: 2000 })
    const body = await res.body.json()
    if (res.statusCode >= 400) throw new Error(`HTTP ${res.statusCode}`)
    return body
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`kv-cluster: ${(err as Error).message}\n`)
    process.exit(1)
  },
)

/**
 * Waits until every member answers `/v1/status` (its role goes into `roles`): `failed` when one
 * exits or the deadline passes (named on stderr, with its log), `stopping` on a signal.
 */
async function awaitMembers(
  members: readonly { id: string; clientUrl: string }[],
  o: {
    deadline: number
    roles: Map<string, string>
    children: Map<string, ChildProcess>
    dataDir: string
    roleOf: (clientUrl: string) => Promise<string>
    stopping: () => boolean
  },
): Promise<'ok' | 'failed' | 'stopping'> {
  for (const member of members) {
    for (;;) {
      if (o.stopping()) return 'stopping'
      try {
        o.roles.set(member.id, await o.roleOf(member.clientUrl))
        break
      } catch {
        // not up yet
      }
      if (Date.now() > o.deadline || !o.children.has(member.id)) {
        process.stderr.write(
          `kv-cluster: ${member.id} did not start; see ${resolve(o.dataDir, `${member.id}.log`)}\n`,
        )
        return 'failed'
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  return 'ok'
}
