import { aeBytesPerMessageMax, aeRecordsPerMessageMax } from '../src/limits.js'
import { aeMessageFits, recordBytes } from '../src/leaderless/message-size.js'

describe('leaderless limits', () => {
  it('counts a record by the UTF-8 bytes of its key, not its characters', () => {
    const value = { value: new Uint8Array(10) }
    const ascii = recordBytes('abc', { siblings: [{ value }] })
    const cjk = recordBytes('鍵鍵鍵', { siblings: [{ value }] })
    expect(cjk - ascii).toBe(6)
    expect(recordBytes('😀', { siblings: [] }) - recordBytes('', { siblings: [] })).toBe(4)
  })

  it('cuts an anti-entropy message before the record that would cross its budget', () => {
    // A lone record always goes, whatever its size (the configuration bounds it).
    expect(aeMessageFits(0, 0, aeBytesPerMessageMax * 4)).toBe(true)
    expect(aeMessageFits(1, aeBytesPerMessageMax - 10, 10)).toBe(true)
    expect(aeMessageFits(1, aeBytesPerMessageMax - 10, 11)).toBe(false)
    expect(aeMessageFits(aeRecordsPerMessageMax - 1, 0, 1)).toBe(true)
    expect(aeMessageFits(aeRecordsPerMessageMax, 0, 1)).toBe(false)
  })
})
