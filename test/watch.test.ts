/**
 * Watches (GET /v1/watch, the SDK's watch(), kv watch) on real node processes:
 * - resume across a kill -9 of the leader: every committed change under the prefix exactly
 *   once, in LSN order, equal to the log's history, with every acknowledged write in it;
 * - compaction: a position older than the log start gets 410 KV_ERR_COMPACTED with the oldest
 *   LSN, and the SDK surfaces it;
 * - a watcher that does not read is cut off with KV_ERR_WATCH_TOO_SLOW and its position;
 * - Server-Sent Events from a follower, resumed with Last-Event-ID;
 * - auth: read access to the whole prefix is needed;
 * - bad parameters and too many watchers get their codes.
 */
import { execFile } from 'node:child_process'
import http2 from 'node:http2'
import { promisify } from 'node:util'
import { Agent, request } from 'undici'
import { KvClient, type WatchEvent } from '@kvstore/client'
import { TestCluster, kvBin, metric, until } from '@kvstore/testkit'
import { caPem, rootConnect, rootEnv, rootTls } from './support/certs.js'

let cluster: TestCluster
let admin: KvClient
const rootAgent = new Agent({ connect: rootConnect(), allowH2: true })
const anonymous = new Agent({ connect: { ca: caPem() } })

beforeAll(async () => {
  cluster = await TestCluster.start(3, [
    '--watch-buffer-bytes-max',
    '65536',
    '--watch-progress-interval-ms',
    '200',
  ])
  admin = new KvClient({ ...rootTls(), url: cluster.members.map((m) => m.url) })
}, 60_000)
afterAll(async () => {
  await admin?.close()
  await rootAgent.close()
  await anonymous.close()
  await cluster?.stop()
})

interface Answer {
  status: number
  code: string | null
  body: string
  details: Record<string, unknown>
}

async function call(
  url: string,
  options: { headers?: Record<string, string>; method?: 'GET' | 'POST'; agent?: Agent } = {},
): Promise<Answer> {
  const res = await request(url, {
    method: options.method ?? 'GET',
    dispatcher: options.agent ?? rootAgent,
    headers: options.headers ?? {},
  })
  const body = await res.body.text()
  let error: Record<string, unknown> = {}
  try {
    error = (JSON.parse(body) as { error?: Record<string, unknown> }).error ?? {}
  } catch {
    error = {}
  }
  return {
    status: res.statusCode,
    code: typeof error.code === 'string' ? error.code : null,
    body,
    details: error,
  }
}

/** A member's /v1/status. */
async function statusOf(url: string): Promise<{ commitLsn: number; logStartLsn: number }> {
  return JSON.parse((await call(`${url}/v1/status`)).body) as {
    commitLsn: number
    logStartLsn: number
  }
}

/** Every change under `prefix` committed on `url` up to its commit LSN, from the log's start. */
async function history(url: string, prefix: string, through: number): Promise<WatchEvent[]> {
  const client = new KvClient({ ...rootTls(), url })
  const out: WatchEvent[] = []
  try {
    for await (const event of client.watch(prefix, { fromLsn: 0, progress: true })) {
      if (event.type !== 'progress') out.push(event)
      else if (event.lsn >= through) break
    }
  } finally {
    await client.close()
  }
  return out
}

describe('resume across a kill -9 of the leader', () => {
  it('gives every committed change once, in LSN order, with no gap', async () => {
    const prefix = 'resume/'
    const start = (await admin.put('resume-start', 'x')).lsn
    const leader = cluster.leader
    // The watcher starts on the leader (its first URL), which is then killed.
    const watcherClient = new KvClient({
      ...rootTls(),
      url: [leader.url, ...cluster.followers.map((m) => m.url)],
    })
    const seen: WatchEvent[] = []
    const reconnects: string[] = []
    const stopWatch = new AbortController()
    const watching = (async () => {
      for await (const event of watcherClient.watch(prefix, {
        fromLsn: start,
        idleTimeoutMs: 2000,
        signal: stopWatch.signal,
        onReconnect: (info) => reconnects.push(`${info.url}: ${info.reason}`),
      })) {
        seen.push(event)
      }
    })().catch((err: unknown) => err)

    const writer = new KvClient({
      ...rootTls(),
      url: cluster.members.map((m) => m.url),
      ack: 'quorum',
      retryForMs: 15_000,
    })
    const acked = new Map<string, number>()
    let stop = false
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        const key = `${prefix}${w}/${i}`
        try {
          const result = await writer.put(key, `v${i}`)
          acked.set(key, result.lsn)
        } catch {
          await new Promise((r) => setTimeout(r, 50))
        }
        // Some batches and deletes too.
        if (i % 7 === 3) {
          await writer
            .batch([
              { op: 'put', key: `${prefix}b/${w}/${i}`, value: 'b' },
              { op: 'put', key: `outside/${w}/${i}`, value: 'o' },
            ])
            .catch(() => {})
        }
        if (i % 11 === 5) await writer.delete(`${prefix}${w}/${i - 1}`).catch(() => {})
      }
    })
    await until('the watcher to see 50 changes', () => seen.length > 50, 20_000)
    await cluster.kill(leader.id)
    await new Promise((r) => setTimeout(r, 3000))
    stop = true
    await Promise.all(writers)
    await cluster.waitForLeader()
    const newLeader = cluster.leader
    const { commitLsn } = await statusOf(newLeader.url)
    // The watcher catches up to the new leader's commit LSN.
    await until(
      'the watcher to reach the last acknowledged write',
      () => (seen.at(-1)?.lsn ?? 0) >= Math.max(...acked.values()),
      20_000,
    )
    await new Promise((r) => setTimeout(r, 500))
    stopWatch.abort()
    await watching
    await watcherClient.close()
    await writer.close()
    expect(reconnects.length).toBeGreaterThan(0)

    const lsns = seen.map((e) => e.lsn)
    // Strictly increasing: no duplicate, in order.
    for (let i = 1; i < lsns.length; i++) expect(lsns[i]).toBeGreaterThan(lsns[i - 1] as number)
    // Equal to the log's history under the prefix (from a surviving member), with no gap.
    const reference = (await history(newLeader.url, prefix, commitLsn)).filter(
      (e) => e.lsn > start && e.lsn <= (seen.at(-1)?.lsn ?? 0),
    )
    expect(lsns).toEqual(reference.map((e) => e.lsn))
    expect(JSON.stringify(seen)).toEqual(JSON.stringify(reference))
    // Every acknowledged write is there, at its LSN, and no event shows an outside key.
    const byLsn = new Map(seen.map((e) => [e.lsn, e]))
    for (const [key, lsn] of acked) {
      const event = byLsn.get(lsn)
      expect(event && 'key' in event ? event.key : null).toBe(key)
    }
    for (const e of seen) {
      if ('ops' in e) for (const op of e.ops) expect(op.key.startsWith(prefix)).toBe(true)
      else if ('key' in e) expect(e.key.startsWith(prefix)).toBe(true)
    }
    await cluster.startMember(leader.id)
  }, 120_000)
})

describe('Server-Sent Events from a follower', () => {
  it('streams changes with id = LSN, and Last-Event-ID resumes after it', async () => {
    await cluster.waitForLeader()
    const follower = cluster.followers[0] as (typeof cluster.members)[number]
    const from = (await admin.put('sse-start', 'x')).lsn
    const first = await admin.put('sse/a', 'one')
    const second = await admin.put('sse/b', 'two')
    await admin.delete('sse/a')
    const read = async (headers: Record<string, string>, query: string, events: number) => {
      const res = await request(`${follower.url}/v1/watch?prefix=sse/${query}`, {
        dispatcher: rootAgent,
        headers: { accept: 'text/event-stream', ...headers },
      })
      expect(res.statusCode).toBe(200)
      expect(res.headers['content-type']).toMatch(/^text\/event-stream/)
      let text = ''
      const changes: { id: string; event: string; data: Record<string, unknown> }[] = []
      for await (const chunk of res.body) {
        text += Buffer.from(chunk as Uint8Array).toString('utf8')
        let end = text.indexOf('\n\n')
        while (end >= 0) {
          const block = text.slice(0, end)
          text = text.slice(end + 2)
          end = text.indexOf('\n\n')
          const fields = Object.fromEntries(
            block
              .split('\n')
              .filter((l) => l.includes(': '))
              .map((l) => [l.slice(0, l.indexOf(': ')), l.slice(l.indexOf(': ') + 2)]),
          )
          if (fields.event !== undefined && fields.event !== 'progress') {
            changes.push({
              id: fields.id as string,
              event: fields.event as string,
              data: JSON.parse(fields.data as string) as Record<string, unknown>,
            })
          }
        }
        if (changes.length >= events) break
      }
      res.body.destroy()
      return changes
    }
    const all = await read({}, `&fromLsn=${from}`, 3)
    expect(all.map((c) => [c.id, c.event, c.data.key])).toEqual([
      [String(first.lsn), 'put', 'sse/a'],
      [String(second.lsn), 'put', 'sse/b'],
      [expect.any(String), 'delete', 'sse/a'],
    ])
    expect(Buffer.from(all[0]?.data.valueBase64 as string, 'base64').toString()).toBe('one')
    // A browser reconnecting sends the last id it saw.
    const resumed = await read({ 'last-event-id': String(first.lsn) }, '', 2)
    expect(resumed.map((c) => c.data.key)).toEqual(['sse/b', 'sse/a'])
  }, 30_000)
})

describe('a slow watcher', () => {
  it('is cut off with KV_ERR_WATCH_TOO_SLOW and its position, not buffered without bound', async () => {
    await cluster.waitForLeader()
    const leader = cluster.leader
    const before = await metric(leader.url, 'kv_watch_too_slow')
    // An HTTP/2 client that sends the request, then reads nothing for a while (its flow-control
    // window closes, and the node's unsent bytes grow).
    const session = http2.connect(leader.url, rootConnect())
    const stream = session.request({ ':path': '/v1/watch?prefix=slow/', ':method': 'GET' })
    stream.pause()
    await new Promise((resolve) => stream.once('response', resolve))
    const value = Buffer.alloc(64 * 1024, 'x')
    const writer = new KvClient({ ...rootTls(), url: leader.url, ack: 'async' })
    for (let i = 0; i < 300; i++) await writer.put(`slow/${i % 10}`, value)
    await writer.close()
    await until(
      'the watcher to be cut off',
      async () => (await metric(leader.url, 'kv_watch_too_slow')) > before,
      20_000,
      100,
    )
    // Now read it all: the stream ends with the error event naming the position.
    let text = ''
    stream.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1')
    })
    stream.resume()
    await new Promise<void>((resolve) => {
      stream.once('end', () => resolve())
      stream.once('close', () => resolve())
    })
    session.close()
    const match = /\{"type":"error","error":\{"code":"KV_ERR_WATCH_TOO_SLOW"[^\n]*"lsn":(\d+)/.exec(
      text,
    )
    expect(match).not.toBeNull()
    // The events before the error reach the position it names.
    const lsns = [
      ...text.matchAll(/"type":"put","key":"slow\/\d","valueBase64":"[^"]*","lsn":(\d+)/g),
    ]
    expect(Number(lsns.at(-1)?.[1])).toBe(Number(match?.[1]))
  }, 60_000)
})

describe('auth', () => {
  it('needs read access to the whole prefix', async () => {
    await admin.addRole('watch-app')
    await admin.grantPermission('watch-app', 'read', 'app/')
    await admin.addUser('watcher', { password: 'watcher-password', roles: ['watch-app'] })
    const res = await request(`${cluster.leader.url}/v1/auth/token`, {
      method: 'POST',
      dispatcher: anonymous,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user: 'watcher', password: 'watcher-password' }),
    })
    const { token } = (await res.body.json()) as { token: string }
    const as = (path: string, t?: string) =>
      call(`${cluster.followers[0]?.url}${path}`, {
        agent: anonymous,
        headers: t === undefined ? {} : { authorization: `Bearer ${t}` },
      })
    expect((await as('/v1/watch?prefix=app/')).code).toBe('KV_ERR_UNAUTHENTICATED')
    expect((await as('/v1/watch?prefix=secret/', token)).code).toBe('KV_ERR_PERMISSION_DENIED')
    expect((await as('/v1/watch', token)).code).toBe('KV_ERR_PERMISSION_DENIED')
    // Allowed: the stream opens (read its first event, then drop it).
    const ok = await request(`${cluster.followers[0]?.url}/v1/watch?prefix=app/x`, {
      dispatcher: anonymous,
      headers: { authorization: `Bearer ${token}` },
    })
    expect(ok.statusCode).toBe(200)
    for await (const chunk of ok.body) {
      expect(Buffer.from(chunk as Uint8Array).toString()).toContain('"type":"progress"')
      break
    }
    ok.body.destroy()
    // The SDK gets the refusal as an error, not a retry loop.
    const sdk = new KvClient({
      tls: { ca: caPem() },
      url: cluster.members.map((m) => m.url),
      auth: { token },
    })
    await expect(sdk.watch('secret/').next()).rejects.toMatchObject({
      code: 'KV_ERR_PERMISSION_DENIED',
    })
    await sdk.close()
  }, 30_000)
})

describe('bad parameters', () => {
  it.each<[string, Record<string, string>, number, string]>([
    ['?fromLsn=abc', {}, 400, 'KV_ERR_INVALID_ARGUMENT'],
    ['?fromLsn=-1', {}, 400, 'KV_ERR_INVALID_ARGUMENT'],
    ['?fromLsn=1&fromLsn=2', {}, 400, 'KV_ERR_INVALID_ARGUMENT'],
    ['?values=maybe', {}, 400, 'KV_ERR_INVALID_ARGUMENT'],
    ['?since=3', {}, 400, 'KV_ERR_INVALID_ARGUMENT'],
    ['?prefix=a%01b', {}, 400, 'KV_ERR_INVALID_KEY'],
    [`?prefix=(5000 bytes)`, {}, 400, 'KV_ERR_KEY_TOO_LARGE'],
    ['', { 'last-event-id': 'twelve' }, 400, 'KV_ERR_INVALID_ARGUMENT'],
  ])('GET /v1/watch%s %j: %i %s', async (query, headers, status, code) => {
    const url = `${cluster.members[1]?.url}/v1/watch${query.replace('(5000 bytes)', 'k'.repeat(5000))}`
    const answer = await call(url, { headers })
    expect([answer.status, answer.code]).toEqual([status, code])
  })

  it('POST is 405', async () => {
    const answer = await call(`${cluster.members[0]?.url}/v1/watch`, { method: 'POST' })
    expect([answer.status, answer.code]).toEqual([405, 'KV_ERR_METHOD_NOT_ALLOWED'])
  })
})

describe('kv watch', () => {
  it('prints the changes under a prefix, one a line', async () => {
    const from = (await admin.put('cli-start', 'x')).lsn
    await admin.put('cli/a', 'hello')
    await admin.batch([
      { op: 'put', key: 'cli/b', value: 'B' },
      { op: 'delete', key: 'cli/a' },
    ])
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [
        kvBin,
        '--url',
        cluster.members.map((m) => m.url).join(','),
        'watch',
        'cli/',
        '--from-lsn',
        String(from),
        '--count',
        '2',
      ],
      { env: { ...process.env, ...rootEnv() }, timeout: 20_000 },
    )
    const lines = stdout.trim().split('\n')
    expect(lines[0]).toMatch(/^\d+ put cli\/a hello$/)
    expect(lines[1]).toMatch(/^\d+ batch put cli\/b=B, delete cli\/a$/)
  }, 30_000)
})

describe('compaction and limits (a one-member cluster with no log retention)', () => {
  let single: TestCluster
  beforeAll(async () => {
    single = await TestCluster.start(1, [
      '--log-retention-entries',
      '0',
      '--watchers-max',
      '2',
      '--watch-tail-bytes-max',
      '0',
    ])
  }, 60_000)
  afterAll(async () => {
    await single?.stop()
  })

  it('past --watchers-max a watch gets 503 KV_ERR_WATCHERS_TOO_MANY', async () => {
    const open = await Promise.all(
      [0, 1].map(() => request(`${single.leader.url}/v1/watch`, { dispatcher: rootAgent })),
    )
    for (const res of open)
      expect([res.statusCode, res.statusCode === 200 ? '' : await res.body.text()]).toEqual([
        200,
        '',
      ])
    const third = await call(`${single.leader.url}/v1/watch`)
    expect([third.status, third.code]).toEqual([503, 'KV_ERR_WATCHERS_TOO_MANY'])
    for (const res of open) res.body.destroy()
  }, 30_000)

  it('a position older than the log start gets 410 KV_ERR_COMPACTED with the oldest LSN', async () => {
    const client = new KvClient({ ...rootTls(), url: single.leader.url })
    for (let i = 0; i < 20; i++) await client.put(`c/${i}`, `v${i}`)
    // Before compaction, the whole history is there.
    const all = await history(
      single.leader.url,
      'c/',
      (await statusOf(single.leader.url)).commitLsn,
    )
    expect(all.length).toBe(20)
    const compact = await call(`${single.leader.url}/admin/v1/compact`, { method: 'POST' })
    expect(compact.status).toBe(200)
    const logStart = (await statusOf(single.leader.url)).logStartLsn
    expect(logStart).toBeGreaterThan(1)
    const answer = await call(`${single.leader.url}/v1/watch?prefix=c/&fromLsn=1`)
    expect([answer.status, answer.code]).toEqual([410, 'KV_ERR_COMPACTED'])
    expect(answer.details.oldestLsn).toBe(logStart)
    expect(answer.details.fromLsnMin).toBe(logStart - 1)
    // From the oldest position it names, the watch opens.
    const ok = await request(`${single.leader.url}/v1/watch?fromLsn=${logStart - 1}`, {
      dispatcher: rootAgent,
    })
    expect(ok.statusCode).toBe(200)
    ok.body.destroy()
    // The SDK surfaces it rather than retrying.
    await expect(client.watch('c/', { fromLsn: 0 }).next()).rejects.toMatchObject({
      code: 'KV_ERR_COMPACTED',
    })
    await client.close()
  }, 30_000)
})
