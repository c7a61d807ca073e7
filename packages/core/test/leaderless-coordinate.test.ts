import { writeState, type VersionedState } from '../src/conflicts.js'
import { mintWrite, siblingsRefusal } from '../src/leaderless/index.js'

const policy = { mode: 'siblings' as const, siblingsMax: 3 }
const stamp = (wallMs: number) => ({ wallMs, logical: 0, node: 'n1' })

function concurrent(count: number): VersionedState<string> {
  let s: VersionedState<string> = { vector: {}, siblings: [] }
  for (let i = 1; i <= count; i++)
    s = writeState(s, `x${i}`, 1, {}, { value: `v${i}`, hlc: stamp(i) }, 'siblings')
  return s
}

describe("the coordinator's own write", () => {
  it('refuses a value write past the cap, never a delete or a write that resolves enough', () => {
    const full = concurrent(3)
    expect(siblingsRefusal(full, {}, false, policy)).toBe(3)
    expect(siblingsRefusal(full, {}, true, policy)).toBeNull()
    expect(siblingsRefusal(full, full.vector, false, policy)).toBeNull()
    expect(siblingsRefusal(full, {}, false, { mode: 'lww', siblingsMax: 3 })).toBeNull()
  })

  it('keeps a delete with a stale context under the cap, dropping the oldest as replicas do', () => {
    const full = concurrent(3)
    const { state, dropped } = mintWrite(full, 'n1', 1, {}, { value: null, hlc: stamp(9) }, policy)
    expect(state.siblings).toHaveLength(3)
    expect(dropped).toBe(1)
    expect(state.siblings.map((s) => s.value.value)).toEqual(['v2', 'v3', null])
    // The new dot is in the vector, and nothing it covers survives.
    expect(state.vector['n1']).toBe(1)
    const resolved = mintWrite(full, 'n1', 2, full.vector, { value: 'w', hlc: stamp(9) }, policy)
    expect(resolved.state.siblings.map((s) => s.value.value)).toEqual(['w'])
    expect(resolved.dropped).toBe(0)
  })
})
