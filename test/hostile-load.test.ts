/**
 * Hostile load on a real cluster, each bounded in time and kept on loopback:
 *
 * - 5,000 idle sockets from one address take that address's connection slots, not everyone's;
 * - 2 HTTP/2 connections × 256 streams × 1 MiB bodies stay within the in-flight body budget,
 *   and the node's memory under the bound the docs state (docs/security.md);
 * - 4 MiB batch bodies, valid or built to be slow to parse, cost the leader no election;
 * - HTTP/2 rapid reset gets the connection closed, and a probe's p99 stays under the bound the
 *   docs state.
 */
import http2 from 'node:http2'
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { Agent, request } from 'undici'
import { http2Preface, metric, rapidResetPair, TestCluster } from '@kvstore/testkit'
import { rootConnect } from './support/certs.js'

/**
 * RSS a node may reach under the 2 × 256 × 1 MiB load (docs/security.md states it): a node's
 * own footprint (about 150 MiB: V8, LevelDB's block cache and memtable, the read cache) plus
 * the 64 MiB body budget and what the accepted writes cost on their way to disk and to the
 * followers. Without the budget the same load took the leader to 1,413 MiB
 * (KV_TEST_NO_BUDGET=1 runs it so).
 */
const rssBoundBytes = 512 * 1024 * 1024
/** p99 of a probe's GET while another connection resets streams as fast as it can. */
const probeP99BoundMs = 250

let cluster: TestCluster

/** Prints a measured figure (docs/security.md quotes them). */
function figure(text: string): void {
  process.stdout.write(`hostile-load figure: ${text}\n`)
}

beforeAll(async () => {
  cluster = await TestCluster.start(
    3,
    process.env.KV_TEST_NO_BUDGET ? ['--inflight-body-bytes-max', '4GiB'] : [],
  )
})
afterAll(async () => {
  await cluster.stop()
})

/** Elections seen by every member so far (the epochs they report). */
async function epochs(): Promise<number[]> {
  return Promise.all(
    cluster.members.map(
      async (m) => ((await cluster.status(m.id)) as { epoch?: number }).epoch ?? 0,
    ),
  )
}

it('5,000 idle sockets from one address leave a normal client served', async () => {
  const node = cluster.followers[0]!
  const { hostname, port } = new URL(node.url)
  const sockets: Socket[] = []
  const refusedBefore = await metric(node.url, 'kv_connections_refused_total', 'reason="per_ip"')
  try {
    // From 127.0.0.9: a host of its own as far as the node can tell. In bursts of 500, each
    // waited for until the node has closed everything past the address's 512 slots: a burst
    // larger than the listen backlog (511) would leave SYNs to the kernel's retry schedule
    // (1 s, 3 s, 7 s, 15 s), and a socket that arrives after the first 512 met their idle
    // timeout is rightly admitted, so the count would depend on the machine's load.
    for (let burst = 0; burst < 10; burst++) {
      for (let i = 0; i < 500; i++) {
        const socket = connect({ host: hostname, port: Number(port), localAddress: '127.0.0.9' })
        socket.on('error', () => {})
        sockets.push(socket)
      }
      // Everything past the 512 slots of 127.0.0.9 is closed at once.
      await vi.waitFor(
        async () =>
          expect(
            await metric(node.url, 'kv_connections_refused_total', 'reason="per_ip"'),
          ).toBeGreaterThanOrEqual(refusedBefore + Math.max(0, sockets.length - 512)),
        { timeout: 5_000, interval: 50 },
      )
    }
    await new Promise((r) => setTimeout(r, 500))
    // A normal client, from 127.0.0.1, is served at once, over and over.
    let slowestMs = 0
    for (let i = 0; i < 20; i++) {
      const started = performance.now()
      const res = await fetch(`${node.url}/v1/kv/any`, { signal: AbortSignal.timeout(2000) })
      expect([200, 404]).toContain(res.status)
      await res.text()
      slowestMs = Math.max(slowestMs, performance.now() - started)
    }
    expect(slowestMs).toBeLessThan(1000)
    figure(
      `5,000 idle sockets: a normal client's slowest of 20 requests took ${slowestMs.toFixed(0)} ms`,
    )
  } finally {
    for (const s of sockets) s.destroy()
  }
}, 60_000)

it('2 × 256 streams × 1 MiB bodies: the body budget holds, RSS stays bounded', async () => {
  const leader = cluster.leader
  const body = Buffer.alloc(1024 * 1024, 0x61)
  const statuses = new Map<number, number>()
  const overloadedBefore = await metric(leader.url, 'kv_errors_total', 'code="KV_ERR_OVERLOADED"')
  let peakRss = await metric(leader.url, 'kv_process_resident_memory_bytes')
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      peakRss = Math.max(peakRss, await metric(leader.url, 'kv_process_resident_memory_bytes'))
      await new Promise((r) => setTimeout(r, 100))
    }
  })()
  // The client's own session memory must not be what limits the attack (Node's default, 10 MB,
  // would refuse most of these streams on the client side).
  const sessions = [0, 1].map(() =>
    http2.connect(leader.url, { ...rootConnect(), maxSessionMemory: 2048 }),
  )
  try {
    await Promise.all(
      sessions.flatMap((session) =>
        Array.from(
          { length: 256 },
          (_, i) =>
            new Promise<void>((resolve) => {
              const stream = session.request({
                ':method': 'PUT',
                ':path': `/v1/kv/big/${i}?ack=async`,
                'content-length': String(body.length),
              })
              stream.on('response', (h) => {
                const status = Number(h[':status'])
                statuses.set(status, (statuses.get(status) ?? 0) + 1)
                // A refused upload is reset with NO_ERROR after its answer; Node's client may
                // keep the stream open while it still holds body bytes to send.
                setTimeout(resolve, 2000).unref()
              })
              stream.on('error', () => resolve())
              stream.on('close', () => resolve())
              stream.resume()
              stream.end(body)
            }),
        ),
      ),
    )
  } finally {
    sampling = false
    await sampler
    for (const s of sessions) s.destroy()
  }
  // The budget held: past 64 MiB in flight, requests were refused with 503, not buffered; the
  // node's memory stayed under the stated bound.
  expect(statuses.get(503) ?? 0).toBeGreaterThan(256)
  expect(statuses.get(200) ?? 0).toBeGreaterThan(0)
  expect(statuses.get(200) ?? 0).toBeLessThanOrEqual(64 + 8)
  expect(await metric(leader.url, 'kv_errors_total', 'code="KV_ERR_OVERLOADED"')).toBeGreaterThan(
    overloadedBefore,
  )
  expect(peakRss).toBeLessThan(rssBoundBytes)
  figure(
    `2 x 256 x 1 MiB: ${statuses.get(200) ?? 0} taken, ${statuses.get(503) ?? 0} refused with 503; peak RSS ${(peakRss / 2 ** 20).toFixed(0)} MiB`,
  )
  // The node still serves.
  expect((await fetch(`${leader.url}/v1/kv/big/0`)).status).toBeLessThan(500)
}, 120_000)

it('4 MiB batch bodies, valid or built to be slow to parse, cost no election', async () => {
  const before = await epochs()
  const leader = cluster.leader
  const agent = new Agent({ connect: rootConnect(), connections: 8 })
  const valid = JSON.stringify({
    ops: Array.from({ length: 1000 }, (_, i) => ({
      op: 'put',
      key: `batch/${i}`,
      valueBase64: Buffer.alloc(3000, i % 256).toString('base64'),
    })),
  })
  const n = 2 * 1024 * 1024 - 8
  const nested = '['.repeat(n) + ']'.repeat(n)
  const wide = `{"ops":[${'1,'.repeat(2 * 1024 * 1024 - 16)}1]}`
  const answers: number[] = []
  try {
    for (let round = 0; round < 3; round++) {
      await Promise.all(
        [valid, valid, nested, nested, wide].map(async (body) => {
          const res = await request(`${leader.url}/v1/batch?ack=quorum`, {
            method: 'POST',
            dispatcher: agent,
            body,
            headers: { 'content-type': 'application/json' },
          })
          answers.push(res.statusCode)
          await res.body.text()
        }),
      )
    }
  } finally {
    await agent.close()
  }
  figure(
    `4 MiB batches: ${answers.filter((s) => s === 200).length} valid ones written, ${answers.filter((s) => s === 400).length} refused before JSON.parse; epochs ${before.join(',')}`,
  )
  expect(answers.filter((s) => s === 200)).toHaveLength(6)
  expect(answers.filter((s) => s === 400)).toHaveLength(9)
  // Let a heartbeat round pass; no member moved to a new epoch.
  await new Promise((r) => setTimeout(r, 1500))
  expect(await epochs()).toEqual(before)
}, 120_000)

/**
 * One rapid-reset connection, written frame by frame (as the attack is): the HTTP/2 preface,
 * then batches of HEADERS (GET /) each followed at once by RST_STREAM (CANCEL). Resolves when
 * the server closes the connection or `deadline` passes.
 */
function rapidResetConnection(url: string, deadline: number): Promise<'closed' | 'deadline'> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    let stream = 1
    let finished = false
    const socket = tlsConnect({
      host: hostname,
      port: Number(port),
      ...rootConnect(),
      ALPNProtocols: ['h2'],
    })
    const finish = (how: 'closed' | 'deadline') => {
      if (finished) return
      finished = true
      socket.destroy()
      resolve(how)
    }
    socket.on('error', () => finish('closed'))
    socket.on('close', () => finish('closed'))
    socket.on('data', () => {})
    socket.once('secureConnect', () => {
      socket.write(http2Preface())
      const burst = () => {
        if (finished) return
        if (Date.now() > deadline) {
          finish('deadline')
          return
        }
        if (socket.writableLength < 1024 * 1024) {
          const frames: Buffer[] = []
          for (let i = 0; i < 100; i++) {
            frames.push(rapidResetPair(stream, 'https'))
            stream += 2
          }
          socket.write(Buffer.concat(frames))
        }
        setTimeout(burst, 1)
      }
      burst()
    })
  })
}

it('rapid reset closes the connection, and a probe stays fast', async () => {
  const leader = cluster.leader
  const refusedBefore = await metric(
    leader.url,
    'kv_connections_refused_total',
    'reason="rapid_reset"',
  )
  const probe = new Agent({ connect: rootConnect(), allowH2: true })
  const latencies: number[] = []
  const attackEnds = Date.now() + 6000
  const attacker = (async () => {
    const outcomes: string[] = []
    while (Date.now() < attackEnds)
      outcomes.push(await rapidResetConnection(leader.url, attackEnds))
    return outcomes
  })()
  while (Date.now() < attackEnds) {
    const started = performance.now()
    const res = await request(`${leader.url}/v1/kv/any`, { dispatcher: probe })
    await res.body.text()
    latencies.push(performance.now() - started)
    await new Promise((r) => setTimeout(r, 20))
  }
  const outcomes = await attacker
  await probe.close()
  latencies.sort((a, b) => a - b)
  const p99 = latencies[Math.floor(latencies.length * 0.99)] ?? Infinity
  // The server closed the attacking connections (more than once: the attacker reconnects).
  expect(outcomes.filter((o) => o === 'closed').length).toBeGreaterThan(1)
  expect(
    await metric(leader.url, 'kv_connections_refused_total', 'reason="rapid_reset"'),
  ).toBeGreaterThan(refusedBefore)
  figure(
    `rapid reset: ${outcomes.filter((o) => o === 'closed').length} attacking connections closed in 6 s; probe p50 ${(latencies[Math.floor(latencies.length / 2)] ?? 0).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms over ${latencies.length} requests`,
  )
  expect(p99).toBeLessThan(probeP99BoundMs)
}, 60_000)
