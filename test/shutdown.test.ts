/**
 * SIGTERM under write load: the node stops taking requests, finishes the ones in flight,
 * flushes every queued write, closes LevelDB and exits 0. Nothing acknowledged is lost, and
 * the data directory reopens cleanly (its lock was released).
 */
import { join } from 'node:path'
import { Pool } from 'undici'
import { Store } from '@kvstore/storage'
import { startNodeProcess } from '@kvstore/testkit'
import { rootConnect } from './support/certs.js'
import { useTempDir } from './support/temp.js'

const dir = useTempDir('kv-shutdown-')
/** Acknowledged writes before the SIGTERM: the node is under load, with writes queued. */
const loadedWrites = 1000

it('SIGTERM under load loses no acknowledged write and exits 0', async () => {
  const dataDir = join(dir(), 'data')
  const node = await startNodeProcess(['--data-dir', dataDir])
  const acked = new Map<string, string>()
  const outcomes = { ok: 0, shuttingDown: 0, connectionErrors: 0, other: 0 }
  let stop = false
  const pool = new Pool(node.url, { connections: 32, connect: rootConnect() })
  const writers = Array.from({ length: 32 }, async (_, w) => {
    for (let seq = 0; !stop; seq++) {
      const key = `w${w}/${seq}`
      try {
        const res = await pool.request({ method: 'PUT', path: `/v1/kv/${key}`, body: `v${seq}` })
        const body = await res.body.text()
        if (res.statusCode === 200) {
          acked.set(key, `v${seq}`)
          outcomes.ok++
        } else if (res.statusCode === 503 && body.includes('KV_ERR_SHUTTING_DOWN')) {
          outcomes.shuttingDown++
        } else {
          outcomes.other++
        }
      } catch {
        // After the listener closes, new connections are refused.
        outcomes.connectionErrors++
        return
      }
    }
  })
  // SIGTERM once the node is really under load: a count of acknowledged writes, not a sleep, so
  // a slow, shared machine does not turn this into a speed test.
  const loadedBy = Date.now() + 30_000
  while (outcomes.ok < loadedWrites && Date.now() < loadedBy) {
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  expect(outcomes.ok, 'writes acknowledged before SIGTERM').toBeGreaterThanOrEqual(loadedWrites)
  process.kill(node.pid, 'SIGTERM')
  const exit = await node.exited
  stop = true
  await Promise.all(writers)
  await pool.destroy()

  expect(exit).toEqual({ code: 0, signal: null })
  // Shutdown drained by itself: it never had to force connections closed.
  expect(node.logs.some((line) => line.msg === 'closing connections still open')).toBe(false)
  expect(outcomes.other).toBe(0)
  expect(node.logs.some((line) => line.msg === 'node stopped')).toBe(true)

  // Reopen the data directory directly: the lock is free and every acknowledged write is there.
  const store = await Store.open({ dir: dataDir, nodeId: 'n1' })
  try {
    for (const [key, value] of acked) {
      expect(store.getSync(Buffer.from(key))?.value.toString(), key).toBe(value)
    }
    expect((await store.verify()).replayChecked).toBe(true)
  } finally {
    await store.close()
  }
})

it('a signal repeated at once (as npm or pnpm forward Ctrl-C) still stops cleanly', async () => {
  const node = await startNodeProcess(['--data-dir', join(dir(), 'data2')])
  process.kill(node.pid, 'SIGINT')
  process.kill(node.pid, 'SIGINT')
  expect(await node.exited).toEqual({ code: 0, signal: null })
  expect(node.logs.some((line) => line.msg === 'node stopped')).toBe(true)
})

it('kv-node exits with a clear message when its data directory is in use', async () => {
  const dataDir = join(dir(), 'data3')
  const first = await startNodeProcess(['--data-dir', dataDir])
  await expect(startNodeProcess(['--data-dir', dataDir])).rejects.toThrow(
    /in use by another process/,
  )
  process.kill(first.pid, 'SIGTERM')
  expect((await first.exited).code).toBe(0)
})
