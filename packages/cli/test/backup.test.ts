/**
 * The offline commands on a real backup (storage's writeBackup of a real Store): `kv backup
 * verify` checks it and finds a flipped byte, and `kv restore` builds a data directory whose
 * digest is the backup's, refusing one in use; usage errors exit 2.
 */
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import { EntryKind, OpType, type LogEntry } from '@kvstore/protocol'
import { Store, writeBackup } from '@kvstore/storage'
import { runKv } from '../src/kv-command.js'
import { restoreTarget } from '../src/offline.js'

let dir: string
let backup: string
let digest: string

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-cli-backup-'))
  const store = await Store.open({ dir: join(dir, 'store'), nodeId: 'n2', clusterId: 'old' })
  await store.setHardState({ epoch: 3 })
  for (let lsn = 1; lsn <= 150; lsn++) {
    const e = {
      epoch: 3,
      lsn,
      kind: EntryKind.Put,
      ops: [
        {
          type: OpType.Put,
          key: Buffer.from(`k/${lsn % 70}`),
          value: Buffer.from(`v${lsn}`),
        },
      ],
      timestampMs: 1_700_000_000_000 + lsn,
      requestId: '',
    } as LogEntry
    await store.append([e], { commitLsn: lsn })
  }
  digest = (await store.digest()).digest
  backup = join(dir, 'backup')
  const snapshot = await store.openSnapshot()
  await writeBackup(
    backup,
    snapshot,
    {
      clusterId: 'old',
      nodeId: 'n2',
      mode: 'single-leader',
      role: 'follower',
      lsnTimeMs: 1_700_000_000_150,
      takenAtMs: Date.now(),
    },
    { fileBytesMax: 1024 },
  )
  await snapshot.close()
  await store.close()
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

async function kv(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  let out = ''
  let err = ''
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  stderr.on('data', (c: Buffer) => (err += c.toString()))
  const code = await runKv(args, {
    env: {},
    stdin: Object.assign(Readable.from([]), { isTTY: true }),
    stdout,
    stderr,
  })
  return { code, out, err }
}

describe('kv backup verify', () => {
  it('checks every file and the digest', async () => {
    const result = await kv(['backup', 'verify', backup])
    expect(result.err).toBe('')
    expect(result.code).toBe(0)
    expect(result.out).toContain(`digest        ${digest}`)
    expect(result.out).toMatch(/LSN 150/)
    const json = await kv(['--json', 'backup', 'verify', backup])
    expect(JSON.parse(json.out)).toMatchObject({ ok: true, digest, keys: 70 })
  })

  it('exits 1 with KV_ERR_BACKUP_CORRUPT when a byte is flipped', async () => {
    const copy = join(dir, 'flipped')
    await rm(copy, { recursive: true, force: true })
    const { cp } = await import('node:fs/promises')
    await cp(backup, copy, { recursive: true })
    const name = (await readdir(copy)).find((n) => n.startsWith('state-')) as string
    const bytes = await readFile(join(copy, name))
    bytes[Math.floor(bytes.length / 2)] = (bytes[Math.floor(bytes.length / 2)] as number) ^ 0x01
    await writeFile(join(copy, name), bytes)
    const result = await kv(['backup', 'verify', copy])
    expect(result.code).toBe(1)
    expect(result.err).toMatch(/^kv: KV_ERR_BACKUP_CORRUPT: .*checksum/)
    expect(result.err).toContain(name)
  })

  it('exits 2 without a DIR', async () => {
    const result = await kv(['backup', 'verify'])
    expect(result.code).toBe(2)
    expect(result.err).toMatch(/backup verify needs one DIR/)
  })
})

describe('kv restore', () => {
  it('restores the backup into a new data directory with its digest and a new cluster id', async () => {
    const dataDir = join(dir, 'restored')
    const result = await kv(['restore', '--from', backup, '--data-dir', dataDir, '--node-id', 'n3'])
    expect(result.err).toBe('')
    expect(result.code).toBe(0)
    expect(result.out).toContain(`digest        ${digest}`)
    expect(result.out).toMatch(/reached +LSN 150/)
    const clusterId = /cluster id +(\S+) \(new\)/.exec(result.out)?.[1]
    expect(clusterId).toMatch(/^kv-[0-9a-f]{32}$/)
    expect(result.out).toContain(
      `kv certs init --dir certs --members n1,n2,n3 --cluster-id ${clusterId}`,
    )
    const store = await Store.open({ dir: dataDir, nodeId: 'n3', clusterId: clusterId as string })
    expect(store.meta).toMatchObject({ appliedLsn: 150, epoch: 1 })
    expect((await store.digest()).digest).toBe(digest)
    await store.close()

    // Again into the same directory: refused, untouched.
    const again = await kv(['restore', '--from', backup, '--data-dir', dataDir])
    expect(again.code).toBe(1)
    expect(again.err).toMatch(/^kv: KV_ERR_DATA_DIR_IN_USE: /)
  })

  it('takes the cluster id given or a certs directory, and a dry run writes nothing', async () => {
    const json = await kv([
      '--json',
      'restore',
      '--from',
      backup,
      '--data-dir',
      join(dir, 'r2'),
      '--cluster-id',
      'shop-2',
    ])
    expect(json.code).toBe(0)
    expect(JSON.parse(json.out)).toMatchObject({ clusterId: 'shop-2', lsn: 150 })
    await writeFile(join(dir, 'cluster-id'), 'from-certs\n')
    const dry = await kv([
      '--json',
      'restore',
      '--from',
      backup,
      '--data-dir',
      join(dir, 'r3'),
      '--certs-dir',
      dir,
      '--dry-run',
    ])
    expect(dry.code).toBe(0)
    expect(JSON.parse(dry.out)).toMatchObject({ clusterId: 'from-certs', lsn: 150, entries: 0 })
    expect(JSON.parse(dry.out).digest).toBeUndefined()
    await expect(readdir(join(dir, 'r3'))).rejects.toThrow(/ENOENT/)
  })

  it('refuses a target past the backup without an archive (exit 1), and bad usage with 2', async () => {
    const unreachable = await kv([
      'restore',
      '--from',
      backup,
      '--data-dir',
      join(dir, 'r4'),
      '--to-lsn',
      '10',
    ])
    expect(unreachable.code).toBe(1)
    expect(unreachable.err).toMatch(/^kv: KV_ERR_INVALID_ARGUMENT: .*--archive DIR/)
    for (const args of [
      ['restore', '--data-dir', join(dir, 'r5')],
      ['restore', '--from', backup],
      ['restore', '--from', backup, '--data-dir', join(dir, 'r5'), '--to-lsn', 'x'],
      ['restore', '--from', backup, '--data-dir', join(dir, 'r5'), '--to-time', 'yesterday'],
      ['restore', '--from', backup, '--data-dir', join(dir, 'r5'), '--latest', '--to-lsn', '3'],
      ['restore', '--from', backup, '--data-dir', join(dir, 'r5'), '--node-id', '../x'],
    ]) {
      const result = await kv(args)
      expect(result.code, args.join(' ')).toBe(2)
    }
  })

  it('reads --to-time as ISO 8601 (UTC without a zone)', () => {
    expect(restoreTarget({ 'to-time': '2026-03-01T12:30:00Z' })).toEqual({
      kind: 'time',
      timeMs: Date.UTC(2026, 2, 1, 12, 30),
    })
    expect(restoreTarget({ 'to-time': '2026-03-01T12:30:00+02:00' })).toEqual({
      kind: 'time',
      timeMs: Date.UTC(2026, 2, 1, 10, 30),
    })
    expect(restoreTarget({ 'to-time': '2026-03-01T12:30' })).toEqual({
      kind: 'time',
      timeMs: Date.UTC(2026, 2, 1, 12, 30),
    })
    expect(restoreTarget({ 'to-time': '2026-03-01' })).toEqual({
      kind: 'time',
      timeMs: Date.UTC(2026, 2, 1),
    })
    expect(restoreTarget({})).toEqual({ kind: 'backup' })
    expect(restoreTarget({ latest: true })).toEqual({ kind: 'latest' })
    expect(restoreTarget({ 'to-lsn': '42' })).toEqual({ kind: 'lsn', lsn: 42 })
  })
})
