import { unavailability } from '../src/shards.js'

describe('unavailability (the fence as the load sees it)', () => {
  it('takes the longest stretch between acknowledgements that overlaps the window', () => {
    const acks = [0, 10, 20, 30, 400, 410, 420, 1000]
    // The 30 → 400 gap overlaps [25, 500]; 420 → 1000 starts inside it too.
    expect(unavailability(acks, [], 25, 500).longestGapMs).toBe(580)
    expect(unavailability(acks, [], 25, 415).longestGapMs).toBe(370)
    // A gap wholly before the window does not count.
    expect(unavailability(acks, [], 405, 415).longestGapMs).toBe(10)
  })

  it('counts up to the end of the window when acknowledgements stopped', () => {
    expect(unavailability([0, 10], [], 5, 100).longestGapMs).toBe(90)
    expect(unavailability([], [], 5, 100).longestGapMs).toBe(95)
  })

  it('counts the refusals in the window and their span', () => {
    expect(unavailability([0, 500], [1, 100, 200, 300, 600], 50, 400)).toEqual({
      longestGapMs: 500,
      refusals: 3,
      refusalSpanMs: 200,
    })
    expect(unavailability([0, 500], [], 50, 400).refusalSpanMs).toBe(0)
  })
})
