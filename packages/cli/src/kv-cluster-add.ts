/**
 * `kv-cluster add-member`: one more member for a local cluster that `kv-cluster` runs. Like
 * kv-cluster itself it stays in the foreground, supervising the one node it started; Ctrl-C
 * stops that node (it stays a member: `kv member remove ID` takes it out).
 *
 * It reads where the cluster listens from DIR/kv-cluster.json (kv-cluster writes it), makes the
 * member's certificate with the CA in DIR/certs, starts kv-node with --join on the member's
 * ports (n4 on the client and peer ports after n3's, and so on), asks the cluster to add it
 * (POST /admin/v1/members, through the SDK, which finds the leader) and, with --promote, waits
 * for it to catch up and makes it a voter. Run again with the id of a member it added before, it
 * starts that member's node again (its data directory holds its configuration).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { KvClient, KvError, type Membership, type NewMember } from '@kvstore/client'
import { addMember } from './certs.js'
import { membersTable, parseDuration } from './member-command.js'

export const addMemberUsage = `kv-cluster add-member: add one more member to a running local cluster.

Usage: kv-cluster add-member [--data-dir DIR] [--id ID] [--promote [--timeout DURATION]]
                             [-- kv-node options...]

  --data-dir DIR     the running cluster's directory (default ./data); where it listens is
                     read from DIR/kv-cluster.json, which kv-cluster writes
  --id ID            the new member's id (default: the first of n1, n2, ... that is neither
                     a member nor removed); its ports follow n1's: nK gets the client port
                     and the peer port of n1 plus K-1
  --promote          single-leader: wait for the new member to catch up (a learner), then
                     make it a voter (kv member promote ID does it later)
  --timeout DURATION how long --promote waits (default 10m; 90s, 10m, 1h)
  -h, --help         show this help

It makes the member's certificate with the CA in DIR/certs (kv certs add-member), starts
kv-node --join for it (data in DIR/ID, log in DIR/ID.log), asks the cluster to add it (kv member
add) and stays in the foreground like kv-cluster: Ctrl-C stops the node, which stays a member
(kv member remove ID takes it out). Run it again with --id ID to start a member it added
before. kv-cluster itself starts only the members it was started with.
`

/** What kv-cluster records in DIR/kv-cluster.json for add-member. */
export interface LocalClusterInfo {
  mode: 'single-leader' | 'leaderless'
  host: string
  clientPort: number
  peerPort: number
  nodes: number
  /** Groups of a sharded deployment (kv-cluster --groups), which add-member does not grow. */
  groups?: number
  /** Regions of a multi-region deployment (kv-cluster --regions), which add-member does not grow. */
  regions?: string[]
}

export const localClusterFile = 'kv-cluster.json'

export function writeLocalClusterInfo(dataDir: string, info: LocalClusterInfo): void {
  writeFileSync(join(dataDir, localClusterFile), `${JSON.stringify(info, null, 2)}\n`)
}

function say(text: string): void {
  process.stdout.write(text)
}

function fail(text: string): number {
  process.stderr.write(`kv-cluster add-member: ${text}\n`)
  return 1
}

/** The next free nK: neither a member nor removed. */
function nextId(view: Membership): string {
  const taken = new Set([...view.members.map((m) => m.id), ...view.removed])
  for (let k = 1; ; k++) if (!taken.has(`n${k}`)) return `n${k}`
}

/** Runs `kv-cluster add-member ARGS`; resolves with the exit status once the node stopped. */
export async function runAddMember(argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        'data-dir': { type: 'string', default: './data' },
        id: { type: 'string' },
        promote: { type: 'boolean', default: false },
        timeout: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (err) {
    process.stderr.write(`kv-cluster add-member: ${(err as Error).message}\n\n${addMemberUsage}`)
    return 2
  }
  const { values: opts, positionals: extra } = parsed
  if (opts.help) {
    say(addMemberUsage)
    return 0
  }
  let timeoutMs: number
  try {
    if (opts.timeout !== undefined && !opts.promote)
      throw new Error('--timeout goes with --promote')
    timeoutMs = parseDuration(opts.timeout ?? '10m')
  } catch (err) {
    process.stderr.write(`kv-cluster add-member: ${(err as Error).message}\n`)
    return 2
  }
  const dataDir = resolve(opts['data-dir'])
  const certsDir = join(dataDir, 'certs')
  const infoPath = join(dataDir, localClusterFile)
  if (!existsSync(infoPath) || !existsSync(join(certsDir, 'ca.crt')))
    return fail(
      `${dataDir} holds no cluster that kv-cluster started (no ${localClusterFile} or certs/ca.crt); start one with kv-cluster --data-dir ${opts['data-dir']}`,
    )
  const info = JSON.parse(readFileSync(infoPath, 'utf8')) as LocalClusterInfo
  if (info.groups !== undefined)
    return fail(
      `${dataDir} holds a sharded deployment (kv-cluster --groups ${info.groups}); add-member grows one group of an unsharded cluster only`,
    )
  if (info.regions !== undefined)
    return fail(
      `${dataDir} holds a multi-region deployment (regions ${info.regions.join(', ')}); add-member grows a single cluster only (a region's members must match the regions file)`,
    )
  const seeds = Array.from(
    { length: info.nodes },
    (_, i) => `https://${info.host}:${info.clientPort + i}`,
  )
  const client = new KvClient({
    url: seeds,
    tls: {
      ca: readFileSync(join(certsDir, 'ca.crt')),
      cert: readFileSync(join(certsDir, 'root.crt')),
      key: readFileSync(join(certsDir, 'root.key')),
    },
  })
  let child: ChildProcess | null = null
  /** The member is in the configuration: a failure from now on leaves its node running. */
  let added = false
  /** Ctrl-C, or a failure, is stopping the node (its exit is expected). */
  let stopping = false
  try {
    const before = await client.members()
    const id = opts.id ?? nextId(before)
    if (before.removed.includes(id))
      return fail(`${id} was removed from the cluster and is never let back in; use another --id`)
    const existing = before.members.find((m) => m.id === id)
    let spec: NewMember
    if (existing !== undefined) {
      spec = { id, clientUrl: existing.clientUrl, peerUrl: existing.peerUrl }
    } else {
      const k = /^n([1-9][0-9]*)$/.exec(id)
      const offset = k
        ? Number(k[1]) - 1
        : Math.max(
            info.nodes - 1,
            ...before.members.map((m) => Number(new URL(m.clientUrl).port) - info.clientPort),
          ) + 1
      spec = {
        id,
        clientUrl: `https://${info.host}:${info.clientPort + offset}`,
        peerUrl: `https://${info.host}:${info.peerPort + offset}`,
      }
      const clash = before.members.find((m) =>
        [m.clientUrl, m.peerUrl].some((u) => u === spec.clientUrl || u === spec.peerUrl),
      )
      if (clash !== undefined)
        return fail(`${spec.clientUrl} or ${spec.peerUrl} is ${clash.id}'s; choose another --id`)
    }
    if (!existsSync(join(certsDir, `${id}.crt`))) {
      const hosts = info.host === '127.0.0.1' || info.host === 'localhost' ? [] : [info.host]
      await addMember({ dir: certsDir, memberId: id, hosts })
      say(`made ${id}'s certificate in ${certsDir}\n`)
    }

    // Start the node: it reaches the cluster through --members and waits to be added.
    const members = [...before.members.filter((m) => m.id !== id), spec]
    const membersFlag = members.map((m) => `${m.id}@${m.clientUrl}@${m.peerUrl}`).join(',')
    const logPath = join(dataDir, `${id}.log`)
    const log = createWriteStream(logPath, { flags: 'a' })
    const kvNode = fileURLToPath(new URL('./kv-node.js', import.meta.url))
    const started = spawn(
      process.execPath,
      [
        kvNode,
        '--id',
        id,
        '--data-dir',
        join(dataDir, id),
        '--host',
        info.host,
        '--members',
        membersFlag,
        '--certs-dir',
        certsDir,
        '--join',
        ...(info.mode === 'leaderless' ? ['--mode', 'leaderless'] : []),
        ...extra,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    child = started
    started.stdout?.pipe(log)
    started.stderr?.pipe(log)
    const exited = new Promise<number>((done) =>
      started.on('exit', (code, signal) => {
        if (!stopping)
          process.stderr.write(`kv-cluster: ${id} exited (${code ?? signal}); see ${logPath}\n`)
        done(code ?? (signal === 'SIGTERM' ? 0 : 1))
      }),
    )
    const stop = () => {
      if (stopping) {
        started.kill('SIGKILL')
        return
      }
      stopping = true
      say(`\nstopping ${id} (it stays a member; kv member remove ${id} takes it out)...\n`)
      started.kill('SIGTERM')
    }
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
    say(
      `started ${id} (pid ${started.pid ?? '?'}) on ${spec.clientUrl} (peers: ${spec.peerUrl}); log in ${logPath}\n`,
    )

    // Wait until it answers, then add it (and promote it).
    const deadline = Date.now() + 30_000
    for (;;) {
      if (stopping || started.exitCode !== null)
        return fail(`${id} stopped before it was added; see ${logPath}`)
      if (await client.ready(spec.clientUrl)) break
      if ((await client.status(spec.clientUrl).catch(() => null)) !== null) break
      if (Date.now() > deadline) {
        stop()
        await exited
        return fail(`${id} did not start within 30 s; see ${logPath}`)
      }
      await new Promise((r) => setTimeout(r, 200))
    }
    let view: Membership
    if (existing === undefined) {
      view = (await client.addMember(spec)).membership
      added = true
      say(
        info.mode === 'single-leader'
          ? `added ${id} as a learner: it catches up from the leader by snapshot and log\n`
          : `added ${id}: it joins the ring\n`,
      )
    } else {
      view = before
      added = true
      say(`${id} is already a ${existing.role}: started its node again\n`)
    }
    const role = view.members.find((m) => m.id === id)?.role
    if (opts.promote && info.mode === 'single-leader' && role !== 'voter') {
      say(`waiting for ${id} to catch up, then promoting it...\n`)
      const t0 = Date.now()
      view = (
        await client.promoteMember(id, {
          timeoutMs,
          onProgress: (p) =>
            say(
              `  ${id}: ${p.lagEntries ?? '?'} entries behind${p.connected === false ? ', not connected yet' : ''} (${Math.round((Date.now() - t0) / 1000)} s)\n`,
            ),
        })
      ).membership
      say(`${id} is a voter\n`)
    }
    say(`\n${membersTable(await client.members().catch(() => view))}`)
    say(`
${
  role === 'learner' && !opts.promote && info.mode === 'single-leader'
    ? `Promote it once it has caught up (kv member list shows its lag):
  node packages/cli/dist/kv.js member promote ${id} --cacert ${certsDir}/ca.crt --cert ${certsDir}/root.crt --key ${certsDir}/root.key --url ${seeds.join(',')}
`
    : ''
}Another member: kv-cluster add-member --data-dir ${opts['data-dir']} (in another terminal).
Ctrl-C stops ${id}; it stays a member until kv member remove ${id}.
`)
    await client.close()
    return await exited
  } catch (err) {
    if (err instanceof KvError) {
      const details = Object.entries(err.details)
        .filter(([name]) => name !== 'url')
        .map(([name, value]) => `${name}=${String(value)}`)
        .join(' ')
      process.stderr.write(
        `kv-cluster add-member: ${err.code}: ${err.message}${details ? ` (${details})` : ''}\n`,
      )
    } else process.stderr.write(`kv-cluster add-member: ${(err as Error).message}\n`)
    const node = child
    if (node !== null && node.exitCode === null) {
      const gone = new Promise<void>((done) => node.on('exit', () => done()))
      if (added) {
        // A member now (a learner not caught up, say): its node keeps running for a retry.
        process.stderr.write(
          `the node stays up as a member (pid ${node.pid ?? '?'}); retry with kv member, or Ctrl-C to stop it\n`,
        )
      } else {
        process.stderr.write('stopping the node, which was not added; run this again to retry\n')
        stopping = true
        node.kill('SIGTERM')
      }
      await gone
    }
    return 1
  } finally {
    await client.close()
  }
}
