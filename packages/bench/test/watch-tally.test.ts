import { describe, expect, it } from 'vitest'
import {
  LineSplitter,
  WatcherTally,
  benchKey,
  completeness,
  parseWatchLine,
  readBenchKey,
} from '../src/watch-tally.js'

describe('parseWatchLine', () => {
  it('reads the key and LSN of puts and deletes as the node frames them', () => {
    const put = JSON.stringify({
      type: 'put',
      key: 'wb/2/17/1234.500',
      valueBase64: Buffer.from('v'.repeat(100)).toString('base64'),
      lsn: 4711,
      version: 4711,
    })
    expect(parseWatchLine(put)).toEqual({ kind: 'change', lsn: 4711, key: 'wb/2/17/1234.500' })
    const del = JSON.stringify({ type: 'delete', key: 'wb/x', lsn: 9, version: 9 })
    expect(parseWatchLine(del)).toEqual({ kind: 'change', lsn: 9, key: 'wb/x' })
  })

  it('reads progress and error events, and leaves batches aside', () => {
    expect(parseWatchLine('{"type":"progress","lsn":12,"commitLsn":15}')).toEqual({
      kind: 'progress',
      lsn: 12,
    })
    const error = JSON.stringify({
      type: 'error',
      error: { code: 'KV_ERR_WATCH_TOO_SLOW', message: 'm', lsn: 301, bufferBytesMax: 1 },
    })
    expect(parseWatchLine(error)).toEqual({
      kind: 'error',
      code: 'KV_ERR_WATCH_TOO_SLOW',
      lsn: 301,
    })
    expect(parseWatchLine('{"type":"error","error":{"code":"KV_ERR_SHUTTING_DOWN"}}')).toEqual({
      kind: 'error',
      code: 'KV_ERR_SHUTTING_DOWN',
      lsn: null,
    })
    expect(parseWatchLine('{"type":"batch","lsn":4,"version":4,"ops":[]}')).toEqual({
      kind: 'other',
    })
    expect(parseWatchLine('{"type":"put","lsn":4}')).toEqual({ kind: 'other' })
  })
})

describe('LineSplitter', () => {
  it('returns whole lines only, across chunks', () => {
    const s = new LineSplitter()
    expect(s.feed('{"a":1}\n{"b"')).toEqual(['{"a":1}'])
    expect(s.feed(':2}\n')).toEqual(['{"b":2}'])
    expect(s.feed('\n{"c":3}')).toEqual([])
    expect(s.feed('\n')).toEqual(['{"c":3}'])
  })
})

describe('bench keys', () => {
  it('round-trips the phase, the sequence number and the send time', () => {
    const key = benchKey('wb/', 3, 12345, 9876.54321)
    expect(key).toBe('wb/3/12345/9876.543')
    expect(readBenchKey('wb/', key)).toEqual({ phase: 3, seq: 12345, sentAtMs: 9876.543 })
    expect(readBenchKey('wb/', 'other/3/1/2')).toBeNull()
    expect(readBenchKey('wb/', 'wb/3/1')).toBeNull()
    expect(readBenchKey('wb/', 'wb/a/1/2')).toBeNull()
  })
})

describe('WatcherTally and completeness', () => {
  it('counts missing writes, duplicates, reordering and writes beyond the acknowledged', () => {
    const complete = new WatcherTally(2)
    const short = new WatcherTally(2)
    const odd = new WatcherTally(2)
    for (const [seq, lsn] of [
      [0, 10],
      [1, 11],
      [2, 12],
      [5000, 13], // a write that failed at the writer yet committed
    ] as const) {
      complete.change(1, seq, lsn)
      if (seq !== 1) short.change(1, seq, lsn)
    }
    odd.change(1, 0, 10)
    odd.change(1, 2, 12)
    odd.change(1, 1, 11) // out of LSN order
    odd.change(1, 1, 11) // and again
    const c = completeness([complete, short, odd], 1, [0, 1, 2])
    expect(c.complete).toBe(2)
    expect(c.watchersShort).toBe(1)
    expect(c.missing).toBe(1)
    expect(c.extra).toBe(1 + 1 + 1)
    expect(complete.received).toEqual([0, 4])
    expect(odd.outOfOrder).toBe(2)
    expect(odd.duplicates).toBe(1)
    expect(complete.outOfOrder + complete.duplicates).toBe(0)
  })
})
