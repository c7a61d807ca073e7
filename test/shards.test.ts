/**
 * Sharding on real processes: two single-leader groups of three (g1 owns slots 0-2047, g2 the
 * rest), TLS and auth as shipped. Each group enforces what it owns; slots move online under
 * quorum writes, through a killed source leader, and past a target that stops answering. After
 * every move, each slot is owned by exactly one group and every acknowledged write is there.
 */
import { slotOfKey, type GroupShardView, type ShardMove } from '@kvstore/protocol'
import { readFile, writeFile } from 'node:fs/promises'
import { TestCluster, until } from '@kvstore/testkit'

let g1: TestCluster
let g2: TestCluster
let mapFile: string

beforeAll(async () => {
  const started = await TestCluster.startShardGroups(2, 3, [
    // A slow copy, so a test can act while a move is in its copy.
    '--shard-move-bytes-per-s-max',
    String(256 * 1024),
  ])
  ;[g1, g2] = started.groups as [TestCluster, TestCluster]
  mapFile = started.mapFile
}, 120_000)
afterAll(async () => {
  await g2?.stop()
  await g1?.stop()
})

interface Answer {
  status: number
  body: Record<string, unknown> & {
    error?: { code: string; leaderUrl?: string | null } & Record<string, unknown>
  }
}

async function call(
  url: string,
  method: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const res = await fetch(url, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  })
  const text = await res.text()
  let parsed: Answer['body'] = {}
  try {
    parsed = text === '' ? {} : (JSON.parse(text) as Answer['body'])
  } catch {
    parsed = { text }
  }
  return { status: res.status, body: parsed }
}

/** A key whose slot is in [first, last], made from `tag` and a counter. */
function keyIn(first: number, last: number, tag: string, from = 0): string {
  for (let i = from; ; i++) {
    const key = `${tag}-${i}`
    const slot = slotOfKey(key)
    if (slot >= first && slot <= last) return key
  }
}

function keysIn(first: number, last: number, tag: string, count: number): string[] {
  const out: string[] = []
  for (let i = 0; out.length < count; i++) {
    const key = `${tag}-${i}`
    const slot = slotOfKey(key)
    if (slot >= first && slot <= last) out.push(key)
  }
  return out
}

const kvUrl = (base: string, key: string) => `${base}/v1/kv/${encodeURIComponent(key)}`

async function view(cluster: TestCluster): Promise<GroupShardView> {
  const leader = await cluster.waitForLeader()
  const answer = await call(`${leader.url}/v1/shards`, 'GET')
  expect(answer.status).toBe(200)
  return answer.body as unknown as GroupShardView
}

/** Who claims `slot` among the groups (authoritative claims): exactly one must. */
async function claimants(slot: number): Promise<string[]> {
  const out: string[] = []
  for (const cluster of [g1, g2]) {
    const v = await view(cluster)
    if (v.claims.some((c) => c.first <= slot && c.last >= slot)) out.push(v.group)
  }
  return out
}

/**
 * A quorum PUT that goes where the shard map says, like a router: it follows NOT_LEADER and
 * WRONG_SHARD, and retries SLOT_MOVING and unavailability with the same request id.
 */
async function routedPut(
  key: string,
  value: string,
  requestId: string,
  deadlineMs = 30_000,
): Promise<{ group: string }> {
  const groups: Record<string, TestCluster> = { g1, g2 }
  let group = slotOfKey(key) < 2048 ? 'g1' : 'g2'
  const deadline = Date.now() + deadlineMs
  for (;;) {
    let url: string | null = null
    try {
      url = (await (groups[group] as TestCluster).waitForLeader(5000)).url
      const answer = await call(`${kvUrl(url, key)}?ack=quorum`, 'PUT', value, {
        'kv-request-id': requestId,
        'content-type': 'application/octet-stream',
      })
      if (answer.status === 200) return { group }
      const code = answer.body.error?.code
      if (code === 'KV_ERR_WRONG_SHARD') group = String(answer.body.error?.group)
      else if (
        code !== 'KV_ERR_SLOT_MOVING' &&
        code !== 'KV_ERR_NOT_LEADER' &&
        code !== 'KV_ERR_ACK_TIMEOUT' &&
        code !== 'KV_ERR_STALE_EPOCH' &&
        code !== 'KV_ERR_SHUTTING_DOWN'
      )
        throw new Error(`PUT ${key}: ${answer.status} ${JSON.stringify(answer.body)}`)
    } catch (err) {
      if (err instanceof Error && err.message.startsWith('PUT ')) throw err
    }
    if (Date.now() > deadline) throw new Error(`PUT ${key} did not succeed in ${deadlineMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** The value of `key` read linearizably from the group that owns it now. */
async function ownerRead(key: string): Promise<{ group: string; value: string | null }> {
  const slot = slotOfKey(key)
  const owners = await claimants(slot)
  expect(owners, `slot ${slot} must have exactly one owner`).toHaveLength(1)
  const group = owners[0] as string
  const leader = await (group === 'g1' ? g1 : g2).waitForLeader()
  const res = await fetch(`${kvUrl(leader.url, key)}?consistency=linearizable`)
  if (res.status === 404) {
    await res.arrayBuffer()
    return { group, value: null }
  }
  expect(res.status).toBe(200)
  return { group, value: await res.text() }
}

async function moveAndWait(
  source: TestCluster,
  slots: string,
  to: string,
  timeoutMs = 60_000,
): Promise<ShardMove> {
  const leader = await source.waitForLeader()
  const started = await call(`${leader.url}/admin/v1/shards/moves`, 'POST', { slots, to })
  expect(started.status, JSON.stringify(started.body)).toBe(202)
  const id = (started.body.move as ShardMove).id
  let finished: ShardMove | undefined
  await until(
    `move ${id} to end`,
    async () => {
      const v = await view(source).catch(() => null)
      finished = v?.history.find((m) => m.id === id)
      return finished !== undefined
    },
    timeoutMs,
    100,
  )
  return finished as ShardMove
}

describe('each group enforces what it owns', () => {
  it('refuses a key of a slot it does not own, naming the owner', async () => {
    const key = keyIn(2048, 4095, 'foreign')
    const leader = await g1.waitForLeader()
    const put = await call(kvUrl(leader.url, key), 'PUT', 'x', {
      'content-type': 'application/octet-stream',
    })
    expect(put.status).toBe(421)
    expect(put.body.error?.code).toBe('KV_ERR_WRONG_SHARD')
    expect(put.body.error?.group).toBe('g2')
    expect(put.body.error?.slot).toBe(slotOfKey(key))
    expect(put.body.error?.endpoints).toEqual(g2.members.map((m) => m.url))
    // Followers refuse reads of it too.
    const follower = g1.followers[0]
    const get = await call(kvUrl((follower as { url: string }).url, key), 'GET')
    expect(get.status).toBe(421)
    // The owner takes it.
    const owner = await g2.waitForLeader()
    const ok = await call(kvUrl(owner.url, key), 'PUT', 'x', {
      'content-type': 'application/octet-stream',
    })
    expect(ok.status).toBe(200)
  })

  it('refuses a batch across groups with KV_ERR_CROSS_SHARD, and keeps hash-tagged keys together', async () => {
    const mine = keyIn(0, 2047, 'batch-a')
    const theirs = keyIn(2048, 4095, 'batch-b')
    const leader = await g1.waitForLeader()
    const cross = await call(`${leader.url}/v1/batch`, 'POST', {
      ops: [
        { op: 'put', key: mine, value: 'a' },
        { op: 'put', key: theirs, value: 'b' },
      ],
    })
    expect(cross.status).toBe(400)
    expect(cross.body.error?.code).toBe('KV_ERR_CROSS_SHARD')
    expect(cross.body.error?.slots).toEqual([slotOfKey(mine), slotOfKey(theirs)])
    expect(cross.body.error?.groups).toEqual(['g1', 'g2'])
    // Nothing was written.
    expect((await call(kvUrl(leader.url, mine), 'GET')).status).toBe(404)

    // {user42} hashes alike whatever follows, so one group takes the whole batch.
    const profile = '{user42}/profile'
    const cart = '{user42}/cart'
    expect(slotOfKey(profile)).toBe(slotOfKey(cart))
    const owner = slotOfKey(profile) < 2048 ? g1 : g2
    const ownerLeader = await owner.waitForLeader()
    const together = await call(`${ownerLeader.url}/v1/batch`, 'POST', {
      ops: [
        { op: 'put', key: profile, value: 'p' },
        { op: 'put', key: cart, value: 'c' },
      ],
    })
    expect(together.status, JSON.stringify(together.body)).toBe(200)
  })

  it('lists only the keys of its own slots', async () => {
    const leader1 = await g1.waitForLeader()
    const leader2 = await g2.waitForLeader()
    const mine = keysIn(0, 2047, 'list', 5)
    const theirs = keysIn(2048, 4095, 'list', 5)
    for (const key of mine)
      expect(
        (
          await call(kvUrl(leader1.url, key), 'PUT', 'v', {
            'content-type': 'application/octet-stream',
          })
        ).status,
      ).toBe(200)
    for (const key of theirs)
      expect(
        (
          await call(kvUrl(leader2.url, key), 'PUT', 'v', {
            'content-type': 'application/octet-stream',
          })
        ).status,
      ).toBe(200)
    const list1 = await call(`${leader1.url}/v1/kv?prefix=list-`, 'GET')
    const list2 = await call(`${leader2.url}/v1/kv?prefix=list-`, 'GET')
    const keys1 = (list1.body.items as { key: string }[]).map((i) => i.key)
    const keys2 = (list2.body.items as { key: string }[]).map((i) => i.key)
    expect(keys1.sort()).toEqual([...mine].sort())
    expect(keys2.sort()).toEqual([...theirs].sort())
  })

  it("refuses the import routes to anyone but another group's member", async () => {
    const leader = await g2.waitForLeader()
    // This test process presents root's certificate: a user, even an admin, may not import.
    const answer = await call(`${leader.url}/internal/v1/shards/import/begin`, 'POST', {
      id: 'forged',
      source: 'g1',
      slots: '2048',
      sourceEpoch: 99,
    })
    expect(answer.status).toBe(401)
    expect(answer.body.error?.code).toBe('KV_ERR_UNAUTHENTICATED')
  })
})

describe('the shard map', () => {
  it("is written into each group's log by its first leader, and SIGHUP reads the directory again", async () => {
    for (const cluster of [g1, g2]) {
      const v = await view(cluster)
      expect(v.map.version).toBe(1)
      expect(v.claims.length).toBeGreaterThan(0)
    }
    // A new group (no slots yet) is added to the file; the running groups learn of it on SIGHUP.
    const file = JSON.parse(await readFile(mapFile, 'utf8')) as {
      groups: { id: string; members: { id: string; url: string }[]; slots: string }[]
    }
    file.groups.push({ id: 'g3', members: [{ id: 'n9', url: 'https://127.0.0.1:1' }], slots: '' })
    await writeFile(mapFile, JSON.stringify(file))
    const leader = await g1.waitForLeader()
    const before = await call(`${leader.url}/admin/v1/shards/moves`, 'POST', {
      slots: '4000',
      to: 'g3',
    })
    expect(before.body.error?.code).toBe('KV_ERR_INVALID_ARGUMENT')
    for (const m of g1.members) m.process?.child.kill('SIGHUP')
    await until('g1 to know g3', async () => (await view(g1)).map.groups.some((g) => g.id === 'g3'))
    // Slot 4000 is g2's: g1 refuses to move it, naming the owner.
    const notMine = await call(`${leader.url}/admin/v1/shards/moves`, 'POST', {
      slots: '4000',
      to: 'g3',
    })
    expect(notMine.body.error?.code).toBe('KV_ERR_WRONG_SHARD')
    file.groups.pop()
    await writeFile(mapFile, JSON.stringify(file))
    for (const m of g1.members) m.process?.child.kill('SIGHUP')
    await until(
      'g1 to forget g3',
      async () => !(await view(g1)).map.groups.some((g) => g.id === 'g3'),
    )
  })
})

describe('online slot moves', () => {
  it('moves slots under quorum writes with no acknowledged write lost and one owner per slot', async () => {
    const keys = keysIn(0, 63, 'load', 40)
    // Seed, so the copy has records to carry.
    for (const key of keys) await routedPut(key, 'seed', `seed-${key}`)
    const acked = new Map<string, string>()
    let stop = false
    let writes = 0
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const key = keys[i % keys.length] as string
        const value = `w${i}`
        await routedPut(key, value, `load-${i}`)
        acked.set(key, value)
        writes++
      }
    })()
    const move = await moveAndWait(g1, '0-63', 'g2')
    // Keep writing a little after the switch: the writer learns the new owner by itself.
    const after = writes
    await until('writes after the move', () => writes > after + 20, 30_000)
    stop = true
    await writer
    expect(move.phase).toBe('done')
    expect(move.version).toBeGreaterThan(1)
    for (let slot = 0; slot <= 63; slot += 21) expect(await claimants(slot)).toEqual(['g2'])
    expect(await claimants(64)).toEqual(['g1'])
    for (const [key, value] of acked) expect(await ownerRead(key)).toEqual({ group: 'g2', value })
    // The source refuses the moved slots, naming the new owner.
    const leader1 = await g1.waitForLeader()
    const refused = await call(kvUrl(leader1.url, keys[0] as string), 'PUT', 'late', {
      'content-type': 'application/octet-stream',
    })
    expect(refused.body.error?.code).toBe('KV_ERR_WRONG_SHARD')
    expect(refused.body.error?.group).toBe('g2')
    expect(refused.body.error?.mapVersion).toBe(move.version)
  }, 120_000)

  it('finishes a move whose source leader is killed in the middle, consistently', async () => {
    const keys = keysIn(100, 199, 'kill', 300)
    const big = 'x'.repeat(4096)
    for (const key of keys) await routedPut(key, big, `kill-seed-${key}`)
    const leader = await g1.waitForLeader()
    const started = await call(`${leader.url}/admin/v1/shards/moves`, 'POST', {
      slots: '100-199',
      to: 'g2',
    })
    expect(started.status).toBe(202)
    const id = (started.body.move as ShardMove).id
    // The copy runs at 256 KiB/s: about 5 s for these records. Kill the leader in it.
    await new Promise((resolve) => setTimeout(resolve, 1500))
    expect((await view(g1)).move?.phase, 'the kill lands in the copy').toBe('copying')
    await g1.kill(leader.id)
    await g1.waitForLeader(30_000)
    let finished: ShardMove | undefined
    await until(
      `move ${id} to end after the failover`,
      async () => {
        finished = (await view(g1).catch(() => null))?.history.find((m) => m.id === id)
        return finished !== undefined
      },
      90_000,
      200,
    )
    await g1.startMember(leader.id)
    expect(finished?.phase).toBe('done')
    const owners = await claimants(150)
    expect(owners).toEqual(['g2'])
    for (const key of keys.slice(0, 50))
      expect(await ownerRead(key)).toEqual({ group: 'g2', value: big })
  }, 180_000)

  it('rolls back a move whose target stops answering, and the source takes writes again', async () => {
    const keys = keysIn(300, 399, 'part', 300)
    const big = 'y'.repeat(4096)
    for (const key of keys) await routedPut(key, big, `part-seed-${key}`)
    const leader = await g1.waitForLeader()
    const started = await call(`${leader.url}/admin/v1/shards/moves`, 'POST', {
      slots: '300-399',
      to: 'g2',
    })
    expect(started.status).toBe(202)
    const id = (started.body.move as ShardMove).id
    await new Promise((resolve) => setTimeout(resolve, 1000))
    // The whole target group stops answering (as if partitioned away).
    for (const m of g2.members) g2.pause(m.id)
    try {
      const aborted = await call(
        `${(await g1.waitForLeader()).url}/admin/v1/shards/moves/abort`,
        'POST',
      )
      expect(aborted.status, JSON.stringify(aborted.body)).toBe(200)
      expect((aborted.body.move as ShardMove).phase).toBe('aborted')
      // g1 owns and takes writes again while g2 is still silent.
      const key = keys[0] as string
      const put = await call(`${kvUrl(leader.url, key)}?ack=quorum`, 'PUT', 'after-abort', {
        'content-type': 'application/octet-stream',
      })
      expect(put.status, JSON.stringify(put.body)).toBe(200)
    } finally {
      for (const m of g2.members) g2.resume(m.id)
    }
    await g2.waitForLeader(30_000)
    expect(await claimants(350)).toEqual(['g1'])
    expect((await view(g1)).history.find((m) => m.id === id)?.phase).toBe('aborted')
    expect(await ownerRead(keys[0] as string)).toEqual({ group: 'g1', value: 'after-abort' })
    expect(await ownerRead(keys[1] as string)).toEqual({ group: 'g1', value: big })
    // The slots can move again afterwards, and the target's leftovers do not leak into it.
    const again = await moveAndWait(g1, '300-399', 'g2', 120_000)
    expect(again.phase).toBe('done')
    expect(await ownerRead(keys[0] as string)).toEqual({ group: 'g2', value: 'after-abort' })
  }, 240_000)
})
