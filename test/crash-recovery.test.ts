/**
 * The node keeps every acknowledged write across kill -9, and never shows half a batch.
 *
 * A real kv-node process takes puts and batches from concurrent writers. At a random moment
 * (seeded, printed) it is killed with SIGKILL, then restarted on the same data directory.
 * Every write that got a 2xx must be there with its exact value; every batch, acknowledged or
 * not, must be there entirely or not at all. Three kill cycles per run, then the data
 * directory itself is checked: the log is contiguous and replaying it gives the stored state.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { Store } from '@kvstore/storage'
import { type NodeProcess, prng, startNodeProcess, testSeed } from '@kvstore/testkit'
import { rootConnect } from './support/certs.js'

interface Ledger {
  /** Keys whose put was acknowledged, with their value. */
  acked: Map<string, string>
  /** Batches sent: their keys, value, and whether they were acknowledged. */
  batches: { keys: string[]; value: string; acked: boolean }[]
  /** Writes whose outcome is unknown (in flight at the kill). */
  unknown: number
}

const batchSize = 4

/** Runs `writers` loops of puts and batches against `url` until `stop` is set. */
function load(url: string, writers: number, cycle: number, ledger: Ledger, stop: { now: boolean }) {
  const pool = new Pool(url, {
    connections: writers,
    headersTimeout: 10_000,
    bodyTimeout: 10_000,
    connect: rootConnect(),
  })
  const loops = Array.from({ length: writers }, async (_, w) => {
    for (let seq = 0; !stop.now; seq++) {
      const isBatch = seq % 5 === 4
      try {
        if (isBatch) {
          const value = `batch:${cycle}:${w}:${seq}`
          const keys = Array.from({ length: batchSize }, (_, i) => `b/${cycle}/${w}/${seq}/${i}`)
          const record = { keys, value, acked: false }
          ledger.batches.push(record)
          const res = await pool.request({
            method: 'POST',
            path: '/v1/batch',
            body: JSON.stringify({ ops: keys.map((key) => ({ op: 'put', key, value })) }),
          })
          await res.body.text()
          if (res.statusCode === 200) record.acked = true
        } else {
          const key = `p/${cycle}/${w}/${seq}`
          const value = `${cycle}:${w}:${seq}:${'x'.repeat(seq % 50)}`
          const res = await pool.request({ method: 'PUT', path: `/v1/kv/${key}`, body: value })
          await res.body.text()
          if (res.statusCode === 200) ledger.acked.set(key, value)
        }
      } catch {
        // The connection died with the process: the outcome of this write is unknown.
        ledger.unknown++
        return
      }
    }
  })
  return {
    finished: Promise.all(loops),
    close: () => pool.destroy(),
  }
}

async function checkLedger(
  url: string,
  ledger: Ledger,
): Promise<{ batchesPresent: number; batchesAbsent: number }> {
  const pool = new Pool(url, { connections: 16, connect: rootConnect() })
  try {
    const get = async (key: string): Promise<string | null> => {
      const res = await pool.request({ method: 'GET', path: `/v1/kv/${key}` })
      const body = await res.body.text()
      if (res.statusCode === 404) return null
      expect(res.statusCode).toBe(200)
      return body
    }
    const ackedKeys = [...ledger.acked.entries()]
    for (let i = 0; i < ackedKeys.length; i += 64) {
      await Promise.all(
        ackedKeys.slice(i, i + 64).map(async ([key, value]) => {
          expect(await get(key), `acknowledged put ${key} is missing or wrong`).toBe(value)
        }),
      )
    }
    let batchesPresent = 0
    let batchesAbsent = 0
    for (const batch of ledger.batches) {
      const values = await Promise.all(batch.keys.map(get))
      const present = values.filter((v) => v !== null)
      expect([0, batchSize], `batch ${batch.value} is half applied`).toContain(present.length)
      if (present.length === batchSize) {
        expect(values.every((v) => v === batch.value)).toBe(true)
        batchesPresent++
      } else {
        expect(batch.acked, `acknowledged batch ${batch.value} is missing`).toBe(false)
        batchesAbsent++
      }
    }
    return { batchesPresent, batchesAbsent }
  } finally {
    await pool.close()
  }
}

describe.each([
  { fsync: true, label: 'fsync on' },
  { fsync: false, label: 'fsync off' },
])('kill -9 under write load ($label)', ({ fsync }) => {
  let dir: string
  let node: NodeProcess | null = null

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kv-crash-'))
  })
  afterAll(async () => {
    if (node) {
      node.child.kill('SIGKILL')
      await node.exited
    }
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps every acknowledged write and never half a batch', async () => {
    const seed = testSeed(`crash-recovery fsync=${fsync}`)
    const random = prng(seed)
    const dataDir = join(dir, 'data')
    const args = ['--data-dir', dataDir, '--fsync', String(fsync)]
    const ledger: Ledger = { acked: new Map(), batches: [], unknown: 0 }
    const cycles = 3
    for (let cycle = 0; cycle < cycles; cycle++) {
      node = await startNodeProcess(args)
      // Everything acknowledged before this restart must have survived it.
      await checkLedger(node.url, ledger)
      const stop = { now: false }
      const writes = load(node.url, 32, cycle, ledger, stop)
      const before = ledger.acked.size
      await new Promise((resolve) => setTimeout(resolve, 400 + Math.floor(random() * 1200)))
      process.kill(node.pid, 'SIGKILL')
      stop.now = true
      await node.exited
      await writes.finished
      await writes.close()
      node = null
      // The load must really have been running when the node died.
      expect(ledger.acked.size - before).toBeGreaterThan(100)
    }

    node = await startNodeProcess(args)
    const { batchesPresent, batchesAbsent } = await checkLedger(node.url, ledger)
    const acknowledgedBatches = ledger.batches.filter((b) => b.acked).length
    process.stdout.write(
      `  ${ledger.acked.size} acknowledged puts and ${acknowledgedBatches} acknowledged batches survived ${cycles} kills; ` +
        `${batchesPresent} batches present, ${batchesAbsent} absent, ${ledger.unknown} writes in flight at the kills\n`,
    )
    expect(batchesPresent).toBeGreaterThanOrEqual(acknowledgedBatches)

    // Stop cleanly, then check the data directory itself.
    const digest = (await (await fetch(`${node.url}/v1/digest`)).json()) as {
      digest: string
      appliedLsn: number
    }
    process.kill(node.pid, 'SIGTERM')
    expect((await node.exited).code).toBe(0)
    node = null
    const store = await Store.open({ dir: dataDir, nodeId: 'n1' })
    try {
      const report = await store.verify()
      expect(report.replayChecked).toBe(true)
      expect(report.entries).toBe(digest.appliedLsn)
      expect((await store.digest()).digest).toBe(digest.digest)
    } finally {
      await store.close()
    }
  })
})
