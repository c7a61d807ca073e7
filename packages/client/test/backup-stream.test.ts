/**
 * The SDK's backup writer against real backup streams: the frames a node sends, made by the
 * storage package's backupPieces from a real Store (LevelDB) and protocol's encodeBackupFrame,
 * served over h2c by a small HTTP/2 server that stands in for POST /admin/v1/backups (the
 * node's route lives in another package). The backups written are checked offline with
 * storage's verifyBackup; every failure leaves nothing behind.
 */
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { createServer, type Http2Server, type Http2ServerResponse } from 'node:http2'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  BackupFrameType,
  EntryKind,
  KvError,
  OpType,
  encodeBackupFrame,
  type LogEntry,
} from '@kvstore/protocol'
import { Store, backupPieces, verifyBackup } from '@kvstore/storage'
import { KvClient } from '../src/index.js'
import { writeBackupStream } from '../src/backup.js'

type Behaviour = 'ok' | 'busy' | 'truncate-file' | 'truncate-frame' | 'error-frame' | 'tamper'

let dir: string
let store: Store
let digest: string
const servers: { server: Http2Server; url: string; id: string; behaviour: Behaviour }[] = []

/** Every frame of a backup of `store`, as a node would send them (small files: several). */
async function frames(role: string, nodeId: string): Promise<Buffer[]> {
  const snapshot = await store.openSnapshot()
  const out: Buffer[] = []
  try {
    const pieces = backupPieces(
      snapshot,
      {
        clusterId: 'c1',
        nodeId,
        mode: 'single-leader',
        role,
        lsnTimeMs: Date.now(),
        takenAtMs: Date.now(),
      },
      { fileBytesMax: 2048 },
    )
    for await (const piece of pieces) {
      if (piece.data) out.push(encodeBackupFrame(BackupFrameType.Data, piece.name, piece.data))
      if (piece.end) out.push(encodeBackupFrame(BackupFrameType.End, piece.name))
    }
  } finally {
    await snapshot.close()
  }
  return out
}

async function send(res: Http2ServerResponse, data: Buffer): Promise<void> {
  if (!res.write(data)) await new Promise((resolve) => res.once('drain', resolve))
}

async function startServer(id: string, role: 'leader' | 'follower'): Promise<void> {
  const entry = {
    server: null as unknown as Http2Server,
    url: '',
    id,
    behaviour: 'ok' as Behaviour,
  }
  entry.server = createServer((req, res) => {
    void (async () => {
      if (req.url === '/v1/cluster') {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify(view()))
        return
      }
      if (req.method !== 'POST' || req.url !== '/admin/v1/backups') {
        res.writeHead(404).end()
        return
      }
      for await (const _ of req) void _
      if (entry.behaviour === 'busy') {
        res.writeHead(429, { 'content-type': 'application/json' })
        res.end(
          JSON.stringify({
            error: { code: 'KV_ERR_BACKUP_BUSY', message: `${id} is taking a backup` },
          }),
        )
        return
      }
      const all = await frames(role, id)
      res.writeHead(200, {
        'content-type': 'application/vnd.kvstore.backup',
        'kv-backup-lsn': String(store.appliedLsn),
        'kv-backup-node': id,
        'kv-backup-role': role,
      })
      for (const [i, frame] of all.entries()) {
        if (entry.behaviour === 'truncate-file' && i === 3) break
        if (entry.behaviour === 'truncate-frame' && i === 3) {
          await send(res, frame.subarray(0, Math.floor(frame.length / 2)))
          break
        }
        if (entry.behaviour === 'error-frame' && i === 3) {
          await send(
            res,
            encodeBackupFrame(
              BackupFrameType.Error,
              'error',
              Buffer.from(
                JSON.stringify({
                  error: { code: 'KV_ERR_SHUTTING_DOWN', message: 'the node is shutting down' },
                }),
              ),
            ),
          )
          break
        }
        if (entry.behaviour === 'tamper' && i === 0) {
          const copy = Buffer.from(frame)
          copy[copy.length - 1] = (copy[copy.length - 1] as number) ^ 0xff
          await send(res, copy)
          continue
        }
        await send(res, frame)
      }
      res.end()
    })()
  })
  await new Promise<void>((resolve) => entry.server.listen(0, '127.0.0.1', resolve))
  entry.url = `http://127.0.0.1:${(entry.server.address() as AddressInfo).port}`
  servers.push(entry)
}

function view() {
  return {
    mode: 'single-leader',
    clusterId: 'c1',
    leaderId: 'n1',
    leaderUrl: servers[0]?.url ?? null,
    epoch: 1,
    commitLsn: store.appliedLsn,
    self: 'n1',
    writable: true,
    members: servers.map((s, i) => ({
      id: s.id,
      role: i === 0 ? 'leader' : 'follower',
      clientUrl: s.url,
      peerUrl: null,
      epoch: 1,
      ackedLsn: store.appliedLsn,
      appliedLsn: store.appliedLsn,
      lagEntries: 0,
      lagMs: 0,
      lastContactMs: 0,
      connected: true,
    })),
  }
}

function behave(leader: Behaviour, follower: Behaviour): void {
  ;(servers[0] as { behaviour: Behaviour }).behaviour = leader
  ;(servers[1] as { behaviour: Behaviour }).behaviour = follower
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kv-sdk-backup-'))
  store = await Store.open({ dir: join(dir, 'store'), nodeId: 'n1', clusterId: 'c1' })
  await store.setHardState({ epoch: 1 })
  for (let lsn = 1; lsn <= 300; lsn++) {
    const e: LogEntry = {
      epoch: 1,
      lsn,
      kind: EntryKind.Put,
      ops: [
        {
          type: OpType.Put,
          key: Buffer.from(`users/${lsn % 120}`),
          value: Buffer.from(`value ${lsn} ${'x'.repeat(lsn % 50)}`),
        },
      ],
      timestampMs: 1_700_000_000_000 + lsn,
      requestId: lsn % 3 === 0 ? `req-${lsn}` : '',
    } as LogEntry
    await store.append([e], { commitLsn: lsn })
  }
  digest = (await store.digest()).digest
  await startServer('n1', 'leader')
  await startServer('n2', 'follower')
})

afterAll(async () => {
  for (const s of servers) await new Promise((resolve) => s.server.close(resolve))
  await store?.close()
  await rm(dir, { recursive: true, force: true })
})

async function withClient<T>(fn: (client: KvClient) => Promise<T>): Promise<T> {
  const client = new KvClient({ url: (servers[0] as { url: string }).url, retryForMs: 0 })
  try {
    return await fn(client)
  } finally {
    await client.close()
  }
}

async function failure(promise: Promise<unknown>): Promise<KvError> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(KvError)
  return err as KvError
}

describe('client.backup', () => {
  it('backs up a follower: files 0600 in a 0700 directory, checked, equal to the state', async () => {
    behave('ok', 'ok')
    const to = join(dir, 'b-follower')
    const result = await withClient((c) => c.backup({ to }))
    expect(result).toMatchObject({ dir: to, member: 'n2', role: 'follower', fallback: null })
    expect(result.manifest.lsn).toBe(300)
    expect(result.manifest.digest).toBe(digest)
    expect(result.files).toBe(result.manifest.files.length + 1)
    expect(result.manifest.files.length).toBeGreaterThan(2)
    const check = await verifyBackup(to)
    expect(check.digest).toBe(digest)
    expect(check.keys).toBe(120)
    expect((await stat(to)).mode & 0o777).toBe(0o700)
    const names = await readdir(to)
    expect(names.sort()).toEqual(
      ['manifest.json', ...result.manifest.files.map((f) => f.name)].sort(),
    )
    for (const name of names) expect((await stat(join(to, name))).mode & 0o777).toBe(0o600)
  })

  it('falls back to the leader, and says so, when no follower can take it', async () => {
    behave('ok', 'busy')
    const to = join(dir, 'b-fallback')
    const result = await withClient((c) => c.backup({ to }))
    expect(result.member).toBe('n1')
    expect(result.role).toBe('leader')
    expect(result.fallback).toMatch(/leader/)
    expect((await verifyBackup(to)).digest).toBe(digest)
  })

  it('takes the leader or a named member when asked', async () => {
    behave('ok', 'ok')
    const fromLeader = await withClient((c) =>
      c.backup({ to: join(dir, 'b-leader'), from: 'leader' }),
    )
    expect(fromLeader).toMatchObject({ member: 'n1', fallback: null })
    const named = await withClient((c) => c.backup({ to: join(dir, 'b-n2'), from: 'n2' }))
    expect(named.member).toBe('n2')
    const err = await failure(withClient((c) => c.backup({ to: join(dir, 'b-n9'), from: 'n9' })))
    expect(err.code).toBe('KV_ERR_INVALID_ARGUMENT')
  })

  it('gives the server busy error when the only member asked is busy', async () => {
    behave('busy', 'busy')
    const to = join(dir, 'b-busy')
    const err = await failure(withClient((c) => c.backup({ to, from: 'n2' })))
    expect(err.code).toBe('KV_ERR_BACKUP_BUSY')
    await expect(stat(to)).rejects.toThrow(/ENOENT/)
  })

  for (const behaviour of ['truncate-file', 'truncate-frame'] as const) {
    it(`leaves nothing behind when the stream is cut short (${behaviour})`, async () => {
      behave('ok', behaviour)
      const to = join(dir, `b-${behaviour}`)
      const err = await failure(withClient((c) => c.backup({ to })))
      expect(err.code).toBe('KV_ERR_BACKUP_CORRUPT')
      expect(err.message).toMatch(/ended/)
      await expect(stat(to)).rejects.toThrow(/ENOENT/)
    })
  }

  it('throws the KvError of an Error frame, and leaves nothing behind', async () => {
    behave('ok', 'error-frame')
    const to = join(dir, 'b-error')
    const err = await failure(withClient((c) => c.backup({ to })))
    expect(err.code).toBe('KV_ERR_SHUTTING_DOWN')
    expect(err.message).toBe('the node is shutting down')
    await expect(stat(to)).rejects.toThrow(/ENOENT/)
  })

  it('refuses a file that does not match the manifest, and leaves an empty directory empty', async () => {
    behave('ok', 'tamper')
    const to = join(dir, 'b-tamper')
    await mkdir(to)
    const err = await failure(withClient((c) => c.backup({ to })))
    expect(err.code).toBe('KV_ERR_BACKUP_CORRUPT')
    expect(err.message).toMatch(/checksum/)
    expect(await readdir(to)).toEqual([])
  })

  it('refuses a directory that is not empty, and touches nothing in it', async () => {
    behave('ok', 'ok')
    const to = join(dir, 'b-full')
    await mkdir(to)
    await writeFile(join(to, 'keep'), 'mine')
    const err = await failure(withClient((c) => c.backup({ to })))
    expect(err.code).toBe('KV_ERR_INVALID_ARGUMENT')
    expect(await readdir(to)).toEqual(['keep'])
  })

  it('backs up every member into a directory of its own', async () => {
    behave('ok', 'ok')
    const to = join(dir, 'b-all')
    const result = await withClient((c) => c.backupAllMembers({ to }))
    expect(result.members.map((m) => m.member)).toEqual(['n1', 'n2'])
    expect((await readdir(to)).sort()).toEqual(['n1', 'n2'])
    for (const id of ['n1', 'n2']) expect((await verifyBackup(join(to, id))).digest).toBe(digest)
  })

  it('removes every member backup when one member fails', async () => {
    behave('ok', 'error-frame')
    const to = join(dir, 'b-all-fail')
    const err = await failure(withClient((c) => c.backupAllMembers({ to })))
    expect(err.code).toBe('KV_ERR_SHUTTING_DOWN')
    expect(err.details.member).toBe('n2')
    await expect(stat(to)).rejects.toThrow(/ENOENT/)
  })
})

describe('writeBackupStream', () => {
  it('takes a stream in chunks of any size', async () => {
    const whole = Buffer.concat(await frames('follower', 'n2'))
    async function* chunks() {
      let at = 0
      for (let i = 0; at < whole.length; i++) {
        const size = 1 + ((i * 7919) % 97)
        yield whole.subarray(at, at + size)
        at += size
      }
    }
    const to = join(dir, 'w-chunks')
    const written = await writeBackupStream(to, chunks())
    expect(written.manifest.digest).toBe(digest)
    expect((await verifyBackup(to)).digest).toBe(digest)
  })

  it('refuses a frame after the manifest, and a file the manifest does not name', async () => {
    const all = await frames('follower', 'n2')
    const to = join(dir, 'w-after')
    const extra = [
      encodeBackupFrame(BackupFrameType.Data, 'extra.kvb', Buffer.from('x')),
      encodeBackupFrame(BackupFrameType.End, 'extra.kvb'),
    ]
    let err = await failure(writeBackupStream(to, [...all, ...extra]))
    expect(err.code).toBe('KV_ERR_BACKUP_CORRUPT')
    await expect(stat(to)).rejects.toThrow(/ENOENT/)
    err = await failure(writeBackupStream(to, [...extra, ...all]))
    expect(err.message).toMatch(/does not name/)
    await expect(stat(to)).rejects.toThrow(/ENOENT/)
  })
})
