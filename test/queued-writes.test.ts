/**
 * Queued writes (ack=queued) on real 3-node single-leader clusters (TLS, auth on):
 * - writes a follower accepts while the leader is paused (SIGSTOP) are all applied after the
 *   election, in each session's order;
 * - a queued conditional write whose condition no longer holds ends `failed` with its code;
 * - a full outbox refuses new queued writes with KV_ERR_OUTBOX_FULL (503, Retry-After);
 * - a member killed (-9) with a non-empty outbox delivers it after its restart, each write
 *   exactly once (the key's version is the ticket's LSN);
 * - the teeth: with --unsafe-outbox-apply-twice that exactly-once check fails.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { KvClient, TicketWaitTimeoutError } from '@kvstore/client'
import { TestCluster, kvBin, until, type ClusterMember } from '@kvstore/testkit'
import { rootEnv, rootTls } from './support/certs.js'

/** Runs the built kv CLI as root; resolves with its exit code and standard output. */
async function kv(...args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [kvBin, ...args], {
      env: { ...process.env, ...rootEnv() },
    })
    return { code: 0, stdout }
  } catch (err) {
    const e = err as { code?: number; stdout?: string }
    return { code: e.code ?? -1, stdout: e.stdout ?? '' }
  }
}

interface Ticket {
  ticket: string
  status: 'pending' | 'applied' | 'failed'
  acceptedAtMs: number
  lsn?: number
  session?: string
  appliedAtMs?: number
  error?: { code: string; message: string; details: Record<string, unknown> }
}

interface Answer {
  status: number
  headers: Headers
  body: Record<string, unknown>
}

async function send(
  url: string,
  method: string,
  path: string,
  body?: string,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const res = await fetch(`${url}${path}`, {
    method,
    headers,
    ...(body !== undefined ? { body } : {}),
    signal: AbortSignal.timeout(10_000),
  })
  const text = await res.text()
  return {
    status: res.status,
    headers: res.headers,
    body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
  }
}

/** A queued PUT on `member`; returns the ticket id (fails on anything but 202). */
async function putQueued(
  member: ClusterMember,
  key: string,
  value: string,
  headers: Record<string, string> = {},
): Promise<string> {
  const answer = await send(member.url, 'PUT', `/v1/kv/${key}?ack=queued`, value, headers)
  expect(answer.status, JSON.stringify(answer.body)).toBe(202)
  expect(answer.body.node).toBe(member.id)
  expect(answer.body.status).toBe('pending')
  expect(answer.headers.get('location')).toBe(`/v1/tickets/${String(answer.body.ticket)}`)
  return answer.body.ticket as string
}

async function ticketOf(member: ClusterMember, id: string): Promise<Ticket> {
  const answer = await send(member.url, 'GET', `/v1/tickets/${id}`)
  expect(answer.status, JSON.stringify(answer.body)).toBe(200)
  return answer.body as unknown as Ticket
}

/** Waits until every ticket has finished; returns them in the order given. */
async function finished(
  member: ClusterMember,
  ids: string[],
  timeoutMs = 30_000,
): Promise<Ticket[]> {
  const done = new Map<string, Ticket>()
  await until(
    `${ids.length} tickets on ${member.id} to finish`,
    async () => {
      for (const id of ids) {
        if (done.has(id)) continue
        const ticket = await ticketOf(member, id)
        if (ticket.status === 'pending') return false
        done.set(id, ticket)
      }
      return true
    },
    timeoutMs,
    50,
  )
  return ids.map((id) => done.get(id) as Ticket)
}

/** A key's version (ETag) as the leader has it. */
async function versionOf(url: string, key: string): Promise<number> {
  const res = await fetch(`${url}/v1/kv/${key}`)
  await res.arrayBuffer()
  expect(res.status).toBe(200)
  return Number((res.headers.get('etag') ?? '').replaceAll('"', ''))
}

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
  return line === undefined ? NaN : Number(line.split(' ').pop())
}

describe('queued writes on a follower', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('a failed condition ends the ticket failed with its code; a held one applies', async () => {
    const leader = cluster.leader
    const follower = cluster.followers[0] as ClusterMember
    const put = await send(leader.url, 'PUT', '/v1/kv/cond/a?ack=quorum', 'v1')
    expect(put.status).toBe(200)
    const version = put.body.version as number
    const ids = [
      await putQueued(follower, 'cond/a', 'x', { 'if-match': `"${version + 1000}"` }),
      await putQueued(follower, 'cond/a', 'y', { 'if-none-match': '*' }),
      await putQueued(follower, 'cond/a', 'z', { 'if-match': `"${version}"` }),
    ]
    const del = await send(follower.url, 'DELETE', '/v1/kv/cond/missing?ack=queued')
    expect(del.status).toBe(202)
    const batch = await send(
      follower.url,
      'POST',
      '/v1/batch',
      JSON.stringify({ ops: [{ op: 'put', key: 'cond/b', value: 'b', ifExists: true }] }),
      { 'kv-ack': 'queued', 'content-type': 'application/json' },
    )
    expect(batch.status).toBe(202)
    ids.push(del.body.ticket as string, batch.body.ticket as string)
    const [wrongVersion, notAbsent, held, missing, batchFailed] = await finished(follower, ids)
    expect(wrongVersion?.status).toBe('failed')
    expect(wrongVersion?.error?.code).toBe('KV_ERR_PRECONDITION_FAILED')
    expect(wrongVersion?.error?.details.currentVersion).toBe(version)
    expect(notAbsent?.error?.code).toBe('KV_ERR_PRECONDITION_FAILED')
    expect(held?.status).toBe('applied')
    expect(await versionOf(leader.url, 'cond/a')).toBe(held?.lsn)
    expect(missing?.error?.code).toBe('KV_ERR_KEY_NOT_FOUND')
    expect(batchFailed?.error?.code).toBe('KV_ERR_PRECONDITION_FAILED')
    // Only the member that took it knows a ticket; another names it.
    const elsewhere = await send(leader.url, 'GET', `/v1/tickets/${ids[0]}`)
    expect(elsewhere.status).toBe(404)
    expect(elsewhere.body.error).toMatchObject({
      code: 'KV_ERR_TICKET_NOT_FOUND',
      node: follower.id,
      url: follower.url,
    })
  })

  it('the SDK and the CLI queue writes and wait for their tickets', async () => {
    const follower = cluster.followers[0] as ClusterMember
    const client = new KvClient({ url: [follower.url], ...rootTls() })
    try {
      const queued = await client.putQueued('sdk/a', 'hello')
      expect(queued).toMatchObject({ node: follower.id, status: 'pending', url: follower.url })
      const ticket = await client.waitTicket(queued.ticket, { timeoutMs: 10_000 })
      expect(ticket.status).toBe('applied')
      expect((await client.get('sdk/a'))?.version).toBe(ticket.lsn)
      const failed = await client.deleteQueued('sdk/missing')
      expect((await client.waitTicket(failed.ticket)).error?.code).toBe('KV_ERR_KEY_NOT_FOUND')
      const batch = await client.batchQueued([
        { op: 'put', key: 'sdk/b', value: '1' },
        { op: 'delete', key: 'sdk/a' },
      ])
      expect((await client.waitTicket(batch.ticket)).status).toBe('applied')
      // A ticket another member holds is found through the one asked.
      const leaderClient = new KvClient({ url: [cluster.leader.url], ...rootTls() })
      expect((await leaderClient.ticket(batch.ticket)).status).toBe('applied')
      await leaderClient.close()
      expect(TicketWaitTimeoutError.name).toBe('TicketWaitTimeoutError')
    } finally {
      await client.close()
    }
    const put = await kv('--url', follower.url, 'put', 'cli/a', 'v', '--ack', 'queued', '--json')
    expect(put.code).toBe(0)
    const id = (JSON.parse(put.stdout) as { ticket: string }).ticket
    const waited = await kv('--url', follower.url, 'ticket', id, '--wait', '--timeout-ms', '10000')
    expect(waited).toMatchObject({ code: 0 })
    expect(waited.stdout).toMatch(new RegExp(`^applied ${id.replace('.', '\\.')} at lsn \\d+`))
    const cond = await kv(
      '--url',
      follower.url,
      'put',
      'cli/a',
      'w',
      '--ack',
      'queued',
      '--if-absent',
    )
    expect(cond.stdout).toMatch(/^OK queued cli\/a on n\d: ticket (\S+)/)
    const condId = /ticket (\S+)/.exec(cond.stdout)?.[1] as string
    const failed = await kv('--url', follower.url, 'ticket', condId, '--wait')
    expect(failed.code).toBe(4)
    expect(failed.stdout).toContain('KV_ERR_PRECONDITION_FAILED')
  })

  it('writes accepted while the leader is paused are applied after the election, in session order', async () => {
    const old = cluster.leader
    const follower = cluster.followers[0] as ClusterMember
    const sessions = 3
    const perSession = 15
    cluster.pause(old.id)
    const accepted: string[][] = []
    try {
      // Each session writes its keys one after another, and a shared key last-writer-wins.
      await Promise.all(
        Array.from({ length: sessions }, async (_, s) => {
          const ids: string[] = []
          for (let i = 0; i < perSession; i++) {
            ids.push(await putQueued(follower, `sess/${s}/${i}`, `v${i}`))
            ids.push(await putQueued(follower, `sess/${s}/last`, `v${i}`))
          }
          accepted[s] = ids
        }),
      )
      // The leader is still paused: a new one takes over, and the outbox drains to it.
      await until(
        'a new leader',
        async () => {
          const view = await send(follower.url, 'GET', '/v1/cluster')
          return typeof view.body.leaderId === 'string' && view.body.leaderId !== old.id
        },
        20_000,
        50,
      )
      const leaderId = (await send(follower.url, 'GET', '/v1/cluster')).body.leaderId as string
      const leader = cluster.member(leaderId)
      for (let s = 0; s < sessions; s++) {
        const tickets = await finished(follower, accepted[s] as string[])
        expect(tickets.map((t) => t.status)).toEqual(tickets.map(() => 'applied'))
        const lsns = tickets.map((t) => t.lsn as number)
        // Per-session order: each write's LSN is above the one accepted before it.
        expect(lsns).toEqual([...lsns].sort((a, b) => a - b))
        expect(new Set(lsns).size).toBe(lsns.length)
        const last = await fetch(`${leader.url}/v1/kv/sess/${s}/last`)
        expect(await last.text()).toBe(`v${perSession - 1}`)
        for (let i = 0; i < perSession; i++)
          expect(await versionOf(leader.url, `sess/${s}/${i}`)).toBe(tickets[2 * i]?.lsn)
      }
      expect(await metric(follower.url, 'kv_outbox_entries')).toBe(0)
      expect(
        await metric(follower.url, 'kv_outbox_forwarded_total{result="applied"}'),
      ).toBeGreaterThanOrEqual(sessions * perSession * 2)
    } finally {
      cluster.resume(old.id)
    }
    await cluster.waitForLeader()
  })
})

describe('a full outbox, and a member killed with a non-empty one', () => {
  let cluster: TestCluster
  const entriesMax = 40
  beforeAll(async () => {
    cluster = await TestCluster.start(3, ['--outbox-entries-max', String(entriesMax)])
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('refuses past the limit, then delivers everything exactly once after a kill -9 and a restart', async () => {
    const leader = cluster.leader
    const [f1, f2] = cluster.followers as [ClusterMember, ClusterMember]
    // No leader is reachable from f1: its outbox only fills.
    await cluster.kill(f2.id)
    cluster.pause(leader.id)
    const ids: string[] = []
    try {
      for (let i = 0; i < entriesMax; i++) ids.push(await putQueued(f1, `out/${i}`, `v${i}`))
      const refused = await send(f1.url, 'PUT', '/v1/kv/out/extra?ack=queued', 'x')
      expect(refused.status).toBe(503)
      expect(refused.headers.get('retry-after')).toBe('1')
      expect(refused.body.error).toMatchObject({
        code: 'KV_ERR_OUTBOX_FULL',
        reason: 'entries',
        limit: entriesMax,
      })
      expect(await metric(f1.url, 'kv_outbox_entries')).toBe(entriesMax)
      expect(await metric(f1.url, 'kv_outbox_refused_total{reason="entries"}')).toBe(1)
      await cluster.kill(f1.id)
    } finally {
      cluster.resume(leader.id)
    }
    await cluster.startMember(f2.id)
    await cluster.startMember(f1.id)
    const tickets = await finished(f1, ids)
    const now = await cluster.waitForLeader()
    expect(tickets.map((t) => t.status)).toEqual(ids.map(() => 'applied'))
    for (let i = 0; i < entriesMax; i++)
      expect(await versionOf(now.url, `out/${i}`)).toBe(tickets[i]?.lsn)
  })

  it('teeth: with --unsafe-outbox-apply-twice the exactly-once check fails', async () => {
    const f1 = cluster.followers[0] as ClusterMember
    await cluster.terminate(f1.id)
    await cluster.startMember(f1.id, ['--unsafe-outbox-apply-twice'])
    const ids: string[] = []
    for (let i = 0; i < 5; i++) ids.push(await putQueued(f1, `twice/${i}`, `v${i}`))
    const tickets = await finished(f1, ids)
    const leader = await cluster.waitForLeader()
    let broken = 0
    for (let i = 0; i < ids.length; i++) {
      expect(tickets[i]?.status).toBe('applied')
      if ((await versionOf(leader.url, `twice/${i}`)) !== tickets[i]?.lsn) broken++
    }
    expect(broken).toBe(ids.length)
  })
})
