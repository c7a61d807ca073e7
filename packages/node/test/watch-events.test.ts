/** How log entries become watch events (watch/events.ts). */
import { EntryKind, OpType, type LogEntry, type Op } from '@kvstore/protocol'
import { EventCache, changeOf } from '../src/watch/events.js'

const put = (key: string, value = 'v'): Op => ({
  type: OpType.Put,
  key: Buffer.from(key),
  value: Buffer.from(value),
})
const del = (key: string): Op => ({
  type: OpType.Delete,
  key: Buffer.from(key),
  value: Buffer.alloc(0),
})
const entry = (kind: number, ops: Op[], lsn = 7): LogEntry => ({
  epoch: 1,
  lsn,
  kind: kind as LogEntry['kind'],
  ops,
  timestampMs: 0,
  requestId: '',
})
const all = Buffer.alloc(0)

describe('watch events', () => {
  it('shows a put, a delete, and a batch with only the ops under the prefix', () => {
    expect(changeOf(entry(EntryKind.Put, [put('a/1', 'x')]), all, true)).toEqual({
      type: 'put',
      key: 'a/1',
      valueBase64: Buffer.from('x').toString('base64'),
      lsn: 7,
      version: 7,
    })
    expect(changeOf(entry(EntryKind.Delete, [del('a/1')]), all, false)).toEqual({
      type: 'delete',
      key: 'a/1',
      lsn: 7,
      version: 7,
    })
    const batch = entry(EntryKind.Batch, [put('a/1'), put('b/1'), del('a/2')])
    expect(changeOf(batch, Buffer.from('a/'), false)).toEqual({
      type: 'batch',
      lsn: 7,
      version: 7,
      ops: [
        { type: 'put', key: 'a/1' },
        { type: 'delete', key: 'a/2' },
      ],
    })
    expect(changeOf(batch, Buffer.from('c/'), false)).toBeNull()
  })

  it('shows a leased or fenced PUT (one key plus reserved records) as that put, never the records', () => {
    const leased = entry(EntryKind.Batch, [put('\0lease/9-1', 'rec'), put('a/1', 'x')])
    expect(changeOf(leased, all, false)).toEqual({ type: 'put', key: 'a/1', lsn: 7, version: 7 })
    expect(changeOf(leased, Buffer.from('b/'), false)).toBeNull()
    const cache = new EventCache()
    expect(cache.framed(leased, all, '', false, 'ndjson')).toBe(
      `${JSON.stringify({ type: 'put', key: 'a/1', lsn: 7, version: 7 })}\n`,
    )
    // A grant (reserved ops only) shows nothing.
    expect(changeOf(entry(EntryKind.Batch, [put('\0lease/9-1', 'rec')]), all, false)).toBeNull()
  })

  it('shows a lease end as one expire event of its keys, and one with no keys left as nothing', () => {
    const end = entry(EntryKind.Expiry, [del('\0lease/9-1'), del('a/1'), del('a/2')])
    expect(changeOf(end, all, false)).toEqual({
      type: 'expire',
      lsn: 7,
      version: 7,
      ops: [
        { type: 'delete', key: 'a/1' },
        { type: 'delete', key: 'a/2' },
      ],
    })
    expect(changeOf(entry(EntryKind.Expiry, [del('\0lease/9-1')]), all, false)).toBeNull()
    expect(changeOf(entry(EntryKind.Noop, []), all, false)).toBeNull()
  })

  it('frames SSE with the LSN as the id', () => {
    const text = new EventCache().framed(entry(EntryKind.Put, [put('a/1')]), all, '', false, 'sse')
    expect(text).toBe(
      `id: 7\nevent: put\ndata: ${JSON.stringify({ type: 'put', key: 'a/1', lsn: 7, version: 7 })}\n\n`,
    )
  })
})
