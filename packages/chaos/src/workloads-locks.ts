/**
 * The lock workload (issue 19; docs/leases.md): clients take one lock with the SDK's `lock()`
 * (a lease, and a create-if-absent of the lock key attached to it), write a few writes to a
 * shared resource while they hold it, and release it. Some holders "pause" while holding it,
 * as a process in a long GC pause does: their keep-alive stops, they sleep past the lease's
 * TTL (the lock passes to another client meanwhile), and then they write on, believing they
 * still hold it.
 *
 * Every resource write is a new key `<prefix>res/<n>` whose value names its holder's token, so
 * after the run one listing gives the resource's accepted history exactly: every write the
 * store took, in LSN order (a key's version), whatever its client was told. The lock checker
 * (checkers/locks.ts) reads it from the final `readAll`.
 *
 * With fencing (the default) each write carries the holder's token (`If-Fence`, `Fence-Lock`),
 * so a woken holder's write is refused once a later holder has written. Without it
 * (`unfenced`, the teeth) nothing stops the woken holder, and the checker must catch it.
 */
import { KvError, lock, type HeldLock, type KvClient } from '@kvstore/client'
import type { ChaosCluster } from './cluster.js'
import type { HistoryRecorder, Workload } from './workloads.js'
import { prng } from './nemesis.js'

export interface LocksWorkloadOptions {
  cluster: ChaosCluster
  history: HistoryRecorder
  clients: number
  seed: number
  prefix: string
  /** Teeth: resource writes carry no fencing token. */
  unfenced?: boolean
  /** The holders' lease TTL (default 1000 ms). */
  ttlMs?: number
  /** The chance that a holder pauses past its TTL while holding the lock (default 0.25). */
  pauseChance?: number
}

/** A resource write's value: `<token> <process> <n>`. */
export function resourceValue(token: number, process: number, n: number): string {
  return `${token} ${process} ${n}`
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

function codeOf(err: unknown): string {
  return err instanceof KvError ? err.code : err instanceof Error ? err.message : String(err)
}

export function locksWorkload(
  options: LocksWorkloadOptions,
  makeClient: (index: number) => KvClient,
): Workload {
  const { history } = options
  const ttlMs = options.ttlMs ?? 1000
  const pauseChance = options.pauseChance ?? 0.25
  const name = `${options.prefix.replace(/[^A-Za-z0-9_-]/g, '')}-lock`
  let stopping = false
  let seq = 0
  let nextProcess = options.clients
  const clients: KvClient[] = []
  const running = Array.from({ length: options.clients }, async (_, i) => {
    const client = makeClient(i)
    clients.push(client)
    const random = prng(options.seed * 7919 + i)
    let process = i
    while (!stopping) {
      history.record({ process, f: 'acquire', type: 'invoke', value: null })
      let held: HeldLock
      try {
        held = await lock(client, name, {
          ttlMs,
          waitMs: 4000,
          pollMs: 20,
          keyPrefix: `${options.prefix}locks/`,
          owner: String(process),
        })
        history.record({ process, f: 'acquire', type: 'ok', value: held.token })
      } catch (err) {
        history.record({ process, f: 'acquire', type: 'fail', value: null, error: codeOf(err) })
        await sleep(50)
        continue
      }
      const writes = 3
      const pauseAt = random() < pauseChance ? 1 + Math.floor(random() * (writes - 1)) : -1
      for (let n = 0; n < writes && !stopping; n++) {
        if (n === pauseAt) {
          // The pause: nothing runs, so nothing renews; the lease expires meanwhile.
          held.keeper.stop()
          history.record({ process, f: 'pause', type: 'invoke', value: held.token })
          await sleep(ttlMs + 300 + Math.floor(random() * ttlMs))
          history.record({ process, f: 'pause', type: 'ok', value: held.token })
        }
        const key = `${options.prefix}res/${++seq}`
        const value = resourceValue(held.token, process, n)
        history.record({ process, f: 'write', key, type: 'invoke', value })
        try {
          const put = await client.put(key, value, {
            ...(options.unfenced === true ? {} : { fence: held.fence }),
          })
          history.record({ process, f: 'write', key, type: 'ok', value, version: put.version })
        } catch (err) {
          const code = codeOf(err)
          const certain = code === 'KV_ERR_FENCED'
          history.record({
            process,
            f: 'write',
            key,
            type: certain ? 'fail' : 'info',
            value,
            error: code,
          })
          if (certain) break
        }
      }
      await held.release().catch(() => {})
      process = nextProcess++
    }
  })
  return {
    async stop() {
      stopping = true
      await Promise.all(running)
    },
    async finish() {
      const client = clients[0] ?? makeClient(0)
      const process = 1_000_000
      history.record({ process, f: 'readAll', type: 'invoke', value: null })
      try {
        const items: { key: string; version: number; value: string }[] = []
        for await (const item of client.listAll({
          prefix: `${options.prefix}res/`,
          values: true,
        })) {
          items.push({
            key: item.key,
            version: item.version,
            value: Buffer.from(item.valueBase64 ?? '', 'base64').toString('utf8'),
          })
        }
        history.record({ process, f: 'readAll', type: 'ok', value: items })
      } catch (err) {
        history.record({ process, f: 'readAll', type: 'fail', value: null, error: codeOf(err) })
      } finally {
        await Promise.all(clients.map((c) => c.close()))
      }
    },
  }
}
