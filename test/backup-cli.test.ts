/**
 * Backups and restore end to end, with the built commands on a real 3-node cluster (TLS, auth):
 *
 * - `kv backup create --to DIR` streams a follower's backup (POST /admin/v1/backups), `kv backup
 *   verify DIR` checks it, and its digest is the member's GET /v1/digest at that LSN;
 * - on a backup (the one `kv backup create` made, and one made offline from a stopped member's
 *   data directory with storage's writeBackup, which needs no route): a flipped byte makes
 *   `kv backup verify` exit 1 with KV_ERR_BACKUP_CORRUPT; `kv restore` into a new directory
 *   prints the backup's digest; into a running node's data directory it fails with
 *   KV_ERR_DATA_DIR_IN_USE; `kv-cluster --restore-from` starts a cluster that serves the
 *   restored keys and whose GET /v1/digest is the backup's.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { Store, writeBackup } from '@kvstore/storage'
import { TestCluster, kvBin, kvClusterBin } from '@kvstore/testkit'
import { rootEnv, rootTls } from './support/certs.js'
import { clusterPorts } from './support/ports.js'

let cluster: TestCluster
let client: KvClient
let dir: string
const keys = 120

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-backup-cli-'))
  cluster = await TestCluster.start(3)
  client = new KvClient({ url: cluster.leader.url, ...rootTls() })
  for (let i = 0; i < keys; i++) await client.put(`shop/${i}`, `item ${i}`)
  await client.batch([
    { op: 'put', key: 'shop/batch', value: 'b' },
    { op: 'delete', key: 'shop/0' },
  ])
  await cluster.waitForApplied()
}, 60_000)
afterAll(async () => {
  await client?.close()
  await cluster?.stop()
  await rm(dir, { recursive: true, force: true })
})

/** Runs a built command with `args` as root (its client certificate), within 60 s. */
function run(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv = rootEnv(),
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      { env: { PATH: process.env.PATH, ...env }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1
        resolve({ code, out: stdout, err: stderr })
      },
    )
  })
}

const kv = (args: string[]) => run(kvBin, args)

/** Every check a backup must pass; `digest` is the state's digest at the backup's LSN. */
async function checkBackup(backup: string, digest: string, name: string): Promise<void> {
  // Offline verification recomputes the digest.
  const verified = await kv(['--json', 'backup', 'verify', backup])
  expect(verified.err, verified.err).toBe('')
  expect(verified.code).toBe(0)
  expect(JSON.parse(verified.out)).toMatchObject({ ok: true, digest, keys })

  // A flipped byte is found.
  const flipped = join(dir, `${name}-flipped`)
  await cp(backup, flipped, { recursive: true })
  const file = (await readdir(flipped)).find((n) => n.startsWith('state-')) as string
  const bytes = await readFile(join(flipped, file))
  bytes[bytes.length >> 1] = (bytes[bytes.length >> 1] as number) ^ 0x40
  await writeFile(join(flipped, file), bytes)
  const corrupt = await kv(['backup', 'verify', flipped])
  expect(corrupt.code).toBe(1)
  expect(corrupt.err).toMatch(/^kv: KV_ERR_BACKUP_CORRUPT: /)

  // A restore into a new directory has the backup's digest.
  const restored = await kv([
    'restore',
    '--from',
    backup,
    '--data-dir',
    join(dir, `${name}-restored`),
    '--node-id',
    'n2',
  ])
  expect(restored.err, restored.err).toBe('')
  expect(restored.code).toBe(0)
  expect(restored.out).toContain(`digest        ${digest}`)
  expect(restored.out).toMatch(/must name cluster id kv-[0-9a-f]{32}/)

  // Never into a running node's data directory.
  const inUse = await kv(['restore', '--from', backup, '--data-dir', cluster.leader.dataDir])
  expect(inUse.code).toBe(1)
  expect(inUse.err).toMatch(/^kv: KV_ERR_DATA_DIR_IN_USE: /)

  // A new cluster from the backup serves its keys, with its digest on every member.
  const base = join(dir, `${name}-cluster`)
  const { client: clientPort, peer: peerPort } = await clusterPorts(3)
  let printed = ''
  const child: ChildProcess = spawn(
    process.execPath,
    [
      kvClusterBin,
      '--restore-from',
      backup,
      '--data-dir',
      base,
      '--client-port',
      String(clientPort),
      '--peer-port',
      String(peerPort),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  child.stdout?.on('data', (c: Buffer) => (printed += c.toString()))
  child.stderr?.on('data', (c: Buffer) => (printed += c.toString()))
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  try {
    const deadline = Date.now() + 90_000
    while (!printed.includes('Ctrl-C stops every node cleanly')) {
      if (Date.now() > deadline || child.exitCode !== null)
        throw new Error(`kv-cluster --restore-from did not start the cluster:\n${printed}`)
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(printed).toMatch(/restored 3 members of the new cluster kv-[0-9a-f]{32}/)
    expect(printed.split(`digest        ${digest}`).length - 1).toBe(3)
    const certs = join(base, 'certs')
    const restoredClient = new KvClient({
      url: `https://127.0.0.1:${clientPort}`,
      tls: {
        ca: await readFile(join(certs, 'ca.crt')),
        cert: await readFile(join(certs, 'root.crt')),
        key: await readFile(join(certs, 'root.key')),
      },
    })
    try {
      expect((await restoredClient.get('shop/7'))?.value.toString()).toBe('item 7')
      expect((await restoredClient.get('shop/batch'))?.value.toString()).toBe('b')
      expect(await restoredClient.get('shop/0')).toBeNull()
      for (let i = 0; i < 3; i++) {
        const url = `https://127.0.0.1:${clientPort + i}`
        expect((await restoredClient.digest(url)).digest, url).toBe(digest)
      }
      // The new cluster takes writes.
      await restoredClient.put('shop/after-restore', 'yes')
      // And the CLI reads it with the new cluster's CA and root's certificate.
      const got = await run(kvBin, ['--url', `https://127.0.0.1:${clientPort}`, 'get', 'shop/7'], {
        KV_CACERT: join(certs, 'ca.crt'),
        KV_CERT: join(certs, 'root.crt'),
        KV_KEY: join(certs, 'root.key'),
        KV_CREDENTIALS: join(certs, 'no-such-credentials.json'),
      })
      expect(got.out).toBe('item 7')
    } finally {
      await restoredClient.close()
    }
  } finally {
    child.kill('SIGTERM')
    await exited
  }

  // kv-cluster refuses data directories that hold data.
  const again = await run(kvClusterBin, ['--restore-from', backup, '--data-dir', base])
  expect(again.code).toBe(1)
  expect(again.err).toMatch(/KV_ERR_DATA_DIR_IN_USE/)
}

it('kv backup create streams a follower backup whose digest is the member state at that LSN', async () => {
  const backup = join(dir, 'streamed')
  const created = await kv([
    '--url',
    cluster.leader.url,
    '--json',
    'backup',
    'create',
    '--to',
    backup,
  ])
  expect(created.err, created.err).toBe('')
  expect(created.code).toBe(0)
  const result = JSON.parse(created.out) as {
    member: string
    role: string
    fallback: string | null
    lsn: number
    digest: string
    keys: number
  }
  expect(result.role).toBe('follower')
  expect(result.fallback).toBeNull()
  expect(cluster.followers.map((m) => m.id)).toContain(result.member)
  expect(result.keys).toBe(keys)
  // No writes since: the member's digest is at the backup's LSN.
  const member = await cluster.digest(result.member)
  expect(member.appliedLsn).toBe(result.lsn)
  expect(result.digest).toBe(member.digest)
  const printed = await kv(['--url', cluster.member(result.member).url, 'digest'])
  expect(JSON.parse(printed.out)).toMatchObject({ digest: result.digest })
  await checkBackup(backup, result.digest, 'streamed')
})

it('a backup of a stopped member passes the same checks (no backup route needed)', async () => {
  const leaderDigest = await cluster.digest(cluster.leader.id)
  const member = cluster.followers[cluster.followers.length - 1] as (typeof cluster.members)[0]
  await cluster.stopMember(member.id)
  const store = await Store.open({ dir: member.dataDir, nodeId: member.id })
  const backup = join(dir, 'offline')
  try {
    expect(store.appliedLsn).toBe(leaderDigest.appliedLsn)
    const snapshot = await store.openSnapshot()
    try {
      await writeBackup(backup, snapshot, {
        clusterId: store.meta.clusterId,
        nodeId: member.id,
        mode: 'single-leader',
        role: 'follower',
        lsnTimeMs: 0,
        takenAtMs: Date.now(),
      })
    } finally {
      await snapshot.close()
    }
  } finally {
    await store.close()
  }
  await cluster.startMember(member.id)
  await checkBackup(backup, leaderDigest.digest, 'offline')
})
