/**
 * The wrk script of the shards suite computes each key's hash slot in Lua: it must agree with
 * the nodes (slotOfKey), or a group would refuse the keys as another's. A local HTTP server
 * takes one second of the script's PUTs and checks every key it got. Needs wrk (skipped
 * without it).
 */
import { createServer } from 'node:http'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { slotOfKey } from '@kvstore/protocol'
import { runWrk, slotPutScript, wrkAvailable } from '../src/wrk.js'

describe('slotPutScript', () => {
  it.skipIf(!wrkAvailable())('sends only keys of its slots, spread over them', async () => {
    const keys: string[] = []
    const server = createServer((req, res) => {
      keys.push(decodeURIComponent((req.url ?? '').replace(/^\/v1\/kv\//, '').split('?')[0] ?? ''))
      req.resume()
      req.on('end', () => res.end('{}'))
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const { port } = server.address() as { port: number }
    const dir = await mkdtemp(join(tmpdir(), 'kv-slot-script-'))
    try {
      const ranges = [
        [0, 99],
        [3000, 3049],
      ] as const
      const result = await runWrk({
        url: `http://127.0.0.1:${port}`,
        script: slotPutScript('bench/t/', 10, ranges, { query: '?ack=quorum' }),
        scriptDir: dir,
        connections: 4,
        durationS: 1,
      })
      expect(result.errors).toBe(0)
      expect(keys.length).toBeGreaterThan(100)
      const slots = new Set<number>()
      for (const key of keys) {
        expect(key.startsWith('bench/t/')).toBe(true)
        const slot = slotOfKey(key)
        expect(
          ranges.some(([first, last]) => slot >= first && slot <= last),
          `${key} → ${slot}`,
        ).toBe(true)
        slots.add(slot)
      }
      // Spread: most of the 150 slots were hit.
      if (keys.length > 2000) expect(slots.size).toBeGreaterThan(120)
    } finally {
      server.close()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
