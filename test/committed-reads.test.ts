/**
 * `consistency=committed` on a real 5-node process cluster, during writes that never commit:
 * three followers are stopped (SIGSTOP), so the leader and the one follower left hold a write
 * made at ack=async that no majority has. A default read shows it, on the leader and on that
 * follower; a committed read shows the value from before it, on both, and so does a listing
 * (keys the write deleted are back, keys it created are gone). Sessions ask for committed
 * positions; bad parameters have their code; the SDK's and the CLI's switches work.
 */
import { execFile } from 'node:child_process'
import { KvClient } from '@kvstore/client'
import { kvBin, TestCluster, until } from '@kvstore/testkit'
import { rootEnv, rootTls } from './support/certs.js'

let cluster: TestCluster

beforeAll(async () => {
  cluster = await TestCluster.start(5, ['--read-wait-ms', '2000'])
}, 120_000)
afterAll(async () => {
  await cluster?.stop()
})

interface Read {
  status: number
  body: string
  headers: Headers
}

async function get(
  url: string,
  key: string,
  query = '',
  headers: Record<string, string> = {},
): Promise<Read> {
  const res = await fetch(`${url}/v1/kv/${key}${query}`, { headers })
  return { status: res.status, body: await res.text(), headers: res.headers }
}

async function put(url: string, key: string, value: string, ack: string): Promise<Response> {
  const res = await fetch(`${url}/v1/kv/${key}?ack=${ack}`, { method: 'PUT', body: value })
  expect(res.status, await res.clone().text()).toBe(200)
  return res
}

async function listKeys(url: string, query: string): Promise<string[]> {
  const res = await fetch(`${url}/v1/kv?${query}`)
  expect(res.status).toBe(200)
  const page = (await res.json()) as { items: { key: string; valueBase64?: string }[] }
  return page.items.map(
    (i) => `${i.key}=${Buffer.from(i.valueBase64 ?? '', 'base64').toString('utf8')}`,
  )
}

function kv(
  args: string[],
  url = cluster.members.map((m) => m.url).join(','),
): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [kvBin, '--url', url, ...args],
      { env: { PATH: process.env.PATH, ...rootEnv() }, timeout: 30_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1
        resolve({ code, out: stdout, err: stderr })
      },
    )
  })
}

describe('committed reads', () => {
  it('refuse a bad consistency with KV_ERR_INVALID_ARGUMENT, on keys and listings', async () => {
    const url = cluster.leader.url
    for (const path of ['/v1/kv/x?consistency=majority', '/v1/kv?consistency=strong']) {
      const res = await fetch(`${url}${path}`)
      expect(res.status).toBe(400)
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe(
        'KV_ERR_INVALID_ARGUMENT',
      )
    }
    // A listing is never linearizable.
    const res = await fetch(`${url}/v1/kv?consistency=linearizable`)
    expect(res.status).toBe(400)
    expect(() => new KvClient({ ...rootTls(), url, consistency: 'bogus' as 'default' })).toThrow(
      /consistency must be/,
    )
    const cli = await kv(['get', 'x', '--consistency', 'majority'])
    expect(cli.code).toBe(2)
    expect(cli.err).toMatch(/--consistency must be default, committed or linearizable/)
  })

  it('never show a write that has not committed, on the leader and on a follower', async () => {
    const leader = cluster.leader
    const follower = cluster.followers[0]!
    const stopped = cluster.followers.slice(1)
    expect(stopped).toHaveLength(3)
    // Committed everywhere: ack=all.
    await put(leader.url, 'c/a', 'a0', 'all')
    await put(leader.url, 'c/b', 'b0', 'all')
    const base = await put(leader.url, 'c/gone', 'g0', 'all')
    const baseLsn = Number(base.headers.get('kv-lsn'))
    // The follower learns the commit LSN with the next message from the leader.
    await until('the follower knows the base writes committed', async () => {
      const r = await get(follower.url, 'c/gone', '?consistency=committed')
      return r.status === 200 && Number(r.headers.get('kv-commit-lsn')) >= baseLsn
    })

    for (const m of stopped) cluster.pause(m.id)
    try {
      // At ack=async the leader answers once the write is durable on itself: one more copy
      // (the follower's) is not a majority of five.
      await put(leader.url, 'c/a', 'a1-dirty', 'async')
      await fetch(`${leader.url}/v1/kv/c/gone?ack=async`, { method: 'DELETE' })
      const last = await put(leader.url, 'c/new', 'n1-dirty', 'async')
      const dirtyLsn = Number(last.headers.get('kv-lsn'))
      const session = last.headers.get('kv-session')!
      await until('the follower applied the uncommitted writes', async () => {
        const r = await get(follower.url, 'c/new')
        return r.status === 200
      })

      for (const node of [leader, follower]) {
        const at = `on ${node.id}`
        // Default: the applied state, uncommitted writes included.
        expect((await get(node.url, 'c/a')).body, at).toBe('a1-dirty')
        expect((await get(node.url, 'c/gone')).status, at).toBe(404)
        expect((await get(node.url, 'c/new')).status, at).toBe(200)
        // Committed: the state at the commit LSN.
        const a = await get(node.url, 'c/a', '?consistency=committed')
        expect(a.status, at).toBe(200)
        expect(a.body, at).toBe('a0')
        const commitLsn = Number(a.headers.get('kv-commit-lsn'))
        expect(commitLsn, at).toBeGreaterThanOrEqual(baseLsn)
        expect(commitLsn, at).toBeLessThan(dirtyLsn)
        expect(Number(a.headers.get('kv-applied-lsn')), at).toBeGreaterThanOrEqual(dirtyLsn)
        expect(Number(a.headers.get('etag')?.slice(1, -1)), at).toBeLessThanOrEqual(commitLsn)
        const gone = await get(node.url, 'c/gone', '?consistency=committed')
        expect(gone.status, at).toBe(200)
        expect(gone.body, at).toBe('g0')
        const fresh = await get(node.url, 'c/new', '?consistency=committed')
        expect(fresh.status, at).toBe(404)
        expect((JSON.parse(fresh.body) as { error: { code: string } }).error.code, at).toBe(
          'KV_ERR_KEY_NOT_FOUND',
        )
        // Listing: the committed set of keys, with their committed values.
        expect(await listKeys(node.url, 'prefix=c/&values=true'), at).toEqual([
          'c/a=a1-dirty',
          'c/b=b0',
          'c/new=n1-dirty',
        ])
        expect(await listKeys(node.url, 'prefix=c/&values=true&consistency=committed'), at).toEqual(
          ['c/a=a0', 'c/b=b0', 'c/gone=g0'],
        )
        // Paging through the committed listing one key at a time gives the same keys.
        const paged: string[] = []
        let cursor = ''
        for (;;) {
          const res = await fetch(
            `${node.url}/v1/kv?prefix=c/&limit=1&consistency=committed${cursor ? `&cursor=${cursor}` : ''}`,
          )
          const page = (await res.json()) as {
            items: { key: string }[]
            nextCursor: string | null
            commitLsn?: number
          }
          expect(page.commitLsn, at).toBeDefined()
          paged.push(...page.items.map((i) => i.key))
          if (page.nextCursor === null) break
          cursor = page.nextCursor
        }
        expect(paged, at).toEqual(['c/a', 'c/b', 'c/gone'])
        // A session at the uncommitted write's LSN: a committed read waits for it to commit,
        // and gives up with KV_ERR_REPLICA_BEHIND (naming the commit LSN) when it does not.
        const waited = await get(node.url, 'c/a', '?consistency=committed', {
          'kv-session': session,
          'kv-read-wait-ms': '300',
        })
        expect(waited.status, at).toBe(503)
        const error = (JSON.parse(waited.body) as { error: { code: string; requiredLsn: number } })
          .error
        expect(error, at).toMatchObject({ code: 'KV_ERR_REPLICA_BEHIND', requiredLsn: dirtyLsn })
        // The default level is satisfied by the applied state.
        const applied = await get(node.url, 'c/a', '', { 'kv-session': session })
        expect(applied.body, at).toBe('a1-dirty')
      }

      // The SDK with committed as its default, pointed at the follower.
      const sdk = new KvClient({
        ...rootTls(),
        url: follower.url,
        readFrom: 'any',
        session: false,
        consistency: 'committed',
      })
      try {
        const read = await sdk.get('c/a')
        expect(read?.value.toString()).toBe('a0')
        expect(read?.commitLsn).toBeLessThan(dirtyLsn)
        expect(await sdk.get('c/new')).toBeNull()
        expect((await sdk.get('c/a', { consistency: 'default' }))?.value.toString()).toBe(
          'a1-dirty',
        )
        const page = await sdk.list({ prefix: 'c/' })
        expect(page.items.map((i) => i.key)).toEqual(['c/a', 'c/b', 'c/gone'])
        expect(page.commitLsn).toBeLessThan(dirtyLsn)
      } finally {
        await sdk.close()
      }
      const cli = await kv(['get', 'c/a', '--consistency', 'committed'], leader.url)
      expect(cli.err).toBe('')
      expect(cli.out).toBe('a0')
      const cliList = await kv(['ls', 'c/', '--consistency', 'committed'], leader.url)
      expect(cliList.out).toBe('c/a\nc/b\nc/gone\n')

      // A session read at the committed level waits, and is answered once the write commits.
      const pending = get(follower.url, 'c/a', '?consistency=committed', {
        'kv-session': session,
        'kv-read-wait-ms': '2000',
      })
      await new Promise((resolve) => setTimeout(resolve, 200))
      for (const m of stopped) cluster.resume(m.id)
      const answered = await pending
      // Either the write committed (the leader or the follower, which hold it, won) and the
      // read shows it, or it was rolled back and the read could not reach its session's LSN.
      if (answered.status === 200) {
        expect(answered.body).toBe('a1-dirty')
        expect(Number(answered.headers.get('kv-commit-lsn'))).toBeGreaterThanOrEqual(dirtyLsn)
        const token = answered.headers.get('kv-session')
        expect(token).toBeTruthy()
      } else {
        expect(answered.status).toBe(503)
      }
    } finally {
      for (const m of stopped) cluster.resume(m.id)
    }
    // Once everything commits, both levels agree on every node.
    await cluster.waitForLeader()
    const end = await put(cluster.leader.url, 'c/end', 'e', 'all')
    const endLsn = Number(end.headers.get('kv-lsn'))
    for (const node of cluster.members) {
      await until(`${node.id} knows LSN ${endLsn} committed`, async () => {
        const r = await get(node.url, 'c/end', '?consistency=committed')
        return r.status === 200 && Number(r.headers.get('kv-commit-lsn')) >= endLsn
      })
      expect(await listKeys(node.url, 'prefix=c/&values=true&consistency=committed')).toEqual(
        await listKeys(node.url, 'prefix=c/&values=true'),
      )
    }
  }, 120_000)

  it('with an SDK session, read your own writes at the committed level', async () => {
    const client = new KvClient({
      ...rootTls(),
      url: cluster.members.map((m) => m.url),
      consistency: 'committed',
    })
    try {
      for (let i = 0; i < 20; i++) {
        await client.put(`s/${i}`, `v${i}`, { ack: i % 2 === 0 ? 'async' : 'quorum' })
        expect((await client.get(`s/${i}`))?.value.toString()).toBe(`v${i}`)
      }
      const page = await client.list({ prefix: 's/' })
      expect(page.items).toHaveLength(20)
    } finally {
      await client.close()
    }
    // A token that is not one is refused, as at the default level.
    const bad = await fetch(`${cluster.leader.url}/v1/kv/x?consistency=committed`, {
      headers: { 'kv-session': 'not-a-token' },
    })
    expect(bad.status).toBe(400)
  })
})
