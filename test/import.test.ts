/**
 * kv import throttles itself on replication lag: it must never push a follower far behind,
 * even when the follower stalls, and every record must arrive.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { KvClient } from '@kvstore/client'
import { runImport } from '../packages/cli/src/import.js'
import { TestCluster } from '@kvstore/testkit'
import { rootTls } from './support/certs.js'

let cluster: TestCluster
beforeAll(async () => {
  cluster = await TestCluster.start(3)
})
afterAll(async () => {
  await cluster.stop()
})

it('slows down while a follower lags, keeps its lag bounded, and loads everything', async () => {
  const file = join(cluster.dir, 'big.ndjson')
  const total = 60_000
  const lines: string[] = []
  for (let i = 0; i < total; i++)
    lines.push(JSON.stringify({ key: `big/${i}`, value: `v${i}-${'x'.repeat(80)}` }))
  await writeFile(file, `${lines.join('\n')}\n`)

  const stalled = cluster.followers[0]!
  // The follower stalls for 600 ms out of every second while the import runs.
  let running = true
  const staller = (async () => {
    while (running) {
      cluster.pause(stalled.id)
      await new Promise((r) => setTimeout(r, 600))
      cluster.resume(stalled.id)
      await new Promise((r) => setTimeout(r, 400))
    }
  })()
  const client = new KvClient({ ...rootTls(), url: cluster.leader.url })
  let summary
  try {
    summary = await runImport(client, {
      file,
      format: 'ndjson',
      chunk: 500,
      concurrency: 4,
      maxLagMs: 300,
      ack: 'async',
      progress: new PassThrough(),
    })
  } finally {
    running = false
    await staller
    cluster.resume(stalled.id)
  }
  expect(summary.records).toBe(total)
  // It held back while the follower stalled...
  expect(summary.throttledMs).toBeGreaterThan(0)
  // ...so the lag it let build up stayed within about one stall (not minutes).
  expect(summary.maxLagSeenMs).toBeLessThan(3000)
  await cluster.waitForApplied()
  const digests = await Promise.all(cluster.members.map((m) => cluster.digest(m.id)))
  expect(new Set(digests.map((d) => d.digest)).size).toBe(1)
  expect(digests[0]?.keys).toBe(total)
  await client.close()
}, 120_000)
