import { readFileSync } from 'node:fs'
/**
 * The SDK and the kv command against a real 5-node leaderless cluster (kv-node processes):
 * ring routing to the first replica of each key, siblings and their causal contexts, deletes,
 * w/r/sloppy/repair options, retries through a node that is down, and the errors that must not
 * be retried. Also: a standalone node refuses leaderless options with a stable code, and
 * kv-cluster starts a leaderless cluster with one command.
 */
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import { HashRing } from '@kvstore/core'
import { KvClient, KvError, type LeaderlessClusterView } from '@kvstore/client'
import { runKv } from '../packages/cli/src/kv-command.js'
import { assertBuilt, kvClusterBin, LeaderlessCluster, rejection, until } from '@kvstore/testkit'
import { rootEnv, rootTls } from './support/certs.js'
import { useStandaloneNode } from './support/temp.js'

const failure = (promise: Promise<unknown>): Promise<KvError> => rejection(promise, KvError)

/** Runs `kv` in-process against `url`: exit status and everything it printed. */
async function kv(
  url: string,
  args: string[],
): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  const out: Buffer[] = []
  const err: Buffer[] = []
  stdout.on('data', (c: Buffer) => out.push(c))
  stderr.on('data', (c: Buffer) => err.push(c))
  const stdin = Object.assign(Readable.from([]), { isTTY: true })
  const code = await runKv(['--url', url, ...args], { env: rootEnv(), stdin, stdout, stderr })
  return { code, out: Buffer.concat(out).toString(), err: Buffer.concat(err).toString() }
}

describe('SDK and CLI on a 5-node leaderless cluster', () => {
  let cluster: LeaderlessCluster
  let client: KvClient
  let view: LeaderlessClusterView
  let ring: HashRing
  /** The ids of a key's replicas, in preference order, as the nodes place them. */
  const preference = (key: string) => ring.preferenceList(key, view.replicas)
  const idAt = (url: string) => cluster.memberAt(url).id

  beforeAll(async () => {
    assertBuilt()
    cluster = await LeaderlessCluster.start(5, [
      '--replicas',
      '3',
      '--quorum-timeout-ms',
      '500',
      '--siblings-max',
      '4',
      '--siblings-warn',
      '3',
    ])
    // Seeds are two members only: the client learns the rest from the view.
    client = new KvClient({
      ...rootTls(),
      url: [cluster.member('n3').url, cluster.member('n1').url],
    })
    view = await client.leaderlessCluster()
    ring = new HashRing(
      view.members.map((m) => m.id),
      view.vnodes,
    )
  }, 90_000)
  afterAll(async () => {
    await client?.close()
    await cluster?.close()
  })

  it('learns the mode and the ring from GET /v1/cluster', async () => {
    expect(await client.mode()).toBe('leaderless')
    expect(view).toMatchObject({ mode: 'leaderless', replicas: 3 })
    expect(view.members.map((m) => m.id).sort()).toEqual(['n1', 'n2', 'n3', 'n4', 'n5'])
    expect(view.members.every((m) => m.up)).toBe(true)
    for (const m of view.members) expect(m.clientUrl).toBe(cluster.member(m.id).url)
    expect(view.ring.length).toBeGreaterThan(0)
    expect((await failure(client.cluster())).code).toBe('KV_ERR_UNSUPPORTED_IN_MODE')
  })

  it('rebuilds the nodes’ ring: each arc’s replicas are the preference list of a key in it', async () => {
    const { hash32 } = await import('@kvstore/core')
    // Keys in many arcs: the replicas the node gives the arc are the client's preference list.
    let checked = 0
    for (let i = 0; i < 400; i++) {
      const key = `arc-probe/${i}`
      const position = hash32(key)
      const arc = view.ring.find((a) =>
        a.start < a.end
          ? position > a.start && position <= a.end
          : position > a.start || position <= a.end,
      )
      expect(arc).toBeDefined()
      expect(preference(key)).toEqual(arc?.replicas)
      checked++
    }
    expect(checked).toBe(400)
  })

  it('sends each key straight to the first member of its preference list', async () => {
    const coordinators = new Set<string>()
    for (let i = 0; i < 30; i++) {
      const key = `route/${i}`
      const first = preference(key)[0] as string
      expect((await client.routeFor(key))[0]).toBe(cluster.member(first).url)
      const put = await client.put(key, `v${i}`)
      // The node that coordinated is the key's first replica: no forwarding hop was needed.
      expect(put.coordinator).toBe(first)
      const got = await client.get(key)
      expect(idAt(got?.servedBy ?? '')).toBe(first)
      expect(got?.value.toString()).toBe(`v${i}`)
      coordinators.add(first)
    }
    expect(coordinators.size).toBeGreaterThan(2)
  })

  it('put and get round-trip values with their context, timestamp and acks', async () => {
    const binary = Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i))
    const key = 'rt/spaces and ?#%&/ünïcödé/'
    const put = await client.put(key, binary)
    expect(put).toMatchObject({ key, version: 0, lsn: 0, w: 2, hinted: [], standIns: {} })
    expect(put.acks).toBeGreaterThanOrEqual(2)
    expect(put.context).toEqual(expect.any(String))
    expect(put.timestamp).toMatch(/^\d+\.\d+\.n\d$/)
    const got = await client.get(key, { r: 'all' })
    expect(got?.value.equals(binary)).toBe(true)
    expect(got).toMatchObject({ conflict: false, timestamp: put.timestamp })
    expect(got?.siblings).toHaveLength(1)
    expect(got?.context).toEqual(expect.any(String))
    const all = await client.getSiblings(key)
    expect(all?.siblings.map((s) => s.value.equals(binary))).toEqual([true])
    expect(all?.timestamp).toBe(put.timestamp)
    expect(await client.get('rt/missing')).toBeNull()
    expect(await client.getSiblings('rt/missing')).toBeNull()

    const everyone = await client.put('rt/all', 'x', { w: 'all' })
    expect(everyone).toMatchObject({ acks: 3, w: 3 })
    const one = await client.put('rt/one', 'x', { w: 1 })
    expect(one.w).toBe(1)
    expect(one.acks).toBeGreaterThanOrEqual(1)
    const blocking = await client.get('rt/one', { r: 'all', repair: 'blocking' })
    expect(blocking?.value.toString()).toBe('x')
  })

  it('keeps concurrent writes as siblings, and a write with their context resolves them', async () => {
    const key = 'sib/cart'
    const base = await client.put(key, 'apple', { w: 'all' })
    // Two writers both saw "apple" and each changed it: neither saw the other.
    const b = await client.put(key, 'apple,banana', { context: base.context, w: 'all' })
    const c = await client.put(key, 'apple,cherry', { context: base.context, w: 'all' })
    const siblings = await client.getSiblings(key, { r: 'all' })
    expect(siblings?.siblings.map((s) => s.value.toString()).sort()).toEqual([
      'apple,banana',
      'apple,cherry',
    ])
    // Newest first.
    expect(siblings?.siblings[0]?.timestamp).toBe(c.timestamp)
    expect(siblings?.siblings[1]?.timestamp).toBe(b.timestamp)
    expect(siblings?.timestamp).toBe(c.timestamp)

    // get flags the conflict: the newest value, every sibling, one context for all of them.
    const got = await client.get(key, { r: 'all' })
    expect(got).toMatchObject({ conflict: true, context: siblings?.context })
    expect(got?.value.toString()).toBe('apple,cherry')
    expect(got?.siblings?.map((s) => s.value.toString())).toEqual(['apple,cherry', 'apple,banana'])

    // The merge, written with the context that saw both, replaces both.
    const merged = await client.put(key, 'apple,banana,cherry', {
      context: siblings?.context ?? '',
      w: 'all',
    })
    const after = await client.get(key, { r: 'all' })
    expect(after).toMatchObject({ conflict: false, timestamp: merged.timestamp })
    expect(after?.value.toString()).toBe('apple,banana,cherry')
    expect((await client.getSiblings(key, { r: 'all' }))?.siblings).toHaveLength(1)

    // A write with a stale context (it never saw the merge) does not overwrite it.
    await client.put(key, 'stale', { context: base.context, w: 'all' })
    const stale = await client.getSiblings(key, { r: 'all' })
    expect(stale?.siblings.map((s) => s.value.toString()).sort()).toEqual([
      'apple,banana,cherry',
      'stale',
    ])
  })

  it('deletes with a context, and reports the tombstone’s write', async () => {
    const key = 'del/k'
    await client.put(key, 'one', { w: 'all' })
    const read = await client.get(key, { r: 'all' })
    const deleted = await client.delete(key, { context: read?.context ?? '', w: 'all' })
    expect(deleted).toMatchObject({ key, deleted: true, acks: 3, w: 3, hinted: [] })
    expect(deleted.coordinator).toBe(preference(key)[0])
    expect(deleted.context).toEqual(expect.any(String))
    expect(await client.get(key, { r: 'all' })).toBeNull()
    expect(await client.getSiblings(key, { r: 'all' })).toBeNull()
    // Writing again after the delete, with the delete's context, gives one value.
    await client.put(key, 'two', { context: deleted.context ?? '', w: 'all' })
    const again = await client.getSiblings(key, { r: 'all' })
    expect(again?.siblings.map((s) => s.value.toString())).toEqual(['two'])
  })

  it('fails at once on a bad context or too many siblings (no retries)', async () => {
    const patient = new KvClient({
      ...rootTls(),
      url: cluster.member('n1').url,
      retryForMs: 10_000,
    })
    try {
      let started = Date.now()
      const invalid = await failure(patient.put('err/ctx', 'v', { context: 'not a context!' }))
      expect(invalid.code).toBe('KV_ERR_INVALID_CONTEXT')
      expect(Date.now() - started).toBeLessThan(2000)

      const key = 'err/many'
      const base = await patient.put(key, 'v0', { w: 'all' })
      for (let i = 1; i <= 4; i++)
        await patient.put(key, `v${i}`, { context: base.context, w: 'all' })
      expect((await patient.getSiblings(key, { r: 'all' }))?.siblings).toHaveLength(4)
      started = Date.now()
      const many = await failure(patient.put(key, 'v5', { w: 'all' }))
      expect(many.code).toBe('KV_ERR_TOO_MANY_SIBLINGS')
      expect(Date.now() - started).toBeLessThan(2000)
      // Resolving with the context of a read is still allowed.
      const all = await patient.getSiblings(key, { r: 'all' })
      await patient.put(key, 'resolved', { context: all?.context ?? '', w: 'all' })
      expect((await patient.get(key, { r: 'all' }))?.value.toString()).toBe('resolved')
    } finally {
      await patient.close()
    }
  })

  it('refuses single-leader options with KV_ERR_UNSUPPORTED_IN_MODE', async () => {
    expect((await failure(client.put('opt/k', 'v', { ifAbsent: true }))).code).toBe(
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )
    expect((await failure(client.put('opt/k', 'v', { ack: 'all' }))).code).toBe(
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )
    expect((await failure(client.get('opt/k', { consistency: 'linearizable' }))).code).toBe(
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )
    expect((await failure(client.put('opt/k', 'v', { w: 0 }))).code).toBe('KV_ERR_INVALID_ARGUMENT')
  })

  it('a write repeated with the same requestId is stored once; without one it is a sibling', async () => {
    await client.put('idem/sdk', 'once', { requestId: 'sdk-order-1' })
    await client.put('idem/sdk', 'once', { requestId: 'sdk-order-1' })
    expect((await client.getSiblings('idem/sdk'))?.siblings.map((s) => s.value.toString())).toEqual(
      ['once'],
    )
    await client.put('idem/sdk2', 'twice')
    await client.put('idem/sdk2', 'twice')
    expect((await client.getSiblings('idem/sdk2'))?.siblings).toHaveLength(2)
  })

  it('kv get, put, del and cluster speak leaderless', async () => {
    const url = cluster.member('n2').url
    const put = await kv(url, ['put', 'cli/k', 'hello', '--w', 'all'])
    expect(put).toMatchObject({ code: 0, err: '' })
    expect(put.out).toMatch(/^OK wrote cli\/k \(3 acks, w=3, coordinator n\d\) context \S+\n$/)
    expect(await kv(url, ['get', 'cli/k', '--r', 'quorum', '--repair', 'blocking'])).toMatchObject({
      code: 0,
      out: 'hello',
    })
    const json = await kv(url, ['--json', 'get', 'cli/k'])
    const parsed = JSON.parse(json.out) as {
      context: string
      valueBase64: string
      siblings: { valueBase64: string; timestamp: string }[]
    }
    expect(Buffer.from(parsed.valueBase64, 'base64').toString()).toBe('hello')
    expect(parsed.siblings).toHaveLength(1)

    // Two writes from the same context: kv get shows both, with the context that resolves them.
    expect((await kv(url, ['put', 'cli/k', 'left', '--context', parsed.context])).code).toBe(0)
    expect(
      (await kv(url, ['put', 'cli/k', 'right', '--context', parsed.context, '--w', 'all'])).code,
    ).toBe(0)
    await until('both siblings on a quorum', async () => {
      const s = await client.getSiblings('cli/k', { r: 'all' })
      return s?.siblings.length === 2
    })
    const both = await kv(url, ['get', 'cli/k', '--r', 'all'])
    expect(both.code).toBe(5)
    const token = /--context (\S+)/.exec(both.out)?.[1]
    expect(token).toBeDefined()
    expect(both.out).toContain('2 concurrent values')
    expect(both.out).toMatch(/--- sibling 1 of 2, timestamp \S+\nright\n/)
    expect(both.out).toMatch(/--- sibling 2 of 2, timestamp \S+\nleft\n/)
    const bothJson = JSON.parse((await kv(url, ['--json', 'get', 'cli/k', '--r', 'all'])).out) as {
      context: string
      siblings: { valueBase64: string }[]
      valueBase64?: string
    }
    expect(bothJson.context).toBe(token)
    expect(bothJson.valueBase64).toBeUndefined()
    expect(
      bothJson.siblings.map((s) => Buffer.from(s.valueBase64, 'base64').toString()).sort(),
    ).toEqual(['left', 'right'])

    // The resolving write with that context leaves one value.
    const resolved = await kv(url, [
      'put',
      'cli/k',
      'left+right',
      '--context',
      token ?? '',
      '--w',
      'all',
      '--sloppy',
    ])
    expect(resolved.code).toBe(0)
    expect(await kv(url, ['get', 'cli/k', '--r', 'all'])).toMatchObject({
      code: 0,
      out: 'left+right',
    })

    const del = await kv(url, ['del', 'cli/k', '--w', 'all', '--context', token ?? ''])
    expect(del.code).toBe(0)
    expect(del.out).toMatch(/^OK deleted cli\/k \(3 acks, w=3, coordinator n\d\) context \S+\n$/)
    // The delete's context saw only the two siblings, not the resolving write: that survives.
    expect((await kv(url, ['get', 'cli/k', '--r', 'all'])).out).toBe('left+right')
    const latest = JSON.parse((await kv(url, ['--json', 'get', 'cli/k', '--r', 'all'])).out) as {
      context: string
    }
    expect(
      (await kv(url, ['delete', 'cli/k', '--context', latest.context, '--w', 'all'])).code,
    ).toBe(0)
    const gone = await kv(url, ['get', 'cli/k', '--r', 'all'])
    expect(gone.code).toBe(3)
    expect(gone.err).toContain('KV_ERR_KEY_NOT_FOUND')

    expect((await kv(url, ['put', 'cli/x', 'v', '--w', 'most'])).code).toBe(2)
    expect((await kv(url, ['get', 'cli/x', '--repair', 'later'])).code).toBe(2)
    const ack = await kv(url, ['--ack', 'all', 'put', 'cli/x', 'v'])
    expect(ack.code).toBe(1)
    expect(ack.err).toContain('KV_ERR_UNSUPPORTED_IN_MODE')

    const table = await kv(url, ['cluster'])
    expect(table.code).toBe(0)
    expect(table.out).toMatch(/^cluster \S+ \(leaderless\), 3 replicas per key/)
    for (const m of cluster.members) {
      expect(table.out).toMatch(
        new RegExp(
          `\\n  ${m.id} +up +${m.url} +ring +\\d+\\.\\d% \\(\\d+ arcs\\) +hints +\\d+ +anti-entropy`,
        ),
      )
    }
    const tableJson = JSON.parse(
      (await kv(url, ['--json', 'cluster'])).out,
    ) as LeaderlessClusterView
    expect(tableJson.mode).toBe('leaderless')
    expect(tableJson.members).toHaveLength(5)
  })

  it('routes around a dead replica, hints for it, and retries a quorum it cannot reach yet', async () => {
    const key = 'down/k'
    const [first, second] = preference(key) as [string, string]
    await client.put(key, 'before', { w: 'all' })
    await cluster.stop(first)
    try {
      // Its connection fails, so the read goes to the key's next replica at once.
      const got = await client.get(key)
      expect(idAt(got?.servedBy ?? '')).toBe(second)
      expect(got?.value.toString()).toBe('before')

      // Once the nodes see it down, a sloppy write gets a stand-in that holds a hint for it.
      await cluster.waitForViews()
      const put = await client.put(key, 'while down', {
        w: 'all',
        sloppy: true,
        context: got?.context ?? '',
      })
      expect(put.coordinator).toBe(second)
      expect(put.acks).toBe(3)
      expect(put.hinted).toEqual([first])
      // The stand-in is the first member past the key's replicas on the ring.
      expect(put.standIns).toEqual({ [first]: [...ring.walk(key)][3] })

      const url = cluster.member(second).url
      const table = (await kv(url, ['cluster'])).out
      // Down, with the hint the stand-in holds for it (the node asked holds none itself).
      expect(table).toMatch(new RegExp(`\\n  ${first} +DOWN .* hints +[1-9]\\d* +anti-entropy`))
      expect(table).toContain(`from 4 of 5 nodes`)

      // Without sloppy quorums, w=all cannot be met while a replica is down.
      const impatient = new KvClient({ ...rootTls(), url, retryForMs: 0, attempts: 1 })
      try {
        const err = await failure(
          impatient.put('down/strict', 'strict', { w: 'all', sloppy: false }),
        )
        expect(err.code).toBe('KV_ERR_QUORUM_UNAVAILABLE')
        expect(err.details.required).toBe(3)
        // Nor can r=all.
        expect((await failure(impatient.get(key, { r: 'all' }))).code).toBe(
          'KV_ERR_QUORUM_UNAVAILABLE',
        )
      } finally {
        await impatient.close()
      }
      // A client that retries gets an r=all read through once the replica is back.
      const patient = new KvClient({ ...rootTls(), url, retryForMs: 20_000 })
      try {
        const started = Date.now()
        const read = patient.get(key, { r: 'all' })
        await new Promise((resolve) => setTimeout(resolve, 800))
        await cluster.startMember(first)
        const done = await read
        expect(Date.now() - started).toBeGreaterThanOrEqual(800)
        expect(done?.value.toString()).toBe('while down')
        expect(done?.siblings).toHaveLength(1)
      } finally {
        await patient.close()
      }
    } finally {
      if (cluster.member(first).process === null) await cluster.startMember(first)
    }
    await cluster.waitForViews()
    // The replica that was down gets the write it missed (the hint, or repair).
    await until(`${first} to hold the write it missed`, async () => {
      const local = await cluster.local(first, key)
      return (
        local?.siblings.some(
          (s) =>
            !s.tombstone && Buffer.from(s.valueBase64 ?? '', 'base64').toString() === 'while down',
        ) ?? false
      )
    })
  })

  it('finds every node gone with KV_ERR_UNAVAILABLE, and goes on when they are back', async () => {
    const key = 'outage/k'
    await client.put(key, 'before', { w: 'all' })
    // A client that knows the cluster, and one that has never reached it.
    const known = new KvClient({ ...rootTls(), url: cluster.urls, retryForMs: 0, attempts: 1 })
    const lonely = new KvClient({
      ...rootTls(),
      url: cluster.member('n1').url,
      retryForMs: 300,
      attempts: 2,
    })
    expect(await known.mode()).toBe('leaderless')
    const ids = cluster.members.map((m) => m.id)
    for (const id of ids) await cluster.stop(id)
    try {
      expect((await failure(lonely.get(key))).code).toBe('KV_ERR_UNAVAILABLE')
      // It tries every node of the key, then gives up after its budget.
      const started = Date.now()
      const err = await failure(known.get(key))
      expect(err.code).toBe('KV_ERR_UNAVAILABLE')
      expect(Date.now() - started).toBeLessThan(5000)
    } finally {
      await known.close()
      await lonely.close()
      for (const id of ids) if (cluster.member(id).process === null) await cluster.startMember(id)
    }
    await cluster.waitForViews()
    expect((await client.get(key, { r: 'all' }))?.value.toString()).toBe('before')
  })
})

describe('a standalone node', () => {
  const node = useStandaloneNode('kv-ll-standalone-')
  let client: KvClient
  beforeAll(() => {
    client = new KvClient({ ...rootTls(), url: node().url })
  })
  afterAll(async () => {
    await client.close()
  })

  it('keeps single-leader behaviour and refuses leaderless options', async () => {
    expect(await client.mode()).toBe('standalone')
    expect(await client.routeFor('k')).toEqual([])
    const put = await client.put('k', 'v')
    expect(put.version).toBeGreaterThan(0)
    expect(put.context).toBeUndefined()
    const got = await client.get('k')
    expect(got?.value.toString()).toBe('v')
    expect(got?.siblings).toBeUndefined()
    for (const attempt of [
      client.put('k', 'v', { w: 2 }),
      client.put('k', 'v', { context: 'abc' }),
      client.put('k', 'v', { sloppy: true }),
      client.delete('k', { w: 'all' }),
      client.get('k', { r: 1 }),
      client.get('k', { repair: 'blocking' }),
      client.getSiblings('k'),
      client.leaderlessCluster(),
    ]) {
      expect((await failure(attempt)).code).toBe('KV_ERR_UNSUPPORTED_IN_MODE')
    }
    expect((await client.cluster()).mode).toBe('standalone')
    const cli = await kv(node().url, ['put', 'k', 'v', '--w', '2'])
    expect(cli.code).toBe(1)
    expect(cli.err).toContain('KV_ERR_UNSUPPORTED_IN_MODE')
    expect((await kv(node().url, ['put', 'k', 'v2'])).out).toMatch(/^OK wrote k version \d+\n$/)
  })
})

describe('kv-cluster --mode leaderless', () => {
  async function portRun(length: number): Promise<number> {
    const free = (port: number) =>
      new Promise<boolean>((resolve) => {
        const server = createServer()
        server.once('error', () => resolve(false))
        server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
      })
    for (let tries = 0; tries < 50; tries++) {
      const base = 20_000 + Math.floor(Math.random() * 30_000)
      let ok = true
      for (let i = 0; i < length && ok; i++) ok = await free(base + i)
      if (ok) return base
    }
    throw new Error('no run of free ports')
  }

  it('starts a 5-node leaderless cluster with one command, and stops it with SIGTERM', async () => {
    assertBuilt()
    const dir = await mkdtemp(join(tmpdir(), 'kv-cluster-ll-'))
    const clientPort = await portRun(5)
    const peerPort = await portRun(5)
    const child = spawn(
      process.execPath,
      [
        kvClusterBin,
        '--mode',
        'leaderless',
        '--nodes',
        '5',
        '--client-port',
        String(clientPort),
        '--peer-port',
        String(peerPort),
        '--data-dir',
        dir,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    let out = ''
    child.stdout.on('data', (c: Buffer) => (out += c.toString()))
    child.stderr.on('data', (c: Buffer) => (out += c.toString()))
    const exited = new Promise<number | null>((resolve) =>
      child.on('exit', (code) => resolve(code)),
    )
    try {
      // The table comes in several writes: wait for its last line.
      await until(
        'the cluster to start',
        () => out.includes('leaderless cluster is running') && out.includes('Ctrl-C stops'),
        60_000,
      )
      expect(out).toContain('A 5-node leaderless cluster is running (3 replicas per key')
      for (let i = 1; i <= 5; i++) {
        expect(out).toMatch(
          new RegExp(`  n${i}  ring +\\d+\\.\\d%  https://127\\.0\\.0\\.1:${clientPort + i - 1} `),
        )
      }
      // kv-cluster made this cluster's certificates in its data directory.
      const certs = join(dir, 'certs')
      const c = new KvClient({
        url: `https://127.0.0.1:${clientPort + 4}`,
        tls: {
          ca: readFileSync(join(certs, 'ca.crt')),
          cert: readFileSync(join(certs, 'root.crt')),
          key: readFileSync(join(certs, 'root.key')),
        },
      })
      try {
        expect(await c.mode()).toBe('leaderless')
        expect((await c.leaderlessCluster()).members).toHaveLength(5)
        const put = await c.put('one/command', 'works', { w: 'all' })
        expect(put.acks).toBe(3)
        expect((await c.get('one/command'))?.value.toString()).toBe('works')
      } finally {
        await c.close()
      }
    } finally {
      child.kill('SIGTERM')
      const code = await exited
      await rm(dir, { recursive: true, force: true })
      expect(code).toBe(0)
    }
    expect(out).toContain('all nodes stopped')
  }, 90_000)

  it('refuses an unknown mode', async () => {
    const child = spawn(process.execPath, [kvClusterBin, '--mode', 'multi-leader'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let err = ''
    child.stderr.on('data', (c: Buffer) => (err += c.toString()))
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)))
    expect(code).toBe(2)
    expect(err).toContain('--mode must be single-leader or leaderless')
  })
})
