import { pairOperations, type HistoryEvent } from '../src/history.js'
import { parseNemeses, prng } from '../src/nemesis.js'
import { latencySvg, throughputSvg } from '../src/report.js'

describe('nemesis schedules', () => {
  it('parses a list and refuses unknown names', () => {
    expect(parseNemeses('kill, partition-leader')).toEqual(['kill', 'partition-leader'])
    expect(() => parseNemeses('kill,flood')).toThrow(/unknown nemesis "flood"/)
    expect(() => parseNemeses('')).toThrow(/at least one/)
  })

  it('draws the same choices from the same seed', () => {
    const a = prng(42)
    const b = prng(42)
    const c = prng(43)
    const first = Array.from({ length: 5 }, () => a())
    expect(Array.from({ length: 5 }, () => b())).toEqual(first)
    expect(Array.from({ length: 5 }, () => c())).not.toEqual(first)
    for (const x of first) expect(x >= 0 && x < 1).toBe(true)
  })
})

describe('report plots', () => {
  const events: HistoryEvent[] = [
    { index: 0, type: 'invoke', process: 0, f: 'write', key: 'k', value: 1, time: 100 },
    { index: 1, type: 'ok', process: 0, f: 'write', key: 'k', value: 1, time: 110 },
    { index: 2, type: 'invoke', process: 1, f: 'write', key: 'k', value: 2, time: 1500 },
    { index: 3, type: 'info', process: 1, f: 'write', key: 'k', value: 2, time: 3500 },
    { index: 4, type: 'invoke', process: 2, f: 'read', key: 'k', value: null, time: 2500 },
    { index: 5, type: 'fail', process: 2, f: 'read', key: 'k', value: null, time: 2600 },
  ]
  const ops = pairOperations(events)
  const windows = [{ nemesis: 'kill' as const, description: 'kill -9 n1', start: 1000, end: 3000 }]

  it('shades the fault windows and colors each outcome', () => {
    const svg = latencySvg(ops, windows, 4000)
    expect(svg).toMatch(/^<svg/)
    expect(svg).toContain('<title>kill: kill -9 n1</title>')
    expect(svg.match(/<circle/g)).toHaveLength(3)
    for (const color of ['#2e7d32', '#c62828', '#f9a825']) expect(svg).toContain(color)
  })

  it('counts completions per second, split by outcome', () => {
    const svg = throughputSvg(ops, windows, 4000)
    expect(svg).toContain('<title>0s: 1 ok</title>')
    expect(svg).toContain('<title>2s: 1 fail</title>')
    // An info never completes: it is counted where it started.
    expect(svg).toContain('<title>1s: 1 info</title>')
  })
})

describe('a run that asks for what its backend cannot do', () => {
  it('is refused before anything starts, naming the backend that can', async () => {
    const { runChaos } = await import('../src/run.js')
    await expect(
      runChaos({
        backend: 'process',
        workload: 'register',
        nemeses: ['kill', 'partition-leader', 'slow'],
        ack: 'quorum',
        durationMs: 1000,
        seed: 1,
        nodes: 3,
        clients: 1,
        out: '/nonexistent',
        log: () => {},
      }),
    ).rejects.toThrow(/partition-leader, slow need per-node networks: use --backend docker/)
  })
})

describe('the membership nemeses', () => {
  const base = {
    workload: 'register' as const,
    ack: 'quorum' as const,
    durationMs: 1000,
    seed: 1,
    nodes: 3,
    clients: 1,
    out: '/nonexistent',
    log: () => {},
  }

  it('are nemeses like the others', () => {
    expect(parseNemeses('member-churn,kill')).toEqual(['member-churn', 'kill'])
    expect(parseNemeses('member-split')).toEqual(['member-split'])
  })

  it('member-split cuts the network, so the process backend refuses it', async () => {
    const { runChaos } = await import('../src/run.js')
    await expect(
      runChaos({ ...base, backend: 'process', nemeses: ['member-churn', 'member-split'] }),
    ).rejects.toThrow(/member-split need per-node networks: use --backend docker/)
  })

  it('member-split is refused in leaderless mode (member-churn changes the ring there)', async () => {
    const { runChaos } = await import('../src/run.js')
    await expect(
      runChaos({
        ...base,
        backend: 'process',
        mode: 'leaderless',
        workload: 'll-set',
        nemeses: ['member-churn', 'member-split'],
      }),
    ).rejects.toThrow(
      /member-split promotes learners of a single-leader cluster; .* use member-churn/,
    )
  })
})

describe('router mode and its nemeses', () => {
  const base = {
    workload: 'register' as const,
    ack: 'quorum' as const,
    durationMs: 1000,
    seed: 1,
    nodes: 3,
    clients: 1,
    out: '/nonexistent',
    log: () => {},
  }

  it('are nemeses like the others', () => {
    expect(parseNemeses('move-slots,kill,kill-router')).toEqual([
      'move-slots',
      'kill',
      'kill-router',
    ])
  })

  it('puts the register keys in both halves of the slots, so both groups hold some', async () => {
    const { registerKeys, setSlots } = await import('../src/workloads.js')
    const { slotOfKey } = await import('@kvstore/protocol')
    const keys = registerKeys('chaos-7/')
    expect(keys).toHaveLength(5)
    expect(new Set(keys).size).toBe(5)
    expect(keys.map((k) => slotOfKey(k) < 2048)).toEqual([true, false, true, false, true])
    for (const [i, k] of keys.entries()) expect(k.startsWith(`chaos-7/r${i}-`)).toBe(true)
    // The set's elements cover most slots: a move of any run takes some of them.
    expect(setSlots('chaos-7/').length).toBeGreaterThan(2500)
  })

  it('move-slots and kill-router need --router', async () => {
    const { runChaos } = await import('../src/run.js')
    await expect(
      runChaos({ ...base, backend: 'process', nemeses: ['move-slots', 'kill'] }),
    ).rejects.toThrow(/move-slots needs shard groups behind routers: add --router/)
  })

  it('--router runs on the process backend, without network faults or membership changes', async () => {
    const { runChaos } = await import('../src/run.js')
    await expect(
      runChaos({ ...base, backend: 'docker', router: true, nemeses: ['move-slots'] }),
    ).rejects.toThrow(/--router runs on the process backend only/)
    await expect(
      runChaos({
        ...base,
        backend: 'process',
        router: true,
        nemeses: ['move-slots', 'partition-one'],
      }),
    ).rejects.toThrow(/partition-one needs per-node networks, which --router .* does not have/)
    await expect(
      runChaos({
        ...base,
        backend: 'process',
        router: true,
        nemeses: ['move-slots', 'member-churn'],
      }),
    ).rejects.toThrow(/member-churn changes a group's members, which must match the shard map file/)
    await expect(
      runChaos({
        ...base,
        backend: 'process',
        router: true,
        workload: 'session',
        nemeses: ['move-slots'],
      }),
    ).rejects.toThrow(/--router runs the register and set workloads, not session/)
  })
})
