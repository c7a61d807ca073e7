import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { EntryKind, OpType, type LogEntry, type Op } from '@kvstore/protocol'
import { Store, type StoreOptions } from '../src/index.js'

/** A fresh temporary directory, removed by the returned cleanup. */
export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-storage-'))
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) }
}

export function put(key: string, value: string): Op {
  return { type: OpType.Put, key: Buffer.from(key), value: Buffer.from(value) }
}

export function del(key: string): Op {
  return { type: OpType.Delete, key: Buffer.from(key), value: Buffer.alloc(0) }
}

/** A log entry holding `ops` (a batch when there is more than one). */
export function entry(lsn: number, ops: Op[], epoch = 1): LogEntry {
  const kind =
    ops.length !== 1
      ? EntryKind.Batch
      : ops[0]?.type === OpType.Put
        ? EntryKind.Put
        : EntryKind.Delete
  return {
    epoch,
    lsn,
    kind,
    ops,
    timestampMs: 1_700_000_000_000 + lsn,
    requestId: '',
    requestFingerprint: Buffer.alloc(0),
  }
}

/**
 * A fresh temporary directory for every test of the calling file: made before each test,
 * removed after it. Read `.dir` inside a test (or a hook registered after this call).
 */
export function useTempDir(): { readonly dir: string } {
  const current = { dir: '' }
  let cleanup: (() => Promise<void>) | undefined
  beforeEach(async () => {
    ;({ dir: current.dir, cleanup } = await tempDir())
  })
  afterEach(async () => {
    await cleanup?.()
    cleanup = undefined
  })
  return current
}

/** Opens a store in `dir` with epoch 1 already persisted. */
export async function openStore(dir: string, options: Partial<StoreOptions> = {}): Promise<Store> {
  const store = await Store.open({ dir, nodeId: 'n1', ...options })
  if (store.meta.epoch < 1) await store.setHardState({ epoch: 1 })
  return store
}

/** Appends entries 1..lastLsn, one at a time, each committed as it is written. */
export async function appendCommitted(
  store: Store,
  lastLsn: number,
  op: (lsn: number) => Op = (lsn) => put(`k${lsn}`, `v${lsn}`),
): Promise<void> {
  for (let lsn = store.appliedLsn + 1; lsn <= lastLsn; lsn++) {
    await store.append([entry(lsn, [op(lsn)])], { commitLsn: lsn })
  }
}

/** The whole state as a plain object key -> value, for comparisons. */
export async function dump(store: Store): Promise<Record<string, string>> {
  const out: Record<string, string> = {}
  const snapshot = await store.openSnapshot()
  try {
    for await (const { key, record } of snapshot.records()) {
      out[key.toString()] = record.value.toString()
    }
  } finally {
    await snapshot.close()
  }
  return out
}

/** The project's seeded PRNG, as a `Math.random`-shaped draw. */
export { prng as prngFor } from '@kvstore/testkit'
