import { recordBytes } from '../src/leaderless/limits.js'

describe('leaderless limits', () => {
  it('counts a record by the UTF-8 bytes of its key, not its characters', () => {
    const value = { value: new Uint8Array(10) }
    const ascii = recordBytes('abc', { siblings: [{ value }] })
    const cjk = recordBytes('鍵鍵鍵', { siblings: [{ value }] })
    expect(cjk - ascii).toBe(6)
    expect(recordBytes('😀', { siblings: [] }) - recordBytes('', { siblings: [] })).toBe(4)
  })
})
