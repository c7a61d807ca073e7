import { ReplicaCore, type CoreConfig, type CoreInit, type Message } from '../src/index.js'
import { testConfig } from './harness.js'

const noop = new Uint8Array([0])

function core(id: string, init: Partial<CoreInit>, config: Partial<CoreConfig> = {}): ReplicaCore {
  return new ReplicaCore(
    {
      ...testConfig,
      id,
      members: ['n1', 'n2', 'n3'],
      electionTicks: 10,
      random: () => 0,
      makeNoop: () => noop,
      ...config,
    },
    {
      epoch: 1,
      vote: '',
      commitLsn: 0,
      logStartLsn: 1,
      compactedEpoch: 0,
      lastLsn: 0,
      lastEpoch: 0,
      ...init,
    },
  )
}

describe('membership changes', () => {
  it('a lone voter that wins by its own vote sends nothing at its new epoch before that epoch is durable', () => {
    // n1 is the only voter; n2 a learner it replicates to. Its election asks nobody, so no
    // vote request (sent only after persistence) proves the new epoch durable: a crash before
    // the write would restart it at the old epoch, free to lead the new one again with a
    // different log, while n2 holds entries of the first.
    const n1 = core('n1', {
      epoch: 1,
      commitLsn: 1,
      lastLsn: 1,
      lastEpoch: 1,
      memberships: [{ lsn: 1, membership: { voters: ['n1'], learners: ['n2'] } }],
    })
    n1.peerConnected('n2')
    for (let i = 0; i < 30 && !n1.isLeader; i++) n1.tick()
    expect(n1.isLeader).toBe(true)
    expect(n1.epoch).toBe(2)
    const atNewEpoch = (ms: Message[]) => ms.filter((m) => m.epoch >= 2)
    const first = n1.takeReady()
    expect(first.hardState).toMatchObject({ epoch: 2, vote: 'n1' })
    expect(atNewEpoch(first.sendNow)).toEqual([])
    expect(atNewEpoch(first.sendAfterPersist).length).toBeGreaterThan(0)
    // Later Readies too, until the node reports an entry of epoch 2 durable (written after
    // the hard state): their messages wait for every earlier write.
    for (let i = 0; i < 5; i++) n1.tick()
    const second = n1.takeReady()
    expect(atNewEpoch(second.sendNow)).toEqual([])
    expect(atNewEpoch(second.sendAfterPersist).length).toBeGreaterThan(0)
    const noopEntry = first.entries[0]
    expect(noopEntry).toMatchObject({ lsn: 2, epoch: 2 })
    n1.persisted(2, 2)
    for (let i = 0; i < 5; i++) n1.tick()
    expect(atNewEpoch(n1.takeReady().sendNow).length).toBeGreaterThan(0)
  })
})
