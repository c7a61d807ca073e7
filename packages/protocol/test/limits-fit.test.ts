import {
  frameLimits,
  leaderlessLimits,
  limitsCeiling,
  limitsDefault,
  limitsFitProblems,
} from '../src/limits.js'

const shipped = { limitsDefault, limitsCeiling, frameLimits, leaderlessLimits }

describe('limitsFitProblems (run when limits.ts loads)', () => {
  it('finds nothing wrong with the shipped limits', () => {
    expect(limitsFitProblems()).toEqual([])
  })

  it.each([
    [
      'incoherent defaults',
      { limitsDefault: { ...limitsDefault, requestBodyBytesMax: limitsDefault.valueBytesMax - 1 } },
      /limitsDefault: requestBodyBytesMax .* must be at least valueBytesMax/,
    ],
    [
      'a ceiling below its default',
      { limitsCeiling: { ...limitsCeiling, batchOpsMax: limitsDefault.batchOpsMax - 1 } },
      /limitsCeiling.batchOpsMax \(999\) is below its default \(1000\)/,
    ],
    [
      'request ids longer than frame text',
      { frameLimits: { ...frameLimits, textBytesMax: 16 } },
      /request ids travel in snapshot frames/,
    ],
    [
      'a default write larger than a frame',
      { frameLimits: { ...frameLimits, frameBytesMax: limitsDefault.requestBodyBytesMax } },
      /must fit one replication frame/,
    ],
    [
      'a default value larger than a peer message',
      { leaderlessLimits: { ...leaderlessLimits, messageBytesMax: limitsDefault.valueBytesMax } },
      /must fit one peer message/,
    ],
    [
      'member ids longer than actors',
      { leaderlessLimits: { ...leaderlessLimits, actorBytesMax: 8 } },
      /a member id is an actor/,
    ],
  ])('reports %s', (_name, change, message) => {
    const problems = limitsFitProblems({ ...shipped, ...change })
    expect(problems).toHaveLength(1)
    expect(problems[0]).toMatch(message)
  })
})
