import { RecordCache } from '../src/index.js'
import { del, entry, openStore, prngFor, put, tempDir } from './helpers.js'

const rec = (value: string, version: number) => ({
  value: Buffer.from(value),
  version,
  tombstone: false,
})

describe('RecordCache', () => {
  const fill = (cache: RecordCache, id: string, record: ReturnType<typeof rec>) => {
    cache.beginFill(id)
    cache.endFill(id, record)
  }

  it('evicts the least recently used entries to stay within its bytes', () => {
    const cache = new RecordCache(3 * (1 + 10 + 96))
    fill(cache, 'a', rec('x'.repeat(10), 1))
    fill(cache, 'b', rec('x'.repeat(10), 2))
    fill(cache, 'c', rec('x'.repeat(10), 3))
    expect(cache.get('a')?.version).toBe(1) // a is now the most recent
    fill(cache, 'd', rec('x'.repeat(10), 4))
    expect(cache.has('b')).toBe(false)
    expect(cache.has('a')).toBe(true)
    expect(cache.size.bytes).toBeLessThanOrEqual(cache.bytesMax)
  })

  it('never holds an entry larger than itself, and 0 bytes disables it', () => {
    const cache = new RecordCache(50)
    fill(cache, 'big', rec('x'.repeat(100), 1))
    expect(cache.has('big')).toBe(false)
    const off = new RecordCache(0)
    fill(off, 'a', rec('1', 1))
    expect(off.has('a')).toBe(false)
  })

  it('caches what is read, not what is written', () => {
    const cache = new RecordCache(1 << 20)
    cache.written('w', rec('1', 1))
    expect(cache.has('w')).toBe(false)
    fill(cache, 'r', rec('1', 1))
    cache.written('r', rec('2', 2))
    expect(cache.get('r')?.version).toBe(2)
    cache.written('r', null)
    expect(cache.has('r')).toBe(false)
  })

  it('discards a fill when its key was written, or the cache cleared, meanwhile', () => {
    const cache = new RecordCache(1 << 20)
    cache.beginFill('a')
    cache.written('a', rec('new', 2))
    cache.endFill('a', rec('old', 1))
    expect(cache.has('a')).toBe(false)
    cache.beginFill('b')
    cache.clear()
    cache.endFill('b', rec('old', 1))
    expect(cache.has('b')).toBe(false)
    // Two reads of one key: a write during either makes both stale.
    cache.beginFill('c')
    cache.beginFill('c')
    cache.written('c', rec('new', 2))
    cache.endFill('c', rec('old', 1))
    cache.endFill('c', rec('old', 1))
    expect(cache.has('c')).toBe(false)
    fill(cache, 'c', rec('new', 2))
    expect(cache.get('c')?.version).toBe(2)
  })
})

describe('store read cache', () => {
  // A cache of a few entries evicts all the time; a roomy one never evicts. Each hides
  // different races, so both run.
  it.each([
    ['a tiny cache', 2048],
    ['a roomy cache', 1 << 20],
  ])(
    'stays exact while reads race writes, deletes and truncation, with %s',
    async (_name, readCacheBytes) => {
      const { dir, cleanup } = await tempDir()
      let store = await openStore(dir, { readCacheBytes })
      const random = prngFor(7)
      const model = new Map<string, string>()
      let lsn = 0
      try {
        for (let round = 0; round < 80; round++) {
          // Reopen now and then: a fresh, empty cache over data already on disk is when reads
          // of existing keys miss, and can race the writes of the same keys.
          if (round % 2 === 1) {
            await store.close()
            store = await openStore(dir, { readCacheBytes })
          }
          // Readers run the whole time the writer works, so reads start while batches are in
          // flight and finish after them: the interleavings that could leave a stale entry.
          let reading = true
          const readers = Array.from({ length: 8 }, async () => {
            while (reading) await store.get(Buffer.from(`k${Math.floor(random() * 30)}`))
          })
          // Stop the readers whatever happens, or a failed assertion leaves them spinning.
          onTestFinished(() => {
            reading = false
          })
          for (let batch = 0; batch < 10; batch++) {
            const writes: Promise<void>[] = []
            for (let i = 0; i < 5; i++) {
              const key = `k${Math.floor(random() * 30)}`
              const op = random() < 0.3 ? del(key) : put(key, `v${round}-${batch}-${i}`)
              lsn++
              writes.push(store.append([entry(lsn, [op])], { commitLsn: lsn }))
              if (op.type === 2) model.delete(key)
              else model.set(key, op.value.toString())
            }
            await Promise.all(writes)
          }
          reading = false
          await Promise.all(readers)
          await store.verifyCache()
          for (const [key, value] of model) {
            expect((await store.get(Buffer.from(key)))?.value.toString()).toBe(value)
          }
        }
        // Truncation clears the cache; the restored state is what gets read.
        await store.append([entry(lsn + 1, [put('k1', 'uncommitted')])])
        expect((await store.get(Buffer.from('k1')))?.value.toString()).toBe('uncommitted')
        await store.truncateAfter(lsn)
        expect((await store.get(Buffer.from('k1')))?.value.toString()).toBe(model.get('k1'))
        await store.verifyCache()
        expect(store.cache.hits).toBeGreaterThan(0)
        expect(store.cache.misses).toBeGreaterThan(0)
      } finally {
        await store.close()
        await cleanup()
      }
    },
  )

  describe('a read that finishes after a write of its key does not cache its stale result', () => {
    /** Opens a store over `k` = v1 on disk whose reads of `k` wait for `release`. */
    async function setup(readCacheBytes: number) {
      const { dir, cleanup } = await tempDir()
      const first = await openStore(dir)
      await first.append([entry(1, [put('k', 'v1')])], { commitLsn: 1 })
      await first.close()
      let release!: () => void
      const gate = new Promise<void>((resolve) => (release = resolve))
      const store = await openStore(dir, {
        readCacheBytes,
        readHook: async (key) => {
          if (key.toString() === 'k') await gate
        },
      })
      return { store, release, cleanup }
    }

    it('when a newer value was written meanwhile', async () => {
      const { store, release, cleanup } = await setup(1 << 20)
      const read = store.get(Buffer.from('k'))
      await store.append([entry(2, [put('k', 'v2')])], { commitLsn: 2 })
      release()
      expect((await read)?.value.toString()).toBe('v1') // it started before the write
      expect(store.cache.has('k')).toBe(false)
      await store.verifyCache()
      expect((await store.get(Buffer.from('k')))?.value.toString()).toBe('v2')
      await store.close()
      await cleanup()
    })

    it('when the key was deleted meanwhile', async () => {
      const { store, release, cleanup } = await setup(1 << 20)
      const read = store.get(Buffer.from('k'))
      await store.append([entry(2, [del('k')])], { commitLsn: 2 })
      release()
      await read
      expect(store.cache.has('k')).toBe(false)
      expect(await store.get(Buffer.from('k'))).toBeNull()
      await store.close()
      await cleanup()
    })

    it('when truncation removed the value it read', async () => {
      const { store, release, cleanup } = await setup(1 << 20)
      await store.append([entry(2, [put('k', 'uncommitted')])])
      // Capturing the undo image read k into the cache; start cold so the read goes to LevelDB.
      store.cache.clear()
      const read = store.get(Buffer.from('k'))
      await new Promise((resolve) => setTimeout(resolve, 20)) // the LevelDB read has finished
      await store.truncateAfter(1)
      release()
      expect((await read)?.value.toString()).toBe('uncommitted')
      expect(store.cache.has('k')).toBe(false)
      expect((await store.get(Buffer.from('k')))?.value.toString()).toBe('v1')
      await store.close()
      await cleanup()
    })

    it('when the key was cached, updated and evicted meanwhile', async () => {
      const { store, release, cleanup } = await setup(4 * (2 + 2 + 96))
      const read = store.get(Buffer.from('k'))
      store.getSync(Buffer.from('k')) // cached by a synchronous read
      await store.append([entry(2, [put('k', 'v2')])], { commitLsn: 2 })
      expect(store.cache.get('k')?.version).toBe(2)
      for (let lsn = 3; lsn < 10; lsn++) {
        await store.append([entry(lsn, [put(`o${lsn}`, 'xx')])], { commitLsn: lsn })
        store.getSync(Buffer.from(`o${lsn}`))
      }
      expect(store.cache.has('k')).toBe(false)
      release()
      await read
      await store.verifyCache()
      expect((await store.get(Buffer.from('k')))?.value.toString()).toBe('v2')
      await store.close()
      await cleanup()
    })
  })
})
