/**
 * Leases, TTL and fencing on real 3-node process clusters (docs/leases.md): expiry decided by
 * the leader and seen by every member at one LSN, leases that survive a kill -9 of the leader
 * while their holder keeps renewing, a paused lock holder whose fenced write is refused when it
 * wakes, revoke, the ?ttlMs= shorthand, and coded refusals of bad input.
 */
import { execFile, spawn } from 'node:child_process'
import { promisify } from 'node:util'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { EntryKind, type LogEntry } from '@kvstore/protocol'
import { Store } from '@kvstore/storage'
import { KvClient, KvError, keepLeaseAlive, lock } from '@kvstore/client'
import { LeaderlessCluster, TestCluster, kvBin, until } from '@kvstore/testkit'
import { rootEnv, rootTls } from './support/certs.js'

const holderScript = fileURLToPath(new URL('./support/lock-holder.mjs', import.meta.url))

async function status(url: string, path: string, init: RequestInit = {}) {
  const res = await fetch(`${url}${path}`, init)
  const text = await res.text()
  let body: { error?: { code?: string } } & Record<string, unknown> = {}
  try {
    body = JSON.parse(text) as typeof body
  } catch {
    body = {}
  }
  return { status: res.status, code: body.error?.code, body, headers: res.headers, text }
}

/** Every entry of a stopped member's log. */
async function logOf(dataDir: string, nodeId: string): Promise<LogEntry[]> {
  const store = await Store.open({ dir: dataDir, nodeId })
  try {
    const entries: LogEntry[] = []
    for (let from = store.meta.logStartLsn; ;) {
      const page = await store.readLog(from)
      if (page.length === 0) break
      entries.push(...page)
      from = (page[page.length - 1] as LogEntry).lsn + 1
    }
    return entries
  } finally {
    await store.close()
  }
}

describe('leases on a 3-node cluster', () => {
  let cluster: TestCluster
  let client: KvClient
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
    client = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
  })
  afterAll(async () => {
    await client?.close()
    await cluster?.stop()
  })

  it('refuses bad input with stable codes', async () => {
    const url = cluster.leader.url
    const cases: [string, RequestInit, number, string][] = [
      ['/v1/leases', { method: 'POST', body: '{"ttlMs": 5}' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/leases', { method: 'POST', body: '{"ttlMs": "x"}' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/leases', { method: 'POST', body: '{"ttl": 1000}' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/leases', { method: 'POST', body: 'nope' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/leases', { method: 'POST' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/leases/abc', {}, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/leases/99999-1', {}, 404, 'KV_ERR_LEASE_NOT_FOUND'],
      ['/v1/leases/99999-1/keepalive', { method: 'POST' }, 404, 'KV_ERR_LEASE_NOT_FOUND'],
      ['/v1/leases/99999-1', { method: 'DELETE' }, 404, 'KV_ERR_LEASE_NOT_FOUND'],
      ['/v1/kv/k?lease=99999-1', { method: 'PUT', body: 'v' }, 404, 'KV_ERR_LEASE_NOT_FOUND'],
      ['/v1/kv/k?lease=bad', { method: 'PUT', body: 'v' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/kv/k?ttlMs=0', { method: 'PUT', body: 'v' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/kv/k?ttlMs=99999999999', { method: 'PUT', body: 'v' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/kv/k?ttlMs=1000&lease=1-1', { method: 'PUT', body: 'v' }, 400, 'KV_ERR_INVALID_LEASE'],
      [
        '/v1/kv/k',
        { method: 'PUT', body: 'v', headers: { 'if-fence': '3' } },
        400,
        'KV_ERR_INVALID_FENCE',
      ],
      [
        '/v1/kv/k',
        { method: 'PUT', body: 'v', headers: { 'fence-lock': 'a' } },
        400,
        'KV_ERR_INVALID_FENCE',
      ],
      [
        '/v1/kv/k',
        { method: 'PUT', body: 'v', headers: { 'if-fence': '-1', 'fence-lock': 'a' } },
        400,
        'KV_ERR_INVALID_FENCE',
      ],
      [
        '/v1/kv/k',
        { method: 'PUT', body: 'v', headers: { 'if-fence': '1', 'fence-lock': 'a b' } },
        400,
        'KV_ERR_INVALID_FENCE',
      ],
      [
        '/v1/kv/k?ttlMs=1000&ack=queued',
        { method: 'PUT', body: 'v' },
        400,
        'KV_ERR_LEASES_UNSUPPORTED',
      ],
      [
        '/v1/leases?ack=queued',
        { method: 'POST', body: '{"ttlMs": 1000}' },
        400,
        'KV_ERR_LEASES_UNSUPPORTED',
      ],
    ]
    for (const [path, init, code, error] of cases) {
      const res = await status(url, path, init)
      expect([path, res.status, res.code]).toEqual([path, code, error])
    }
    // A follower refuses a keep-alive, naming the leader (the SDK follows it).
    const lease = await client.grantLease(5000)
    const follower = cluster.followers[0]!
    const res = await status(follower.url, `/v1/leases/${lease.id}/keepalive`, { method: 'POST' })
    expect([res.status, res.code]).toEqual([421, 'KV_ERR_NOT_LEADER'])
    await client.revokeLease(lease.id)
  })

  it('a fenced write with a lower token is refused, on PUT and batch, and writes nothing', async () => {
    await client.put('fenced/a', '1', { fence: { lock: 'f1', token: 20 } })
    await client.put('fenced/a', '2', { fence: { lock: 'f1', token: 20 } })
    const refused = await client
      .put('fenced/a', 'old', { fence: { lock: 'f1', token: 19 } })
      .catch((err: KvError) => err)
    expect(refused).toBeInstanceOf(KvError)
    expect((refused as KvError).code).toBe('KV_ERR_FENCED')
    expect((refused as KvError).details).toMatchObject({ lock: 'f1', token: 19, highestToken: 20 })
    const batch = await client
      .batch([{ op: 'put', key: 'fenced/b', value: 'x' }], { fence: { lock: 'f1', token: 3 } })
      .catch((err: KvError) => err)
    expect((batch as KvError).code).toBe('KV_ERR_FENCED')
    expect(await client.get('fenced/b')).toBeNull()
    expect((await client.get('fenced/a'))?.value.toString()).toBe('2')
    // Another lock's tokens are its own.
    await client.put('fenced/a', '3', { fence: { lock: 'f2', token: 1 } })
    const ok = await client.batch([{ op: 'put', key: 'fenced/b', value: 'y' }], {
      fence: { lock: 'f1', token: 21 },
    })
    expect(ok.results).toHaveLength(1)
  })

  it('revoke deletes the keys still attached, and only those', async () => {
    const lease = await client.grantLease(60_000)
    await client.put('rv/a', 'a', { lease: lease.id })
    await client.put('rv/b', 'b', { lease: lease.id })
    await client.put('rv/c', 'c', { lease: lease.id })
    await client.batch([{ op: 'put', key: 'rv/d', value: 'd' }], { lease: lease.id })
    // Overwritten without the lease: detached. Attached to another lease: that one's.
    await client.put('rv/b', 'plain')
    const other = await client.grantLease(60_000)
    await client.put('rv/c', 'other', { lease: other.id })
    const info = await client.leaseInfo(lease.id)
    expect(info.keys.sort()).toEqual(['rv/a', 'rv/d'])
    expect(info.remainingMs).toBeGreaterThan(50_000)
    const revoked = await client.revokeLease(lease.id)
    expect(revoked.deletedKeys).toBe(2)
    expect(await client.get('rv/a')).toBeNull()
    expect(await client.get('rv/d')).toBeNull()
    expect((await client.get('rv/b'))?.value.toString()).toBe('plain')
    expect((await client.get('rv/c'))?.value.toString()).toBe('other')
    const again = await client.revokeLease(lease.id).catch((err: KvError) => err)
    expect((again as KvError).code).toBe('KV_ERR_LEASE_NOT_FOUND')
    const late = await client.put('rv/e', 'e', { lease: lease.id }).catch((err: KvError) => err)
    expect((late as KvError).code).toBe('KV_ERR_LEASE_NOT_FOUND')
    await client.revokeLease(other.id)
    expect(await client.get('rv/c')).toBeNull()
  })

  it('a paused lock holder that wakes after its lease expired has its fenced write refused', async () => {
    const urls = cluster.members.map((m) => m.url).join(',')
    const holder = spawn(process.execPath, [holderScript, urls, 'res', 'fenced/resource', '800'], {
      env: { ...process.env, ...rootEnv() },
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    const events: Record<string, unknown>[] = []
    const lines = createInterface({ input: holder.stdout })
    lines.on('line', (line) => events.push(JSON.parse(line) as Record<string, unknown>))
    const exited = new Promise((resolve) => holder.once('exit', resolve))
    try {
      await until('the holder takes the lock', () => events.some((e) => e.event === 'held'))
      const first = events.find((e) => e.event === 'held') as { token: number }
      // The holder sleeps (as in a long GC pause): it cannot renew, and its lease expires.
      holder.kill('SIGSTOP')
      const started = Date.now()
      const next = await lock(client, 'res', { ttlMs: 5000, waitMs: 10_000 })
      // Not before its TTL: the holder's lease had to expire first.
      expect(Date.now() - started).toBeGreaterThanOrEqual(500)
      expect(next.token).toBeGreaterThan(first.token)
      await client.put('fenced/resource', `holder-${next.token}-1`, { fence: next.fence })
      // The holder wakes, believes it still holds the lock, and writes: refused.
      holder.kill('SIGCONT')
      holder.stdin.write('go\n')
      await until('the holder writes', () => events.some((e) => e.event !== 'held'))
      const answer = events.find((e) => e.event !== 'held') as {
        event: string
        code: string
        details: Record<string, unknown>
      }
      expect(answer.event).toBe('refused')
      expect(answer.code).toBe('KV_ERR_FENCED')
      expect(answer.details).toMatchObject({
        lock: 'res',
        token: first.token,
        highestToken: next.token,
      })
      expect((await client.get('fenced/resource'))?.value.toString()).toBe(`holder-${next.token}-1`)
      await next.release()
      expect(await client.get('locks/res')).toBeNull()
    } finally {
      holder.kill('SIGCONT')
      holder.kill('SIGKILL')
      await exited
    }
  })

  it('kv lock NAME -- COMMAND runs the command with the token, holding the lock, then releases it', async () => {
    const urls = cluster.members.map((m) => m.url).join(',')
    const script =
      "const c = require('node:child_process'); const e = process.env; console.log(JSON.stringify({ token: e.KV_LOCK_TOKEN, key: e.KV_LOCK_KEY, name: e.KV_LOCK_NAME, held: c.execFileSync(process.execPath, [e.KV_BIN, '--url', e.KV_URLS, 'get', e.KV_LOCK_KEY]).toString() })); process.exit(7)"
    const run = promisify(execFile)(
      process.execPath,
      [
        kvBin,
        '--url',
        urls,
        'lock',
        'cli-job',
        '--ttl-ms',
        '2000',
        '--',
        process.execPath,
        '-e',
        script,
      ],
      { env: { ...process.env, ...rootEnv(), KV_BIN: kvBin, KV_URLS: urls } },
    )
    const failed = (await run.catch((err: { code: number; stdout: string }) => err)) as {
      code: number
      stdout: string
    }
    expect(failed.code).toBe(7)
    const seen = JSON.parse(failed.stdout) as Record<string, string>
    expect(seen.name).toBe('cli-job')
    expect(seen.key).toBe('locks/cli-job')
    expect(Number(seen.token)).toBeGreaterThan(0)
    // While the command ran, the lock key held its holder; after, it is gone (released).
    expect(seen.held?.length).toBeGreaterThan(0)
    expect(await client.get('locks/cli-job')).toBeNull()
    const usage = await promisify(execFile)(process.execPath, [kvBin, '--url', urls, 'lock', 'x'], {
      env: { ...process.env, ...rootEnv() },
    }).catch((err: { code: number }) => err)
    expect((usage as { code: number }).code).toBe(2)
  })

  it('?ttlMs= keys expire by the leader, at one LSN on every member', async () => {
    const leader = cluster.leader
    const puts = await Promise.all(
      ['ttl/a', 'ttl/b'].map((k) =>
        status(leader.url, `/v1/kv/${k}?ttlMs=700`, { method: 'PUT', body: k }),
      ),
    )
    for (const p of puts) {
      expect(p.status).toBe(200)
      expect(p.headers.get('kv-lease')).toMatch(/^[0-9]+-[0-9]+$/)
    }
    // A key whose holder keeps renewing stays.
    const kept = await client.grantLease(700)
    await client.put('ttl/kept', 'k', { lease: kept.id })
    const keeper = keepLeaseAlive(client, kept.id, { ttlMs: 700 })
    const started = Date.now()
    try {
      for (const m of cluster.members)
        await until(`expiry on ${m.id}`, async () => {
          const a = await status(m.url, '/v1/kv/ttl/a')
          const b = await status(m.url, '/v1/kv/ttl/b')
          return a.status === 404 && b.status === 404
        })
      expect(Date.now() - started).toBeGreaterThanOrEqual(600)
      await new Promise((resolve) => setTimeout(resolve, 1000))
      expect((await client.get('ttl/kept'))?.value.toString()).toBe('k')
      expect(keeper.alive).toBe(true)
    } finally {
      keeper.stop()
    }
    await client.revokeLease(kept.id)
    await cluster.waitForApplied()
    const digests = await Promise.all(cluster.members.map((m) => cluster.digest(m.id)))
    expect(new Set(digests.map((d) => `${d.appliedLsn}:${d.digest}`)).size).toBe(1)

    // Every member's log holds the same Expiry entries, at the same LSNs, with the same deletes.
    for (const m of cluster.members) await cluster.stopMember(m.id)
    const expiries = await Promise.all(
      cluster.members.map(async (m) =>
        (await logOf(m.dataDir, m.id))
          .filter((e) => e.kind === EntryKind.Expiry)
          .map((e) => ({
            lsn: e.lsn,
            epoch: e.epoch,
            deletes: e.ops.map((op) => op.key.toString('utf8').replace('\u0000', '\\0')),
          })),
      ),
    )
    const ttlExpiries = expiries[0]!.filter((e) => e.deletes.some((k) => k.startsWith('ttl/')))
    expect(ttlExpiries.length).toBeGreaterThanOrEqual(2)
    expect(
      ttlExpiries
        .flatMap((e) => e.deletes)
        .filter((k) => k.startsWith('ttl/'))
        .sort(),
    ).toEqual(['ttl/a', 'ttl/b', 'ttl/kept'])
    for (const e of expiries) expect(e).toEqual(expiries[0])
  })
})

describe('a lease across a failover', () => {
  let cluster: TestCluster
  let client: KvClient
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
    client = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
  })
  afterAll(async () => {
    await client?.close()
    await cluster?.stop()
  })

  it('is extended by the new leader: a holder that keeps renewing keeps it; an abandoned one expires', async () => {
    const ttlMs = 1500
    const held = await client.grantLease(ttlMs)
    await client.put('fo/held', 'h', { lease: held.id })
    const lost: Error[] = []
    const keeper = keepLeaseAlive(client, held.id, { ttlMs, onLost: (err) => lost.push(err) })
    const abandoned = await client.grantLease(ttlMs)
    await client.put('fo/abandoned', 'a', { lease: abandoned.id })
    await cluster.waitForApplied()
    try {
      const old = cluster.leader
      await cluster.kill(old.id)
      const killedAt = Date.now()
      const leader = await cluster.waitForLeader()
      expect(leader.id).not.toBe(old.id)
      const electedAfterMs = Date.now() - killedAt
      // The new leader extended every lease (TTL + election timeout from its promotion).
      await until('the new leader to extend every lease', () =>
        (leader.process?.logs ?? []).some((l) => l.msg === 'leader: every lease extended'),
      )
      // Two more TTLs on the new leader: the renewed lease stays, the abandoned one goes.
      await until(
        'the abandoned lease to expire',
        async () => (await client.get('fo/abandoned')) === null,
        15_000,
      )
      await new Promise((resolve) => setTimeout(resolve, 2 * ttlMs))
      expect((await client.get('fo/held'))?.value.toString()).toBe('h')
      expect(lost).toEqual([])
      expect(keeper.alive).toBe(true)
      const info = await client.leaseInfo(held.id)
      expect(info.keys).toEqual(['fo/held'])
      expect(electedAfterMs).toBeLessThan(15_000)
    } finally {
      keeper.stop()
    }
    await client.revokeLease(held.id)
    expect(await client.get('fo/held')).toBeNull()
  })
})

describe('per-key TTL in leaderless mode', () => {
  let cluster: LeaderlessCluster
  let client: KvClient
  beforeAll(async () => {
    cluster = await LeaderlessCluster.start(3, ['--replicas', '3'])
    client = new KvClient({ ...rootTls(), url: cluster.urls })
  })
  afterAll(async () => {
    await client?.close()
    await cluster?.close()
  })

  it('a ?ttlMs= value reads as absent once its HLC expiry passes, and becomes a tombstone on every replica', async () => {
    const url = cluster.urls[0] as string
    await client.put('llttl/a', 'short', { ttlMs: 400 })
    await client.put('llttl/b', 'plain')
    expect((await client.get('llttl/a'))?.value.toString()).toBe('short')
    await until('the value to expire', async () => (await client.get('llttl/a')) === null, 5000)
    expect((await client.get('llttl/b'))?.value.toString()).toBe('plain')
    // The read that found it expired wrote a tombstone over it, which reaches every replica.
    await until(
      'a tombstone on every replica',
      async () => {
        const copies = await Promise.all(
          cluster.urls.map((u) => status(u, '/admin/v1/local/llttl/a')),
        )
        return copies.every(
          (c) =>
            c.status === 200 &&
            (c.body.siblings as { tombstone: boolean }[]).every((s) => s.tombstone),
        )
      },
      10_000,
      100,
    )
    // A new value written after the expiry is the value.
    await client.put('llttl/a', 'again')
    expect((await client.get('llttl/a'))?.value.toString()).toBe('again')
    const refusals: [string, RequestInit, number, string][] = [
      ['/v1/kv/llttl/c?ttlMs=5', { method: 'PUT', body: 'v' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/kv/llttl/c?lease=1-1', { method: 'PUT', body: 'v' }, 400, 'KV_ERR_LEASES_UNSUPPORTED'],
      ['/v1/kv/llttl/c?ttlMs=1000', { method: 'DELETE' }, 400, 'KV_ERR_INVALID_LEASE'],
      ['/v1/leases', { method: 'POST', body: '{"ttlMs": 1000}' }, 400, 'KV_ERR_LEASES_UNSUPPORTED'],
    ]
    for (const [path, init, code, error] of refusals) {
      const res = await status(url, path, init)
      expect([path, res.status, res.code]).toEqual([path, code, error])
    }
  })
})
