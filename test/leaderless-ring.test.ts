/**
 * Online ring changes in leaderless mode on a real 5-member cluster (N = 3) of kv-node
 * processes with mutual TLS: a sixth member joins, one leaves, a killed one is replaced, all
 * under a continuous w=quorum write load; every acknowledged write stays readable at r=quorum
 * throughout and after, and the replica sets' Merkle roots converge. Also: one change at a
 * time, unknown ids, and a member stopped during a change learning the ring it missed.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import type { Membership } from '@kvstore/protocol'
import { keyPath, LeaderlessCluster, metricTotal, prng, testSeed, waitFor } from '@kvstore/testkit'

interface ClusterView {
  ringVersion: number
  members: { id: string; state: string; up: boolean }[]
  handoffs: {
    member: string
    kind: string
    rangesTotal: number
    rangesDone: number
    keysStreamed: number
    bytesStreamed: number
  }[]
}

async function json<T>(res: Response): Promise<T> {
  return (await res.json()) as T
}

async function view(url: string): Promise<ClusterView> {
  const res = await fetch(`${url}/v1/cluster`, { signal: AbortSignal.timeout(5000) })
  expect(res.status).toBe(200)
  return json<ClusterView>(res)
}

async function members(url: string): Promise<Membership> {
  const res = await fetch(`${url}/admin/v1/members`, { signal: AbortSignal.timeout(5000) })
  expect(res.status).toBe(200)
  return json<Membership>(res)
}

async function admin(
  url: string,
  method: 'POST' | 'DELETE',
  path: string,
  body?: unknown,
): Promise<{
  status: number
  body: { error?: { code: string; message: string } } & Record<string, unknown>
}> {
  const res = await fetch(`${url}${path}`, {
    method,
    signal: AbortSignal.timeout(30_000),
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  })
  return { status: res.status, body: await json(res) }
}

async function put(url: string, key: string, value: string): Promise<number> {
  const res = await fetch(`${url}/v1/kv/${keyPath(key)}?w=quorum`, {
    method: 'PUT',
    body: value,
    signal: AbortSignal.timeout(10_000),
  })
  await res.arrayBuffer()
  return res.status
}

async function get(url: string, key: string): Promise<{ status: number; values: string[] }> {
  const res = await fetch(`${url}/v1/kv/${keyPath(key)}?r=quorum&format=json`, {
    signal: AbortSignal.timeout(10_000),
  })
  const body = (await res.json()) as { siblings?: { valueBase64: string }[] }
  return {
    status: res.status,
    values: (body.siblings ?? []).map((s) => Buffer.from(s.valueBase64, 'base64').toString()),
  }
}

/** Every replica set's Merkle root, as each listed member reports it. */
async function rootsConverged(urls: string[]): Promise<{ ok: boolean; detail: string }> {
  const bySet = new Map<string, Map<string, number>>()
  for (const url of urls) {
    const res = await fetch(`${url}/admin/v1/ranges`)
    const body = await json<{ self: string; ranges: { replicas: string; root: number }[] }>(res)
    for (const r of body.ranges) {
      if (!bySet.has(r.replicas)) bySet.set(r.replicas, new Map())
      bySet.get(r.replicas)?.set(body.self, r.root)
    }
  }
  const differing = [...bySet].filter(
    ([set, roots]) => new Set(roots.values()).size > 1 || roots.size !== set.split(',').length,
  )
  return {
    ok: differing.length === 0 && bySet.size > 0,
    detail: JSON.stringify(differing.slice(0, 5).map(([set, r]) => [set, Object.fromEntries(r)])),
  }
}

/**
 * A bounded write load: `workers` loops writing fresh keys at w=quorum through the members
 * `coordinators()` names, remembering every acknowledged write, and a checker reading
 * acknowledged keys back at r=quorum meanwhile. A read that answers but lacks the value is a
 * lost write; unavailability (503, a refused connection) is counted, not failed.
 */
class Load {
  readonly acked = new Map<string, string>()
  readonly lost: string[] = []
  unavailable = 0
  attempted = 0
  checked = 0
  private running = true
  private readonly loops: Promise<void>[] = []

  constructor(
    private readonly coordinators: () => string[],
    seed: number,
    workers = 3,
  ) {
    const random = prng(seed)
    const pick = () => {
      const urls = this.coordinators()
      return urls[Math.floor(random() * urls.length)] as string
    }
    for (let w = 0; w < workers; w++) {
      this.loops.push(
        (async () => {
          for (let i = 0; this.running && i < 200_000; i++) {
            const key = `load/${w}/${i}`
            const value = `v-${w}-${i}`
            this.attempted++
            try {
              if ((await put(pick(), key, value)) === 200) this.acked.set(key, value)
              else this.unavailable++
            } catch {
              this.unavailable++
            }
          }
        })(),
      )
    }
    this.loops.push(
      (async () => {
        while (this.running) {
          const keys = [...this.acked.keys()]
          if (keys.length === 0) {
            await new Promise((resolve) => setTimeout(resolve, 20))
            continue
          }
          const key = keys[Math.floor(random() * keys.length)] as string
          try {
            const read = await get(pick(), key)
            if (read.status === 200 || read.status === 404) {
              this.checked++
              if (!read.values.includes(this.acked.get(key) as string))
                this.lost.push(`${key}: ${read.status} ${JSON.stringify(read.values)}`)
            } else this.unavailable++
          } catch {
            this.unavailable++
          }
        }
      })(),
    )
  }

  async stop(): Promise<void> {
    this.running = false
    await Promise.all(this.loops)
  }
}

/** Waits until the answering member shows no change in flight; returns its membership. */
async function changeDone(
  url: string,
  logs: () => string,
  timeoutMs = 90_000,
): Promise<Membership> {
  let last: Membership | null = null
  try {
    await waitFor(
      async () => {
        last = await members(url)
        return !last.changeInProgress
      },
      { timeoutMs, message: 'the ring change to finish' },
    )
  } catch (err) {
    throw new Error(`${(err as Error).message}; last: ${JSON.stringify(last)}\n${logs()}`)
  }
  return last as unknown as Membership
}

const clusters: LeaderlessCluster[] = []
afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.close()))
})
afterAll(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.close()))
})

describe('leaderless ring changes, 5 members, N = 3', () => {
  it(
    'join, leave and replace under w=quorum load lose no acknowledged write, and replicas converge',
    { timeout: 300_000 },
    async () => {
      const cluster = await LeaderlessCluster.start(5, ['--replicas', '3'])
      clusters.push(cluster)
      const url = (id: string) => cluster.member(id).url
      // The members the load goes through: in the ring and running.
      let coordinators = ['n1', 'n2', 'n3', 'n4', 'n5']
      const load = new Load(() => coordinators.map(url), testSeed('ll-ring-load'))
      const failure = () =>
        `lost ${load.lost.length}: ${load.lost.slice(0, 5).join('; ')}\n${cluster.logs(undefined, 15)}`
      try {
        // Some data first, so the handoffs have something to move.
        await waitFor(() => load.acked.size >= 1500, { timeoutMs: 60_000, message: '1500 writes' })

        // ---- join n6 --------------------------------------------------------------------------
        const n6 = await cluster.join('n6')
        const added = await admin(url('n1'), 'POST', '/admin/v1/members', {
          id: 'n6',
          clientUrl: n6.url,
          peerUrl: n6.peerUrl,
        })
        expect(added.status, JSON.stringify(added.body)).toBe(200)
        expect(added.body.change).toBe('add')
        // One change at a time; unknown ids are named as such.
        const second = await admin(url('n3'), 'DELETE', '/admin/v1/members/n2')
        expect(second.status).toBe(409)
        expect(second.body.error?.code).toBe('KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS')
        const unknown = await admin(url('n2'), 'DELETE', '/admin/v1/members/n9')
        expect(unknown.status).toBe(404)
        expect(unknown.body.error?.code).toBe('KV_ERR_NOT_A_MEMBER')
        // Every member shows the change while it runs (or already its end).
        const during = await view(url('n4'))
        expect(during.members.find((m) => m.id === 'n6')?.state).toMatch(/joining|owner/)
        const joined = await changeDone(url('n1'), () => cluster.logs(undefined, 25))
        expect(joined.members.find((m) => m.id === 'n6')?.role).toBe('owner')
        coordinators = [...coordinators, 'n6']
        expect(await metricTotal(url('n6'), 'kv_handoff_keys_streamed_total')).toBeGreaterThan(0)
        expect(load.lost, failure()).toEqual([])

        // ---- n2 leaves while n5 is down ------------------------------------------------------
        // n5 misses the start of the change. n2 pushes its ranges to the members that take them
        // over, n5 among them: the leave waits for n5 (a write acknowledged on n2 and one other
        // replica would otherwise have too few copies once n2 is gone).
        coordinators = coordinators.filter((id) => id !== 'n5')
        await cluster.stop('n5')
        const before = (await members(url('n4'))).version
        const left = await admin(url('n4'), 'DELETE', '/admin/v1/members/n2')
        expect(left.status, JSON.stringify(left.body)).toBe(200)
        expect(left.body.change).toBe('remove')
        coordinators = coordinators.filter((id) => id !== 'n2')
        // The change is under way: every running member shows n2 leaving and the handoff.
        const leaving = await view(url('n1'))
        expect(leaving.ringVersion).toBeGreaterThan(before)
        expect(leaving.members.find((m) => m.id === 'n2')?.state).toBe('leaving')
        expect(leaving.handoffs).toMatchObject([{ member: 'n2', kind: 'leave' }])
        expect(leaving.handoffs[0]?.rangesTotal).toBeGreaterThan(0)
        await new Promise((resolve) => setTimeout(resolve, 2000))
        expect((await members(url('n4'))).changeInProgress).toBe(true)
        // n5 comes back with the ring it had, and learns the newer one.
        await cluster.startMember('n5')
        await waitFor(async () => (await view(url('n5'))).ringVersion > before, {
          timeoutMs: 20_000,
          message: 'n5 to learn the ring it missed',
        })
        coordinators = [...coordinators, 'n5']
        const afterLeave = await changeDone(url('n4'), () => cluster.logs(undefined, 25))
        expect(afterLeave.members.map((m) => m.id)).not.toContain('n2')
        expect(afterLeave.removed).toContain('n2')
        await waitFor(async () => (await view(url('n5'))).ringVersion === afterLeave.version, {
          timeoutMs: 20_000,
          message: 'n5 to hold the ring after the leave',
        })
        expect(load.lost, failure()).toEqual([])
        expect(await metricTotal(url('n2'), 'kv_handoff_keys_streamed_total')).toBeGreaterThan(0)
        await cluster.stop('n2')

        // ---- n3 dies and is replaced by n7 ----------------------------------------------------
        coordinators = coordinators.filter((id) => id !== 'n3')
        await cluster.stop('n3')
        await waitFor(async () => !(await view(url('n1'))).members.find((m) => m.id === 'n3')?.up, {
          timeoutMs: 20_000,
          message: 'n1 to see n3 down',
        })
        const n7 = await cluster.join('n7')
        const replaced = await admin(url('n1'), 'POST', '/admin/v1/members/n3/replace', {
          id: 'n7',
          clientUrl: n7.url,
          peerUrl: n7.peerUrl,
        })
        expect(replaced.status, JSON.stringify(replaced.body)).toBe(200)
        expect(replaced.body.change).toBe('replace')
        const afterReplace = await changeDone(url('n1'), () => cluster.logs(undefined, 25))
        expect(afterReplace.members.map((m) => m.id).sort()).toEqual(['n1', 'n4', 'n5', 'n6', 'n7'])
        expect(afterReplace.removed).toEqual(['n2', 'n3'])
        coordinators = [...coordinators, 'n7']
        // More writes through the final ring.
        const ackedBefore = load.acked.size
        await waitFor(() => load.acked.size >= ackedBefore + 300, {
          timeoutMs: 60_000,
          message: '300 more writes after the replace',
        })
      } finally {
        await load.stop()
      }
      expect(load.lost, failure()).toEqual([])
      expect(load.checked).toBeGreaterThan(100)

      // Every member of the final ring agrees on it.
      const final = cluster.running.map((m) => m.url)
      const views = await Promise.all(final.map(view))
      expect(new Set(views.map((v) => v.ringVersion)).size).toBe(1)
      for (const v of views) {
        expect(v.handoffs).toEqual([])
        expect(v.members.every((m) => m.state === 'owner')).toBe(true)
      }

      // Every acknowledged write is readable at r=quorum after the changes.
      const missing: string[] = []
      for (const [key, value] of load.acked) {
        let read = await get(final[missing.length % final.length] as string, key)
        for (let retry = 0; retry < 3 && read.status === 503; retry++)
          read = await get(final[0] as string, key)
        if (read.status !== 200 || !read.values.includes(value))
          missing.push(`${key}: ${read.status} ${JSON.stringify(read.values)}`)
      }
      expect(missing.slice(0, 10), `${missing.length} of ${load.acked.size} missing`).toEqual([])

      // Anti-entropy brings every replica set of the final ring to the same Merkle root.
      await waitFor(
        async () => {
          for (const u of final) {
            const res = await fetch(`${u}/admin/v1/anti-entropy`, { method: 'POST' })
            await res.arrayBuffer()
          }
          return (await rootsConverged(final)).ok
        },
        {
          timeoutMs: 60_000,
          message: `roots to converge: ${(await rootsConverged(final)).detail}`,
        },
      )
    },
  )

  it(
    'a joining member killed mid-handoff resumes it when restarted; removing a joining member aborts its join',
    { timeout: 240_000 },
    async () => {
      const cluster = await LeaderlessCluster.start(5, ['--replicas', '3'])
      clusters.push(cluster)
      const url = (id: string) => cluster.member(id).url
      const random = prng(testSeed('ll-ring-resume'))
      const written = new Map<string, string>()
      for (let i = 0; i < 1500; i++) {
        const key = `resume/${i}`
        const value = `v-${i}-${Math.floor(random() * 1e9)}`
        expect(await put(url(`n${1 + (i % 5)}`), key, value)).toBe(200)
        written.set(key, value)
      }
      // Slow streams (64 KiB/s), so the handoff is still running when n6 is killed.
      const n6 = await cluster.join('n6', ['--handoff-max-rate', '65536'])
      const added = await admin(url('n2'), 'POST', '/admin/v1/members', {
        id: 'n6',
        clientUrl: n6.url,
        peerUrl: n6.peerUrl,
      })
      expect(added.status, JSON.stringify(added.body)).toBe(200)
      await waitFor(async () => (await metricTotal(n6.url, 'kv_handoff_keys_streamed_total')) > 0, {
        timeoutMs: 30_000,
        message: 'n6 to stream some keys',
      })
      await cluster.stop('n6')
      // The change stays in flight while n6 is down; quorum writes still succeed, now needing
      // every old owner of the keys moving to n6.
      expect((await members(url('n1'))).changeInProgress).toBe(true)
      for (let i = 0; i < 50; i++) {
        const key = `resume/during/${i}`
        expect(await put(url(`n${1 + (i % 5)}`), key, 'during')).toBe(200)
        written.set(key, 'during')
      }
      // Restarted on its data directory (no --join needed: the ring is kept there), n6 goes on
      // from where its streams were and ends the change.
      await cluster.startMember('n6', ['--handoff-max-rate', '64MiB'])
      const done = await changeDone(url('n1'), () => cluster.logs(['n1', 'n6'], 25))
      expect(done.members.find((m) => m.id === 'n6')?.role).toBe('owner')
      for (const [key, value] of written) {
        const read = await get(url('n6'), key)
        expect(read.values, key).toContain(value)
      }

      // n7 joins and is removed while joining: its join is aborted.
      const n7 = await cluster.join('n7', ['--handoff-max-rate', '65536'])
      const joining = await admin(url('n3'), 'POST', '/admin/v1/members', {
        id: 'n7',
        clientUrl: n7.url,
        peerUrl: n7.peerUrl,
      })
      expect(joining.status, JSON.stringify(joining.body)).toBe(200)
      const aborted = await admin(url('n4'), 'DELETE', '/admin/v1/members/n7')
      expect(aborted.status, JSON.stringify(aborted.body)).toBe(200)
      const after = await changeDone(url('n4'), () => cluster.logs(['n4', 'n7'], 25))
      expect(after.members.map((m) => m.id)).toEqual(['n1', 'n2', 'n3', 'n4', 'n5', 'n6'])
      expect(after.removed).toEqual([])
      for (const [key, value] of [...written].slice(0, 200)) {
        const read = await get(url('n3'), key)
        expect(read.values, key).toContain(value)
      }
    },
  )
})
